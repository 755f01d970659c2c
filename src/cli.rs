//! The command line: arguments, one place that prints the error chain and picks the exit code
//! (0 ok, 1 an operation failed, 2 config or usage error), and the read-only commands.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use crate::clock::SystemClock;
use crate::config::{Config, ConfigError, LoadOptions, LogFormat, DEFAULT_PATH};
use crate::context::{random_token, Context};
use crate::format::{format_age, format_size, render_table};
use crate::model::{PowerState, ServerId, Snapshot, SnapshotStatus};
use crate::policy::Policy;
use crate::provider::Provider;
use crate::report::{RunResult, ServerReport};
use crate::shutdown::Shutdown;
use crate::simulator::{self, SimConfig, Simulator};

#[derive(Debug, Parser)]
#[command(
    name = "snapshot-scheduler",
    version,
    about = "Takes VPS snapshots on a schedule and keeps each server under the provider's cap",
    long_about = None
)]
pub struct Cli {
    /// The config file.
    #[arg(short, long, global = true, env = "SNAPSHOT_SCHEDULER_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Talk to a fresh built-in simulated provider whose servers are the config's (no account
    /// or token needed).
    #[arg(long, global = true)]
    pub simulate: bool,
    /// Override the config's log_format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Auto,
    Text,
    Json,
    Journald,
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> Self {
        match a {
            LogFormatArg::Auto => Self::Auto,
            LogFormatArg::Text => Self::Text,
            LogFormatArg::Json => Self::Json,
            LogFormatArg::Journald => Self::Journald,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and show each policy's servers, retention and next fires.
    Check,
    /// List snapshots with the policy that manages each (`-` for hand-made ones).
    List {
        /// Only this server.
        #[arg(long)]
        server: Option<ServerId>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Restore a server from a snapshot (overwrites all its data).
    Restore {
        snapshot_id: u64,
        /// Do not ask; needed without a terminal.
        #[arg(long)]
        yes: bool,
        /// Wait until the server runs again.
        #[arg(long)]
        wait: bool,
    },
    /// Show what each policy would create and delete now, and why. Changes nothing.
    Plan {
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only this server.
        #[arg(long)]
        server: Option<ServerId>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the selected policies now for their current slot and wait until done.
    Once {
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only this server.
        #[arg(long)]
        server: Option<ServerId>,
        /// Go through every step but change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Per policy and server: the newest completed snapshot and its age, the last run, the next fire.
    Status {
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Only this server.
        #[arg(long)]
        server: Option<ServerId>,
        /// Machine-readable output.
        #[arg(long, conflicts_with = "nagios")]
        json: bool,
        /// One Nagios/Icinga line; exit 0/1/2/3 for OK/WARNING/CRITICAL/UNKNOWN.
        #[arg(long)]
        nagios: bool,
    },
    /// Run as a service: fire every policy on its schedule until SIGTERM.
    Run,
    /// Serve a simulated provider over HTTP for trying other tools against it.
    SimulateProvider {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Server ids to simulate (default: the config's, or 12345 and 12346).
        #[arg(long = "server")]
        servers: Vec<ServerId>,
        /// The bearer token clients must send (default: printed random one).
        #[arg(long, env = "SIMULATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// An error in how the program was called (exit 2), as opposed to an operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Standard output went away (`list | head -1`): the command ends quietly with exit 0, as
/// ripgrep does. `print!` would panic instead.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct OutputClosed;

/// Writes `text` to standard output; a reader that went away is [`OutputClosed`].
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(OutputClosed),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}

/// `println!` through [`out`]: an error to return, not a panic.
macro_rules! outln {
    () => {
        out("\n")
    };
    ($($arg:tt)*) => {
        out(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "error: cannot start the async runtime: {e}"
            );
            return 1;
        }
    };
    let nagios = matches!(cli.command, Command::Status { nagios: true, .. });
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if e.chain().any(|c| c.is::<OutputClosed>()) => 0,
        Err(e) if nagios => {
            let _ = outln!(
                "SNAPSHOTS UNKNOWN - {}",
                format!("{e:#}").replace('\n', " ")
            );
            crate::status::Level::Unknown.exit_code()
        }
        Err(e) => {
            // Not eprintln!: a closed stderr must not turn an error into a panic.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            exit_code(&e)
        }
    }
}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.chain()
        .any(|c| c.is::<ConfigError>() || c.is::<UsageError>())
    {
        2
    } else {
        1
    }
}

fn verbosity(cli: &Cli) -> i8 {
    cli.verbose.min(3) as i8 - cli.quiet.min(3) as i8
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::SimulateProvider {
        listen,
        servers,
        token,
    } = &cli.command
    {
        crate::logging::init(
            cli.log_format.map_or(LogFormat::Auto, Into::into),
            verbosity(&cli),
        );
        return simulate_provider(&cli, *listen, servers, token.clone()).await;
    }
    let config = Config::load(
        &cli.config,
        LoadOptions {
            simulate: cli.simulate,
        },
    )?;
    crate::logging::init(
        cli.log_format.map_or(config.daemon.log_format, Into::into),
        verbosity(&cli),
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    if cli.simulate && !matches!(cli.command, Command::Run) {
        // Everything such a command acts on lives in this process: on Ctrl-C or SIGTERM it
        // simply ends, and its state directory goes with it. (`run` drains on its own.)
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        return tokio::select! {
            result = command(&cli, config) => result,
            _ = interrupt.recv() => Ok(128 + libc::SIGINT),
            _ = terminate.recv() => Ok(128 + libc::SIGTERM),
        };
    }
    command(&cli, config).await
}

/// Runs the command that `cli` names (all but `simulate-provider`) with its config.
async fn command(cli: &Cli, config: Config) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Check => {
            if let Some(w) = crate::shutdown::stop_bound_warning(&config) {
                tracing::warn!("{w}");
            }
            // A renamed policy leaves its snapshots to nobody: say so before it bites.
            let runlog = crate::runlog::RunLog::open(&config.daemon.state_dir);
            for warning in runlog.retired_warnings(&config.policies) {
                tracing::warn!("{warning}");
            }
            out(&check_report(&config, Utc::now()))?;
            Ok(0)
        }
        Command::List { server, json } => {
            let ctx = Context::connect(config, cli.simulate).await?;
            list(&ctx, *server, *json).await
        }
        Command::Restore {
            snapshot_id,
            yes,
            wait,
        } => {
            let ctx = Context::connect(config, cli.simulate).await?;
            let result = restore(&ctx, *snapshot_id, *yes, *wait).await;
            ctx.drain_alerts().await;
            result
        }
        Command::Plan {
            policy,
            server,
            json,
        } => {
            let work = select(&config, policy.as_deref(), *server, Utc::now())?;
            let ctx = Context::connect(config, cli.simulate).await?;
            show_plan(&ctx, work, *json).await
        }
        Command::Once {
            policy,
            server,
            dry_run,
        } => {
            let work = select(&config, policy.as_deref(), *server, Utc::now())?;
            // Before anything that could stop a server: from here on SIGTERM and SIGINT
            // start every server this run stopped instead of killing the process.
            let shutdown = Shutdown::new();
            let signals = tokio::spawn(shutdown.on_signals_hurry()?);
            let ctx = Context::connect(config, cli.simulate).await?;
            let result = once(&ctx, work, *dry_run, &shutdown).await;
            ctx.drain_alerts().await;
            signals.abort();
            result
        }
        Command::Status {
            policy,
            server,
            json,
            nagios,
        } => {
            let work = select(&config, policy.as_deref(), *server, Utc::now())?;
            let ctx = Context::connect(config, cli.simulate).await?;
            status(&ctx, work, *json, *nagios).await
        }
        Command::Run => crate::daemon::run(config, cli.config.clone(), cli.simulate).await,
        Command::SimulateProvider { .. } => unreachable!("handled above"),
    }
}

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

async fn list(ctx: &Context, server: Option<ServerId>, json: bool) -> anyhow::Result<i32> {
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

/// `restore`: refuses anything but a completed snapshot, settles only the snapshot's own
/// server if a previous run left it stopped, shows what is overwritten and asks for the
/// server's name (its id when it has none); an empty answer never confirms.
async fn restore(ctx: &Context, snapshot_id: u64, yes: bool, wait: bool) -> anyhow::Result<i32> {
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
    let executor = ctx.executor(false)?;
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

async fn simulate_provider(
    cli: &Cli,
    listen: SocketAddr,
    servers: &[ServerId],
    token: Option<String>,
) -> anyhow::Result<i32> {
    let mut ids = servers.to_vec();
    if ids.is_empty() {
        ids = Config::load(&cli.config, LoadOptions { simulate: true })
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

/// The (policy, server, slot) triples a command works on, after `--policy`/`--server`.
/// Each triple's policy names only its own server: a whole copy per server would cost
/// servers² ids (800 MB for a policy over 10,000 servers).
pub fn select(
    config: &Config,
    policy: Option<&str>,
    server: Option<ServerId>,
    now: DateTime<Utc>,
) -> Result<Vec<(Policy, ServerId, DateTime<Utc>)>, UsageError> {
    if let Some(name) = policy {
        if config.policy(name).is_none() {
            let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
            return Err(UsageError(format!(
                "--policy {name}: no such policy; allowed: {}",
                names.join(", ")
            )));
        }
    }
    let mut work = Vec::new();
    for p in &config.policies {
        if policy.is_some_and(|n| n != p.name) {
            continue;
        }
        let Some(slot) = p.schedule.slot_at(now) else {
            continue;
        };
        let bare = Policy {
            servers: Vec::new(),
            ..Policy::clone(p)
        };
        for s in &p.servers {
            if server.is_none_or(|want| want == *s) {
                let one = Policy {
                    servers: vec![*s],
                    ..bare.clone()
                };
                work.push((one, *s, slot));
            }
        }
    }
    if let (Some(id), true) = (server, work.is_empty()) {
        return Err(UsageError(format!(
            "--server {id}: no selected policy names this server; allowed: {}",
            config
                .servers()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(work)
}

async fn show_plan(
    ctx: &Context,
    work: Vec<(Policy, ServerId, DateTime<Utc>)>,
    json: bool,
) -> anyhow::Result<i32> {
    let mut servers: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
    servers.sort_unstable();
    servers.dedup();
    // What a run would decide on, read by a dry run's executor: no state directory.
    let executor = ctx.executor(true)?;
    let listing = executor.list(&servers).await?;
    let mut plans = Vec::with_capacity(work.len());
    for (policy, server, slot) in &work {
        let prepared = executor.prepare(policy, *server, Some(&listing)).await?;
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
        match p.create() {
            Some(c) => rows.push(["create".to_owned(), c.name.clone(), c.reason.clone()]),
            None => rows.push(["-".to_owned(), String::new(), p.outcome_line().to_owned()]),
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
        if let Some(b) = p.outcome.blocked() {
            // The reason names the snapshots (the first few); `--json` has them all.
            outln!("  BLOCKED: {}", b.reason)?;
        }
        for note in &p.notes {
            outln!("  note: {note}")?;
        }
        for warning in &p.warnings {
            println!("  WARNING: {warning}");
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

async fn once(
    ctx: &Context,
    work: Vec<(Policy, ServerId, DateTime<Utc>)>,
    dry_run: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<i32> {
    let executor = ctx.executor_with(dry_run, shutdown.clone())?;
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
    let pinged: Vec<Policy> = {
        let mut seen = std::collections::HashSet::new();
        work.iter()
            .filter(|(p, _, _)| p.monitoring.ping_url.is_some() && seen.insert(p.name.clone()))
            .map(|(p, _, _)| p.clone())
            .collect()
    };
    let alerts = executor.alerts().cloned();
    if !dry_run {
        if let Some(alerts) = &alerts {
            for p in &pinged {
                alerts.ping(p.monitoring.ping_url.as_deref(), crate::alerts::Ping::Start);
            }
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
    if let (Some(alerts), false) = (&alerts, dry_run) {
        for p in &pinged {
            let failed = reports
                .iter()
                .any(|r| r.policy == p.name && r.result.is_failure());
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
pub fn summary(reports: &[ServerReport]) -> String {
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
            r.policy.clone(),
            match r.result {
                RunResult::Created => "created",
                RunResult::Unchanged => "unchanged",
                RunResult::Skipped => "skipped",
                RunResult::DryRun => "dry-run",
                RunResult::Failed => "FAILED",
            }
            .to_owned(),
            r.created.clone().unwrap_or_else(|| "-".into()),
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

async fn status(
    ctx: &Context,
    work: Vec<(Policy, ServerId, DateTime<Utc>)>,
    json: bool,
    nagios: bool,
) -> anyhow::Result<i32> {
    let mut servers: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
    servers.sort_unstable();
    servers.dedup();
    let listing = crate::execute::list(&ctx.client, &servers).await?;
    let runlog = crate::runlog::RunLog::open(&ctx.config.daemon.state_dir);
    let pairs: Vec<(Policy, ServerId)> = work.into_iter().map(|(p, s, _)| (p, s)).collect();
    let now = ctx.clock.now();
    let rows = crate::status::rows(&pairs, |s| listing.server(s), &runlog, now);
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
    for r in &rows {
        let policy = pairs
            .iter()
            .find(|(p, _)| p.name == r.policy)
            .map(|(p, _)| p);
        let tz = policy.map_or(chrono_tz::UTC, |p| p.schedule.timezone());
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
