//! once, plan and the rotation engine end to end: the real binary against a simulated provider
//! served from the test process, asserting what the provider saw and what the operator reads.

use std::process::{Output, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use snapshot_scheduler::model::{PowerState, ServerId, Snapshot, SnapshotStatus};
use snapshot_scheduler::policy::snapshot_name;
use snapshot_scheduler::schedule::Schedule;
use snapshot_scheduler::simulator::{SimConfig, Simulator};

use crate::common::{bin, policy, stderr, stdout, Setup};

const WEB: ServerId = 12345;
const DB: ServerId = 12346;

/// January 1st: the slot stays the same for the whole test run, whatever the time of day.
const YEARLY: &str = "0 0 1 1 *";
/// July 1st, for a second policy on the same server.
const MIDYEAR: &str = "0 0 1 7 *";

const OLDEST: &str = "nightly-20250101T023000Z";
const OLDER: &str = "nightly-20250102T023000Z";
const OLD: &str = "nightly-20250103T023000Z";

/// A simulator that is quick enough for real time and starts without foreign snapshots.
fn quick() -> SimConfig {
    SimConfig {
        snapshot_duration: Duration::from_secs(1),
        power_delay: Duration::from_millis(300),
        example_snapshots: false,
        ..SimConfig::default()
    }
}

/// The name `once` gives the current slot of a policy on `schedule`.
fn slot_name(policy: &str, schedule: &str) -> String {
    let s = Schedule::parse(schedule, chrono_tz::Tz::UTC).unwrap();
    snapshot_name(policy, s.slot_at(Utc::now()).unwrap())
}

/// The slot a seeded snapshot name stands for, as its creation time.
fn stamp_of(name: &str) -> DateTime<Utc> {
    let stamp = &name[name.len() - 16..];
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .unwrap()
        .and_utc()
}

fn seed(sim: &Simulator, server: ServerId, names: &[&str]) {
    for name in names {
        let at = if name.starts_with("nightly-") {
            stamp_of(name)
        } else {
            "2025-01-10T12:00:00Z".parse().unwrap()
        };
        sim.add_snapshot(server, name, SnapshotStatus::Completed, at);
    }
}

impl Setup {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = bin();
        cmd.arg("--config").arg(&self.config).args(args);
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs the binary without blocking the runtime that serves the simulator.
    async fn run(&self, args: &[&str]) -> Output {
        let run = self.command(args).output();
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("{args:?} did not finish within 30 s"))
            .expect("the binary runs")
    }

    fn snapshot(&self, server: ServerId, name: &str) -> Option<Snapshot> {
        self.sim
            .snapshots(server)
            .into_iter()
            .find(|s| s.name == name)
    }

    fn names(&self, server: ServerId) -> Vec<String> {
        self.sim
            .snapshots(server)
            .into_iter()
            .map(|s| s.name)
            .collect()
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn explain(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// The summary line of one server and policy.
fn summary_line(out: &Output, server: ServerId, policy: &str) -> String {
    stdout(out)
        .lines()
        .find(|l| {
            let mut words = l.split_whitespace();
            words.next() == Some(&server.to_string()) && words.next() == Some(policy)
        })
        .unwrap_or_else(|| panic!("no summary line for {server} {policy}\n{}", explain(out)))
        .to_owned()
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---- rotation ----

#[tokio::test]
async fn full_rotation_at_the_cap_deletes_the_oldest_own_and_keeps_foreign_ones() {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    let foreign = [
        "pre-migration-snapshot",
        "weekly-snapshot-2025-01-08",
        "manual",
    ];
    seed(&setup.sim, WEB, &[OLDEST, OLDER]);
    seed(&setup.sim, WEB, &foreign);
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let created = setup.snapshot(WEB, &new).expect("the new snapshot exists");
    assert_eq!(created.status, SnapshotStatus::Completed);
    let stats = setup.sim.stats();
    let deleted: Vec<&str> = stats.deleted.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(deleted, [OLDEST]);
    let mut left = setup.names(WEB);
    left.sort();
    let mut want: Vec<String> = foreign.iter().map(|s| s.to_string()).collect();
    want.extend([OLDER.to_owned(), new.clone()]);
    want.sort();
    assert_eq!(left, want);
    assert_eq!(stats.cap_refusals, 0);
    let line = summary_line(&out, WEB, "nightly");
    assert!(
        line.contains("created") && line.contains(&new) && line.contains(OLDEST),
        "{line}"
    );
    assert!(
        stdout(&out).contains("1 servers, 0 failed"),
        "{}",
        explain(&out)
    );
}

#[tokio::test]
async fn a_lost_create_answer_does_not_make_a_duplicate() {
    let sim = SimConfig {
        lost_create_rate: 1.0,
        ..quick()
    };
    let setup = Setup::new(&[WEB], sim, &policy("nightly", YEARLY, &[WEB], ""), "").await;
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let stats = setup.sim.stats();
    assert_eq!(
        stats.fault_count("lost_create"),
        1,
        "the answer was not lost"
    );
    assert_eq!(stats.duplicate_names, 0);
    assert_eq!(
        stats.request_count("create"),
        1,
        "the create was sent again"
    );
    let same: Vec<Snapshot> = setup
        .sim
        .snapshots(WEB)
        .into_iter()
        .filter(|s| s.name == new)
        .collect();
    assert_eq!(same.len(), 1, "{same:?}");
    assert_eq!(same[0].status, SnapshotStatus::Completed);
    assert!(summary_line(&out, WEB, "nightly").contains("created"));
}

#[tokio::test]
async fn a_failed_snapshot_is_deleted_reported_and_prunes_nothing() {
    let sim = SimConfig {
        failure_rate: 1.0,
        ..quick()
    };
    let setup = Setup::new(&[WEB], sim, &policy("nightly", YEARLY, &[WEB], ""), "").await;
    // keep = 2 with three own: OLDEST goes only once a newer snapshot has completed.
    seed(&setup.sim, WEB, &[OLDEST, OLDER, OLD]);
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(1), "{}", explain(&out));
    let stats = setup.sim.stats();
    let deleted: Vec<(&str, &SnapshotStatus)> = stats
        .deleted
        .iter()
        .map(|d| (d.name.as_str(), &d.status))
        .collect();
    assert_eq!(deleted, [(new.as_str(), &SnapshotStatus::Failed)]);
    assert_eq!(setup.names(WEB), [OLDEST, OLDER, OLD]);
    let line = summary_line(&out, WEB, "nightly");
    assert!(line.contains("FAILED") && line.contains(&new), "{line}");
    assert!(line.contains("ended failed"), "{line}");
    assert!(
        stdout(&out).contains("1 servers, 1 failed"),
        "{}",
        explain(&out)
    );
}

// ---- stopping the server ----

#[tokio::test]
async fn stop_server_snapshots_a_stopped_server_and_starts_it_again_and_leaves_a_stopped_one_stopped(
) {
    let policies = policy("nightly", YEARLY, &[WEB, DB], "stop_server = true");
    let setup = Setup::new(&[WEB, DB], quick(), &policies, "").await;
    setup.sim.set_server_status(DB, PowerState::Stopped);

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let stats = setup.sim.stats();
    assert_eq!(stats.created.len(), 2, "{:?}", stats.created);
    for c in &stats.created {
        assert_eq!(c.server_status, PowerState::Stopped, "{c:?}");
    }
    let new = slot_name("nightly", YEARLY);
    for server in [WEB, DB] {
        let snap = setup.snapshot(server, &new).expect("snapshot exists");
        assert_eq!(snap.status, SnapshotStatus::Completed);
    }
    assert_eq!(setup.sim.server(WEB).unwrap().status, PowerState::Running);
    let downtime = stats.downtime(WEB);
    assert_eq!(downtime.len(), 1, "{downtime:?}");
    assert!(downtime[0].started_at.is_some());
    // The stopped server was neither started nor stopped: one stop and one start, for WEB.
    assert_eq!(setup.sim.server(DB).unwrap().status, PowerState::Stopped);
    assert_eq!(
        (stats.request_count("stop"), stats.request_count("start")),
        (1, 1)
    );
    assert!(setup.journal().is_empty(), "{:?}", setup.journal());
}

#[tokio::test]
async fn stop_server_starts_the_server_again_when_the_snapshot_fails() {
    let sim = SimConfig {
        failure_rate: 1.0,
        ..quick()
    };
    let policies = policy("nightly", YEARLY, &[WEB], "stop_server = true");
    let setup = Setup::new(&[WEB], sim, &policies, "").await;

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(1), "{}", explain(&out));
    let stats = setup.sim.stats();
    assert_eq!(stats.created.len(), 1);
    assert_eq!(stats.created[0].server_status, PowerState::Stopped);
    assert_eq!(setup.sim.server(WEB).unwrap().status, PowerState::Running);
    assert!(summary_line(&out, WEB, "nightly").contains("FAILED"));
    assert!(setup.journal().is_empty(), "{:?}", setup.journal());
}

#[tokio::test]
async fn stop_server_starts_the_server_again_when_the_snapshot_times_out() {
    let sim = SimConfig {
        snapshot_duration: Duration::from_secs(30),
        ..quick()
    };
    let policies = policy("nightly", YEARLY, &[WEB], "stop_server = true");
    let setup = Setup::new(&[WEB], sim, &policies, "snapshot_timeout = \"500ms\"").await;

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(1), "{}", explain(&out));
    let line = summary_line(&out, WEB, "nightly");
    assert!(
        line.contains("FAILED") && line.contains("still in progress after snapshot_timeout"),
        "{line}"
    );
    let stats = setup.sim.stats();
    assert_eq!(stats.created.len(), 1);
    assert_eq!(stats.created[0].server_status, PowerState::Stopped);
    assert_eq!(setup.sim.server(WEB).unwrap().status, PowerState::Running);
    assert!(setup.journal().is_empty(), "{:?}", setup.journal());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_stopped_then_once_again_starts_the_server_after_its_snapshot() {
    let snapshot_duration = Duration::from_secs(2);
    let sim = SimConfig {
        snapshot_duration,
        ..quick()
    };
    let policies = policy("nightly", YEARLY, &[WEB], "stop_server = true");
    let setup = Setup::new(&[WEB], sim, &policies, "").await;
    let new = slot_name("nightly", YEARLY);

    let mut first = setup
        .command(&["once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let sim = setup.sim.clone();
    wait_until("the server is stopped", Duration::from_secs(10), || {
        sim.server(WEB).unwrap().status == PowerState::Stopped
    })
    .await;
    wait_until("the snapshot is requested", Duration::from_secs(10), || {
        !sim.stats().created.is_empty()
    })
    .await;
    let requested_by = tokio::time::Instant::now();
    first.kill().await.expect("SIGKILL");

    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Stopped);
    let snap = setup.snapshot(WEB, &new).expect("the snapshot exists");
    assert_eq!(snap.status, SnapshotStatus::InProgress, "killed too late");
    let journal = setup.journal();
    assert_eq!(journal.len(), 1, "{journal:?}");
    assert_eq!(journal[0]["server"], WEB);
    assert_eq!(journal[0]["snapshot"], new.as_str());

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    let stats = sim.stats();
    assert_eq!(stats.created.len(), 1, "a second snapshot was taken");
    assert_eq!(
        setup.snapshot(WEB, &new).map(|s| s.status),
        Some(SnapshotStatus::Completed)
    );
    let downtime = stats.downtime(WEB);
    assert_eq!(downtime.len(), 1, "{downtime:?}");
    let up = downtime[0].started_at.expect("running again");
    // The snapshot left in_progress at most `snapshot_duration` after it was requested; the
    // server came up only after that.
    assert!(
        up >= requested_by + snapshot_duration,
        "started {:?} after the snapshot was requested, before it could finish",
        up.duration_since(requested_by)
    );
    assert!(downtime[0].duration().unwrap() >= snapshot_duration);
    assert!(setup.journal().is_empty(), "{:?}", setup.journal());
}

// ---- looking without touching ----

#[tokio::test]
async fn dry_run_changes_nothing_and_says_what_it_would_do() {
    let policies = policy("nightly", YEARLY, &[WEB], "stop_server = true");
    let setup = Setup::new(&[WEB], quick(), &policies, "").await;
    seed(&setup.sim, WEB, &[OLDEST, OLDER, "pre-migration-snapshot"]);
    let before = setup.sim.snapshots(WEB);
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["once", "--dry-run"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let stats = setup.sim.stats();
    for endpoint in ["create", "delete", "stop", "start", "restore"] {
        assert_eq!(stats.request_count(endpoint), 0, "{endpoint} was requested");
    }
    assert_eq!(setup.sim.snapshots(WEB), before);
    assert_eq!(setup.sim.server(WEB).unwrap().status, PowerState::Running);
    let line = summary_line(&out, WEB, "nightly");
    assert!(line.contains("dry-run"), "{line}");
    assert!(line.contains(&format!("would create {new}")), "{line}");
    assert!(
        line.contains(&format!("then would delete {OLDEST}")),
        "{line}"
    );
}

#[tokio::test]
async fn plan_prints_every_decision_with_its_reason_and_json_parses() {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    seed(&setup.sim, WEB, &[OLDEST, OLDER, "pre-migration-snapshot"]);
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["plan"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    let row = |name: &str| {
        text.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
            .to_owned()
    };
    let create = row(&new);
    assert!(
        create.trim_start().starts_with("create") && create.contains("create: slot"),
        "{create}"
    );
    assert!(
        row(OLDER).contains("keep: newest completed (keep=2)"),
        "{text}"
    );
    assert!(
        row(OLDEST).contains("delete: beyond retention, once"),
        "{text}"
    );
    assert!(
        row("pre-migration-snapshot").contains("ignore: not created by this policy"),
        "{text}"
    );

    let out = setup.run(&["plan", "--json"]).await;
    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let plans: Value = serde_json::from_str(&stdout(&out)).expect("plan --json is JSON");
    let plans = plans.as_array().expect("a list of plans");
    assert_eq!(plans.len(), 1);
    assert_eq!(plans[0]["server"], WEB);
    assert_eq!(plans[0]["outcome"]["kind"], "create");
    assert_eq!(plans[0]["outcome"]["name"], new.as_str());
    let actions: Vec<(&str, &str)> = plans[0]["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("pre-migration-snapshot", "ignore"),
            (OLDER, "keep"),
            (OLDEST, "delete_after_create"),
        ]
    );

    let stats = setup.sim.stats();
    assert_eq!(
        (stats.request_count("create"), stats.request_count("delete")),
        (0, 0)
    );
}

#[tokio::test]
async fn plan_says_skip_like_once_for_a_restoring_server_of_a_stop_server_policy() {
    let policies = policy("nightly", YEARLY, &[WEB], "stop_server = true");
    let setup = Setup::new(&[WEB], quick(), &policies, "").await;
    seed(&setup.sim, WEB, &[OLDEST, OLDER, OLD]);
    setup.sim.set_server_status(WEB, PowerState::Restoring);
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["plan"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(
        text.contains("skip: server is restoring (neither running nor stopped)"),
        "{text}"
    );
    assert!(!text.contains(&new), "no create planned:\n{text}");
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("delete")),
        "nothing deleted on a server in transition:\n{text}"
    );

    let out = setup.run(&["plan", "--json"]).await;
    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let plans: Value = serde_json::from_str(&stdout(&out)).expect("plan --json is JSON");
    assert_eq!(
        plans[0]["outcome"]["kind"], "server_in_transition",
        "{plans:#}"
    );

    // The run it stands for says the same.
    let out = setup.run(&["once"]).await;
    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let line = summary_line(&out, WEB, "nightly");
    assert!(line.contains("skipped"), "{line}");
    let stats = setup.sim.stats();
    for endpoint in ["create", "delete", "stop", "start"] {
        assert_eq!(stats.request_count(endpoint), 0, "{endpoint} was requested");
    }
}

/// A create whose answer was lost (in the ledger, not listed): `plan`, the dry run and the
/// run all say it fails as `create_unconfirmed`, and nothing is sent; a ledger that cannot
/// be read stops all three alike.
#[tokio::test]
async fn plan_dry_run_and_once_agree_on_a_create_whose_answer_was_lost() {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    let name = slot_name("nightly", YEARLY);
    let state = setup.scratch.state_dir();
    std::fs::create_dir_all(&state).expect("mkdir state");
    let ledger = state.join("creates.jsonl");
    std::fs::write(
        &ledger,
        format!(
            "{{\"server\":{WEB},\"policy\":\"nightly\",\"name\":\"{name}\",\
             \"at\":\"2026-01-01T03:00:01Z\",\"answer\":\"unknown\"}}\n"
        ),
    )
    .expect("write the ledger");

    let out = setup.run(&["plan", "--json"]).await;
    let plans: Value = serde_json::from_str(&stdout(&out)).expect("plan --json is JSON");
    assert_eq!(
        plans[0]["outcome"]["kind"], "create_unconfirmed",
        "{plans:#}"
    );
    for args in [&["once", "--dry-run"][..], &["once"]] {
        let out = setup.run(args).await;
        assert_eq!(code(&out), Some(1), "{args:?}: {}", explain(&out));
        let line = summary_line(&out, WEB, "nightly");
        assert!(line.contains("answer was lost"), "{args:?}: {line}");
    }

    std::fs::write(&ledger, "garbage\n").expect("write the ledger");
    for args in [&["plan"][..], &["once", "--dry-run"], &["once"]] {
        let out = setup.run(args).await;
        assert_eq!(code(&out), Some(1), "{args:?}: {}", explain(&out));
        assert!(
            stderr(&out).contains("creates.jsonl"),
            "{args:?}: {}",
            explain(&out)
        );
    }
    assert_eq!(setup.sim.stats().request_count("create"), 0);
}

/// `plan` says what the run does: a snapshot in progress past `snapshot_timeout` fails the
/// run, so `plan` prints it as a failure (and `--json` says `snapshot_stuck`), not a skip.
#[tokio::test]
async fn plan_says_failed_like_once_for_a_stuck_snapshot() {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    seed(&setup.sim, WEB, &[OLDEST, OLDER]);
    let stuck = "manual-before-upgrade";
    setup.sim.add_snapshot(
        WEB,
        stuck,
        SnapshotStatus::InProgress,
        Utc::now() - chrono::Duration::hours(5),
    );

    let out = setup.run(&["plan"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    assert!(
        !text.contains("skip:"),
        "a stuck snapshot is no skip:\n{text}"
    );
    let outcome = text
        .lines()
        .find(|l| l.contains("snapshot stuck longer than snapshot_timeout 30m"))
        .unwrap_or_else(|| panic!("no line naming the stuck snapshot:\n{text}"));
    assert!(outcome.trim_start().starts_with("FAILED"), "{outcome}");
    assert!(outcome.contains(stuck), "{outcome}");

    let out = setup.run(&["plan", "--json"]).await;
    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let plans: Value = serde_json::from_str(&stdout(&out)).expect("plan --json is JSON");
    assert_eq!(plans[0]["outcome"]["kind"], "snapshot_stuck", "{plans:#}");
    assert_eq!(plans[0]["outcome"]["snapshots"][0], stuck, "{plans:#}");

    // The runs it stands for say the same.
    for args in [&["once", "--dry-run"][..], &["once"]] {
        let out = setup.run(args).await;
        assert_eq!(code(&out), Some(1), "{args:?}: {}", explain(&out));
        let line = summary_line(&out, WEB, "nightly");
        assert!(
            line.contains("FAILED") && line.contains("snapshot stuck longer"),
            "{args:?}: {line}"
        );
    }
    let stats = setup.sim.stats();
    for endpoint in ["create", "delete"] {
        assert_eq!(stats.request_count(endpoint), 0, "{endpoint} was requested");
    }
}

/// A dry run exits as the real run would: 1 when any server would fail (a stuck snapshot, a
/// server blocked by the cap), as its own summary says.
#[tokio::test]
async fn a_dry_run_exits_1_when_the_real_run_would_fail() {
    const OK: ServerId = 12347;
    let setup = Setup::new(
        &[WEB, DB, OK],
        quick(),
        &policy("nightly", YEARLY, &[WEB, DB, OK], ""),
        "",
    )
    .await;
    setup.sim.add_snapshot(
        WEB,
        "manual-before-upgrade",
        SnapshotStatus::InProgress,
        Utc::now() - chrono::Duration::hours(5),
    );
    seed(&setup.sim, DB, &["m1", "m2", "m3", "m4", "m5"]);

    let dry = setup.run(&["once", "--dry-run"]).await;
    let real = setup.run(&["once"]).await;

    for out in [&dry, &real] {
        assert!(
            stdout(out).contains("3 servers, 2 failed"),
            "{}",
            explain(out)
        );
        assert_eq!(code(out), Some(1), "{}", explain(out));
    }
    assert!(summary_line(&dry, OK, "nightly").contains("dry-run"));
}

/// Two good snapshots of `nightly` on WEB, and a failed one of its current slot.
async fn with_a_failed_snapshot_of_the_slot() -> Setup {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    seed(&setup.sim, WEB, &[OLDEST, OLDER]);
    let new = slot_name("nightly", YEARLY);
    setup
        .sim
        .add_snapshot(WEB, &new, SnapshotStatus::Failed, Utc::now());
    setup
}

/// An own failed snapshot of the current slot leaves the slot without a good snapshot: the
/// run fails (and says the next fire takes a new slot); it is not "unchanged", which counts
/// as a success (and may send `recovered`).
#[tokio::test]
async fn a_failed_snapshot_of_the_current_slot_fails_the_run_not_unchanged() {
    let setup = with_a_failed_snapshot_of_the_slot().await;

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(1), "{}", explain(&out));
    let line = summary_line(&out, WEB, "nightly");
    assert!(line.contains("FAILED"), "{line}");
    assert!(
        line.contains("the snapshot of this slot failed")
            && line.contains("the next fire takes a new slot"),
        "{line}"
    );
    assert!(
        stdout(&out).contains("1 servers, 1 failed"),
        "{}",
        explain(&out)
    );
    // The failed one goes; the good ones stay, as the slot has no newer completed snapshot.
    assert_eq!(setup.names(WEB), [OLDEST, OLDER]);
    assert_eq!(setup.sim.stats().request_count("create"), 0);
}

/// `plan` and a dry run say the failure the run reports for a failed snapshot of the current
/// slot: a FAILED line, `completed: false` in `--json`, and a dry run exiting 1.
#[tokio::test]
async fn plan_and_dry_run_say_failed_like_once_for_a_failed_snapshot_of_the_current_slot() {
    let setup = with_a_failed_snapshot_of_the_slot().await;

    let out = setup.run(&["plan"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    let outcome = text
        .lines()
        .find(|l| l.contains("the snapshot of this slot failed"))
        .unwrap_or_else(|| panic!("no line about the slot's failed snapshot:\n{text}"));
    assert!(outcome.trim_start().starts_with("FAILED"), "{outcome}");
    let out = setup.run(&["plan", "--json"]).await;
    let plans: Value = serde_json::from_str(&stdout(&out)).expect("plan --json is JSON");
    assert_eq!(plans[0]["outcome"]["kind"], "slot_taken", "{plans:#}");
    assert_eq!(plans[0]["outcome"]["completed"], false, "{plans:#}");

    let dry = setup.run(&["once", "--dry-run"]).await;
    assert_eq!(code(&dry), Some(1), "{}", explain(&dry));
    let line = summary_line(&dry, WEB, "nightly");
    assert!(line.contains("FAILED"), "{line}");
    let new = slot_name("nightly", YEARLY);
    assert!(line.contains(&format!("would delete {new}")), "{line}");
    let stats = setup.sim.stats();
    for endpoint in ["create", "delete"] {
        assert_eq!(stats.request_count(endpoint), 0, "{endpoint} was requested");
    }
}

/// `plan` says why a server is blocked by the cap once, on the slot's line.
#[tokio::test]
async fn plan_prints_the_cap_blocked_reason_once() {
    let setup = Setup::new(&[WEB], quick(), &policy("nightly", YEARLY, &[WEB], ""), "").await;
    seed(&setup.sim, WEB, &["m1", "m2", "m3", "m4", "m5"]);

    let out = setup.run(&["plan"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let text = stdout(&out);
    let reasons: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("the server is at the cap of 5"))
        .collect();
    assert_eq!(reasons.len(), 1, "{text}");
    assert!(reasons[0].trim_start().starts_with("FAILED"), "{text}");
}

// ---- many policies, many servers ----

#[tokio::test]
async fn two_policies_on_one_server_take_turns() {
    let sim = SimConfig {
        refuse_create_while_in_progress: true,
        ..quick()
    };
    let policies = format!(
        "{}\n\n[[policy]]\n{}",
        policy("nightly", YEARLY, &[WEB], ""),
        policy("midyear", MIDYEAR, &[WEB], "")
    );
    let setup = Setup::new(&[WEB], sim, &policies, "").await;

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    let stats = setup.sim.stats();
    assert_eq!(stats.in_progress_refusals, 0, "the two creates overlapped");
    assert_eq!(stats.created.len(), 2);
    for (name, schedule) in [("nightly", YEARLY), ("midyear", MIDYEAR)] {
        let snap = setup.snapshot(WEB, &slot_name(name, schedule));
        assert_eq!(
            snap.map(|s| s.status),
            Some(SnapshotStatus::Completed),
            "{name}"
        );
        assert!(summary_line(&out, WEB, name).contains("created"));
    }
}

#[tokio::test]
async fn twenty_servers_are_watched_with_one_shared_listing() {
    let servers: Vec<ServerId> = (101..=120).collect();
    let policies = policy("nightly", YEARLY, &servers, "");
    let setup = Setup::new(&servers, quick(), &policies, "max_concurrent = 20").await;
    let new = slot_name("nightly", YEARLY);

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    assert!(
        stdout(&out).contains("20 servers, 0 failed"),
        "{}",
        explain(&out)
    );
    for server in &servers {
        let snap = setup.snapshot(*server, &new);
        assert_eq!(
            snap.map(|s| s.status),
            Some(SnapshotStatus::Completed),
            "{server}"
        );
    }
    // One listing up front, then one per poll while any snapshot is in progress: a 1 s
    // snapshot polled from 200 ms with x1.5 backoff is about 4 polls. Polling per server
    // would be at least 20 x 4.
    let lists = setup.sim.stats().request_count("list");
    assert!(lists <= 8, "{lists} list requests for 20 servers");
}

// ---- SIGTERM at each phase of a stop_server run ----

/// Where `once` is when the signal comes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    PreHook,
    Stopping,
    SnapshotInProgress,
    Starting,
}

/// `once` on a `stop_server` policy with hooks that log to `hooks.log`, signalled with
/// SIGTERM at `phase`: the server runs again within seconds, the journal is empty, the post
/// hook ran, and the exit code says the run was interrupted.
async fn sigterm_once_at(phase: Phase) {
    let sim = SimConfig {
        snapshot_duration: if phase == Phase::Starting {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(60)
        },
        power_delay: Duration::from_secs(2),
        ..quick()
    };
    let scratch_log = tempfile::tempdir().unwrap();
    let log = scratch_log.path().join("hooks.log");
    let hooks = format!(
        "stop_server = true\npre_hook = [\"sh\", \"-c\", \"echo pre >> {log}; sleep {pre}\"]\n\
         post_hook = [\"sh\", \"-c\", \"echo post $RESULT >> {log}\"]",
        log = log.display(),
        pre = if phase == Phase::PreHook { 2 } else { 0 },
    );
    let setup = Setup::new(&[WEB], sim, &policy("nightly", YEARLY, &[WEB], &hooks), "").await;
    let mut child = setup
        .command(&["once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let sim = setup.sim.clone();
    let status = |want: PowerState| {
        let sim = sim.clone();
        move || sim.server(WEB).unwrap().status == want
    };
    let wait = Duration::from_secs(20);
    match phase {
        Phase::PreHook => {
            let log = log.clone();
            wait_until("the pre hook runs", wait, move || log.exists()).await
        }
        Phase::Stopping => {
            wait_until("the server is stopping", wait, status(PowerState::Stopping)).await
        }
        Phase::SnapshotInProgress => {
            wait_until("the server is stopped", wait, status(PowerState::Stopped)).await;
            let sim = sim.clone();
            wait_until("the snapshot is requested", wait, move || {
                !sim.stats().created.is_empty()
            })
            .await;
        }
        Phase::Starting => {
            wait_until("the server is starting", wait, status(PowerState::Starting)).await
        }
    }
    let signalled = tokio::time::Instant::now();
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe {
        libc::kill(child.id().expect("running") as i32, libc::SIGTERM);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stdout = String::new();
        let mut stderr = String::new();
        use tokio::io::AsyncReadExt;
        let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (_, _, status) = tokio::join!(
            o.read_to_string(&mut stdout),
            e.read_to_string(&mut stderr),
            child.wait()
        );
        (status.expect("exit status"), stdout, stderr)
    })
    .await
    .unwrap_or_else(|_| panic!("{phase:?}: once did not exit within 30 s of SIGTERM"));
    let (exit, stdout, stderr) = out;
    let explain = format!("{phase:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let took = signalled.elapsed();

    assert_eq!(exit.code(), Some(1), "{explain}");
    assert!(
        took < Duration::from_secs(15),
        "{phase:?}: exited {took:?} after SIGTERM\n{explain}"
    );
    assert_eq!(
        sim.server(WEB).unwrap().status,
        PowerState::Running,
        "{explain}"
    );
    assert!(
        setup.journal().is_empty(),
        "{:?}\n{explain}",
        setup.journal()
    );
    assert!(stderr.contains("interrupted"), "{explain}");
    let hooks_log = std::fs::read_to_string(&log).unwrap_or_default();
    let expected_post = if phase == Phase::Starting {
        "post success"
    } else {
        "post failure"
    };
    assert!(
        hooks_log.contains(expected_post),
        "{phase:?}: hooks log {hooks_log:?}\n{explain}"
    );
    let stats = sim.stats();
    match phase {
        Phase::PreHook => {
            assert_eq!(stats.request_count("stop"), 0, "stopped after SIGTERM");
            assert!(stats.created.is_empty());
        }
        Phase::Stopping | Phase::SnapshotInProgress | Phase::Starting => {
            assert_eq!(stats.request_count("stop"), 1);
        }
    }
    // Whatever was in flight is never deleted.
    assert_eq!(stats.request_count("delete"), 0);
}

#[tokio::test]
async fn sigterm_to_once_during_the_pre_hook_stops_nothing_and_runs_the_post_hook() {
    sigterm_once_at(Phase::PreHook).await;
}

#[tokio::test]
async fn sigterm_to_once_while_the_server_is_stopping_starts_it_again() {
    sigterm_once_at(Phase::Stopping).await;
}

#[tokio::test]
async fn sigterm_to_once_while_its_snapshot_is_in_progress_starts_the_server_at_once() {
    sigterm_once_at(Phase::SnapshotInProgress).await;
}

#[tokio::test]
async fn sigterm_to_once_while_the_server_is_starting_lets_the_start_finish() {
    sigterm_once_at(Phase::Starting).await;
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once_and_the_next_once_settles_the_server() {
    let sim = SimConfig {
        snapshot_duration: Duration::from_secs(3),
        // Slow enough that the first signal's start is still under way at the second.
        power_delay: Duration::from_secs(3),
        ..quick()
    };
    let setup = Setup::new(
        &[WEB],
        sim,
        &policy("nightly", YEARLY, &[WEB], "stop_server = true"),
        "",
    )
    .await;
    let mut child = setup
        .command(&["once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let sim = setup.sim.clone();
    let s = sim.clone();
    wait_until(
        "the server is stopped",
        Duration::from_secs(20),
        move || {
            s.server(WEB).unwrap().status == PowerState::Stopped && !s.stats().created.is_empty()
        },
    )
    .await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("a second SIGTERM exits at once")
        .unwrap();
    assert_eq!(exit.code(), Some(1));

    let out = setup.run(&["once"]).await;

    assert_eq!(code(&out), Some(0), "{}", explain(&out));
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    assert!(setup.journal().is_empty(), "{:?}", setup.journal());
    assert_eq!(sim.stats().created.len(), 1, "a second snapshot was taken");
}

#[tokio::test]
async fn a_rate_limiting_provider_after_sigterm_bounds_the_start_path_by_power_timeout() {
    let sim = SimConfig {
        snapshot_duration: Duration::from_secs(60),
        ..quick()
    };
    let setup = Setup::new(
        &[WEB],
        sim,
        &policy("nightly", YEARLY, &[WEB], "stop_server = true"),
        "power_timeout = \"5s\"",
    )
    .await;
    let mut child = setup
        .command(&["once"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let s = setup.sim.clone();
    wait_until(
        "the server is stopped for its snapshot",
        Duration::from_secs(20),
        move || {
            s.server(WEB).unwrap().status == PowerState::Stopped && !s.stats().created.is_empty()
        },
    )
    .await;
    // From now on every request is refused with a long Retry-After.
    setup.sim.set_config(|c| {
        c.burst_429_rate = 1.0;
        c.burst_retry_after = 100;
    });
    let signalled = tokio::time::Instant::now();
    // SAFETY: kill(2) on the pid of a child this test started.
    unsafe {
        libc::kill(child.id().expect("running") as i32, libc::SIGTERM);
    }
    let mut err = String::new();
    let exit = tokio::time::timeout(Duration::from_secs(60), async {
        use tokio::io::AsyncReadExt;
        let mut e = child.stderr.take().unwrap();
        let (_, status) = tokio::join!(e.read_to_string(&mut err), child.wait());
        status.unwrap()
    })
    .await
    .unwrap_or_else(|_| panic!("once did not give up within 60 s of SIGTERM"));

    // power_timeout (5 s) for the start path, then once more with back-off: never the
    // provider's 100 s.
    assert!(signalled.elapsed() < Duration::from_secs(40), "{err}");
    assert_eq!(exit.code(), Some(1), "{err}");
    assert!(err.contains("SERVER LEFT STOPPED"), "{err}");
    assert_eq!(
        setup.journal().len(),
        1,
        "the entry stays for the next start"
    );

    // The next acting command settles it, as after any other outage.
}
