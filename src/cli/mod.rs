//! The command line: arguments, which command runs, and one place that prints the error chain
//! and picks the exit code (0 ok, 1 an operation failed, 2 config or usage error).
//!
//! Here: the clap definitions and dispatch. What `--policy`/`--server` select is in
//! `select.rs`, the commands that only read in `inspect.rs`, the ones that act in `act.rs`,
//! writing to standard output in `output.rs`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use chrono::Utc;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, ConfigError, LoadOptions, LogFormat, DEFAULT_PATH};
use crate::context::Context;
use crate::model::ServerId;
use crate::shutdown::Shutdown;

mod act;
mod docs;
mod inspect;
mod output;
mod select;

pub use act::summary;
pub use inspect::check_report;
pub use output::OutputClosed;
pub use select::{select, UsageError};

use act::{once, restore, simulate_provider};
use inspect::{list, reach, show_plan, status};
use output::{out, outln};

#[derive(Debug, Parser)]
#[command(
    name = "snapshot-scheduler",
    version,
    about = "Takes VPS snapshots on a schedule and keeps each server under the provider's cap",
    long_about = None,
    after_long_help = docs::after_long_help()
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
    Check {
        /// Also reach the provider's API (one listing request) and, with `[ha]`, etcd.
        #[arg(long)]
        connect: bool,
    },
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
        /// The id of a completed snapshot (`list` shows them).
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
        /// The address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Server ids to simulate (default: the config's, or 12345 and 12346).
        #[arg(long = "server")]
        servers: Vec<ServerId>,
        /// The bearer token clients must send (default: printed random one).
        #[arg(long, env = "SIMULATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print the shell completion script for SHELL (needs no config).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page in roff (needs no config); with --dir, write one page per command
    /// there.
    #[command(hide = true)]
    Man {
        /// Write snapshot-scheduler.1 and snapshot-scheduler-COMMAND.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
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
    match &cli.command {
        Command::Completions { shell } => return docs::completions(*shell),
        Command::Man { dir } => return docs::man(dir.as_deref()),
        _ => {}
    }
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
        return simulate_provider(&cli.config, *listen, servers, token.clone()).await;
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
    if config.ha.is_some() {
        let refused = match cli.command {
            // A demo would campaign in the real cluster, and lead it with a made-up provider.
            Command::Run if cli.simulate => Some(
                "run --simulate does not take part in a cluster: remove [ha] from a copy of the \
                 config to try it",
            ),
            // Beside the leader and outside its fencing: it could stop a server the leader is
            // snapshotting, or snapshot a slot a second time.
            Command::Once { dry_run: false, .. } => Some(
                "once would act beside the cluster's leader, outside its fencing; the leader runs \
                 every policy (once --dry-run shows what a run would do)",
            ),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(UsageError(format!("{}: [ha]: {why}", cli.config.display())).into());
        }
    }
    match &cli.command {
        Command::Check { connect } => {
            if let Some(w) = crate::shutdown::stop_bound_warning(&config) {
                tracing::warn!("{w}");
            }
            // A renamed policy leaves its snapshots to nobody: say so before it bites.
            let runlog = crate::runlog::RunLog::open(&config.daemon.state_dir);
            for warning in runlog.retired_warnings(&config.policies) {
                tracing::warn!("{warning}");
            }
            out(&check_report(&config, Utc::now()))?;
            if *connect {
                reach(config, cli.simulate).await?;
            }
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
        Command::SimulateProvider { .. } | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled above")
        }
    }
}
