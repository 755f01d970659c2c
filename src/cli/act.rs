//! The commands that act: `once`, `restore` and `simulate-provider` (`run` is the daemon's).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::output::{out, outln};
use super::select::UsageError;
use crate::clock::SystemClock;
use crate::config::{Config, LoadOptions};
use crate::context::{random_token, Context};
use crate::execute::Work;
use crate::format::{format_age, format_size, render_table};
use crate::model::{PowerState, ServerId, SnapshotStatus};
use crate::policy::Policy;
use crate::provider::Provider;
use crate::report::{Row, RunResult};
use crate::shutdown::Shutdown;
use crate::simulator::{self, SimConfig, Simulator};

/// `restore`: refuses anything but a completed snapshot, settles only the snapshot's own
/// server if a previous run left it stopped, shows what is overwritten and asks for the
/// server's name (its id when it has none); an empty answer never confirms.
pub(super) async fn restore(
    ctx: &Context,
    snapshot_id: u64,
    yes: bool,
    wait: bool,
) -> anyhow::Result<i32> {
    let snapshot = ctx
        .client
        .list_snapshots(None)
        .await?
        .into_iter()
        .find(|s| s.id == snapshot_id)
        .ok_or_else(|| {
            UsageError(format!(
                "snapshot {snapshot_id} does not exist (see `list`)"
            ))
        })?;
    if snapshot.status != SnapshotStatus::Completed {
        return Err(UsageError(format!(
            "snapshot {} \"{}\" is {}; only a completed snapshot can be restored (see `list`)",
            snapshot.id, snapshot.name, snapshot.status
        ))
        .into());
    }
    if let Some(ha) = &ctx.config.ha {
        refuse_if_the_leader_stopped_it(ha, &ctx.config.daemon.state_dir, snapshot.server.id)
            .await?;
    }
    let executor = ctx.executor(false).await?;
    if executor.journal().try_lock()? {
        executor.settle_server(snapshot.server.id).await?;
    } else if let Some(entry) = executor
        .journal()
        .entries()
        .into_iter()
        .find(|e| e.server == snapshot.server.id)
    {
        // The daemon has it stopped for a snapshot: restoring now would race that snapshot.
        bail!(
            "server {} is stopped for snapshot {} by another snapshot-scheduler process (the \
             daemon), since {}; nothing was changed: restore it once that snapshot is done and \
             the server runs again",
            entry.server,
            entry.snapshot,
            entry.stopped_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    } else {
        tracing::info!(
            "another snapshot-scheduler process owns the power journal; leaving it to that one"
        );
    }
    let server = ctx.client.get_server(snapshot.server.id).await?;
    outln!(
        "Restore server {} ({}, {}) from snapshot {} \"{}\":\n  \
         {}, {}, taken {} ({} ago).\n\
         All current data on the server is overwritten; this cannot be undone.",
        server.id,
        if server.name.trim().is_empty() {
            "no name"
        } else {
            server.name.as_str()
        },
        server.status,
        snapshot.id,
        snapshot.name,
        snapshot.status,
        format_size(snapshot.size_mb),
        snapshot.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
        format_age(ctx.clock.now() - snapshot.created_at),
    )?;
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(UsageError(
                "refusing to restore without a terminal to confirm on; pass --yes".into(),
            )
            .into());
        }
        // A server without a name is confirmed by its id: an empty answer never confirms.
        let expected = match server.name.trim() {
            "" => {
                out(&format!(
                    "The server has no name; type its id ({}) to continue: ",
                    server.id
                ))?;
                server.id.to_string()
            }
            name => {
                out(&format!("Type the server's name ({name}) to continue: "))?;
                name.to_owned()
            }
        };
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        let answer = answer.trim();
        if answer.is_empty() || answer != expected {
            outln!("Not confirmed; nothing was changed.")?;
            return Ok(1);
        }
    }
    let started = ctx.client.restore_snapshot(snapshot.id).await?;
    outln!("{}", started.message)?;
    if !wait {
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + ctx.config.daemon.snapshot_timeout;
    let mut delay = ctx.config.daemon.poll_interval;
    loop {
        tokio::time::sleep(delay).await;
        let s = ctx.client.get_server(server.id).await?;
        if s.status == PowerState::Running {
            outln!("Server {} is running again.", s.id)?;
            return Ok(0);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "server {} is still {} after {}; the restore may still be going",
                s.id,
                s.status,
                humantime::format_duration(ctx.config.daemon.snapshot_timeout)
            );
        }
        delay = (delay * 3 / 2).min(Duration::from_secs(60));
    }
}

