//! Catch-up at the binary: `run` started after a schedule's latest slot, with nothing recorded
//! in `state_dir`, waits for the next fire. A fresh install of a `stop_server` policy must not
//! stop its server the moment the daemon starts.

use std::time::Duration;

use snapshot_scheduler::model::ServerId;
use snapshot_scheduler::simulator::SimConfig;

use crate::common::{bin, config_with_policy, policy, Daemon, Scratch, Setup};

const WEB: ServerId = 12345;
const OTHER: ServerId = 12346;
/// January 1st, 03:00:00: its latest slot is always in the past, the next one months away.
const YEARLY: &str = "0 0 3 1 1 *";
/// Fires every two seconds: proof that the daemon is up and working on its schedule.
const EVERY_2S: &str = "*/2 * * * * *";

/// The `tick` policy has fired twice: the start-up is long over, and any work the start-up
/// dispatched has begun.
fn ticked_twice(log: &str) -> bool {
    log.lines()
        .filter(|l| l.contains("policy fired") && l.contains("policy=tick"))
        .count()
        >= 2
}

fn policies() -> String {
    format!(
        "{}\n\n[[policy]]\n{}",
        policy("db", YEARLY, &[WEB], "stop_server = true"),
        policy("tick", EVERY_2S, &[OTHER], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_simulate_started_after_the_last_slot_neither_fires_nor_stops() {
    let scratch = Scratch::new();
    let config = scratch.config(
        &config_with_policy(&policies()),
        "https://provider.invalid/api/v1",
    );
    let mut daemon = Daemon::start(&["--simulate"], &config);
    daemon
        .until("the tick policy fired twice", ticked_twice)
        .await;
    daemon.stop().await;
    let log = daemon.log();
    let db: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("policy=db") && l.contains("policy fired") || l.contains("{policy=db")
        })
        .collect();
    assert!(
        db.is_empty(),
        "the db policy did something at start-up: {db:#?}"
    );
    assert!(log.contains("waiting for its next fire policy=db"), "{log}");
    assert!(!log.contains("stopping the server"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_started_after_the_last_slot_creates_nothing_and_stops_nothing() {
    let setup = Setup::new(
        &[WEB, OTHER],
        SimConfig {
            snapshot_duration: Duration::from_millis(300),
            power_delay: Duration::from_millis(100),
            example_snapshots: false,
            ..SimConfig::default()
        },
        &policies(),
        "",
    )
    .await;
    // Twice: the first start records the policies, the second one finds the record and still
    // has nothing to catch up.
    for life in 1..=2 {
        let mut daemon = Daemon::start(&[], &setup.config);
        daemon
            .until("the tick policy fired twice", ticked_twice)
            .await;
        daemon.stop().await;
        let stats = setup.sim.stats();
        let on_web: Vec<_> = stats.created.iter().filter(|c| c.server == WEB).collect();
        assert!(
            on_web.is_empty(),
            "start {life}: created {on_web:?}\n{}",
            daemon.log()
        );
        assert_eq!(
            stats.request_count("stop"),
            0,
            "start {life}\n{}",
            daemon.log()
        );
    }
    assert!(
        setup
            .scratch
            .state_dir()
            .join("handled-slots.json")
            .exists(),
        "the handled slots are kept in state_dir"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_policy_is_named_at_check_start_and_reload_with_what_to_do() {
    let setup = Setup::new(
        &[WEB],
        SimConfig {
            snapshot_duration: Duration::from_millis(300),
            example_snapshots: false,
            ..SimConfig::default()
        },
        &policy("db", YEARLY, &[WEB], ""),
        "",
    )
    .await;
    let once = crate::common::run(bin().arg("-c").arg(&setup.config).arg("once"));
    assert_eq!(
        once.status.code(),
        Some(0),
        "{}",
        crate::common::stderr(&once)
    );
    let renamed = setup.scratch.config(
        &crate::common::fast_config(&policy("database", YEARLY, &[WEB], ""), ""),
        &setup.base_url,
    );
    let warned = |text: &str| {
        text.contains("policy \"db\" has runs recorded in")
            && text.contains("name the policy \"db\" again, or delete them by hand")
    };

    let check = crate::common::run(bin().arg("-c").arg(&renamed).arg("check"));
    assert_eq!(check.status.code(), Some(0));
    assert!(
        warned(&crate::common::stderr(&check)),
        "{}",
        crate::common::stderr(&check)
    );

    let mut daemon = Daemon::start(&[], &renamed);
    daemon
        .until("the start-up warns about db", |log| {
            warned(log) && log.contains("snapshot-scheduler running")
        })
        .await;
    daemon.stop().await;

    // Named again: no warning at start; renamed while running: the reload warns.
    setup.scratch.config(
        &crate::common::fast_config(&policy("db", YEARLY, &[WEB], ""), ""),
        &setup.base_url,
    );
    let mut daemon = Daemon::start(&[], &setup.config);
    daemon
        .until("the daemon runs", |log| {
            log.contains("snapshot-scheduler running")
        })
        .await;
    setup.scratch.config(
        &crate::common::fast_config(&policy("database", YEARLY, &[WEB], ""), ""),
        &setup.base_url,
    );
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    daemon
        .until("the reload warns about db", |log| {
            log.contains("config reloaded") && warned(log)
        })
        .await;
    let log = daemon.log();
    let before_reload = &log[..log.find("config reloaded").unwrap_or(0)];
    assert!(
        !warned(before_reload),
        "warned while db was configured:\n{log}"
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_after_once_and_a_schedule_change_neither_fires_nor_stops() {
    let setup = Setup::new(
        &[WEB, OTHER],
        SimConfig {
            snapshot_duration: Duration::from_millis(300),
            power_delay: Duration::from_millis(100),
            example_snapshots: false,
            ..SimConfig::default()
        },
        &policies(),
        "",
    )
    .await;
    // Tried by hand first: `once` leaves last runs, but no handled slots.
    let once = crate::common::run(
        bin()
            .arg("-c")
            .arg(&setup.config)
            .args(["once", "--policy", "db"]),
    );
    assert_eq!(
        once.status.code(),
        Some(0),
        "{}",
        crate::common::stderr(&once)
    );
    let stops = setup.sim.stats().request_count("stop");
    // Then the schedule moves (its latest slot is now after the one `once` took).
    let moved = std::fs::read_to_string(&setup.config)
        .unwrap()
        .replace(YEARLY, "0 0 3 2 1 *");
    std::fs::write(&setup.config, moved).unwrap();

    let mut daemon = Daemon::start(&[], &setup.config);
    daemon
        .until("the tick policy fired twice", ticked_twice)
        .await;
    daemon.stop().await;

    let log = daemon.log();
    assert_eq!(setup.sim.stats().request_count("stop"), stops, "{log}");
    assert!(!log.contains("policy fired policy=db"), "db fired\n{log}");
}
