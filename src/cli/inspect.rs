//! The commands that only read: `check`, `list`, `plan` and `status`. None of them changes a
//! server, a snapshot or the state directory.

use chrono::{DateTime, Utc};

use super::output::{out, outln};
use crate::config::Config;
use crate::context::Context;
use crate::execute::Work;
use crate::format::{format_age, format_size, render_table};
use crate::model::{ServerId, Snapshot};
use crate::provider::Provider;

/// `check`: what the daemon would do with this config, without contacting the provider.
pub fn check_report(config: &Config, now: DateTime<Utc>) -> String {
    let mut out = format!(
        "{}: ok ({} {})\n",
        config.path.display(),
        config.policies.len(),
        if config.policies.len() == 1 {
            "policy"
        } else {
            "policies"
        }
    );
    for p in &config.policies {
        let r = &p.retention;
        let mut rules = Vec::new();
        for (n, label) in [
            (r.keep, "keep"),
            (r.hourly, "keep_hourly"),
            (r.daily, "keep_daily"),
            (r.weekly, "keep_weekly"),
            (r.monthly, "keep_monthly"),
        ] {
            if n > 0 {
                rules.push(format!("{label} {n}"));
            }
        }
        let servers: Vec<String> = p.servers.iter().map(ToString::to_string).collect();
        out +=
            &format!(
            "\npolicy {}\n  schedule  {} ({})\n  servers   {}\n  retention {}\n  stop      {}\n",
            p.name,
            p.schedule.expr(),
            p.schedule.timezone(),
            servers.join(", "),
            rules.join(", "),
            if p.stop_server { "yes, stopped for the snapshot and started again" } else { "no" },
        );
        for (i, fire) in p.schedule.upcoming(now, 3).iter().enumerate() {
            let label = if i == 0 { "next" } else { "" };
            out += &format!("  {label:<9} {}\n", fire.format("%Y-%m-%d %H:%M:%S %Z"));
        }
    }
    out
}

/// `check --connect`: reaches etcd (with `[ha]`: who leads) and the provider (one listing
/// request, one attempt: what fails is said, not retried for minutes).
pub(super) async fn reach(config: Config, simulate: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if let Some(ha) = &config.ha {
        let etcd = crate::etcd::Etcd::for_cluster(ha, std::time::Duration::from_secs(5))?;
        let key = format!("{}leader", ha.prefix());
        let leader = etcd
            .get(&key)
            .await
            .context("check --connect: etcd ([ha] etcd_endpoints) cannot be read")?;
        match leader {
            Some(kv) => outln!(
                "etcd: reached; cluster {} is led by {} (epoch {})",
                ha.cluster,
                crate::text::message(&kv.value),
                kv.create_revision
            )?,
            None => outln!("etcd: reached; cluster {} has no leader now", ha.cluster)?,
        }
    }
    let base_url = config.api.base_url.clone();
    let ctx = Context::connect(config, simulate).await?;
    let page = ctx
        .client
        .inner()
        .list_page(crate::provider::Scope::Account, None)
        .await
        .context("check --connect: the provider's API cannot be listed")?;
    outln!(
        "API: reached {base_url}; {} snapshot(s) in the account",
        page.count.map_or(page.records as u64, |c| c)
    )?;
    Ok(())
}

pub(super) async fn list(
    ctx: &Context,
    server: Option<ServerId>,
    json: bool,
) -> anyhow::Result<i32> {
    let mut snapshots = ctx.client.list_snapshots(server).await?;
    snapshots.sort_by_key(|s| (s.server.id, s.created_at));
    let now = ctx.clock.now();
    if json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            snapshot: &'a Snapshot,
            policy: Option<&'a str>,
        }
        let rows: Vec<Row<'_>> = snapshots
            .iter()
            .map(|s| Row {
                snapshot: s,
                policy: ctx.manager_of(&s.name),
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(0);
    }
    let mut table = vec![[
        "ID".to_owned(),
        "SERVER".into(),
        "NAME".into(),
        "STATUS".into(),
        "SIZE".into(),
        "CREATED".into(),
        "POLICY".into(),
    ]];
    for s in &snapshots {
        table.push([
            s.id.to_string(),
            format!("{} ({})", s.server.id, s.server.name),
            s.name.clone(),
            s.status.to_string(),
            format_size(s.size_mb),
            format!(
                "{} ({} ago)",
                s.created_at.format("%Y-%m-%d %H:%M"),
                format_age(now - s.created_at)
            ),
            ctx.manager_of(&s.name).unwrap_or("-").to_owned(),
        ]);
    }
    out(&render_table(&table))?;
    if snapshots.is_empty() {
        outln!("(no snapshots)")?;
    }
    Ok(0)
}

