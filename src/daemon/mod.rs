//! `run`: the unattended service. Fires policies on schedule, drains in-flight work on
//! SIGTERM within `shutdown_grace` (then starts every server it stopped), reloads on SIGHUP
//! without dropping work, talks to systemd (READY, STATUS, RELOADING, STOPPING, WATCHDOG) and
//! optionally serves Prometheus metrics and `/healthz`.

mod cluster;
mod dispatch;
mod endpoint;
mod health;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatch::Dispatcher;
use health::Health;
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::alerts::Alerts;
use crate::client::HttpClient;
use crate::clock::Clock;
use crate::config::{Config, LoadOptions};
use crate::context::Context;
use crate::execute::{Executor, Parts, Settings};
use crate::journal::Journal;
use crate::policy::Policy;
use crate::provider::Provider;
use crate::retry::Retrying;
use crate::runlog::RunLog;
use crate::scheduler::{self, Scheduler};
use crate::shared::SharedState;
use crate::shutdown::Shutdown;
pub use cluster::{Cluster, Term, TermEvents, TermParts};

/// Hands the heap that start-up used (config parsing, the first listing) back to the system,
/// so an idle daemon stays small for years. glibc keeps freed memory otherwise.
fn release_startup_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sends to systemd when `NOTIFY_SOCKET` is set; does nothing otherwise.
fn notify(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

pub async fn run(config: Config, config_path: PathBuf, simulate: bool) -> anyhow::Result<i32> {
    match raise_open_files_limit() {
        Ok(limit) => tracing::debug!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
    // As read from the file: `--simulate` rewrites [api] and state_dir in the context's copy.
    let started = config.clone();
    let ctx = Context::connect(config, simulate).await?;
    let reloader = Reloader {
        path: config_path,
        simulate,
        started,
    };
    let result = serve(&ctx, reloader).await;
    // Alerts queued on the way out (a server left stopped, above all) still go out.
    ctx.drain_alerts().await;
    result
}

async fn serve(ctx: &Context, reloader: Reloader) -> anyhow::Result<i32> {
    if let Some(ha) = &ctx.config.ha {
        return cluster::serve_cluster(ctx, reloader, ha).await;
    }
    let shutdown = Shutdown::new();
    let watchdog = sd_notify::watchdog_enabled();
    let cap = watchdog.map_or(scheduler::MAX_SLEEP, |w| (w / 2).min(scheduler::MAX_SLEEP));
    let health = Arc::new(Health::single(cap, shutdown.stopping_token()));
    if let Some(addr) = ctx.config.daemon.metrics_listen {
        endpoint::serve_metrics(addr, health.clone()).await?;
    }
    let service = Service::for_run(ctx, shutdown.clone())?;
    // What a previous process left stopped shows while it is settled, before the first wake.
    service.executor.journal().export_stopped();
    let (reload_tx, reload_rx) = watch::channel(ctx.config.policies.clone());
    tokio::spawn(handle_signals(
        shutdown.clone(),
        reload_tx,
        reloader,
        service.executor.alerts().clone(),
        ctx.simulated_state_dir().map(ToOwned::to_owned),
    ));
    let on_wake = wake_handler(service.executor.clone(), watchdog, String::new(), health);
    tracing::info!(
        policies = ctx.config.policies.len(),
        servers = ctx.config.servers().len(),
        "snapshot-scheduler running"
    );
    let clean = service
        .run(ctx.config.policies.clone(), reload_rx, cap, on_wake)
        .await;
    tracing::info!("stopped");
    Ok(if clean { 0 } else { 1 })
}

/// What the scheduler does on every wake in `run`: READY=1 the first time, the snapshot ages
/// and next-fire metrics, STATUS= (after `acting`, which says whose term it is with `[ha]`),
/// `health` (the loop is awake; can the power journal be written?) and the watchdog's ping.
fn wake_handler<P: Provider>(
    executor: Arc<Executor<P>>,
    watchdog: Option<Duration>,
    acting: String,
    health: Arc<Health>,
) -> OnWake {
    let mut last_status = String::new();
    let mut ready = false;
    Box::new(move |scheduler: &Scheduler, now: DateTime<Utc>| {
        health.woke(executor.journal().write_error());
        metrics::gauge!(crate::series::LOOP_WAKE).set(now.timestamp() as f64);
        executor.export_snapshot_ages();
        if !ready {
            notify(&[NotifyState::Ready]);
            ready = true;
            release_startup_memory();
        }
        for (policy, next) in scheduler.next_fires(now) {
            if let Some(next) = next {
                metrics::gauge!(crate::series::NEXT_FIRE, "policy" => policy.name.clone())
                    .set(next.timestamp() as f64);
            }
        }
        let status = match scheduler.next_fire(now) {
            Some((t, p)) => format!(
                "{acting}next: {} at {}",
                p.name,
                t.with_timezone(&p.schedule.timezone())
                    .format("%Y-%m-%d %H:%M:%S %Z")
            ),
            None => format!("{acting}no upcoming fires"),
        };
        if status != last_status {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
        }
        if watchdog.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
    })
}

/// The scheduling core of `run`, generic over the provider so the same code runs in tests on
/// simulated time. Dropping the future of [`Service::run`] aborts all its work at once, like a
/// crash; the journal lets the next start settle what it left.
pub struct Service<P: Provider> {
    /// Built with `shutdown` as its shutdown.
    pub executor: Arc<Executor<P>>,
    pub clock: Arc<dyn Clock>,
    pub shutdown: Shutdown,
    pub shutdown_grace: Duration,
    /// How long hurried work may take to start servers again before giving up
    /// ([`crate::shutdown::drain_bound`]).
    pub drain_bound: Duration,
    /// Whether metrics are served: the freshness of every policy is listed at start and on
    /// each reload, not only at each fire.
    pub observe: bool,
}

pub type OnWake = Box<dyn FnMut(&Scheduler, DateTime<Utc>) + Send>;

impl Service<HttpClient> {
    /// The service of `run`, on the provider and the `state_dir` of `ctx`.
    fn for_run(ctx: &Context, shutdown: Shutdown) -> anyhow::Result<Self> {
        Self::open(
            ctx.client.clone(),
            ctx.clock.clone(),
            &ctx.config,
            ctx.alerts.clone(),
            shutdown,
        )
    }
}

impl<P: Provider> Service<P> {
    /// The service `run` runs, over `provider`: the executor with the journal and the run log
    /// in `config`'s `state_dir`, holding that directory's state lock (one acting process per
    /// `state_dir`), and the shutdown bounds `config` gives. The soak builds its service here
    /// too, so it runs what `run` runs; what differs is passed in (the provider, the clock,
    /// where alerts go, the shutdown).
    pub fn open(
        provider: Retrying<P>,
        clock: Arc<dyn Clock>,
        config: &Config,
        alerts: Arc<Alerts>,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let state_dir = &config.daemon.state_dir;
        let journal = Journal::open(state_dir)?;
        let runlog = RunLog::open(state_dir);
        let this = Self::with(provider, clock, config, alerts, shutdown, journal, runlog);
        if !this.executor.journal().try_lock()? {
            anyhow::bail!(
                "another snapshot-scheduler process is acting on state_dir {}; one daemon per state_dir",
                state_dir.display()
            );
        }
        Ok(this)
    }

    /// One term of a cluster's leader (`[ha]`): the journal, the create ledger and the run
    /// log live in `shared` (read by [`Service::load_shared`], written fenced). The state lock
    /// is the caller's, taken once for the process.
    pub fn open_shared(
        provider: Retrying<P>,
        clock: Arc<dyn Clock>,
        config: &Config,
        alerts: Arc<Alerts>,
        shutdown: Shutdown,
        shared: Arc<dyn SharedState>,
    ) -> Self {
        let state_dir = &config.daemon.state_dir;
        let journal = Journal::shared(state_dir, shared.clone());
        let runlog = RunLog::shared(state_dir, shared);
        Self::with(provider, clock, config, alerts, shutdown, journal, runlog)
    }

    fn with(
        provider: Retrying<P>,
        clock: Arc<dyn Clock>,
        config: &Config,
        alerts: Arc<Alerts>,
        shutdown: Shutdown,
        journal: Journal,
        runlog: RunLog,
    ) -> Self {
        let executor = Executor::new(Parts {
            provider: Arc::new(provider),
            clock: clock.clone(),
            journal: Arc::new(journal),
            runlog: Arc::new(runlog),
            alerts,
            settings: Settings::from_config(&config.daemon, false),
            shutdown: shutdown.clone(),
        });
        Self {
            executor,
            clock,
            shutdown,
            shutdown_grace: config.daemon.shutdown_grace,
            drain_bound: crate::shutdown::drain_bound(config),
            observe: config.daemon.metrics_listen.is_some(),
        }
    }

    /// With `[ha]`, when this host takes the lead: what the cluster recorded (servers left
    /// stopped, creates unanswered, handled slots, last runs).
    pub async fn load_shared(&self) -> anyhow::Result<()> {
        self.executor.journal().load_shared().await?;
        self.executor.runlog().load_shared().await?;
        Ok(())
    }

    /// Settles the journal, fires policies until `shutdown`, then drains: in-flight work gets
    /// `shutdown_grace`, then is hurried (servers this process stopped are started again).
    /// Returns whether everything ended in time.
    pub async fn run(
        &self,
        policies: Vec<Policy>,
        reload: watch::Receiver<Vec<Policy>>,
        cap: Duration,
        on_wake: OnWake,
    ) -> bool {
        let mut tasks = JoinSet::new();
        // What a previous run left, settled before anything fires. A signal meanwhile gets
        // the same treatment as any work: `shutdown_grace`, then the waits end and the
        // servers are started (a snapshot in progress can take far longer than systemd's
        // TimeoutStopSec).
        let settle = self.executor.reconcile();
        tokio::pin!(settle);
        let errors = tokio::select! {
            errors = &mut settle => errors,
            () = self.shutdown.stopping() => {
                match tokio::time::timeout(self.shutdown_grace, &mut settle).await {
                    Ok(errors) => errors,
                    Err(_) => {
                        tracing::warn!("shutdown_grace is over: starting the servers a previous run stopped now; their snapshots may be inconsistent");
                        self.shutdown.hurry();
                        settle.await
                    }
                }
            }
        };
        for e in errors {
            tracing::error!(error = %format!("{e:#}"), "a server stopped by a previous run is not settled yet; retrying in the background");
        }
        // Also while running: a start that failed mid-run (an outage) leaves its entry, and
        // waiting for the next restart of the daemon could mean weeks.
        tasks.spawn(retry_reconcile(
            self.executor.clone(),
            self.shutdown.stopping_token(),
        ));
        if !self.shutdown.is_stopping() {
            self.finish_interrupted(&policies, &mut tasks).await;
        }
        let mut dispatcher = Dispatcher {
            executor: self.executor.clone(),
            tasks,
            shutdown: self.shutdown.stopping_token(),
            inflight: Arc::default(),
            on_wake,
            observe: self.observe,
            observing: None,
        };
        if !self.shutdown.is_stopping() {
            scheduler::run_loop(
                policies,
                self.clock.clone(),
                self.shutdown.stopping_token(),
                reload,
                cap,
                &mut dispatcher,
            )
            .await;
        }

        notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
        let mut tasks = dispatcher.tasks;
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shutdown_grace, drain)
            .await
            .is_ok()
        {
            return true;
        }
        tracing::warn!(
            "shutdown_grace {} is over: starting every server this process stopped now; their \
             snapshots may be inconsistent",
            humantime::format_duration(self.shutdown_grace)
        );
        self.shutdown.hurry();
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.drain_bound, drain).await.is_err() {
            for entry in self.executor.journal().entries() {
                self.executor.report_left_stopped(
                    entry.server,
                    "the shutdown ran out of time (drain bound) before it was running",
                );
            }
            tracing::error!("work did not end in time; the journal lets the next start settle it");
            return false;
        }
        true
    }

    /// A crash (or a shutdown) mid-fire leaves runs without a result. Their slot stays handled: running it
    /// again could stop a server a second time for it. Where the slot's snapshot was already
    /// requested (listed, or in the create ledger), the run is finished now (its snapshot
    /// waited for, the policy pruned): the plan creates nothing for a slot whose snapshot
    /// exists or whose create is unanswered, so nothing is stopped.
    async fn finish_interrupted(&self, policies: &[Policy], tasks: &mut JoinSet<()>) {
        let log = self.executor.runlog();
        for policy in policies {
            let Some((slot, servers)) = log.interrupted(policy) else {
                continue;
            };
            let listing = match self.executor.list(&servers).await {
                Ok(l) => Arc::new(l),
                Err(e) => {
                    tracing::warn!(policy = %policy.name, %slot, error = %e, "cannot list the servers whose run of this slot ended early; their next fire prunes");
                    continue;
                }
            };
            let name = policy.snapshot_name(slot);
            let policy = Arc::new(policy.clone());
            for server in servers {
                let listed = listing.server(server).iter().any(|s| s.name == name);
                // Sent, its answer lost, and not listed: the run finishes as any run in the
                // slot does (the server's own listing is read; the create is reported
                // unconfirmed, never sent again).
                let unanswered = (self.executor.journal().creates())
                    .sent(server, &policy.name, &name)
                    .is_some_and(|r| r.answer == crate::ledger::Answer::Unknown);
                if !listed && !unanswered {
                    tracing::warn!(policy = %policy.name, server, %slot, "this slot's run ended early (a crash or shutdown) before its snapshot was requested; it is not run again (a restart never stops a server twice for one slot), the next fire takes a new slot");
                    continue;
                }
                tracing::info!(policy = %policy.name, server, %slot, "finishing this slot's run, which ended early (a crash or shutdown)");
                let (executor, policy, listing) =
                    (self.executor.clone(), policy.clone(), listing.clone());
                tasks.spawn(async move {
                    executor
                        .run_server(&policy, server, slot, Some(&listing))
                        .await;
                    executor.flush().await;
                });
            }
        }
    }
}