pub(super) async fn simulate_provider(
    config_path: &Path,
    listen: SocketAddr,
    servers: &[ServerId],
    token: Option<String>,
) -> anyhow::Result<i32> {
    let mut ids = servers.to_vec();
    if ids.is_empty() {
        ids = Config::load(config_path, LoadOptions { simulate: true })
            .map(|c| c.servers())
            .unwrap_or_else(|_| vec![12345, 12346]);
    }
    let named: Vec<(ServerId, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, format!("web-server-{:02}", i + 1)))
        .collect();
    let token = token.unwrap_or_else(random_token);
    let sim = Simulator::new(
        SimConfig {
            token: token.clone(),
            ..SimConfig::default()
        },
        &named,
        Arc::new(SystemClock),
    );
    let (addr, task) = simulator::serve(sim, listen).await?;
    outln!("simulated provider at {}", simulator::base_url(addr))?;
    outln!("token: {token}")?;
    outln!("servers: {ids:?}")?;
    tokio::select! {
        _ = task => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

/// With `[ha]` the journal is the cluster's: a server its leader (on either host) has
/// stopped for a snapshot is not restored under it. When etcd cannot say, nothing is done.
async fn refuse_if_the_leader_stopped_it(
    ha: &crate::config::HaConfig,
    state_dir: &Path,
    server: ServerId,
) -> anyhow::Result<()> {
    let shared = crate::ha::reader(ha)?;
    let journal = crate::journal::Journal::shared(state_dir, Arc::new(shared));
    journal.load_shared().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot read the cluster's power journal from etcd ([ha]) to tell whether its leader \
             has server {server} stopped for a snapshot: {e}; nothing was changed"
        )
    })?;
    if let Some(entry) = journal.entries().into_iter().find(|e| e.server == server) {
        bail!(
            "server {} is stopped for snapshot {} by the cluster's leader since {}; nothing was \
             changed: restore it once that snapshot is done and the server runs again",
            entry.server,
            entry.snapshot,
            entry.stopped_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    Ok(())
}

pub(super) async fn once(
    ctx: &Context,
    work: Vec<Work>,
    dry_run: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<i32> {
    let executor = ctx.executor_with(dry_run, shutdown.clone()).await?;
    if !dry_run {
        if !executor.journal().try_lock()? {
            bail!(
                "another snapshot-scheduler process (the daemon, or another `once`) is acting \
                 on state_dir {}; run `once --dry-run`, or one at a time",
                ctx.config.daemon.state_dir.display()
            );
        }
        executor.reconcile_or_fail().await?;
    }
    let pinged: Vec<Arc<Policy>> = {
        let mut seen = std::collections::HashSet::new();
        work.iter()
            .filter(|(p, _, _)| p.monitoring.ping_url.is_some() && seen.insert(p.name.clone()))
            .map(|(p, _, _)| p.clone())
            .collect()
    };
    let alerts = executor.alerts().clone();
    if !dry_run {
        for p in &pinged {
            alerts.ping(p.monitoring.ping_url.as_deref(), crate::alerts::Ping::Start);
        }
    }
    let reports = executor.run_all(work).await;
    // A server whose start failed (an outage) is still in the journal: try again, with
    // back-off, before leaving it to the next acting command.
    let left_stopped = if dry_run {
        Vec::new()
    } else {
        executor.settle_leftovers().await
    };
    // The work is done: its exit code must not hinge on a reader of the summary.
    if let Err(e) = out(&summary(&reports)) {
        tracing::warn!("cannot print the summary: {e:#}");
    }
    for e in &left_stopped {
        tracing::error!("{e:#}");
    }
    if shutdown.is_stopping() {
        tracing::warn!(
            "interrupted: started no new work; every server this run stopped was started again{}",
            if left_stopped.is_empty() {
                ""
            } else {
                ", except the ones above"
            }
        );
    }
    if !dry_run {
        for p in &pinged {
            let failed = reports
                .iter()
                .any(|r| *r.policy == p.name && r.result.is_failure());
            let ping = if failed {
                crate::alerts::Ping::Fail
            } else {
                crate::alerts::Ping::Success
            };
            alerts.ping(p.monitoring.ping_url.as_deref(), ping);
        }
    }
    let failed = reports.iter().any(|r| r.result.is_failure());
    Ok(
        if failed || !left_stopped.is_empty() || shutdown.is_stopping() {
            1
        } else {
            0
        },
    )
}

/// The table `once` ends with: one line per server and policy.
pub fn summary(reports: &[Row]) -> String {
    let mut rows = vec![[
        "SERVER".to_owned(),
        "POLICY".into(),
        "RESULT".into(),
        "CREATED".into(),
        "DELETED".into(),
        "DETAIL".into(),
    ]];
    for r in reports {
        rows.push([
            r.server.to_string(),
            r.policy.to_string(),
            match r.result {
                RunResult::Created => "created",
                RunResult::Unchanged => "unchanged",
                RunResult::Skipped => "skipped",
                RunResult::DryRun => "dry-run",
                RunResult::Failed => "FAILED",
            }
            .to_owned(),
            r.created.as_deref().unwrap_or("-").to_owned(),
            if r.deleted.is_empty() {
                "-".into()
            } else {
                r.deleted.join(",")
            },
            // Escaped again (idempotent): a hook's output or an older run's text may need it.
            crate::text::escape(&r.message).into_owned(),
        ]);
    }
    let failed = reports.iter().filter(|r| r.result.is_failure()).count();
    format!(
        "{}{} servers, {} failed\n",
        render_table(&rows),
        reports.len(),
        failed
    )
}
