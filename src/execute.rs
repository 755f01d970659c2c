//! The one place with effects: prepare (every read a decision needs) → [`Plan`] → apply it
//! against the provider: free a slot if needed → (optionally) stop the server → create → wait
//! → start → prune. A dry run is this same path stopped before apply; the `plan` command is its
//! first two steps. Waiting is shared: one listing answers every snapshot in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use crate::alerts::Alerts;
use crate::clock::Clock;
use crate::journal::{self, Journal};
use crate::model::{CreateSnapshot, PowerState, ServerId, Snapshot, SnapshotStatus};
use crate::plan::{plan, Create, Plan, SlotOutcome, Target};
use crate::policy::{JournalFailure, Policy};
use crate::provider::{ApiError, Provider};
use crate::report::{RunResult, ServerReport};
use crate::retry::Retrying;
use crate::runlog::RunLog;
use crate::shutdown::Shutdown;

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

/// One operation per server at a time, across all policies. Also remembers when a server was
/// last changed, so a listing taken before that is not trusted.
#[derive(Debug, Default)]
pub struct ServerLocks {
    locks: Mutex<HashMap<ServerId, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl ServerLocks {
    fn entry(&self, server: ServerId) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server)
            .or_default()
            .clone()
    }

    /// Whether an operation on `server` is under way now.
    pub fn is_busy(&self, server: ServerId) -> bool {
        self.entry(server).try_lock().is_err()
    }
}

/// The `max_concurrent` turns: a server's operation holds one until its snapshot is requested
/// (to the end if the server is stopped for it), not while it only waits for the snapshot to
/// finish, so thousands of snapshots can be in progress at once while `max_concurrent`
/// servers are worked on. Kept by server, because the step that gives a turn back is deep
/// inside one server's run.
#[derive(Debug)]
struct Turns {
    permits: Arc<Semaphore>,
    held: Mutex<HashMap<ServerId, OwnedSemaphorePermit>>,
}

impl Turns {
    fn new(max_concurrent: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            held: Mutex::default(),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, OwnedSemaphorePermit>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a turn for `server` (which must hold its server lock).
    async fn take(&self, server: ServerId) {
        if let Ok(permit) = self.permits.clone().acquire_owned().await {
            self.held().insert(server, permit);
        }
    }

    /// Gives `server`'s turn back; whether it had one.
    fn give_back(&self, server: ServerId) -> bool {
        self.held().remove(&server).is_some()
    }
}

/// Gives the server's turn back however its run ends (a dropped run included).
struct TurnGuard<'a>(&'a Turns, ServerId);

impl Drop for TurnGuard<'_> {
    fn drop(&mut self) {
        self.0.give_back(self.1);
    }
}

/// Snapshots on the servers, listed once at `taken_at` (monotonic).
#[derive(Debug, Clone)]
pub struct Listing {
    pub taken_at: Instant,
    pub by_server: BTreeMap<ServerId, Vec<Snapshot>>,
}

impl Listing {
    pub fn new(snapshots: Vec<Snapshot>) -> Self {
        let mut by_server: BTreeMap<ServerId, Vec<Snapshot>> = BTreeMap::new();
        for s in snapshots {
            by_server.entry(s.server.id).or_default().push(s);
        }
        for list in by_server.values_mut() {
            list.shrink_to_fit();
        }
        Self {
            taken_at: Instant::now(),
            by_server,
        }
    }

    pub fn server(&self, id: ServerId) -> Vec<Snapshot> {
        self.by_server.get(&id).cloned().unwrap_or_default()
    }
}

/// What [`Executor::prepare`] read about one server: all a plan for it decides on.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The server, with its power state when the policy stops it.
    pub target: Target,
    /// Everything on the server: any policy, hand-made, any status.
    pub snapshots: Vec<Snapshot>,
    /// For the hooks' `SERVER_NAME` (empty when no hook runs, or the provider would not say).
    pub server_name: String,
}

/// How the start path ended without an error.
#[derive(Debug)]
enum Up {
    Running,
    /// The provider no longer knows the server.
    Gone(ApiError),
}

/// How waiting for one snapshot ended.
#[derive(Debug)]
enum Waited {
    /// Left `in_progress`; with that server's listing at that moment.
    Settled(Snapshot, Vec<Snapshot>),
    TimedOut,
    Cancelled,
}

struct Waiter {
    server: ServerId,
    name: String,
    deadline: Instant,
    /// When this waiter next wants an answer: `poll_interval` after it joined, then later and
    /// later (x1.5 up to 60 s) while its snapshot stays in progress.
    due: Instant,
    delay: Duration,
    tx: oneshot::Sender<Waited>,
}

#[derive(Default)]
struct WatchState {
    waiters: Vec<Waiter>,
    polling: bool,
    /// When the newest waiter joined: while waiters keep joining, rounds are spaced further
    /// and further apart, because each round may cost a whole account-wide listing.
    last_joined: Option<Instant>,
}

/// What the status poll does next: sleep, or hold a round now over these servers.
enum Next {
    Wait(Duration),
    Round(Instant, Vec<ServerId>),
}

/// The shared status poll: one task lists every server with a snapshot in flight, answers the
/// waiters whose snapshot settled, and ends when nobody is waiting.
///
/// A round is held when the earliest waiter is due. While a fleet's creates are still coming
/// in, rounds back off (1, 1.5, 2.25, ... times `poll_interval`), so a rotation of thousands
/// of servers costs a handful of listings rather than one a second; once no waiter has joined
/// for half a `poll_interval`, rounds follow the waiters' own due times again (at most one per
/// half interval), so the last snapshots of a batch are answered soon after they finish.
struct Watch<P: Provider> {
    provider: Arc<Retrying<P>>,
    poll_interval: Duration,
    state: Mutex<WatchState>,
}

impl<P: Provider> Watch<P> {
    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn poll_loop(self: Arc<Self>) {
        let longest = self.poll_interval.max(Duration::from_secs(60));
        let quiet = (self.poll_interval / 2).max(Duration::from_millis(10));
        let mut spacing = self.poll_interval;
        let mut last_round: Option<Instant> = None;
        loop {
            let next = {
                let mut w = self.state();
                w.waiters.retain(|x| !x.tx.is_closed());
                let now = Instant::now();
                // A waiter past its deadline is answered now, not at the next round: rounds
                // can be further apart than snapshot_timeout, and its server may be stopped.
                let (expired, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut w.waiters)
                    .into_iter()
                    .partition(|x| x.deadline <= now);
                w.waiters = waiting;
                for waiter in expired {
                    let _ = waiter.tx.send(Waited::TimedOut);
                }
                if w.waiters.is_empty() {
                    w.polling = false;
                    return;
                }
                let due = w.waiters.iter().map(|x| x.due).min().unwrap_or(now);
                let deadline = w.waiters.iter().map(|x| x.deadline).min().unwrap_or(now);
                let joining = w.last_joined.is_some_and(|t| now < t + quiet);
                let gap = if joining { spacing } else { quiet };
                let at = last_round.map_or(due, |r| due.max(r + gap));
                if now < at {
                    // Decided again at least every `quiet`: the joining may stop meanwhile.
                    Next::Wait((at - now).min(quiet).min(deadline - now))
                } else {
                    spacing = if joining {
                        (spacing * 3 / 2).min(longest)
                    } else {
                        self.poll_interval
                    };
                    let mut s: Vec<ServerId> = w.waiters.iter().map(|x| x.server).collect();
                    s.sort_unstable();
                    s.dedup();
                    Next::Round(now, s)
                }
            };
            let (round, servers) = match next {
                Next::Round(at, servers) => (at, servers),
                Next::Wait(wait) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            last_round = Some(round);
            let listing = match list(&*self.provider, &servers).await {
                Ok(l) => Some(l),
                Err(e) if servers.len() > 1 => {
                    // One server's unreadable record (or a listing the provider cannot give)
                    // must not keep every other waiting server stopped: ask per server.
                    tracing::warn!(error = %e, "could not poll snapshot status of all waiting servers at once; asking each");
                    Some(self.list_each(&servers).await)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not poll snapshot status; trying again");
                    None
                }
            };
            let now = Instant::now();
            let mut w = self.state();
            for mut waiter in std::mem::take(&mut w.waiters) {
                let found = listing.as_ref().and_then(|l| {
                    l.by_server
                        .get(&waiter.server)
                        .and_then(|snaps| snaps.iter().find(|s| s.name == waiter.name))
                });
                match found {
                    Some(s) if s.status.is_settled() => {
                        let all = listing
                            .as_ref()
                            .map(|l| l.server(waiter.server))
                            .unwrap_or_default();
                        let _ = waiter.tx.send(Waited::Settled(s.clone(), all));
                    }
                    _ if now >= waiter.deadline => {
                        let _ = waiter.tx.send(Waited::TimedOut);
                    }
                    _ => {
                        if waiter.due <= round {
                            waiter.delay = (waiter.delay * 3 / 2).min(longest);
                            waiter.due = now + waiter.delay;
                        }
                        w.waiters.push(waiter);
                    }
                }
            }
            if w.waiters.is_empty() {
                w.polling = false;
                return;
            }
        }
    }
}

impl<P: Provider> Watch<P> {
    /// Each server's own listing, merged; a server whose listing fails is left out (its
    /// waiters wait for the next round or their deadline).
    async fn list_each(&self, servers: &[ServerId]) -> Listing {
        let mut snapshots = Vec::new();
        for server in servers {
            match self.provider.list_snapshots(Some(*server)).await {
                Ok(list) => snapshots.extend(list.into_iter().filter(|s| s.server.id == *server)),
                Err(e) => {
                    tracing::warn!(server, error = %e, "could not poll this server's snapshot status; trying again")
                }
            }
        }
        Listing::new(snapshots)
    }
}

/// One listing for these servers: the server's own list when there is one, else the
/// account-wide list (one paginated call instead of one per server).
pub async fn list<P: Provider>(provider: &P, servers: &[ServerId]) -> Result<Listing, ApiError> {
    let mut snapshots = match servers {
        [one] => provider.list_snapshots(Some(*one)).await?,
        _ => provider.list_snapshots_of(servers).await?,
    };
    // Kept before grouping: a poll for a few servers need not group a fleet's snapshots.
    let mut wanted = servers.to_vec();
    wanted.sort_unstable();
    snapshots.retain(|s| wanted.binary_search(&s.server.id).is_ok());
    Ok(Listing::new(snapshots))
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
            watch: Arc::new(Watch {
                provider: provider.clone(),
                poll_interval: settings.poll_interval,
                state: Mutex::new(WatchState::default()),
            }),
            provider,
            clock,
            journal,
            turns: Turns::new(settings.max_concurrent),
            settings,
            locks: ServerLocks::default(),
            alerts,
            runlog,
            newest: Mutex::default(),
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

    /// Remembers the newest completed snapshot of a server from a listing of it.
    fn note_newest(&self, server: ServerId, snapshots: &[Snapshot]) {
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
            metrics::gauge!("snapshot_scheduler_newest_snapshot_age_seconds", "server" => server.to_string())
                .set((self.clock.now() - t).num_seconds().max(0) as f64);
        }
    }

