//! The executor on tokio's paused clock against the in-memory simulator: minutes of
//! stopping, snapshotting and timing out take no real time.

use super::*;
use crate::clock::TokioClock;
use crate::fixtures::LostAnswer;
use crate::journal;
use crate::model::{CreateSnapshot, PowerState};
use crate::plan::{Plan, SlotOutcome};
use crate::provider::{ListedPage, Scope};
use crate::retry::RetryRules;
use crate::simulator::{SimConfig, Simulator};
use std::path::Path;

const WEB: ServerId = 12345;
const SLOT: &str = "2025-01-15T02:30:00Z";
const NAME: &str = "nightly-20250115T023000Z";

fn slot() -> DateTime<Utc> {
    SLOT.parse().unwrap()
}

fn policy(name: &str, stop_server: bool) -> Arc<Policy> {
    Arc::new(Policy {
        servers: vec![WEB],
        stop_server,
        ..crate::fixtures::policy(name)
    })
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
        let (sim, clock) = crate::fixtures::simulator(config, &[WEB], "2025-01-15T02:30:05Z");
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

    async fn run(&self, policy: &Arc<Policy>) -> ServerReport {
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
        .await
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
        .await
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
    Arc::make_mut(&mut p).retention.keep = 5;

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
    // A listing groups records by their own server, so only a provider's answer for this
    // server can carry them: handed to the run as this server's.
    let listed = vec![
        record(901, "nightly-20250113T023000Z", SnapshotStatus::Completed),
        record(902, "nightly-20250114T023000Z", SnapshotStatus::Failed),
    ];
    let p = policy("nightly", false);
    let mut report = ServerReport::starting(&p.name, WEB, slot(), p.snapshot_name(slot()));
    let mut turn = rig.executor.turns.take().await;

    let result = rig
        .executor
        .rotate(&p, WEB, slot(), Some(listed), &mut report, &mut turn)
        .await;

    let message = format!("{:#}", result.expect_err("a failure"));
    assert!(message.contains("other servers (12346)"), "{message}");
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
                completed: true,
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
        let mut report = ServerReport::starting(&p.name, WEB, slot(), NAME.into());

        let mut turn = rig.executor.turns.take().await;
        rig.executor
            .apply(&p, &prepared, &planned, &mut report, &mut turn)
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
    /// Once a snapshot was requested, every listing pages on and on, a page this often
    /// (a `next` link to a new page each time, never null).
    endless_after_create: Option<Duration>,
    created: Arc<std::sync::atomic::AtomicBool>,
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
            endless_after_create: None,
            created: Arc::default(),
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
        if let Some(every) = self.endless_after_create {
            if self.created.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                let n: u64 = link
                    .and_then(|l| l.rsplit('=').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1);
                return Ok(ListedPage {
                    next: Some(format!(
                        "http://127.0.0.1/api/v1/snapshots/?cursor={}",
                        n + 1
                    )),
                    ..ListedPage::default()
                });
            }
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
        self.created
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let created = self.sim.create_snapshot(request).await;
        assert!(!self.panic_on_create, "a bug between stop and start");
        created
    }
    async fn delete_snapshot(&self, id: u64) -> Result<(), ApiError> {
        self.down()?;
        self.sim.delete_snapshot(id).await
    }
    async fn restore_snapshot(&self, id: u64) -> Result<crate::model::RestoreStarted, ApiError> {
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
async fn provider_down_for_two_minutes_right_after_the_snapshot_completes_still_starts_the_server()
{
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

/// A status poll whose listing never ends (a provider paging on and on, or one rate limiting
/// it) once held a stopped server down for hours, and then said its snapshot was "still in
/// progress" although no listing had shown it. The round gives up at the waiter's deadline.
#[tokio::test(start_paused = true)]
async fn a_status_listing_that_never_ends_does_not_hold_a_stopped_server_past_its_bound() {
    let rig = Rig::new(SimConfig {
        snapshot_duration: Duration::from_secs(60),
        power_delay: Duration::from_secs(10),
        ..SimConfig::default()
    });
    let mut faulty = Faulty::new(&rig.sim);
    faulty.endless_after_create = Some(Duration::from_secs(1));
    let dir = tempfile::tempdir().unwrap();
    let executor = faulty_executor(&faulty, dir.path());
    let started = Instant::now();

    let report = executor
        .run_server(&policy("nightly", true), WEB, slot(), None)
        .await;

    let s = settings();
    assert!(
        started.elapsed() <= s.snapshot_timeout + 2 * s.power_timeout,
        "the server was down for {:?}",
        started.elapsed()
    );
    assert_eq!(rig.status(), PowerState::Running, "{report:#?}");
    assert_eq!(report.result, RunResult::Failed);
    assert!(
        !report.message.contains("still in progress")
            && report.message.contains("not seen")
            && report.message.contains("snapshot_timeout 30m"),
        "{}",
        report.message
    );
    assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
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
        .await
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
        .await
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
            .await
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
        .await
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
    let (sim, clock) = crate::fixtures::simulator(
        SimConfig {
            snapshot_duration: Duration::from_secs(60),
            power_delay: Duration::from_secs(10),
            ..SimConfig::default()
        },
        &[WEB, DB],
        "2025-01-15T02:30:05Z",
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

/// A server only waiting for its snapshot gives its turn to the next one (so a fleet's
/// snapshots run at once under a small `max_concurrent`), unless it is stopped for the
/// snapshot: then at most `max_concurrent` servers are down at a time.
#[tokio::test(start_paused = true)]
async fn a_waiting_server_gives_its_turn_back_unless_it_is_stopped() {
    const DB: ServerId = 67890;
    let snapshot = Duration::from_secs(10 * 60);
    for stop_server in [false, true] {
        let (sim, _) = crate::fixtures::simulator(
            SimConfig {
                snapshot_duration: snapshot,
                power_delay: Duration::from_secs(5),
                ..SimConfig::default()
            },
            &[WEB, DB],
            "2025-01-15T02:30:05Z",
        );
        let dir = tempfile::tempdir().unwrap();
        let one_at_a_time = Settings {
            max_concurrent: 1,
            ..settings()
        };
        let executor = executor_on(sim.clone(), dir.path(), one_at_a_time, Shutdown::new());
        let work = vec![
            (policy("nightly", stop_server), WEB, slot()),
            (policy("nightly", stop_server), DB, slot()),
        ];
        let started = Instant::now();
        let reports = executor.run_all(work).await;
        let took = started.elapsed();
        assert!(
            reports.iter().all(|r| r.result == RunResult::Created),
            "{reports:?}"
        );
        if stop_server {
            assert!(took >= snapshot * 2, "two servers down at once: {took:?}");
        } else {
            assert!(
                took < snapshot * 3 / 2,
                "the second waited for the first: {took:?}"
            );
        }
    }
}

/// A dry run says what the run would do: "would create" for a slot to take (not a skip, not
/// a failure), and a failure for a slot whose own snapshot failed (the run fails on it).
#[tokio::test(start_paused = true)]
async fn a_dry_run_says_would_create_for_a_free_slot_and_failed_for_a_failed_one() {
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

    let free = dry
        .run_server(&policy("nightly", false), WEB, slot(), None)
        .await;
    assert_eq!(free.result, RunResult::DryRun, "{free:#?}");
    assert!(free.message.contains("would create"), "{}", free.message);

    rig.sim
        .add_snapshot(WEB, NAME, SnapshotStatus::Failed, slot());
    let failed = dry
        .run_server(&policy("nightly", false), WEB, slot(), None)
        .await;
    assert_eq!(failed.result, RunResult::Failed, "{failed:#?}");
}

/// Rule 4 across runs: a create whose answer was lost, and which the provider lists only
/// later, is not sent again by the next run in the same slot (a second `once`, a restarted
/// daemon), though neither the first run's looks nor the next run's listing find it.
#[tokio::test(start_paused = true)]
async fn a_later_run_in_the_slot_does_not_send_a_create_whose_answer_was_lost_again() {
    let rig = Rig::new(SimConfig::default());
    let lost = LostAnswer::new(&rig.sim, Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let nightly = policy("nightly", false);

    let first = faulty_run(&lost, dir.path(), &nightly).await;
    assert_eq!(first.result, RunResult::Failed, "{}", first.message);
    assert_eq!(rig.sim.stats().request_count("create"), 1);

    // The next process on the same state_dir, in the same slot.
    let second = faulty_run(&lost, dir.path(), &nightly).await;
    assert_eq!(second.result, RunResult::Failed, "{}", second.message);
    assert!(
        second.message.contains("answer was lost") && second.message.contains(NAME),
        "{}",
        second.message
    );
    assert_eq!(
        rig.sim.stats().request_count("create"),
        1,
        "the create was sent again: a duplicate {NAME} once the provider lists both"
    );

    // Once listed, the slot is taken: nothing more is created.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let third = faulty_run(&lost, dir.path(), &nightly).await;
    assert!(!third.result.is_failure(), "{}", third.message);
    assert_eq!(rig.sim.stats().request_count("create"), 1);
    assert_eq!(rig.sim.snapshots(WEB).len(), 1);
}

/// A lost create whose looks then fail with a 429 (or a 404, or no connection) is still
/// unconfirmed, not refused: the next run in the slot does not send it again.
#[tokio::test(start_paused = true)]
async fn a_lost_create_whose_looks_are_refused_is_not_sent_again_by_the_next_run() {
    let rig = Rig::new(SimConfig::default());
    let mut lost = LostAnswer::new(&rig.sim, Duration::from_secs(3600));
    lost.looks_refused = true;
    let dir = tempfile::tempdir().unwrap();
    let nightly = policy("nightly", false);
    let first = faulty_run(&lost, dir.path(), &nightly).await;
    assert_eq!(first.result, RunResult::Failed, "{}", first.message);

    lost.looks_refused = false;
    let second = faulty_run(&lost, dir.path(), &nightly).await;

    assert_eq!(second.result, RunResult::Failed, "{}", second.message);
    assert!(
        second.message.contains("answer was lost"),
        "{}",
        second.message
    );
    assert_eq!(rig.sim.stats().request_count("create"), 1, "sent again");
}

/// A create the provider refused (a 4xx) made nothing: the next run in the slot sends it.
#[tokio::test(start_paused = true)]
async fn a_create_the_provider_refused_is_sent_by_the_next_run_in_the_slot() {
    let rig = Rig::new(SimConfig::default());
    let mut provider = LostAnswer::new(&rig.sim, Duration::ZERO);
    provider.refuses = true;
    let dir = tempfile::tempdir().unwrap();
    let nightly = policy("nightly", false);
    let refused = faulty_run(&provider, dir.path(), &nightly).await;
    assert_eq!(refused.result, RunResult::Failed, "{}", refused.message);

    provider.refuses = false;
    provider.lose_answer = false;
    let report = faulty_run(&provider, dir.path(), &nightly).await;

    assert_eq!(report.result, RunResult::Created, "{}", report.message);
}

/// Rule 4 when an account listing misses a record (a delete and a create elsewhere between
/// two of its pages keep `count` the same and shift a record across the page boundary): a
/// run in a slot whose create was sent before reads the server's own listing, finds the
/// snapshot and makes no second one.
#[tokio::test(start_paused = true)]
async fn a_slot_snapshot_an_account_listing_missed_is_not_created_again() {
    let rig = Rig::new(SimConfig {
        snapshot_duration: Duration::from_secs(60),
        ..SimConfig::default()
    });
    let mut provider = LostAnswer::new(&rig.sim, Duration::ZERO);
    provider.lose_answer = false;
    let dir = tempfile::tempdir().unwrap();
    let nightly = policy("nightly", false);
    let first = faulty_run(&provider, dir.path(), &nightly).await;
    assert_eq!(first.result, RunResult::Created, "{}", first.message);

    provider.hidden_from_account = true;
    let executor = executor_on(provider.clone(), dir.path(), settings(), Shutdown::new());
    let reports = executor
        .run_all(vec![
            (nightly.clone(), WEB, slot()),
            (nightly.clone(), WEB + 1, slot()),
        ])
        .await;

    assert!(!reports[0].result.is_failure(), "{}", reports[0].message);
    assert_eq!(
        rig.sim
            .snapshots(WEB)
            .iter()
            .filter(|s| s.name == NAME)
            .count(),
        1,
        "the slot's snapshot was made twice"
    );
}

/// A SIGTERM while a lost create is looked for ends the looks at once: a server stopped for
/// the snapshot is started again without waiting out the back-off.
#[tokio::test(start_paused = true)]
async fn a_shutdown_ends_the_looks_for_a_lost_create_and_starts_the_server_at_once() {
    let rig = Rig::new(SimConfig {
        power_delay: Duration::from_secs(5),
        ..SimConfig::default()
    });
    let lost = LostAnswer::new(&rig.sim, Duration::from_secs(3600));
    let dir = tempfile::tempdir().unwrap();
    let shutdown = Shutdown::new();
    let executor = executor_on(lost, dir.path(), settings(), shutdown.clone());
    let run = tokio::spawn(async move {
        executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await
    });
    // Stopped, created, answer lost, looking (the first wait is 0.5 s and then doubles).
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(rig.sim.stats().request_count("create"), 1);
    assert_eq!(rig.status(), PowerState::Stopped);

    let signalled = Instant::now();
    shutdown.hurry();
    let report = run.await.unwrap();

    assert_eq!(report.result, RunResult::Failed);
    assert_eq!(rig.status(), PowerState::Running);
    assert!(
        signalled.elapsed() <= Duration::from_secs(10),
        "started {:?} after the signal",
        signalled.elapsed()
    );
}

async fn faulty_run(provider: &LostAnswer, dir: &Path, policy: &Arc<Policy>) -> ServerReport {
    executor_on(provider.clone(), dir, settings(), Shutdown::new())
        .run_server(policy, WEB, slot(), None)
        .await
}

/// With `[ha]`, a host that does not lead can record neither the stop nor the create, so it
/// sends neither, and its fence before a delete fails: the fence comes before every provider
/// write.
#[tokio::test(start_paused = true)]
async fn a_host_that_does_not_lead_sends_no_stop_no_create_and_no_delete() {
    use crate::ha::{memory::Memory, Fenced, Leadership};
    let rig = Rig::new(SimConfig::default());
    let store = Memory::new();
    let link = Arc::new(store.link());
    // Never campaigned: it does not lead.
    let leadership = Leadership::new(
        link.clone(),
        "/snapshot-scheduler/t/",
        "ops-2",
        Duration::from_secs(15),
    );
    let fenced = Fenced::new(link, leadership, "/snapshot-scheduler/t/");
    let dir = tempfile::tempdir().unwrap();
    let clock = TokioClock::starting_at("2025-01-15T02:30:05Z".parse().unwrap());
    let executor = Executor::new(Parts {
        journal: Arc::new(Journal::shared(dir.path(), Arc::new(fenced))),
        ..parts(rig.sim.clone(), clock, dir.path())
    });

    for stop_server in [true, false] {
        let report = executor
            .run_server(&policy("nightly", stop_server), WEB, slot(), None)
            .await;
        assert_eq!(report.result, RunResult::Failed, "{}", report.message);
        assert!(
            report.message.contains("does not lead"),
            "{}",
            report.message
        );
    }
    // A slot already taken, with one more snapshot than `keep`: the prune is fenced too.
    let day = |n: i64| slot() - chrono::Duration::days(n);
    for (name, at) in [
        ("nightly-20250113T023000Z", day(2)),
        ("nightly-20250114T023000Z", day(1)),
        (NAME, slot()),
    ] {
        rig.sim
            .add_snapshot(WEB, name, SnapshotStatus::Completed, at);
    }
    let report = executor
        .run_server(&policy("nightly", false), WEB, slot(), None)
        .await;
    assert_eq!(report.result, RunResult::Failed, "{}", report.message);
    let stats = rig.sim.stats();
    assert_eq!(stats.request_count("stop"), 0);
    assert_eq!(stats.request_count("create"), 0);
    assert_eq!(stats.request_count("delete"), 0);
    assert_eq!(rig.status(), PowerState::Running);
}

/// A shutdown that begins while the server is stopping (the daemon's grace not yet over)
/// takes no snapshot of it: a create sent now could still be in progress when the shutdown
/// hurries and starts the server under it. The server is started again, nothing is created.
#[tokio::test(start_paused = true)]
async fn a_shutdown_begun_while_the_server_stops_sends_no_create_and_starts_it_again() {
    let rig = Rig::new(SimConfig {
        power_delay: Duration::from_secs(20),
        ..SimConfig::default()
    });
    let shutdown = Shutdown::new();
    let dir = tempfile::tempdir().unwrap();
    let executor = executor_on(rig.sim.clone(), dir.path(), settings(), shutdown.clone());
    let run = tokio::spawn(async move {
        executor
            .run_server(&policy("nightly", true), WEB, slot(), None)
            .await
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.sim.stats().request_count("stop"), 1);

    shutdown.begin();
    let report = run.await.unwrap();

    assert_eq!(report.result, RunResult::Failed, "{}", report.message);
    assert_eq!(rig.sim.stats().request_count("create"), 0);
    assert_eq!(rig.status(), PowerState::Running);
    assert!(Journal::open(dir.path()).unwrap().entries().is_empty());
}
