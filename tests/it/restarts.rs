//! Restarts of the service (`daemon::Service`) on tokio's paused clock against the in-memory
//! simulator: a crash mid-run leaves its slot handled, so the next start never stops the
//! server a second time for it; a run whose snapshot was already requested is finished
//! (waited for, pruned) without a stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use snapshot_scheduler::alerts::Alerts;
use snapshot_scheduler::clock::{Clock, TokioClock};
use snapshot_scheduler::config::{Config, LoadOptions};
use snapshot_scheduler::daemon::Service;
use snapshot_scheduler::model::{PowerState, ServerId, SnapshotStatus};
use snapshot_scheduler::report::RunResult;
use snapshot_scheduler::retry::{RetryRules, Retrying};
use snapshot_scheduler::runlog::RunLog;
use snapshot_scheduler::shutdown::Shutdown;
use snapshot_scheduler::simulator::{SimConfig, Simulator};
use tokio::sync::watch;

const DB: ServerId = 1;

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().expect("a timestamp")
}

fn config() -> Config {
    let text = r#"[api]
base_url = "https://provider.invalid/api/v1"

[daemon]
poll_interval = "10s"
snapshot_timeout = "30m"
power_timeout = "10m"

[[policy]]
name = "db"
schedule = "0 3 * * *"
servers = [1]
keep = 2
stop_server = true
"#;
    Config::parse(
        Path::new("restarts.toml"),
        text,
        LoadOptions { simulate: true },
        &BTreeMap::new(),
    )
    .expect("a valid config")
}

/// A simulator with yesterday's and the day before's snapshots of `db` on the server.
fn simulator(clock: Arc<TokioClock>) -> Simulator {
    let sim = Simulator::new(
        SimConfig {
            snapshot_duration: Duration::from_secs(4 * 60),
            power_delay: Duration::from_secs(30),
            example_snapshots: false,
            ..SimConfig::default()
        },
        &[(DB, "db-server".to_owned())],
        clock,
    );
    for day in ["20250113", "20250114"] {
        let name = format!("db-{day}T030000Z");
        let at = utc(&format!(
            "{}-{}-{}T03:00:00Z",
            &day[..4],
            &day[4..6],
            &day[6..]
        ));
        sim.add_snapshot(DB, &name, SnapshotStatus::Completed, at);
    }
    sim
}

/// Runs one life of the service on `state_dir` until `until` (tokio time from now), then
/// drops it mid-work like a crash.
async fn life(sim: &Simulator, clock: &Arc<TokioClock>, state_dir: &Path, until: Duration) {
    let mut config = config();
    config.daemon.state_dir = state_dir.to_owned();
    let clock: Arc<dyn Clock> = clock.clone();
    // Built as `run` builds it: the journal, the run log and the state lock in state_dir.
    let service = Service::open(
        Retrying::new(sim.clone(), RetryRules::new(5).seeded(1)),
        clock,
        &config,
        Alerts::muted(),
        Shutdown::new(),
    )
    .expect("the service opens its state_dir");
    let (_tx, reload) = watch::channel(config.policies.clone());
    tokio::select! {
        _ = service.run(config.policies.clone(), reload, Duration::from_secs(60), Box::new(|_, _| {})) => {
            panic!("the service ended without being told to")
        }
        () = tokio::time::sleep(until) => {}
    }
    // A crash ends every task of the process; here the tasks the dropped service aborted go
    // (and release the state lock) at the runtime's next turn.
    drop(service);
    tokio::task::yield_now().await;
}

fn names(sim: &Simulator) -> Vec<String> {
    let mut names: Vec<String> = sim.snapshots(DB).into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

#[tokio::test(start_paused = true)]
async fn a_crash_after_the_snapshot_was_requested_is_finished_without_a_second_stop() {
    let clock = TokioClock::starting_at(utc("2025-01-15T02:59:00Z"));
    let sim = simulator(clock.clone());
    let dir = tempfile::tempdir().expect("a temp dir");
    // 03:00 fires; by 03:02 the server is stopped and the snapshot requested (4 minutes).
    life(&sim, &clock, dir.path(), Duration::from_secs(3 * 60)).await;
    assert_eq!(sim.stats().request_count("stop"), 1);
    assert!(names(&sim).contains(&"db-20250115T030000Z".to_owned()));
    tokio::time::sleep(Duration::from_secs(20)).await;
    // The restart settles the journal (waits for the snapshot, starts the server), then
    // finishes the run: nothing created, the oldest pruned, nothing stopped again.
    life(&sim, &clock, dir.path(), Duration::from_secs(60 * 60)).await;
    assert_eq!(sim.stats().request_count("stop"), 1, "stopped again");
    assert_eq!(sim.stats().created.len(), 1);
    assert_eq!(sim.server(DB).map(|s| s.status), Some(PowerState::Running));
    assert_eq!(names(&sim), ["db-20250114T030000Z", "db-20250115T030000Z"]);
    let last = RunLog::open(dir.path()).get("db", DB).expect("a last run");
    assert_eq!(last.slot, utc("2025-01-15T03:00:00Z"));
    assert_eq!(last.result, RunResult::Unchanged);
}

#[tokio::test(start_paused = true)]
async fn a_crash_before_the_snapshot_was_requested_loses_the_slot_without_a_second_stop() {
    let clock = TokioClock::starting_at(utc("2025-01-15T02:59:00Z"));
    let sim = simulator(clock.clone());
    let dir = tempfile::tempdir().expect("a temp dir");
    // 03:00:10: the stop was sent (30 s to take effect); no snapshot yet.
    life(&sim, &clock, dir.path(), Duration::from_secs(70)).await;
    assert_eq!(sim.stats().request_count("stop"), 1);
    assert!(sim.stats().created.is_empty());
    tokio::time::sleep(Duration::from_secs(20)).await;
    // Three restarts: the journal starts the server; the slot is not run again.
    for _ in 0..3 {
        life(&sim, &clock, dir.path(), Duration::from_secs(10 * 60)).await;
    }
    assert_eq!(sim.stats().request_count("stop"), 1, "stopped again");
    assert!(sim.stats().created.is_empty());
    assert_eq!(sim.server(DB).map(|s| s.status), Some(PowerState::Running));
}