    /// Sets `snapshot_scheduler_newest_snapshot_age_seconds{server}` for every server seen.
    pub fn export_snapshot_ages(&self) {
        let now = self.clock.now();
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        for (server, t) in newest.iter() {
            metrics::gauge!("snapshot_scheduler_newest_snapshot_age_seconds", "server" => server.to_string())
                .set((now - *t).num_seconds().max(0) as f64);
        }
    }

    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Writes the run log if it changed.
    pub fn flush(&self) {
        self.runlog.flush();
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

    /// Runs each (policy, server, slot) once: at most `max_concurrent` servers worked on at a
    /// time (a server only waiting for its snapshot gives its turn to the next, unless it is
    /// stopped for it), one operation per server at a time, everything listed with one
    /// paginated call, every snapshot in flight waited for by one shared poll.
    pub async fn run_all(
        self: &Arc<Self>,
        work: Vec<(Policy, ServerId, DateTime<Utc>)>,
    ) -> Vec<ServerReport> {
        let servers: Vec<ServerId> = {
            let mut s: Vec<ServerId> = work.iter().map(|(_, s, _)| *s).collect();
            s.sort_unstable();
            s.dedup();
            s
        };
        let listing = match self.list(&servers).await {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::warn!(error = %e, "could not list snapshots up front; each server lists its own");
                None
            }
        };
        // One shared copy of each policy for all its servers' tasks (policy names are unique).
        let mut shared: HashMap<String, Arc<Policy>> = HashMap::new();
        let mut tasks = tokio::task::JoinSet::new();
        for (policy, server, slot) in work {
            let policy = shared
                .entry(policy.name.clone())
                .or_insert_with(|| Arc::new(policy))
                .clone();
            let this = self.clone();
            let listing = listing.clone();
            tasks.spawn(async move {
                this.run_server(&policy, server, slot, listing.as_deref())
                    .await
            });
        }
        drop(shared);
        let mut reports = Vec::new();
        while let Some(r) = tasks.join_next().await {
            match r {
                // The plan has done its job (a fleet's worth of plans is megabytes).
                Ok(report) => reports.push(ServerReport {
                    plan: None,
                    ..report
                }),
                Err(e) => {
                    // Should not happen; still a failure the summary and exit code must show.
                    tracing::error!(error = %e, "a server task ended abnormally");
                    reports.push(ServerReport {
                        policy: "?".into(),
                        server: 0,
                        slot: DateTime::<Utc>::MIN_UTC,
                        snapshot: String::new(),
                        result: RunResult::Failed,
                        created: None,
                        deleted: Vec::new(),
                        message: format!("a server task ended abnormally: {e}"),
                        blocked: false,
                        created_id: None,
                        plan: None,
                    });
                }
            }
        }
        reports.sort_by(|a, b| (a.server, &a.policy).cmp(&(b.server, &b.policy)));
        self.flush();
        reports
    }

    /// One listing for these servers (see [`list`]).
    pub async fn list(&self, servers: &[ServerId]) -> Result<Listing, ApiError> {
        list(&*self.provider, servers).await
    }

