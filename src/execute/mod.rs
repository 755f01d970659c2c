//! The one place with effects: prepare (every read a decision needs) → [`Plan`](crate::plan::Plan) → apply it
//! against the provider: free a slot if needed → (optionally) stop the server → create → wait
//! → start → prune. A dry run is this same path stopped before apply; the `plan` command is its
//! first two steps. Waiting is shared: one listing answers every snapshot in flight, and a run
//! that does not stop its server waits as a small record there ([`Detached`]), not as a task.

mod drive;
mod poll;
mod power;
mod rotation;
mod turns;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tracing::Instrument;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::journal::Journal;
use crate::model::{ServerId, Snapshot, SnapshotStatus};
use crate::policy::Policy;
use crate::provider::{ApiError, Provider};
use crate::report::{RunResult, ServerReport};
use crate::retry::Retrying;
use crate::runlog::RunLog;
use crate::shutdown::Shutdown;

pub use drive::Work;
pub use poll::{list, Listing};
pub use rotation::Prepared;
pub use turns::ServerLocks;

use poll::{Waited, Watch};
use rotation::hook_env;
use turns::{Turn, Turns};

/// `now + d` on tokio's clock, saturating far in the future instead of overflowing: no
/// configured duration may panic a run that holds a server stopped.
pub fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// `t + d` in wall time, saturating instead of overflowing.
pub fn wall_after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub poll_interval: Duration,
    pub snapshot_timeout: Duration,
    pub power_timeout: Duration,
    pub max_concurrent: usize,
    /// Every write is refused (and reported as what would have happened).
    pub dry_run: bool,
}

impl Settings {
    pub fn from_config(daemon: &crate::config::DaemonConfig, dry_run: bool) -> Self {
        Self {
            poll_interval: daemon.poll_interval,
            snapshot_timeout: daemon.snapshot_timeout,
            power_timeout: daemon.power_timeout,
            max_concurrent: daemon.max_concurrent,
            dry_run,
        }
    }
}

pub struct Executor<P: Provider> {
    provider: Arc<Retrying<P>>,
    clock: Arc<dyn Clock>,
    journal: Arc<Journal>,
    settings: Settings,
    locks: ServerLocks,
    turns: Turns,
    watch: Arc<Watch<P>>,
    /// Where failures, recoveries and servers left stopped are reported.
    alerts: Arc<Alerts>,
    /// Where each run's outcome is kept for `status`, and the slots the daemon handled.
    runlog: Arc<RunLog>,
    /// Once begun, runs still waiting for their server or turn are skipped and no server is
    /// stopped; once hurried, waits end and stopped servers are started again.
    shutdown: Shutdown,
    /// The newest completed snapshot seen on each server, for the age metric.
    newest: Mutex<HashMap<ServerId, DateTime<Utc>>>,
    /// The names of the policies configured, so the metrics can tell snapshots no policy owns.
    owners: Mutex<Vec<String>>,
    /// Servers reported left stopped (or gone) and not settled since: one alert per streak.
    alerted: Mutex<HashSet<ServerId>>,
}

/// What an executor works with, each made once by whoever builds it (`context` for the
/// commands, the soak and tests for themselves).
pub struct Parts<P: Provider> {
    pub provider: Arc<Retrying<P>>,
    pub clock: Arc<dyn Clock>,
    pub journal: Arc<Journal>,
    pub runlog: Arc<RunLog>,
    pub alerts: Arc<Alerts>,
    pub settings: Settings,
    pub shutdown: Shutdown,
}