/// Settles journal entries that no work in flight owns (a server whose start failed): looks
/// every `poll_interval` (1 to 30 s), backing off to 10 minutes while settling fails.
async fn retry_reconcile<P: Provider>(executor: Arc<Executor<P>>, shutdown: CancellationToken) {
    let every = executor
        .settings()
        .poll_interval
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut delay = every;
    loop {
        if executor.journal().entries().is_empty() {
            // Idle: sleep until a stop is journaled, not on a timer.
            tokio::select! {
                () = executor.journal().entry_recorded() => {}
                () = shutdown.cancelled() => return,
            }
            delay = every;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
        let orphaned = executor
            .journal()
            .entries()
            .iter()
            .any(|e| !executor.locks().is_busy(e.server));
        if !orphaned {
            delay = every;
            continue;
        }
        let errors = executor.reconcile().await;
        for e in &errors {
            tracing::error!(error = %format!("{e:#}"), "still cannot settle a server this program stopped");
        }
        delay = if errors.is_empty() {
            every
        } else {
            (delay * 2).min(Duration::from_secs(600))
        };
    }
}

/// SIGTERM/SIGINT: shut down (a second one exits at once; the journal is always consistent on
/// disk, so the next start settles what is left; with `--simulate` there is no next start,
/// and `scratch`, its state directory, is removed). SIGHUP: reload the config.
///
/// The handlers are installed before this returns, not inside the task: a spawned task may not
/// have run yet when READY=1 goes out, and until then SIGHUP and SIGTERM kill the process.
fn handle_signals(
    shutdown: Shutdown,
    reload: watch::Sender<Vec<Policy>>,
    reloader: Reloader,
    alerts: Arc<Alerts>,
    scratch: Option<PathBuf>,
) -> impl std::future::Future<Output = ()> {
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    signal_loop(handlers, shutdown, reload, reloader, alerts, scratch)
}

/// What SIGHUP needs: where the config is, and the config the daemon started with (its
/// `[api]`, `[daemon]` and `[[notify]]` stay in force until a restart).
pub struct Reloader {
    pub path: PathBuf,
    pub simulate: bool,
    pub started: Config,
}

/// The sections of `new` that differ from what runs and that a reload does not apply.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    use secrecy::ExposeSecret as _;
    let (a, b) = (&running.api, &new.api);
    let token =
        |t: &Option<secrecy::SecretString>| t.as_ref().map(|t| t.expose_secret().to_owned());
    let mut changed = Vec::new();
    if a.base_url != b.base_url
        || a.token_source != b.token_source
        || token(&a.token) != token(&b.token)
        || a.timeout != b.timeout
        || a.requests_per_second != b.requests_per_second
        || a.max_retries != b.max_retries
    {
        changed.push("[api]");
    }
    if running.daemon != new.daemon {
        changed.push("[daemon]");
    }
    let targets = |c: &Config| {
        c.notify
            .iter()
            .map(|n| (n.url.clone(), token(&n.token), n.events.clone()))
            .collect::<Vec<_>>()
    };
    if targets(running) != targets(new) {
        changed.push("[[notify]]");
    }
    let ha = |c: &Config| {
        c.ha.as_ref().map(|h| {
            let auth = (h.auth.as_ref())
                .map(|a| (a.username.clone(), a.password.expose_secret().to_owned()));
            (
                h.endpoints.clone(),
                h.cluster.clone(),
                h.lease_ttl,
                h.node.clone(),
                auth,
                h.ca_pem.clone(),
            )
        })
    };
    if ha(running) != ha(new) {
        changed.push("[ha]");
    }
    changed
}