    /// Runs one policy's slot on one server, start to finish. Never panics, never leaves a
    /// server it stopped stopped (short of a crash, which the journal covers).
    pub async fn run_server(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        listing: Option<&Listing>,
    ) -> ServerReport {
        let name = policy.snapshot_name(slot);
        let span = tracing::info_span!("rotation", policy = %policy.name, server, snapshot = %name);
        async {
            // The server lock before the turn: a run waiting for a lock holds no turn.
            let lock = self.locks.entry(server);
            let mut last_change = lock.lock().await;
            self.turns.take(server).await;
            let _turn = TurnGuard(&self.turns, server);
            let mut report = ServerReport {
                policy: policy.name.clone(),
                server,
                slot,
                snapshot: name.clone(),
                result: RunResult::Failed,
                created: None,
                deleted: Vec::new(),
                message: String::new(),
                blocked: false,
                created_id: None,
                plan: None,
            };
            if self.shutdown.is_stopping() {
                // Queued behind others when shutdown began: start nothing new (no stop).
                report.result = RunResult::Skipped;
                report.message = "shutting down; not started".into();
                self.log_report(&report);
                return report;
            }
            let fresh = listing.filter(|l| last_change.is_none_or(|t| l.taken_at > t));
            // Boxed: a run waiting for its lock or turn stays small (a fleet of them waits).
            let result = Box::pin(self.rotate(policy, server, slot, fresh, &mut report)).await;
            // A write that failed or timed out may still have changed the server (a create
            // left in progress): the next operation on it must not trust an older listing.
            let wrote = report.plan.as_ref().is_some_and(|p| !p.is_noop());
            if !self.settings.dry_run && wrote {
                *last_change = Some(Instant::now());
            }
            if let Err(e) = result {
                report.result = RunResult::Failed;
                report.message = format!("{e:#}");
            }
            self.log_report(&report);
            self.record(&report);
            report
        }
        .instrument(span)
        .await
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
                metrics::counter!("snapshot_scheduler_runs_failed_total", "policy" => policy.to_owned()).increment(1);
                tracing::error!(result = "failed", "{}", r.message);
            }
            RunResult::Skipped => tracing::warn!(result = "skipped", "{}", r.message),
            _ => tracing::info!(result = ?r.result, "{}", r.message),
        }
    }

    /// Prepare (every read the decision needs) → plan → apply. A dry run stops before apply;
    /// the `plan` command is the first two steps.
    async fn rotate(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        listing: Option<&Listing>,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        let prepared = self.prepare(policy, server, listing).await?;
        self.note_newest(server, &prepared.snapshots);
        let first = self.plan(policy, slot, &prepared);
        for note in &first.notes {
            tracing::info!("{note}");
        }
        for warning in &first.warnings {
            tracing::warn!("{warning}");
        }
        report.plan = Some(first.clone());
        if let Some(blocked) = first.outcome.blocked() {
            report.blocked = matches!(first.outcome, SlotOutcome::CapBlocked(_));
            anyhow::bail!("{}", blocked.reason);
        }
        // Judged before a dry run stops, so both say the same: a stuck snapshot fails.
        if first.create().is_none() {
            self.fail_if_stuck(&prepared.snapshots)?;
        }
        if self.settings.dry_run {
            // A skip is a skip in both; anything else is told as what would happen.
            (report.result, report.message) = if first.outcome.is_skip() {
                (RunResult::Skipped, first.outcome_line().to_owned())
            } else {
                (RunResult::DryRun, dry_run_summary(policy, &first))
            };
            return Ok(());
        }
        self.apply(policy, slot, &prepared, &first, report).await
    }

    /// Every read a decision about `server` needs, before anything changes: its listing (from
    /// `listing` when there is one), its power state when the policy stops it (a server in
    /// transition is skipped before a slot is freed, or a good snapshot would go for
    /// nothing), and its name when a hook will be told it.
    pub async fn prepare(
        &self,
        policy: &Policy,
        server: ServerId,
        listing: Option<&Listing>,
    ) -> Result<Prepared, ApiError> {
        let snapshots = match listing {
            Some(l) => l.server(server),
            None => self.provider.list_snapshots(Some(server)).await?,
        };
        let hooked = policy.hooks.pre.is_some() || policy.hooks.post.is_some();
        let (power, server_name) = if policy.stop_server {
            let s = self.provider.get_server(server).await?;
            (Some(s.status), s.name)
        } else if !hooked {
            (None, String::new())
        } else if let Some(s) = snapshots.first() {
            (None, s.server.name.clone())
        } else {
            // Only a hook's environment needs it: a server that will not say has no name.
            let name = self.provider.get_server(server).await.map(|s| s.name);
            (None, name.unwrap_or_default())
        };
        Ok(Prepared {
            target: Target { id: server, power },
            snapshots,
            server_name,
        })
    }

    /// The plan for what [`prepare`](Self::prepare) read, as of now.
    pub fn plan(&self, policy: &Policy, slot: DateTime<Utc>, prepared: &Prepared) -> Plan {
        plan(
            policy,
            &prepared.target,
            &prepared.snapshots,
            slot,
            self.clock.now(),
        )
    }

    /// Does what `first` says. The run's result follows the slot's outcome, never the words
    /// of its reason.
    async fn apply(
        &self,
        policy: &Policy,
        slot: DateTime<Utc>,
        prepared: &Prepared,
        first: &Plan,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        let result = match &first.outcome {
            SlotOutcome::Create(create) => {
                return self
                    .create_with_hooks(policy, slot, prepared, first, create, report)
                    .await
            }
            SlotOutcome::SlotTaken { .. } => RunResult::Unchanged,
            SlotOutcome::SnapshotInProgress { .. } | SlotOutcome::ServerInTransition { .. } => {
                RunResult::Skipped
            }
            SlotOutcome::CapBlocked(b) | SlotOutcome::OtherServers(b) => {
                anyhow::bail!("{}", b.reason)
            }
        };
        self.delete_planned(policy, first, report).await?;
        report.result = result;
        report.message = first.outcome_line().to_owned();
        Ok(())
    }

    /// The hooks around free a slot → (stop) → create → wait → (start) → prune.
    async fn create_with_hooks(
        &self,
        policy: &Policy,
        slot: DateTime<Utc>,
        prepared: &Prepared,
        first: &Plan,
        create: &Create,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        let server = prepared.target.id;
        // Hooks wrap everything that changes the server, the slot-freeing delete included.
        let hooks = &policy.hooks;
        let mut env = Vec::new();
        if hooks.pre.is_some() || hooks.post.is_some() {
            env = vec![
                ("SNAPSHOT_POLICY", policy.name.clone()),
                ("SERVER_ID", server.to_string()),
                ("SERVER_NAME", prepared.server_name.clone()),
                ("SNAPSHOT_NAME", create.name.clone()),
            ];
        }
        if let Some(pre) = &hooks.pre {
            let mut pre_env = env.clone();
            pre_env.push(("PHASE", "pre".into()));
            let outcome = crate::hooks::run("pre", pre, &pre_env, hooks.timeout).await;
            if !outcome.success {
                if hooks.continue_on_pre_failure {
                    tracing::warn!(detail = %outcome.detail, "pre hook failed; taking the snapshot anyway (on_pre_hook_failure = \"continue\")");
                } else {
                    self.post_hook(policy, &env, false, None).await;
                    anyhow::bail!(
                        "pre hook failed ({}); snapshot skipped (on_pre_hook_failure = \"skip\")",
                        outcome.detail
                    );
                }
            }
        }
        let power = prepared.target.power.clone();
        let result = self
            .create_and_prune(policy, server, slot, first, power, report)
            .await;
        if hooks.post.is_some() {
            let completed = report.result == RunResult::Created && result.is_ok();
            let id = report.created_id;
            self.post_hook(policy, &env, completed, id).await;
        }
        result
    }

    /// A snapshot in progress blocks the server (nothing is created or deleted beside it).
    /// Within `snapshot_timeout` that is a skip; past it, the snapshot is stuck, and a run
    /// that can never create anything is a failure that names it (it is still not deleted).
    fn fail_if_stuck(&self, snapshots: &[Snapshot]) -> anyhow::Result<()> {
        let now = self.clock.now();
        let stuck: Vec<String> = snapshots
            .iter()
            .filter(|s| !s.status.is_settled())
            .filter(|s| wall_after(s.created_at, self.settings.snapshot_timeout) <= now)
            .map(|s| {
                let age = (now - s.created_at).to_std().unwrap_or_default();
                format!(
                    "{} (id {}, {} for {})",
                    s.name,
                    s.id,
                    s.status,
                    crate::plan::rough_age(age)
                )
            })
            .collect();
        if stuck.is_empty() {
            return Ok(());
        }
        let shown = 10;
        let stuck = if stuck.len() > shown {
            format!(
                "{} and {} more",
                stuck[..shown].join(", "),
                stuck.len() - shown
            )
        } else {
            stuck.join(", ")
        };
        anyhow::bail!(
            "snapshot stuck longer than snapshot_timeout {}: {}; it blocks every snapshot of \
             this server and is not deleted; ask the provider about it or delete it by hand",
            humantime::format_duration(self.settings.snapshot_timeout),
            stuck
        )
    }

    /// Runs the post hook with `RESULT` and, when a snapshot exists, `SNAPSHOT_ID`.
    async fn post_hook(
        &self,
        policy: &Policy,
        env: &[(&'static str, String)],
        success: bool,
        snapshot_id: Option<u64>,
    ) {
        let Some(post) = &policy.hooks.post else {
            return;
        };
        let mut env = env.to_vec();
        env.push(("PHASE", "post".into()));
        env.push(("RESULT", if success { "success" } else { "failure" }.into()));
        if let Some(id) = snapshot_id {
            env.push(("SNAPSHOT_ID", id.to_string()));
        }
        let outcome = crate::hooks::run("post", post, &env, policy.hooks.timeout).await;
        if !outcome.success {
            tracing::error!(detail = %outcome.detail, "post hook failed");
        }
    }

    /// Deletes what the plan says must go now or before the create.
    async fn delete_planned(
        &self,
        policy: &Policy,
        plan: &Plan,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        for d in plan.deletes_now().chain(plan.deletes_before_create()) {
            tracing::info!(delete = %d.name, "{}", d.reason);
            self.provider.delete_snapshot(d.snapshot_id).await?;
            metrics::counter!("snapshot_scheduler_snapshots_deleted_total", "policy" => policy.name.clone()).increment(1);
            report.deleted.push(d.name.clone());
        }
        Ok(())
    }

    /// The server's power state when it is running or stopped; else why it is not snapshotted.
    async fn power_state(&self, server: ServerId) -> anyhow::Result<Result<PowerState, String>> {
        let state = self.provider.get_server(server).await?.status;
        Ok(match state {
            PowerState::Running | PowerState::Stopped => Ok(state),
            other => Err(format!(
                "server is {other} (neither running nor stopped); not snapshotted"
            )),
        })
    }

    /// Free a slot → (stop) → create → wait → (start) → prune by a second plan.
    async fn create_and_prune(
        &self,
        policy: &Policy,
        server: ServerId,
        slot: DateTime<Utc>,
        first: &Plan,
        power: Option<PowerState>,
        report: &mut ServerReport,
    ) -> anyhow::Result<()> {
        let name = &first
            .create()
            .map_or_else(|| policy.snapshot_name(slot), |c| c.name.clone());
        if self.shutdown.is_stopping() {
            anyhow::bail!("shutting down; no snapshot taken");
        }
        // A pre hook may have taken a while (or changed the server): look again after one.
        let power = match power {
            Some(_) if policy.hooks.pre.is_some() => match self.power_state(server).await? {
                Ok(state) => Some(state),
                Err(busy) => {
                    report.result = RunResult::Skipped;
                    report.message = busy;
                    return Ok(());
                }
            },
            known => known,
        };
        self.delete_planned(policy, first, report).await?;
        let outcome = self.snapshot(policy, server, name, power).await;
        let (settled, listing_after) = match outcome {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                report.result = RunResult::Skipped;
                report.message =
                    "server is busy (neither running nor stopped); not snapshotted".into();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        report.created = Some(settled.name.clone());
        report.created_id = Some(settled.id);

        // Prune with what the provider says now: the second plan deletes what is beyond the
        // rules only because a newer snapshot has completed (or cleans up our failed one).
        self.note_newest(server, &listing_after);
        let second = plan(
            policy,
            &server.into(),
            &listing_after,
            slot,
            self.clock.now(),
        );
        for d in second.deletes_now() {
            tracing::info!(delete = %d.name, "{}", d.reason);
            match self.provider.delete_snapshot(d.snapshot_id).await {
                Ok(()) => {
                    metrics::counter!("snapshot_scheduler_snapshots_deleted_total", "policy" => policy.name.clone()).increment(1);
                    report.deleted.push(d.name.clone());
                }
                Err(e) => {
                    tracing::warn!(error = %e, snapshot = %d.name, "could not prune; the next run tries again")
                }
            }
        }
        match settled.status {
            SnapshotStatus::Completed => {
                metrics::counter!("snapshot_scheduler_snapshots_created_total", "policy" => policy.name.clone()).increment(1);
                metrics::gauge!("snapshot_scheduler_last_success_timestamp_seconds", "policy" => policy.name.clone(), "server" => server.to_string())
                    .set(self.clock.now().timestamp() as f64);
                report.result = RunResult::Created;
                report.message = format!(
                    "created {} ({}); deleted {}",
                    settled.name,
                    crate::format::format_size(settled.size_mb),
                    if report.deleted.is_empty() {
                        "nothing".to_owned()
                    } else {
                        report.deleted.join(", ")
                    }
                );
            }
            status => {
                metrics::counter!("snapshot_scheduler_snapshots_failed_total", "policy" => policy.name.clone()).increment(1);
                anyhow::bail!(
                    "snapshot {} ended {status}{}",
                    settled.name,
                    if report.deleted.contains(&settled.name) {
                        "; deleted it"
                    } else {
                        ""
                    }
                );
            }
        }
        Ok(())
    }

    /// Stop (if asked and running) → create → wait → start. `Ok(None)`: server busy, nothing
    /// done. Once the stop was requested, the server is started again on every way out of
    /// this function: an error, a timeout, a shutdown, and a panic in the code between.
    async fn snapshot(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
        power: Option<PowerState>,
    ) -> anyhow::Result<Option<(Snapshot, Vec<Snapshot>)>> {
        let span = AssertUnwindSafe(self.stop_and_snapshot(policy, server, name, power))
            .catch_unwind()
            .await;
        let (stopped_by_us, result) = match span {
            Ok(done) => done,
            Err(panic) => {
                // Whatever unwound, the journal knows whether this server was stopped.
                let stopped = self.journal.entries().iter().any(|e| e.server == server);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(panic = %what, "internal error during the snapshot");
                (stopped, Err(anyhow::anyhow!("internal error: {what}")))
            }
        };
        if stopped_by_us {
            if let Err(e) = self.start_again(server).await {
                return Err(match result {
                    Ok(_) => e,
                    Err(first) => first.context(format!("{e:#}")),
                });
            }
        }
        result
    }

    /// The part of [`snapshot`](Self::snapshot) that may leave the server stopped: whether it
    /// did, and how the snapshot went.
    async fn stop_and_snapshot(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
        power: Option<PowerState>,
    ) -> (bool, anyhow::Result<Option<(Snapshot, Vec<Snapshot>)>>) {
        let mut stopped_by_us = false;
        if let Some(state) = power {
            match state {
                PowerState::Running => match self.stop(policy, server, name).await {
                    Ok(stopped) => stopped_by_us = stopped,
                    Err(e) => return (false, Err(e)),
                },
                PowerState::Stopped => {
                    tracing::info!("server is already stopped; snapshotting it as it is and leaving it stopped");
                }
                _ => return (false, Ok(None)),
            }
        }
        let result = self.create_and_wait(policy, server, name).await;
        (stopped_by_us, result.map(Some))
    }

    async fn create_and_wait(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
    ) -> anyhow::Result<(Snapshot, Vec<Snapshot>)> {
        let created = self
            .provider
            .create_snapshot(&CreateSnapshot {
                server_id: server,
                name: name.to_owned(),
                description: Some(policy.description.clone()),
            })
            .await?;
        tracing::info!(
            id = created.id,
            "snapshot requested; waiting for it to finish"
        );
        // Waiting costs only a place in the shared poll, so the turn goes to the next server
        // now, unless this server is stopped for the snapshot (then at most `max_concurrent`
        // servers are down at once). What is left after the wait (a prune) is a request or
        // two on the shared budget; queueing again behind every server not yet started would
        // keep thousands of finished waits in memory until the end of the run.
        if !policy.stop_server {
            self.turns.give_back(server);
        }
        match self.wait_for(server, name).await {
            Waited::Settled(s, listing) => Ok((s, listing)),
            Waited::TimedOut => anyhow::bail!(
                "snapshot {name} still in progress after snapshot_timeout {}",
                humantime::format_duration(self.settings.snapshot_timeout)
            ),
            Waited::Cancelled => {
                anyhow::bail!("stopped waiting for snapshot {name}: shutting down")
            }
        }
    }

    /// Journal first, then stop, then wait for `stopped`. On any failure after the request,
    /// the server is started again before the error is returned.
    /// `Ok(false)`: the stop could not be journaled and `on_journal_failure = "snapshot_running"`,
    /// so the server was left running (never stopped unjournaled).
    async fn stop(&self, policy: &Policy, server: ServerId, name: &str) -> anyhow::Result<bool> {
        let now = self.clock.now();
        // Time to stop and to take the snapshot; the start after the deadline must still fit
        // in snapshot_timeout + 2 × power_timeout, crash or not.
        let budget = self
            .settings
            .power_timeout
            .saturating_add(self.settings.snapshot_timeout);
        let entry = journal::Entry {
            server,
            policy: policy.name.clone(),
            snapshot: name.to_owned(),
            stopped_at: now,
            deadline: wall_after(now, budget),
        };
        if let Err(e) = self.journal.record(entry) {
            metrics::counter!("snapshot_scheduler_journal_failures_total").increment(1);
            match policy.on_journal_failure {
                JournalFailure::Skip => anyhow::bail!(
                    "refusing to stop server {server}: its stop cannot be journaled ({e}); no \
                     snapshot taken (on_journal_failure = \"skip\")"
                ),
                JournalFailure::SnapshotRunning => {
                    tracing::warn!(error = %e, "refusing to stop the server: its stop cannot be journaled; snapshotting it while it runs (on_journal_failure = \"snapshot_running\")");
                    return Ok(false);
                }
            }
        }
        tracing::info!("stopping the server for a consistent snapshot");
        let stopped = match self.request_stop(server).await {
            Ok(()) => self.wait_stopped(server).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            let again = self.start_again(server).await;
            let e = e.context(format!("stopping server {server}"));
            return Err(match again {
                Ok(()) => e,
                Err(a) => e.context(format!("{a:#}")),
            });
        }
        Ok(true)
    }

    /// Brings a server this program stopped back to `running` and clears its journal entry.
    /// The whole path (wait out `stopping`, send the start, wait for `running`) is bounded by
    /// one `power_timeout`, and transient API errors (an outage, 5xx, 429) are retried
    /// throughout; a shutdown does not cut it short. Any way out of it without a running
    /// server is "left stopped": a loud log line, the `server_left_stopped` alert and metric,
    /// and the journal entry stays, so the next settle tries again. A server the provider no
    /// longer knows (404) has nothing to start: warned once, its entry cleared.
    pub async fn start_again(&self, server: ServerId) -> anyhow::Result<()> {
        match self.bring_up(server).await {
            Ok(Up::Running) => {
                self.journal.clear(server)?;
                self.alerted().remove(&server);
                Ok(())
            }
            Ok(Up::Gone(e)) => {
                let message = format!(
                    "server {server} was stopped for a snapshot and the provider no longer knows \
                     it ({e}); nothing to start, its journal entry is cleared"
                );
                tracing::warn!("{message}");
                // The entry goes with this alert, so it cannot repeat.
                self.alert_left_stopped(server, &message);
                self.journal.clear(server)?;
                self.alerted().remove(&server);
                Ok(())
            }
            Err(e) => {
                self.report_left_stopped(server, &format!("{e:#}"));
                Err(e.context(format!(
                    "server {server} was stopped for a snapshot and could not be started again"
                )))
            }
        }
    }

    /// A server this program stopped is not running and this attempt is over: a loud log
    /// line, the metric, and the `server_left_stopped` alert (once per streak).
    pub fn report_left_stopped(&self, server: ServerId, why: &str) {
        metrics::counter!("snapshot_scheduler_server_left_stopped_total").increment(1);
        let message = format!(
            "server {server} was stopped for a snapshot and could not be started again: {why}; \
             it stays in the power journal and is retried"
        );
        tracing::error!("SERVER LEFT STOPPED: {message}");
        if self.alerted().insert(server) {
            self.alert_left_stopped(server, &message);
        }
    }

    fn alert_left_stopped(&self, server: ServerId, message: &str) {
        self.alerts.send(
            crate::config::AlertEvent::ServerLeftStopped,
            None,
            Some(server),
            message,
        );
    }

    fn alerted(&self) -> std::sync::MutexGuard<'_, HashSet<ServerId>> {
        self.alerted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The start path of [`start_again`](Self::start_again), without its reporting.
    async fn bring_up(&self, server: ServerId) -> anyhow::Result<Up> {
        let timeout = self.settings.power_timeout;
        let deadline = deadline_after(timeout);
        let mut delay = self.settings.poll_interval.min(Duration::from_secs(2));
        let longest = self.settings.poll_interval.max(Duration::from_secs(1));
        // When a start was last accepted: a server still `stopped` long after that is sent
        // another (the provider dropped it); sooner, a lagging status is waited out.
        let mut started_at: Option<Instant> = None;
        let mut last: String = "not looked at yet".into();
        // No call may outlast the deadline (a 429's Retry-After pauses every request, the
        // retry layer's re-sends add up): the path as a whole is bounded by power_timeout.
        let no_answer = || ApiError::Timeout {
            what: format!("get server {server}"),
            timeout,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let looked = tokio::time::timeout(left, self.provider.get_server(server))
                .await
                .unwrap_or_else(|_| Err(no_answer()));
            match looked {
                Ok(s) => match s.status {
                    PowerState::Running => return Ok(Up::Running),
                    PowerState::Stopped => {
                        let resend = started_at.is_none_or(|t| {
                            t.elapsed() >= Duration::from_secs(60).max(longest * 4)
                        });
                        if resend {
                            tracing::info!("starting the server again");
                            let left = deadline.saturating_duration_since(Instant::now());
                            let sent =
                                tokio::time::timeout(left, self.provider.start_server(server))
                                    .await
                                    .unwrap_or_else(|_| Err(no_answer()));
                            match sent {
                                Ok(_) => started_at = Some(Instant::now()),
                                Err(e) if e.is_retryable() => {
                                    tracing::warn!(error = %e, "start request failed; looking at the server before sending it again");
                                    last = format!("stopped; the start request failed: {e}");
                                }
                                Err(e @ ApiError::NotFound { .. }) => return Ok(Up::Gone(e)),
                                Err(e) => return Err(e.into()),
                            }
                        }
                        if started_at.is_some() {
                            last = "stopped (start requested)".into();
                        }
                    }
                    other => last = other.to_string(),
                },
                Err(e @ ApiError::NotFound { .. }) => return Ok(Up::Gone(e)),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "cannot look at the server; trying again until power_timeout");
                    last = format!("unknown ({e})");
                }
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "server {server} is {last}, not running, after power_timeout {}",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 3 / 2).min(longest);
        }
    }

    /// Sends the stop ([`Retrying::stop_server_unless`]: sent again only after a look shows the
    /// server still running, and not once the shutdown is hurried).
    async fn request_stop(&self, server: ServerId) -> anyhow::Result<()> {
        self.provider
            .stop_server_unless(server, self.shutdown.hurried())
            .await?;
        Ok(())
    }

    /// Polls the server until it is `stopped`, bounded by `power_timeout`; a shutdown ends
    /// the wait (the caller starts the server again).
    async fn wait_stopped(&self, server: ServerId) -> anyhow::Result<()> {
        let deadline = deadline_after(self.settings.power_timeout);
        let mut delay = self.settings.poll_interval.min(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.hurried() => anyhow::bail!("shutting down before the server had stopped"),
            }
            let state = self.provider.get_server(server).await?.status;
            if state == PowerState::Stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "server {server} is {state}, not stopped, after power_timeout {}",
                    humantime::format_duration(self.settings.power_timeout)
                );
            }
            delay = (delay * 3 / 2).min(self.settings.poll_interval.max(Duration::from_secs(1)));
        }
    }

    /// Waits for a snapshot to leave `in_progress`, sharing one poll loop with every other
    /// waiter. Bounded by `snapshot_timeout`; ends early when hurried.
    async fn wait_for(&self, server: ServerId, name: &str) -> Waited {
        let (tx, rx) = oneshot::channel();
        let start_poller = {
            let mut w = self.watch.state();
            let now = Instant::now();
            w.waiters.push(Waiter {
                server,
                name: name.to_owned(),
                deadline: deadline_after(self.settings.snapshot_timeout),
                due: deadline_after(self.settings.poll_interval),
                delay: self.settings.poll_interval,
                tx,
            });
            w.last_joined = Some(now);
            !std::mem::replace(&mut w.polling, true)
        };
        if start_poller {
            tokio::spawn(
                self.watch
                    .clone()
                    .poll_loop()
                    .instrument(tracing::info_span!("status_poll")),
            );
        }
        tokio::select! {
            r = rx => r.unwrap_or(Waited::Cancelled),
            () = self.shutdown.hurried() => Waited::Cancelled,
        }
    }

    /// For commands that exit after their work (`once`): journal entries left behind (a
    /// start that failed, say during an outage) are settled again with back-off for up to
    /// `power_timeout`. Returns what still could not be settled.
    pub async fn settle_leftovers(self: &Arc<Self>) -> Vec<anyhow::Error> {
        let deadline = deadline_after(self.settings.power_timeout);
        let mut delay = Duration::from_secs(5);
        loop {
            if self.journal.entries().is_empty() {
                return Vec::new();
            }
            let errors = self.reconcile().await;
            if errors.is_empty() || Instant::now() + delay >= deadline {
                return errors;
            }
            tracing::warn!(retry_in = ?delay, "a server this run stopped is not running yet; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    /// [`reconcile`](Self::reconcile), as one error for commands that must not act on a
    /// server a previous run left stopped.
    pub async fn reconcile_or_fail(self: &Arc<Self>) -> anyhow::Result<()> {
        let errors = self.reconcile().await;
        if errors.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        anyhow::bail!(
            "could not settle servers stopped by a previous run:\n  {}",
            text.join("\n  ")
        )
    }

    /// Finishes what a previous process left: for each journaled stop, wait for its snapshot
    /// to leave `in_progress` (up to the recorded deadline), start the server if it is still
    /// stopped, clear the entry. Returns one error per server that could not be settled.
    /// Holds the server's lock meanwhile, so it may run beside the scheduler: an entry of work
    /// still in flight is settled by that work, and is gone once the lock is free.
    pub async fn reconcile(self: &Arc<Self>) -> Vec<anyhow::Error> {
        // All at once: one by one, the last of ten servers would wait for nine starts.
        let mut settling = tokio::task::JoinSet::new();
        for entry in self.journal.entries() {
            let this = self.clone();
            settling.spawn(async move { this.settle(entry).await });
        }
        let mut errors = Vec::new();
        while let Some(done) = settling.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(anyhow::anyhow!("settling a server ended abnormally: {e}")),
            }
        }
        errors
    }

    /// Settles the journal entry of one server, if it has one (see
    /// [`reconcile`](Self::reconcile)): `restore` must not act on a server a previous run
    /// left stopped, nor wait for servers it does not touch.
    pub async fn settle_server(&self, server: ServerId) -> anyhow::Result<()> {
        match self
            .journal
            .entries()
            .into_iter()
            .find(|e| e.server == server)
        {
            Some(entry) => self.settle(entry).await,
            None => Ok(()),
        }
    }

    /// Settles one journal entry (see [`reconcile`](Self::reconcile)).
    async fn settle(&self, entry: journal::Entry) -> anyhow::Result<()> {
        let lock = self.locks.entry(entry.server);
        let _held = lock.lock().await;
        if !self.journal.entries().contains(&entry) {
            return Ok(());
        }
        let span = tracing::info_span!("reconcile", policy = %entry.policy, server = entry.server, snapshot = %entry.snapshot);
        async {
            tracing::warn!(stopped_at = %entry.stopped_at, "a previous run stopped this server; settling it");
            // The recorded deadline, but never later than the current config allows from the
            // stop (a journal written under a longer snapshot_timeout, by a clock that was
            // ahead, or by hand).
            let now = self.clock.now();
            let budget = self
                .settings
                .power_timeout
                .saturating_add(self.settings.snapshot_timeout);
            let deadline = entry
                .deadline
                .min(wall_after(entry.stopped_at.min(now), budget));
            let left = (deadline - now).to_std().unwrap_or(Duration::ZERO);
            // Waiting for the snapshot is a courtesy to its consistency; starting the server
            // is the rule. Nothing on the way to the start may stop it: a listing that fails
            // (an unreadable record of this server, a server the provider no longer lists)
            // means the server is started now.
            let listed = if left.is_zero() || self.shutdown.is_hurried() {
                tracing::warn!("past the deadline recorded for its snapshot, or shutting down; starting the server now");
                None
            } else {
                // Bounded like the start path: a provider that throttles or hangs must not
                // hold the start back.
                let listing = self.provider.list_snapshots(Some(entry.server));
                Some(
                    tokio::time::timeout(self.settings.power_timeout, listing)
                        .await
                        .unwrap_or_else(|_| {
                            Err(ApiError::Timeout {
                                what: format!("list snapshots of server {}", entry.server),
                                timeout: self.settings.power_timeout,
                            })
                        }),
                )
            };
            if let Some(listed) = listed {
                match listed {
                    Ok(snapshots) => {
                        let in_progress = snapshots
                            .iter()
                            .any(|s| s.name == entry.snapshot && !s.status.is_settled());
                        if in_progress {
                            let wait = tokio::time::timeout(left, self.wait_for(entry.server, &entry.snapshot)).await;
                            if !matches!(wait, Ok(Waited::Settled(..))) {
                                tracing::warn!("snapshot still not finished at its deadline (or shutting down); starting the server anyway");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot see whether its snapshot is still in progress; starting the server now (the snapshot may be inconsistent)"
                    ),
                }
            }
            self.start_again(entry.server).await
        }
        .instrument(span)
        .await
        .map_err(|e| e.context(format!("server {} (stopped by a previous run)", entry.server)))
    }
}

fn dry_run_summary(policy: &Policy, p: &Plan) -> String {
    let mut parts = Vec::new();
    if let (Some(pre), Some(_)) = (&policy.hooks.pre, p.create()) {
        parts.push(format!("would run pre hook {pre:?}"));
    }
    for d in p.deletes_now().chain(p.deletes_before_create()) {
        parts.push(format!("would delete {} ({})", d.name, d.reason));
    }
    match p.create() {
        Some(c) => parts.push(format!("would create {} ({})", c.name, c.reason)),
        None => parts.push(p.outcome_line().to_owned()),
    }
    if let (Some(post), Some(_)) = (&policy.hooks.post, p.create()) {
        parts.push(format!("would run post hook {post:?}"));
    }
    for d in p.deferred() {
        parts.push(format!("then would delete {} ({})", d.name, d.reason));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    //! The executor on tokio's paused clock against the in-memory simulator: minutes of
    //! stopping, snapshotting and timing out take no real time.

    use super::*;
    use crate::clock::TokioClock;
    use crate::policy::Retention;
    use crate::provider::{ListedPage, Scope};
    use crate::retry::RetryRules;
    use crate::schedule::Schedule;
    use crate::simulator::{SimConfig, Simulator};
    use std::path::Path;

    const WEB: ServerId = 12345;
    const SLOT: &str = "2025-01-15T02:30:00Z";
    const NAME: &str = "nightly-20250115T023000Z";

    fn slot() -> DateTime<Utc> {
        SLOT.parse().unwrap()
    }

    fn policy(name: &str, stop_server: bool) -> Policy {
        Policy {
            name: name.to_owned(),
            schedule: Schedule::parse("30 2 * * *", chrono_tz::Tz::UTC).unwrap(),
            servers: vec![WEB],
            retention: Retention {
                keep: 2,
                ..Default::default()
            },
            stop_server,
            description: format!("{name} snapshot"),
            catch_up: true,
            prune_unmanaged: false,
            jitter: None,
            hooks: Default::default(),
            monitoring: Default::default(),
            on_journal_failure: Default::default(),
        }
    }

    fn settings() -> Settings {
        Settings {
            poll_interval: Duration::from_secs(15),
            snapshot_timeout: Duration::from_secs(30 * 60),
            power_timeout: Duration::from_secs(10 * 60),
            max_concurrent: 8,
            dry_run: false,
        }
    }

    struct Rig {
        sim: Simulator,
        executor: Arc<Executor<Simulator>>,
        journal: Arc<Journal>,
        dir: tempfile::TempDir,
    }

    impl Rig {
        fn new(config: SimConfig) -> Self {
            let clock = TokioClock::starting_at("2025-01-15T02:30:05Z".parse().unwrap());
            let config = SimConfig {
                example_snapshots: false,
                ..config
            };
            let sim = Simulator::with_server_ids(config, &[WEB], clock.clone());
            let dir = tempfile::tempdir().unwrap();
            let parts = parts(sim.clone(), clock, dir.path());
            let journal = parts.journal.clone();
            let executor = Executor::new(parts);
            Self {
                sim,
                executor,
                journal,
                dir,
            }
        }

        async fn run(&self, policy: &Policy) -> ServerReport {
            self.executor.run_server(policy, WEB, slot(), None).await
        }

        fn status(&self) -> PowerState {
            self.sim.server(WEB).unwrap().status
        }

        /// The journal as the next process would read it from disk.
        fn journal_on_disk(&self) -> Vec<journal::Entry> {
            Journal::open(self.dir.path()).unwrap().entries()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_timeout_with_stop_server_starts_the_server_and_clears_the_journal() {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(2 * 3600),
            power_delay: Duration::from_secs(30),
            ..SimConfig::default()
        });
        let started = Instant::now();

        let report = rig.run(&policy("nightly", true)).await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report
                .message
                .contains("still in progress after snapshot_timeout 30m"),
            "{}",
            report.message
        );
        assert!(started.elapsed() >= Duration::from_secs(30 * 60));
        let stats = rig.sim.stats();
        assert_eq!(stats.created.len(), 1);
        assert_eq!(stats.created[0].server_status, PowerState::Stopped);
        assert_eq!(rig.status(), PowerState::Running);
        let downtime = stats.downtime(WEB);
        assert_eq!(downtime.len(), 1);
        assert!(downtime[0].started_at.is_some());
        // The snapshot is left to finish on its own, not deleted.
        assert_eq!(rig.sim.snapshots(WEB)[0].status, SnapshotStatus::InProgress);
        assert!(rig.journal.entries().is_empty());
        assert!(rig.journal_on_disk().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_never_reaches_stopped_fails_after_power_timeout_without_a_snapshot() {
        // Stopping takes an hour: far beyond power_timeout, so as good as stuck.
        let power_delay = Duration::from_secs(3600);
        let rig = Rig::new(SimConfig {
            power_delay,
            ..SimConfig::default()
        });
        let started = Instant::now();

        let report = rig.run(&policy("nightly", true)).await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report
                .message
                .contains("server 12345 is stopping, not stopped, after power_timeout 10m"),
            "{}",
            report.message
        );
        assert!(
            report.message.contains("stopping server 12345"),
            "{}",
            report.message
        );
        // power_timeout for the stop, and once more waiting for `stopped` before a start.
        assert!(started.elapsed() >= Duration::from_secs(10 * 60));
        assert!(started.elapsed() < power_delay);
        let stats = rig.sim.stats();
        assert!(
            stats.created.is_empty(),
            "snapshotted a server that never stopped"
        );
        assert_eq!(stats.request_count("start"), 0);
        assert_eq!(rig.status(), PowerState::Stopping);
        // The stop was requested and not undone: the entry stays for the next start.
        let entries = rig.journal_on_disk();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            (entries[0].server, entries[0].snapshot.as_str()),
            (WEB, NAME)
        );

        // Once it has stopped, the next start settles it.
        tokio::time::sleep(power_delay).await;
        assert_eq!(rig.status(), PowerState::Stopped);
        rig.sim
            .set_config(|c| c.power_delay = Duration::from_secs(30));
        let errors = rig.executor.reconcile().await;
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rig.status(), PowerState::Running);
        assert!(rig.journal_on_disk().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unwritable_journal_refuses_to_stop_the_server() {
        let rig = Rig::new(SimConfig::default());
        // A directory where the journal's temp file goes makes every write fail.
        std::fs::create_dir(rig.dir.path().join("power-journal.json.tmp")).unwrap();

        let report = rig.run(&policy("nightly", true)).await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report.message.contains("refusing to stop server 12345"),
            "{}",
            report.message
        );
        let stats = rig.sim.stats();
        assert_eq!(stats.request_count("stop"), 0);
        assert_eq!(stats.request_count("create"), 0);
        assert!(stats.downtime(WEB).is_empty());
        assert_eq!(rig.status(), PowerState::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_waits_for_the_snapshot_in_progress_then_starts_the_server() {
        let snapshot_duration = Duration::from_secs(10 * 60);
        let rig = Rig::new(SimConfig {
            snapshot_duration,
            power_delay: Duration::from_secs(30),
            ..SimConfig::default()
        });
        // What a killed process leaves: the server stopped, its snapshot going, the entry.
        rig.sim.set_server_status(WEB, PowerState::Stopped);
        rig.sim
            .create_snapshot(&CreateSnapshot {
                server_id: WEB,
                name: NAME.to_owned(),
                description: None,
            })
            .await
            .unwrap();
        let done_at = Instant::now() + snapshot_duration;
        let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        rig.journal
            .record(journal::Entry {
                server: WEB,
                policy: "nightly".into(),
                snapshot: NAME.into(),
                stopped_at: now,
                deadline: now + chrono::Duration::hours(1),
            })
            .unwrap();

        let errors = rig.executor.reconcile().await;

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rig.status(), PowerState::Running);
        assert_eq!(rig.sim.snapshots(WEB)[0].status, SnapshotStatus::Completed);
        let stats = rig.sim.stats();
        assert_eq!(stats.request_count("start"), 1);
        let downtime = stats.downtime(WEB);
        assert_eq!(downtime.len(), 1);
        let up = downtime[0].started_at.expect("running again");
        assert!(
            up >= done_at,
            "started before the snapshot left in_progress"
        );
        assert!(rig.journal_on_disk().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_in_an_unknown_state_keeps_its_journal_entry() {
        let rig = Rig::new(SimConfig::default());
        rig.sim
            .set_server_status(WEB, PowerState::Other("maintenance".into()));
        let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        rig.journal
            .record(journal::Entry {
                server: WEB,
                policy: "nightly".into(),
                snapshot: NAME.into(),
                stopped_at: now,
                deadline: now,
            })
            .unwrap();

        let errors = rig.executor.reconcile().await;

        assert_eq!(errors.len(), 1, "not running is not settled");
        assert_eq!(
            rig.journal_on_disk().len(),
            1,
            "the entry stays for a retry"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_restoring_server_is_skipped_before_any_slot_is_freed() {
        let rig = Rig::new(SimConfig::default());
        // Full with own completed snapshots: the plan frees a slot before its create.
        for (i, stamp) in ["20250110", "20250111", "20250112", "20250113", "20250114"]
            .iter()
            .enumerate()
        {
            let name = format!("nightly-{stamp}T023000Z");
            let at: DateTime<Utc> = format!("2025-01-1{i}T02:31:00Z").parse().unwrap();
            rig.sim
                .add_snapshot(WEB, &name, SnapshotStatus::Completed, at);
        }
        rig.sim.set_server_status(WEB, PowerState::Restoring);
        let mut p = policy("nightly", true);
        p.retention.keep = 5;

        let report = rig.run(&p).await;

        assert_eq!(report.result, RunResult::Skipped, "{}", report.message);
        assert!(report.deleted.is_empty(), "deleted {:?}", report.deleted);
        assert_eq!(rig.sim.snapshots(WEB).len(), 5);
    }

    /// A listing answered with another server's records must not be planned as this server's:
    /// its failed snapshot would be deleted and a create sent on the strength of it.
    #[tokio::test(start_paused = true)]
    async fn a_listing_of_another_servers_snapshots_is_a_failure_that_touches_nothing() {
        let rig = Rig::new(SimConfig::default());
        let other: ServerId = WEB + 1;
        let at: DateTime<Utc> = "2025-01-14T02:31:00Z".parse().unwrap();
        let record = |id: u64, name: &str, status: SnapshotStatus| Snapshot {
            id,
            server: crate::model::ServerRef {
                id: other,
                name: "db-server-01".into(),
            },
            name: name.into(),
            status,
            size_mb: None,
            created_at: at,
            description: None,
        };
        let listing = Listing {
            taken_at: Instant::now(),
            by_server: BTreeMap::from([(
                WEB,
                vec![
                    record(901, "nightly-20250113T023000Z", SnapshotStatus::Completed),
                    record(902, "nightly-20250114T023000Z", SnapshotStatus::Failed),
                ],
            )]),
        };

        let report = rig
            .executor
            .run_server(&policy("nightly", false), WEB, slot(), Some(&listing))
            .await;

        assert_eq!(report.result, RunResult::Failed, "{report:#?}");
        assert!(
            report.message.contains("other servers (12346)"),
            "{}",
            report.message
        );
        assert!(
            !report.blocked,
            "not a cap_blocked alert: the cap is not the problem"
        );
        let stats = rig.sim.stats();
        for endpoint in ["create", "delete"] {
            assert_eq!(stats.request_count(endpoint), 0, "{endpoint}");
        }
    }

    /// A reason's words are for people: rewording one must not turn a skip into an unchanged
    /// run (which tells the webhook the policy recovered) or an unchanged run into a skip.
    #[tokio::test(start_paused = true)]
    async fn a_run_result_follows_the_slot_outcome_not_the_words_of_its_reason() {
        let rig = Rig::new(SimConfig::default());
        let p = policy("nightly", true);
        let prepared = Prepared {
            target: WEB.into(),
            snapshots: Vec::new(),
            server_name: String::new(),
        };
        let cases = [
            (
                SlotOutcome::ServerInTransition {
                    state: PowerState::Restoring,
                    reason: "server is restoring; the next fire tries again".into(),
                },
                RunResult::Skipped,
            ),
            (
                SlotOutcome::SlotTaken {
                    snapshot: NAME.into(),
                    reason: format!("skip: {NAME} already holds this slot"),
                },
                RunResult::Unchanged,
            ),
        ];
        for (outcome, want) in cases {
            let planned = Plan {
                server: WEB,
                policy: p.name.clone(),
                slot: slot(),
                outcome,
                decisions: Vec::new(),
                notes: Vec::new(),
                warnings: Vec::new(),
            };
            let mut report = ServerReport {
                policy: p.name.clone(),
                server: WEB,
                slot: slot(),
                snapshot: NAME.into(),
                result: RunResult::Failed,
                created: None,
                deleted: Vec::new(),
                message: String::new(),
                blocked: false,
                created_id: None,
                plan: None,
            };

            rig.executor
                .apply(&p, slot(), &prepared, &planned, &mut report)
                .await
                .unwrap();

            assert_eq!(report.result, want, "{:?}", planned.outcome);
            assert_eq!(report.message, planned.outcome_line());
        }
        assert_eq!(rig.sim.stats().request_count("create"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_policy_after_a_timed_out_snapshot_sees_it_stuck_and_fails_naming_it() {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(2 * 3600),
            refuse_create_while_in_progress: true,
            ..SimConfig::default()
        });
        let work = vec![
            (policy("nightly", false), WEB, slot()),
            (policy("nightly2", false), WEB, slot()),
        ];

        let reports = rig.executor.run_all(work).await;

        let stats = rig.sim.stats();
        assert_eq!(stats.in_progress_refusals, 0, "{reports:#?}");
        assert_eq!(stats.created.len(), 1);
        assert_eq!(stats.request_count("delete"), 0);
        let results: Vec<RunResult> = reports.iter().map(|r| r.result).collect();
        assert_eq!(
            results,
            [RunResult::Failed, RunResult::Failed],
            "{reports:#?}"
        );
        // Whichever ran second found the first one's snapshot past snapshot_timeout.
        assert!(
            reports.iter().any(|r| r
                .message
                .contains("snapshot stuck longer than snapshot_timeout 30m")
                && r.message.contains("-20250115T023000Z")),
            "{reports:#?}"
        );
    }

    /// The simulator, misbehaving in one way a test asks for.
    #[derive(Clone)]
    struct Faulty {
        sim: Simulator,
        /// Once a listing has shown this snapshot completed, every request fails with 503
        /// for this long.
        outage_after_completed: Option<(&'static str, Duration)>,
        outage_until: Arc<Mutex<Option<Instant>>>,
        panic_on_create: bool,
        /// Every listing fails as an unreadable answer does.
        list_fails: bool,
        /// Once a snapshot of this server was requested, listings that include it fail as an
        /// unreadable record of it makes them.
        bad_server: Option<ServerId>,
        bad_now: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Faulty {
        fn new(sim: &Simulator) -> Self {
            Self {
                sim: sim.clone(),
                outage_after_completed: None,
                outage_until: Arc::default(),
                panic_on_create: false,
                list_fails: false,
                bad_server: None,
                bad_now: Arc::default(),
            }
        }

        fn down(&self) -> Result<(), ApiError> {
            let until = *self.outage_until.lock().unwrap();
            match until {
                Some(t) if Instant::now() < t => Err(ApiError::Server {
                    what: "anything".into(),
                    status: 503,
                    message: "outage".into(),
                }),
                _ => Ok(()),
            }
        }
    }

    impl Provider for Faulty {
        async fn list_page(
            &self,
            scope: Scope<'_>,
            link: Option<&str>,
        ) -> Result<ListedPage, ApiError> {
            self.down()?;
            let bad = self.bad_now.load(std::sync::atomic::Ordering::Relaxed)
                && match scope {
                    Scope::Server(s) => Some(s) == self.bad_server,
                    Scope::Servers(_) | Scope::Account => true,
                };
            if self.list_fails || bad {
                return Err(ApiError::Decode {
                    what: "list snapshots".into(),
                    message: "results[2].created_at: invalid type: null".into(),
                });
            }
            let list = self.sim.list_page(scope, link).await?;
            if let Some((name, length)) = self.outage_after_completed {
                let done = list
                    .snapshots
                    .iter()
                    .any(|s| s.name == name && s.status == SnapshotStatus::Completed);
                let mut until = self.outage_until.lock().unwrap();
                if done && until.is_none() {
                    *until = Some(Instant::now() + length);
                }
            }
            Ok(list)
        }
        async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
            self.down()?;
            if Some(request.server_id) == self.bad_server {
                self.bad_now
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            let created = self.sim.create_snapshot(request).await;
            assert!(!self.panic_on_create, "a bug between stop and start");
            created
        }
        async fn delete_snapshot(&self, id: u64) -> Result<(), ApiError> {
            self.down()?;
            self.sim.delete_snapshot(id).await
        }
        async fn restore_snapshot(
            &self,
            id: u64,
        ) -> Result<crate::model::RestoreStarted, ApiError> {
            self.down()?;
            self.sim.restore_snapshot(id).await
        }
        async fn get_server(&self, id: ServerId) -> Result<crate::model::Server, ApiError> {
            self.down()?;
            self.sim.get_server(id).await
        }
        async fn stop_server(&self, id: ServerId) -> Result<crate::model::Server, ApiError> {
            self.down()?;
            self.sim.stop_server(id).await
        }
        async fn start_server(&self, id: ServerId) -> Result<crate::model::Server, ApiError> {
            self.down()?;
            self.sim.start_server(id).await
        }
    }

    /// `provider` with the retry rules production uses (seeded, so runs replay).
    fn retrying<P: Provider>(provider: P) -> Arc<Retrying<P>> {
        Arc::new(Retrying::new(provider, RetryRules::new(5).seeded(1)))
    }

    fn faulty_executor(faulty: &Faulty, dir: &Path) -> Arc<Executor<Faulty>> {
        executor_on(faulty.clone(), dir, settings(), Shutdown::new())
    }

    /// What an executor on `provider` works with: the retry rules, its journal and run log in
    /// `dir`, muted alerts, the tests' settings.
    fn parts<P: Provider>(provider: P, clock: Arc<TokioClock>, dir: &Path) -> Parts<P> {
        Parts {
            provider: retrying(provider),
            clock,
            journal: Arc::new(Journal::open(dir).unwrap()),
            runlog: Arc::new(RunLog::open(dir)),
            alerts: Alerts::muted(),
            settings: settings(),
            shutdown: Shutdown::new(),
        }
    }

    /// An executor on `provider` with its journal in `dir`, its clock where the rigs' starts.
    fn executor_on<P: Provider>(
        provider: P,
        dir: &Path,
        settings: Settings,
        shutdown: Shutdown,
    ) -> Arc<Executor<P>> {
        let clock = TokioClock::starting_at("2025-01-15T02:30:05Z".parse().unwrap());
        Executor::new(Parts {
            settings,
            shutdown,
            ..parts(provider, clock, dir)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn provider_down_for_two_minutes_right_after_the_snapshot_completes_still_starts_the_server(
    ) {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(60),
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        let mut faulty = Faulty::new(&rig.sim);
        faulty.outage_after_completed = Some((NAME, Duration::from_secs(120)));
        let dir = tempfile::tempdir().unwrap();
        let executor = faulty_executor(&faulty, dir.path());

        let report = executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await;

        assert!(
            faulty.outage_until.lock().unwrap().is_some(),
            "the outage never began"
        );
        assert_eq!(rig.status(), PowerState::Running, "{report:#?}");
        assert_eq!(report.result, RunResult::Created, "{report:#?}");
        assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_path_that_cannot_succeed_ends_at_power_timeout_and_keeps_the_entry() {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(60),
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        let mut faulty = Faulty::new(&rig.sim);
        // Down for far longer than power_timeout.
        faulty.outage_after_completed = Some((NAME, Duration::from_secs(6 * 3600)));
        let dir = tempfile::tempdir().unwrap();
        let executor = faulty_executor(&faulty, dir.path());
        let started = Instant::now();

        let report = executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report.message.contains("could not be started again")
                && report.message.contains("after power_timeout 10m"),
            "{}",
            report.message
        );
        // The snapshot (1 min) and the stop, then one power_timeout of trying: no earlier.
        assert!(started.elapsed() >= Duration::from_secs(10 * 60));
        assert!(started.elapsed() < Duration::from_secs(20 * 60));
        assert_eq!(rig.status(), PowerState::Stopped);
        assert_eq!(Journal::open(dir.path()).unwrap().entries().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_between_stop_and_start_still_starts_the_server() {
        let rig = Rig::new(SimConfig::default());
        let mut faulty = Faulty::new(&rig.sim);
        faulty.panic_on_create = true;
        let dir = tempfile::tempdir().unwrap();
        let executor = faulty_executor(&faulty, dir.path());

        let report = executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report
                .message
                .contains("internal error: a bug between stop and start"),
            "{}",
            report.message
        );
        assert_eq!(rig.status(), PowerState::Running);
        assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_journal_entry_for_a_deleted_server_is_cleared_not_retried_forever() {
        let rig = Rig::new(SimConfig::default());
        let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        rig.journal
            .record(journal::Entry {
                server: 999,
                policy: "nightly".into(),
                snapshot: NAME.into(),
                stopped_at: now,
                deadline: now,
            })
            .unwrap();

        let errors = rig.executor.reconcile().await;

        assert!(errors.is_empty(), "{errors:?}");
        assert!(rig.journal_on_disk().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_snapshot_fails_the_run_and_names_it_but_a_young_one_is_a_skip() {
        let rig = Rig::new(SimConfig::default());
        let at: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        // Hand-made, in progress for five hours.
        rig.sim.add_snapshot(
            WEB,
            "manual-before-upgrade",
            SnapshotStatus::InProgress,
            at - chrono::Duration::hours(5),
        );

        let report = rig.run(&policy("nightly", false)).await;

        assert_eq!(report.result, RunResult::Failed, "{report:#?}");
        assert!(
            report.message.contains("manual-before-upgrade")
                && report
                    .message
                    .contains("stuck longer than snapshot_timeout 30m"),
            "{}",
            report.message
        );
        assert_eq!(rig.sim.stats().request_count("delete"), 0);
        assert_eq!(
            rig.sim.snapshots(WEB).len(),
            1,
            "the stuck one is never deleted"
        );

        let young = Rig::new(SimConfig::default());
        young.sim.add_snapshot(
            WEB,
            "manual-before-upgrade",
            SnapshotStatus::InProgress,
            at - chrono::Duration::minutes(5),
        );
        let report = young.run(&policy("nightly", false)).await;
        assert_eq!(report.result, RunResult::Skipped, "{report:#?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_while_the_server_is_stopped_starts_it_at_once() {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(3600),
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        let shutdown = Shutdown::new();
        let dir = tempfile::tempdir().unwrap();
        let executor = executor_on(rig.sim.clone(), dir.path(), settings(), shutdown.clone());
        let run = {
            let executor = executor.clone();
            tokio::spawn(async move {
                executor
                    .run_server(&policy("nightly", true), WEB, slot(), None)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(
            rig.status(),
            PowerState::Stopped,
            "stopped for its snapshot"
        );
        let signalled = Instant::now();

        shutdown.hurry();
        let report = run.await.unwrap();

        assert_eq!(rig.status(), PowerState::Running);
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "{:?}",
            signalled.elapsed()
        );
        assert_eq!(report.result, RunResult::Failed);
        assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
        // Nothing new starts once the shutdown has begun.
        let next = executor
            .run_server(&policy("other", true), WEB, slot(), None)
            .await;
        assert_eq!(next.result, RunResult::Skipped);
        assert_eq!(rig.sim.stats().request_count("stop"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn leftovers_are_settled_again_with_back_off_before_a_command_exits() {
        let rig = Rig::new(SimConfig {
            refuse_start: true,
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        rig.sim.set_server_status(WEB, PowerState::Stopped);
        let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        rig.journal
            .record(journal::Entry {
                server: WEB,
                policy: "nightly".into(),
                snapshot: NAME.into(),
                stopped_at: now,
                deadline: now,
            })
            .unwrap();
        assert_eq!(
            rig.executor.reconcile().await.len(),
            1,
            "the start is refused"
        );
        // The provider lets it start a little later (a hold lifted, an outage over).
        let sim = rig.sim.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            sim.set_config(|c| c.refuse_start = false);
        });

        let left = rig.executor.settle_leftovers().await;

        assert!(left.is_empty(), "{left:?}");
        assert_eq!(rig.status(), PowerState::Running);
        assert!(rig.journal_on_disk().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_that_fails_does_not_keep_a_journaled_server_stopped() {
        let rig = Rig::new(SimConfig {
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        rig.sim.set_server_status(WEB, PowerState::Stopped);
        let mut faulty = Faulty::new(&rig.sim);
        faulty.list_fails = true;
        let dir = tempfile::tempdir().unwrap();
        let executor = faulty_executor(&faulty, dir.path());
        let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        for (server, deadline) in [(WEB, now + chrono::Duration::hours(1)), (999, now)] {
            executor
                .journal()
                .record(journal::Entry {
                    server,
                    policy: "nightly".into(),
                    snapshot: NAME.into(),
                    stopped_at: now,
                    deadline,
                })
                .unwrap();
        }

        let errors = executor.reconcile().await;

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rig.status(), PowerState::Running);
        assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_timeout_shorter_than_poll_interval_ends_the_wait_on_time() {
        let rig = Rig::new(SimConfig {
            snapshot_duration: Duration::from_secs(3600),
            power_delay: Duration::from_secs(1),
            ..SimConfig::default()
        });
        let dir = tempfile::tempdir().unwrap();
        let executor = executor_on(
            rig.sim.clone(),
            dir.path(),
            Settings {
                poll_interval: Duration::from_secs(45),
                snapshot_timeout: Duration::from_secs(5),
                ..settings()
            },
            Shutdown::new(),
        );
        let started = Instant::now();

        let report = executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await;

        assert_eq!(report.result, RunResult::Failed);
        assert!(
            report.message.contains("snapshot_timeout 5s"),
            "{}",
            report.message
        );
        let downtime = rig.sim.stats().downtime(WEB);
        let down = downtime[0].duration().expect("running again");
        assert!(down < Duration::from_secs(15), "stopped for {down:?}");
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_journal_deadline_far_ahead_is_capped_by_the_current_config() {
        let rig = Rig::new(SimConfig {
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        });
        // Stopped 50 minutes ago for a snapshot that never finishes; the entry claims to wait
        // until 9999. snapshot_timeout (30m) + power_timeout (10m) from the stop are over.
        rig.sim.set_server_status(WEB, PowerState::Stopped);
        let stopped_at: DateTime<Utc> = "2025-01-15T01:40:05Z".parse().unwrap();
        rig.sim
            .add_snapshot(WEB, NAME, SnapshotStatus::InProgress, stopped_at);
        rig.journal
            .record(journal::Entry {
                server: WEB,
                policy: "nightly".into(),
                snapshot: NAME.into(),
                stopped_at,
                deadline: "9999-12-31T23:59:59Z".parse().unwrap(),
            })
            .unwrap();
        let started = Instant::now();

        let errors = rig.executor.reconcile().await;

        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(rig.status(), PowerState::Running);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreadable_record_of_one_waiting_server_does_not_keep_the_others_stopped() {
        const DB: ServerId = 12346;
        let clock = TokioClock::starting_at("2025-01-15T02:30:05Z".parse().unwrap());
        let sim = Simulator::with_server_ids(
            SimConfig {
                example_snapshots: false,
                snapshot_duration: Duration::from_secs(60),
                power_delay: Duration::from_secs(10),
                ..SimConfig::default()
            },
            &[WEB, DB],
            clock.clone(),
        );
        let mut faulty = Faulty::new(&sim);
        faulty.bad_server = Some(DB);
        let dir = tempfile::tempdir().unwrap();
        let executor = Executor::new(parts(faulty, clock, dir.path()));
        let work = vec![
            (policy("nightly", true), WEB, slot()),
            (policy("nightly", true), DB, slot()),
        ];

        let reports = executor.run_all(work).await;

        let web = reports.iter().find(|r| r.server == WEB).unwrap();
        assert_eq!(web.result, RunResult::Created, "{reports:#?}");
        let down = sim.stats().downtime(WEB)[0]
            .duration()
            .expect("running again");
        assert!(
            down < Duration::from_secs(5 * 60),
            "WEB stopped for {down:?}"
        );
        // DB's snapshot could never be seen: it times out, and DB runs again too.
        assert_eq!(sim.server(DB).unwrap().status, PowerState::Running);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dry_run_decides_like_the_real_run_on_a_restoring_server_and_a_stuck_snapshot() {
        let rig = Rig::new(SimConfig::default());
        let dir = tempfile::tempdir().unwrap();
        let dry = executor_on(
            rig.sim.clone(),
            dir.path(),
            Settings {
                dry_run: true,
                ..settings()
            },
            Shutdown::new(),
        );
        rig.sim.set_server_status(WEB, PowerState::Restoring);

        let restoring = dry
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await;

        assert_eq!(restoring.result, RunResult::Skipped, "{restoring:#?}");
        assert!(
            restoring.message.contains("restoring"),
            "{}",
            restoring.message
        );

        rig.sim.set_server_status(WEB, PowerState::Running);
        let at: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().unwrap();
        rig.sim.add_snapshot(
            WEB,
            "manual-before-upgrade",
            SnapshotStatus::InProgress,
            at - chrono::Duration::hours(5),
        );
        let stuck = dry
            .run_server(&policy("nightly", false), WEB, slot(), None)
            .await;
        assert_eq!(stuck.result, RunResult::Failed, "{stuck:#?}");
        assert!(stuck.message.contains("stuck"), "{}", stuck.message);
        let stats = rig.sim.stats();
        for endpoint in ["create", "delete", "stop", "start"] {
            assert_eq!(stats.request_count(endpoint), 0, "{endpoint}");
        }
    }
}