pub(super) async fn show_plan(ctx: &Context, work: Vec<Work>, json: bool) -> anyhow::Result<i32> {
    let mut servers: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
    servers.sort_unstable();
    servers.dedup();
    // What a run would decide on, read by a dry run's executor: no state directory.
    let executor = ctx.executor(true).await?;
    let listing = executor.list(&servers).await?;
    let mut plans = Vec::with_capacity(work.len());
    for (policy, server, slot) in &work {
        let prepared = executor
            .prepare(policy, *server, *slot, Some(listing.server(*server)))
            .await?;
        plans.push(executor.plan(policy, *slot, &prepared));
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&plans)?)?;
        return Ok(0);
    }
    for (p, (policy, _, _)) in plans.iter().zip(&work) {
        outln!(
            "policy {}  server {}  slot {}",
            p.policy,
            p.server,
            p.slot.format("%Y-%m-%dT%H:%M:%SZ")
        )?;
        let mut rows = Vec::new();
        // The slot's line, said as the run reports it: a failure is a FAILED line (the only
        // place its reason is printed; it names the first few snapshots, `--json` all).
        match (p.create(), p.outcome.failure()) {
            (Some(c), _) => rows.push(["create".to_owned(), c.name.clone(), c.reason.clone()]),
            (None, Some(why)) => rows.push(["FAILED".to_owned(), String::new(), why.to_owned()]),
            (None, None) => rows.push(["-".to_owned(), String::new(), p.outcome_line().to_owned()]),
        }
        for d in &p.decisions {
            let action = d.action.as_str().to_owned();
            rows.push([
                action,
                format!("{} ({})", d.name, d.status),
                d.reason.clone(),
            ]);
        }
        for line in render_table(&rows).lines() {
            outln!("  {line}")?;
        }
        for note in &p.notes {
            outln!("  note: {note}")?;
        }
        for warning in &p.warnings {
            outln!("  WARNING: {warning}")?;
        }
        if p.create().is_some() {
            let hooks = &policy.hooks;
            if let Some(pre) = &hooks.pre {
                outln!("  pre hook (not run by plan): {pre:?}")?;
            }
            if let Some(post) = &hooks.post {
                outln!("  post hook (not run by plan): {post:?}")?;
            }
        }
        outln!()?;
    }
    Ok(0)
}

/// The run log `status` reads: `state_dir`'s, or with `[ha]` the cluster's, so either host
/// shows the same.
async fn runlog(config: &Config) -> anyhow::Result<crate::runlog::RunLog> {
    use anyhow::Context as _;
    let Some(ha) = &config.ha else {
        return Ok(crate::runlog::RunLog::open(&config.daemon.state_dir));
    };
    let shared = crate::ha::reader(ha)?;
    let log = crate::runlog::RunLog::shared(&config.daemon.state_dir, std::sync::Arc::new(shared));
    log.load_shared()
        .await
        .context("cannot read the cluster's run log from etcd ([ha])")?;
    Ok(log)
}

pub(super) async fn status(
    ctx: &Context,
    work: Vec<Work>,
    json: bool,
    nagios: bool,
) -> anyhow::Result<i32> {
    let mut servers: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
    servers.sort_unstable();
    servers.dedup();
    let listing = crate::execute::list(&ctx.client, &servers).await?;
    let runlog = runlog(&ctx.config).await?;
    let now = ctx.clock.now();
    let rows = crate::status::rows(&work, |s| listing.server(s), &runlog, now);
    if nagios {
        let (level, line) = crate::status::nagios(&rows);
        outln!("{line}")?;
        return Ok(level.exit_code());
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(0);
    }
    let mut table = vec![[
        "POLICY".to_owned(),
        "SERVER".into(),
        "STATE".into(),
        "NEWEST COMPLETED".into(),
        "AGE".into(),
        "LAST RUN".into(),
        "NEXT FIRE".into(),
    ]];
    // One row per work item, in its order.
    for (r, (policy, _, _)) in rows.iter().zip(&work) {
        let tz = policy.schedule.timezone();
        table.push([
            r.policy.clone(),
            r.server.to_string(),
            r.level.as_str().to_owned(),
            r.newest.clone().unwrap_or_else(|| "-".into()),
            r.age_seconds
                .map_or("-".into(), |a| format_age(chrono::Duration::seconds(a))),
            r.last_run.as_ref().map_or("-".into(), |l| {
                let mut text = format!("{:?} {} ago", l.result, format_age(now - l.finished_at))
                    .to_lowercase();
                if l.result.is_failure() {
                    // From the run log, which an older version wrote unescaped.
                    text += &format!(": {}", crate::text::escape(&l.message));
                }
                text
            }),
            r.next_fire.map_or("-".into(), |t| {
                t.with_timezone(&tz).format("%Y-%m-%d %H:%M %Z").to_string()
            }),
        ]);
    }
    out(&render_table(&table))?;
    Ok(0)
}