async fn signal_loop(
    handlers: (
        std::io::Result<Signal>,
        std::io::Result<Signal>,
        std::io::Result<Signal>,
    ),
    shutdown: Shutdown,
    reload: watch::Sender<Vec<Policy>>,
    reloader: Reloader,
    alerts: Arc<Alerts>,
    scratch: Option<PathBuf>,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            _ = hup.recv() => {
                reload_config(&reload, &reloader, &alerts);
                continue;
            }
        };
        if shutdown.is_stopping() {
            // The second signal exits at once: a --simulate run's state goes with it.
            if let Some(dir) = &scratch {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        shutdown.signalled(name);
    }
}

fn reload_config(reload: &watch::Sender<Vec<Policy>>, reloader: &Reloader, alerts: &Alerts) {
    notify(&[NotifyState::Reloading]);
    let loaded = Config::load(
        &reloader.path,
        LoadOptions {
            simulate: reloader.simulate,
        },
    );
    match loaded {
        Ok(config) => {
            for w in &config.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(
                policies = config.policies.len(),
                "config reloaded; the policies apply now"
            );
            let unapplied = needs_restart(&reloader.started, &config);
            if !unapplied.is_empty() {
                tracing::warn!(
                    "the changes to {} are NOT applied by a reload: the daemon keeps the ones it \
                     started with until it is restarted (systemctl restart snapshot-scheduler)",
                    unapplied.join(", ")
                );
            }
            let _ = reload.send(config.policies);
            notify(&[NotifyState::Ready, NotifyState::Status("config reloaded")]);
        }
        Err(e) => {
            metrics::counter!(crate::series::CONFIG_RELOAD_FAILURES).increment(1);
            // The whole chain: why the file cannot be read, not only that it cannot.
            let text = format!("{:#}", anyhow::Error::from(e));
            tracing::error!("config reload failed; keeping the running config: {text}");
            alerts.send(
                crate::config::AlertEvent::ConfigReloadFailed,
                None,
                None,
                &text,
            );
            let status = format!(
                "config reload failed, running the old config: {}",
                text.replace('\n', " ")
            );
            notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, and returns that. Services
/// and shells usually start with a soft limit of 1024, which concurrent provider connections,
/// the metrics listener and hook pipes can reach; the hard limit (the unit's `LimitNOFILE=`) is
/// what the operator allows.
pub fn raise_open_files_limit() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_max)
}