impl<P: Provider> Executor<P> {
    pub fn new(parts: Parts<P>) -> Arc<Self> {
        let Parts {
            provider,
            clock,
            journal,
            runlog,
            alerts,
            settings,
            shutdown,
        } = parts;
        Arc::new(Self {
            watch: Arc::new(Watch::new(provider.clone(), &settings, shutdown.clone())),
            provider,
            clock,
            journal,
            turns: Turns::new(settings.max_concurrent),
            settings,
            locks: ServerLocks::default(),
            alerts,
            runlog,
            newest: Mutex::default(),
            owners: Mutex::default(),
            shutdown,
            alerted: Mutex::default(),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn alerts(&self) -> &Arc<Alerts> {
        &self.alerts
    }

    /// The run log (flushed after `run_all` and by [`Self::flush`]); the daemon also keeps
    /// handled slots in it.
    pub fn runlog(&self) -> &Arc<RunLog> {
        &self.runlog
    }

    /// What the metrics say about `server`, from a listing of it read for `policy`: the
    /// newest completed snapshot (any owner, and `policy`'s own, as `status` finds it), and
    /// how many snapshots it has by state and how many no policy owns.
    fn note_listing(&self, policy: &Policy, server: ServerId, snapshots: &[Snapshot]) {
        let now = self.clock.now();
        let newest = snapshots
            .iter()
            .filter(|s| s.status == SnapshotStatus::Completed)
            .map(|s| s.created_at)
            .max();
        if let Some(t) = newest {
            self.newest
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(server, t);
            metrics::gauge!(crate::series::NEWEST_SNAPSHOT_AGE, "server" => server.to_string())
                .set((now - t).num_seconds().max(0) as f64);
        }
        let own = crate::status::row(policy, server, snapshots, None, now).newest_at;
        metrics::gauge!(crate::series::NEWEST_SNAPSHOT, "policy" => policy.name.clone(), "server" => server.to_string())
            .set(own.map_or(0.0, |t| t.timestamp() as f64));
        let owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        crate::series::export_snapshots(server, snapshots, |name| {
            policy.owns(name).is_some()
                || owners
                    .iter()
                    .any(|o| crate::policy::parse_snapshot_name(o, name).is_some())
        });
    }

    /// Reads every server of `policies` once, for the metrics: the freshness of each policy on
    /// each server is known from the start (and after a reload), not only after its next
    /// fire. Also sets each policy's freshness thresholds.
    /// `false` when the servers could not be listed (the thresholds are set all the same).
    pub async fn observe(&self, policies: &[Policy]) -> bool {
        *self.owners.lock().unwrap_or_else(|e| e.into_inner()) =
            policies.iter().map(|p| p.name.clone()).collect();
        let now = self.clock.now();
        for policy in policies {
            // Counters exist from the start, at 0: the first failure is then an increase.
            for counter in crate::series::POLICY_COUNTERS {
                metrics::counter!(counter, "policy" => policy.name.clone()).increment(0);
            }
            let (warn, crit) = crate::status::thresholds(policy, now);
            metrics::gauge!(crate::series::WARN_AGE, "policy" => policy.name.clone())
                .set(warn.as_secs_f64());
            metrics::gauge!(crate::series::CRIT_AGE, "policy" => policy.name.clone())
                .set(crit.as_secs_f64());
        }
        let mut servers: Vec<ServerId> = policies.iter().flat_map(|p| p.servers.clone()).collect();
        servers.sort_unstable();
        servers.dedup();
        let listing = match self.list(&servers).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the servers for the freshness metrics; trying again later");
                return false;
            }
        };
        for policy in policies {
            for &server in &policy.servers {
                self.note_listing(policy, server, &listing.server(server));
            }
        }
        true
    }

    /// Sets `snapshot_scheduler_newest_snapshot_age_seconds{server}` for every server seen.
    pub fn export_snapshot_ages(&self) {
        let now = self.clock.now();
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        for (server, t) in newest.iter() {
            metrics::gauge!(crate::series::NEWEST_SNAPSHOT_AGE, "server" => server.to_string())
                .set((now - *t).num_seconds().max(0) as f64);
        }
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Writes the run log if it changed.
    pub async fn flush(&self) {
        self.runlog.flush().await;
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn locks(&self) -> &ServerLocks {
        &self.locks
    }

    /// One listing for these servers (see [`list`]; each on its own when that is cheaper
    /// than the account-wide listing, once its size is known).
    pub async fn list(&self, servers: &[ServerId]) -> Result<Listing, ApiError> {
        self.watch.list(servers).await
    }

    /// Runs one policy's slot on one server, start to finish. Never panics, never leaves a
    /// server it stopped stopped (short of a crash, which the journal covers).
    pub async fn run_server(
        &self,
        policy: &Arc<Policy>,
        server: ServerId,
        slot: DateTime<Utc>,
        listing: Option<&Listing>,
    ) -> ServerReport {
        let listed = listing.map(|l| Listed {
            taken_at: l.taken_at,
            snapshots: l.server(server),
        });
        // The server lock before the turn: a run waiting for a lock holds no turn.
        let lock = self.locks.entry(server).lock_owned().await;
        let turn = self.turns.take().await;
        // Boxed: a run waiting for its snapshot holds only what finishing it needs.
        match Box::pin(self.begin(policy.clone(), server, slot, listed, lock, turn)).await {
            Begun::Done(report) => report,
            Begun::Waiting(run) => {
                let waited = self.wait_for(run.server, &run.name, run.urgent()).await;
                Box::pin(self.finish(run, waited)).await
            }
        }
    }

    /// A run not started because the shutdown began.
    fn not_started(&self, policy: &Policy, server: ServerId, slot: DateTime<Utc>) -> ServerReport {
        let name = policy.snapshot_name(slot);
        let _span = rotation_span(policy, server, &name).entered();
        let mut report = ServerReport::starting(&policy.name, server, slot, name);
        report.result = RunResult::Skipped;
        report.message = "shutting down; not started".into();
        self.log_report(&report);
        report
    }

    /// A run up to its create, holding its server's lock and a turn: done, or (a run that
    /// does not stop its server) its snapshot requested and to be waited for.
    async fn begin(
        &self,
        policy: Arc<Policy>,
        server: ServerId,
        slot: DateTime<Utc>,
        listed: Option<Listed>,
        mut lock: ServerLock,
        mut turn: Turn,
    ) -> Begun {
        if self.shutdown.is_stopping() {
            // Queued behind others when shutdown began: start nothing new (no stop).
            return Begun::Done(self.not_started(&policy, server, slot));
        }
        let name = policy.snapshot_name(slot);
        let span = rotation_span(&policy, server, &name);
        async {
            let in_flight = InFlight::begin();
            let mut report = ServerReport::starting(&policy.name, server, slot, name.clone());
            // A listing taken before this server last changed is not trusted.
            let fresh = listed
                .filter(|l| lock.is_none_or(|t| l.taken_at > t))
                .map(|l| l.snapshots);
            let result =
                Box::pin(self.rotate(&policy, server, slot, fresh, &mut report, &mut turn)).await;
            let result = match result {
                Ok(Some(requested)) => {
                    return Begun::Waiting(Box::new(Detached {
                        name: name.into(),
                        policy,
                        server,
                        slot,
                        deleted: report.deleted,
                        server_name: requested.server_name,
                        lock,
                        _in_flight: in_flight,
                    }));
                }
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
            self.conclude(&mut report, result, &mut lock);
            Begun::Done(report)
        }
        .instrument(span)
        .await
    }

    /// The rest of a detached run once its snapshot was waited for: prune, the post hook, the
    /// report.
    async fn finish(&self, run: Box<Detached>, waited: Waited) -> ServerReport {
        let Detached {
            policy,
            server,
            slot,
            name,
            deleted,
            server_name,
            mut lock,
            _in_flight,
        } = *run;
        let span = rotation_span(&policy, server, &name);
        async {
            let mut report = ServerReport::starting(&policy.name, server, slot, name.to_string());
            report.deleted = deleted;
            report.wrote = true;
            let result = match waited {
                Waited::Settled(s, part) => {
                    let listing = part.snapshots();
                    drop(part);
                    self.after_wait(&policy, server, slot, &s, &listing, &mut report)
                        .await
                }
                Waited::TimedOut(unsettled) => Err(anyhow::anyhow!("{unsettled}")),
                Waited::Cancelled => Err(anyhow::anyhow!(
                    "stopped waiting for snapshot {name}: shutting down"
                )),
            };
            if policy.hooks.post.is_some() {
                let env = hook_env(&policy, server, &server_name, &name);
                let completed = report.result == RunResult::Created && result.is_ok();
                self.post_hook(&policy, &env, completed, report.created_id)
                    .await;
            }
            self.conclude(&mut report, result, &mut lock);
            report
        }
        .instrument(span)
        .await
    }

    /// Ends a run: the server's last change noted, the result reported and recorded.
    fn conclude(
        &self,
        report: &mut ServerReport,
        result: anyhow::Result<()>,
        lock: &mut ServerLock,
    ) {
        // A write that failed or timed out may still have changed the server (a create
        // left in progress): the next operation on it must not trust an older listing.
        if !self.settings.dry_run && report.wrote {
            **lock = Some(Instant::now());
        }
        if let Err(e) = result {
            report.result = RunResult::Failed;
            report.message = format!("{e:#}");
        }
        self.log_report(report);
        self.record(report);
    }

    fn record(&self, r: &ServerReport) {
        if self.settings.dry_run {
            return;
        }
        // The run log outlives the process: when the last run (maybe another `once` from
        // cron) already failed, that failure was reported then, and a success is a recovery.
        let failed_before = self
            .runlog
            .get(&r.policy, r.server)
            .is_some_and(|last| last.result.is_failure());
        self.runlog.record(crate::runlog::LastRun {
            policy: r.policy.clone(),
            server: r.server,
            slot: r.slot,
            finished_at: self.clock.now(),
            result: r.result,
            message: r.message.clone(),
            created: r.created.clone(),
        });
        {
            let alerts = &self.alerts;
            if failed_before {
                alerts.already_failing(&r.policy, r.server);
            }
            match r.result {
                RunResult::Failed => {
                    let event = if r.blocked {
                        crate::config::AlertEvent::CapBlocked
                    } else {
                        crate::config::AlertEvent::Failure
                    };
                    alerts.failure(event, &r.policy, r.server, &r.message);
                }
                RunResult::Created | RunResult::Unchanged => alerts.success(&r.policy, r.server),
                RunResult::Skipped | RunResult::DryRun => {}
            }
        }
    }

    fn log_report(&self, r: &ServerReport) {
        let policy = r.policy.as_str();
        match r.result {
            RunResult::Failed => {
                metrics::counter!(crate::series::RUNS_FAILED, "policy" => policy.to_owned())
                    .increment(1);
                tracing::error!(result = "failed", "{}", r.message);
            }
            RunResult::Skipped => tracing::warn!(result = "skipped", "{}", r.message),
            _ => tracing::info!(result = ?r.result, "{}", r.message),
        }
    }
}

/// A server's lock, held from a run's start to its end, with when the server last changed.
type ServerLock = tokio::sync::OwnedMutexGuard<Option<Instant>>;

/// A server's part of a listing taken at `taken_at`.
struct Listed {
    taken_at: Instant,
    snapshots: Vec<Snapshot>,
}

/// How the first part of a run ended.
enum Begun {
    Done(ServerReport),
    Waiting(Box<Detached>),
}

/// A run whose snapshot was requested and is waited for by the shared poll: what finishing it
/// needs, the server's lock, and its place in the runs in flight, about 200 bytes.
pub(super) struct Detached {
    policy: Arc<Policy>,
    server: ServerId,
    slot: DateTime<Utc>,
    name: Arc<str>,
    /// Deleted to free a slot before the create.
    deleted: Vec<String>,
    /// For a post hook's `SERVER_NAME`.
    server_name: String,
    lock: ServerLock,
    _in_flight: InFlight,
}

impl Detached {
    /// A post hook waits on it: its answer is wanted as soon as it can be had.
    fn urgent(&self) -> bool {
        self.policy.hooks.post.is_some()
    }
}

fn rotation_span(policy: &Policy, server: ServerId, name: &str) -> tracing::Span {
    tracing::info_span!("rotation", policy = %policy.name, server, snapshot = %name)
}

/// One run counted in `snapshot_scheduler_runs_in_flight` while it lives: dropped on every
/// way out of a run (its future dropped on shutdown included).
struct InFlight;

impl InFlight {
    fn begin() -> Self {
        metrics::gauge!(crate::series::RUNS_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(crate::series::RUNS_IN_FLIGHT).decrement(1.0);
    }
}

#[cfg(test)]
mod tests;
