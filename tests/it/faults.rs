//! The fault matrix: the real binary against a provider that misbehaves in one way per test,
//! each test named for its fault. What a user would notice is asserted: the exit code or that
//! the daemon keeps running, what the log says, what the provider saw (no write it should not
//! have got, no retry storm), the power state of the server and the power journal.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use snapshot_scheduler::clock::SystemClock;
use snapshot_scheduler::model::{PowerState, ServerId, SnapshotStatus};
use snapshot_scheduler::simulator::{self, SimConfig, Simulator};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{
    bin, bin_as_nobody, config_with_policy, read_journal, serve_sim, stderr, stdout, Daemon,
    Scratch, NOBODY, TOKEN,
};

const WEB: ServerId = 12345;
const EVERY_2S: &str = "*/2 * * * * *";
/// January 1st, 03:00:00: its latest slot is in the past, so `run` fires it once at start-up
/// (catch-up) and never again during a test.
const YEARLY: &str = "0 0 3 1 1 *";

fn quick() -> SimConfig {
    SimConfig {
        snapshot_duration: Duration::from_millis(500),
        power_delay: Duration::from_millis(300),
        example_snapshots: false,
        ..SimConfig::default()
    }
}

/// A config for `policy` with a fast request budget, `api` and `daemon` lines added.
fn config(policy: &str, api: &str, daemon: &str) -> String {
    config_with_policy(policy)
        .replacen(
            "\n[daemon]\n",
            &format!("requests_per_second = 1000\n{api}\n\n[daemon]\n"),
            1,
        )
        .replacen(
            "poll_interval = \"200ms\"\n",
            &format!("poll_interval = \"200ms\"\n{daemon}\n"),
            1,
        )
}

fn policy(schedule: &str, extra: &str) -> String {
    format!("name = \"nightly\"\nschedule = \"{schedule}\"\nservers = [{WEB}]\nkeep = 2\n{extra}")
}

/// A port nobody listens on (bound, then released).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// The power journal as the next start would read it (none without a file; a journal that
/// exists and cannot be read fails the test, never passes as empty).
fn journal(scratch: &Scratch) -> Vec<Value> {
    read_journal(&scratch.state_dir().join("power-journal.json"))
}

/// `once`, without blocking the runtime that serves the simulated provider.
async fn once(config: &Path) -> std::process::Output {
    let mut cmd = bin();
    cmd.arg("--config").arg(config).arg("once");
    tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("the binary runs")
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_unreachable_at_start_up() {
    let addr = free_addr();
    let scratch = Scratch::new();
    let base_url = simulator::base_url(addr);
    let text = config(&policy(EVERY_2S, ""), "max_retries = 1", "");
    let mut daemon = Daemon::start(&[], &scratch.config(&text, &base_url));

    // It starts and says why nothing happens, fire after fire.
    daemon
        .until("two fires reported the provider unreachable", |log| {
            log.contains("snapshot-scheduler running") && count(log, "could not reach the API") >= 2
        })
        .await;

    // The provider comes up on that address: the next fire works, no restart needed.
    let sim = Simulator::new(
        SimConfig {
            token: TOKEN.into(),
            ..quick()
        },
        &[(WEB, "web-server-01".into())],
        Arc::new(SystemClock),
    );
    let (_bound, _task) = simulator::serve(sim.clone(), addr).await.expect("serve");
    daemon
        .until("a snapshot was created and completed", |log| {
            log.contains("created nightly-")
                && sim
                    .snapshots(WEB)
                    .iter()
                    .any(|s| s.status == SnapshotStatus::Completed)
        })
        .await;
    daemon.assert_running();
}

#[tokio::test]
async fn garbage_or_truncated_json_from_the_provider() {
    let cases = [
        (
            "an HTML page",
            "<html><body>Maintenance</body></html>".to_owned(),
            "expected value",
        ),
        (
            "truncated JSON",
            r#"{"count": 1, "next": null, "results": [{"id": 801, "server": {"id": 12345, "na"#
                .to_owned(),
            "EOF while parsing",
        ),
        (
            "a snapshot without its created_at",
            r#"{"count": 1, "next": null, "results": [{"id": 801, "server": {"id": 12345},
                "name": "x", "status": "completed"}]}"#
                .to_owned(),
            "results[0]",
        ),
    ];
    for (what, body, says) in cases {
        let provider = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/api/v1/snapshots/"))
            .respond_with(ResponseTemplate::new(200).set_body_string(body))
            .mount(&provider)
            .await;
        let scratch = Scratch::new();
        let base_url = format!("{}/api/v1", provider.uri());
        let config = scratch.config(&config(&policy(YEARLY, ""), "", ""), &base_url);

        let out = once(&config).await;

        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{what}:\n{text}");
        assert!(
            text.contains("answer to list snapshots of server 12345 could not be read")
                && text.contains(says),
            "{what}: the error names the request and the problem:\n{text}"
        );
        let requests = provider.received_requests().await.expect("recorded");
        let writes: Vec<String> = requests
            .iter()
            .filter(|r| r.method.as_str() != "GET")
            .map(|r| format!("{} {}", r.method, r.url.path()))
            .collect();
        assert!(writes.is_empty(), "{what}: wrote after garbage: {writes:?}");
        // A garbled answer is not retried as if the request had failed.
        assert!(requests.len() <= 2, "{what}: {} requests", requests.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_revoked_mid_run() {
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    let metrics = free_addr();
    let scratch = Scratch::new();
    let text = config(
        &policy(EVERY_2S, ""),
        "",
        &format!("metrics_listen = \"{metrics}\""),
    );
    let mut daemon = Daemon::start(&[], &scratch.config(&text, &base_url));
    daemon
        .until("a snapshot was created", |_| {
            !sim.stats().created.is_empty()
        })
        .await;

    sim.set_token("revoked");
    let before = sim.stats().total_requests;
    daemon
        .until("three fires were refused", |log| {
            count(log, "the API rejected the token") >= 3
        })
        .await;
    let fires = count(&daemon.log(), "policy fired");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = daemon.log();
    let fired = count(&log, "policy fired") - fires + 3;
    let after = sim.stats().total_requests - before;

    daemon.assert_running();
    // A clear error that says what to check, never the token itself.
    let path = scratch.token_path().display().to_string();
    assert!(
        log.contains(&format!(
            "the API rejected the token (check token_file {path}); answer 401"
        )),
        "{log}"
    );
    assert!(!log.contains(TOKEN));
    // No retry storm: a fire asks at most twice (its listing, then the server's own).
    assert!(
        after as usize <= 2 * fired + 2,
        "{after} requests for {fired} fires after the revocation"
    );
    // A metric to alert on.
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("text");
    let unauthorized: f64 = body
        .lines()
        .filter(|l| l.starts_with("snapshot_scheduler_api_requests_total") && l.contains("\"401\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(unauthorized >= 3.0, "401s counted: {unauthorized}\n{body}");
}

/// The journal's temp file is a directory: every write of the journal fails (as root too).
fn break_state_dir(scratch: &Scratch) {
    let tmp = scratch.state_dir().join("power-journal.json.tmp");
    std::fs::create_dir_all(tmp).expect("mkdir");
}

#[tokio::test]
async fn state_dir_cannot_be_written() {
    for (setting, code, snapshotted) in [("skip", 1, false), ("snapshot_running", 0, true)] {
        let (sim, base_url) = serve_sim(&[WEB], quick()).await;
        let scratch = Scratch::new();
        let extra = format!("stop_server = true\non_journal_failure = \"{setting}\"");
        let config = scratch.config(&config(&policy(YEARLY, &extra), "", ""), &base_url);
        break_state_dir(&scratch);

        let out = once(&config).await;

        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{setting}:\n{text}");
        assert!(
            text.contains("refusing to stop")
                && text.contains("cannot be journaled")
                && text.contains(&format!("on_journal_failure = \"{setting}\"")),
            "{setting}: says what it refused and why:\n{text}"
        );
        let stats = sim.stats();
        assert_eq!(
            stats.request_count("stop"),
            0,
            "{setting}: stopped unjournaled"
        );
        assert!(stats.downtime(WEB).is_empty());
        assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
        let created: Vec<PowerState> = stats
            .created
            .iter()
            .map(|c| c.server_status.clone())
            .collect();
        let want = if snapshotted {
            vec![PowerState::Running]
        } else {
            vec![]
        };
        assert_eq!(created, want, "{setting}");
    }
}

#[tokio::test]
async fn server_never_reaches_stopped() {
    let (sim, base_url) = serve_sim(
        &[WEB],
        SimConfig {
            // Stopping takes an hour: as good as stuck.
            power_delay: Duration::from_secs(3600),
            ..quick()
        },
    )
    .await;
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(
            &policy(YEARLY, "stop_server = true"),
            "",
            "power_timeout = \"2s\"",
        ),
        &base_url,
    );

    let out = once(&config).await;

    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("server 12345 is stopping, not stopped, after power_timeout 2s"),
        "{text}"
    );
    let stats = sim.stats();
    assert!(stats.created.is_empty(), "snapshotted a server not stopped");
    assert_eq!(stats.request_count("stop"), 1, "the stop was sent once");
    // Still stopping: the journal keeps it for whoever runs next.
    assert_eq!(journal(&scratch).len(), 1, "{text}");

    // It stops at last; the next command settles it before anything else.
    sim.set_server_status(WEB, PowerState::Stopped);
    sim.set_config(|c| c.power_delay = Duration::from_millis(300));
    let out = once(&config).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    assert!(journal(&scratch).is_empty());
}

/// Records each policy's slot before the latest as the last it handled, as a daemon down
/// since then leaves it: the next start catches the latest slot up at once.
fn missed_the_latest_slot(config: &Path) {
    use snapshot_scheduler::config::{Config, LoadOptions};
    let config = Config::load(config, LoadOptions { simulate: false }).expect("a valid config");
    std::fs::create_dir_all(&config.daemon.state_dir).expect("make the state_dir");
    let log = snapshot_scheduler::runlog::RunLog::open(&config.daemon.state_dir);
    for p in &config.policies {
        let latest = p.schedule.slot_at(chrono::Utc::now()).expect("a slot");
        let before = p.schedule.slot_at(latest - chrono::Duration::seconds(1));
        futures_util::FutureExt::now_or_never(log.mark_handled(p, before.expect("a slot before")))
            .expect("a write to state_dir does not wait")
            .expect("record the handled slot");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refused() {
    let (sim, base_url) = serve_sim(
        &[WEB],
        SimConfig {
            refuse_start: true,
            ..quick()
        },
    )
    .await;
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(&policy(YEARLY, "stop_server = true"), "", ""),
        &base_url,
    );
    missed_the_latest_slot(&config);
    let mut daemon = Daemon::start(&[], &config);

    daemon
        .until("the refused start is reported", |log| {
            log.contains("SERVER LEFT STOPPED")
        })
        .await;
    let log = daemon.log();
    assert!(
        log.contains("server cannot be started: the account is on hold"),
        "the provider's reason is in the log:\n{log}"
    );
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Stopped);
    assert_eq!(journal(&scratch).len(), 1);
    // A refusal is an answer, not a glitch: it is not hammered.
    let starts = sim.stats().request_count("start");
    assert!(starts <= 2, "{starts} starts sent");

    // The provider lets it start again: the running daemon starts it, no restart needed.
    sim.set_config(|c| c.refuse_start = false);
    daemon
        .until("the server runs and the journal is empty", |_| {
            sim.server(WEB).map(|s| s.status) == Some(PowerState::Running)
                && journal(&scratch).is_empty()
        })
        .await;
    daemon.assert_running();
    assert_eq!(
        sim.snapshots(WEB)[0].status,
        SnapshotStatus::Completed,
        "the snapshot itself was taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_right_after_a_stopped_servers_snapshot_completes() {
    // Every request waits 200 ms before it is answered, so the outage can begin between the
    // poll that sees the snapshot completed and the start path's first look at the server.
    let (sim, base_url) = serve_sim(
        &[WEB],
        SimConfig {
            latency: Duration::from_millis(200),
            ..quick()
        },
    )
    .await;
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(
            &policy(YEARLY, "stop_server = true"),
            "",
            "power_timeout = \"2m\"",
        ),
        &base_url,
    );
    let outage = Duration::from_secs(30);
    let watcher = {
        let sim = sim.clone();
        tokio::spawn(async move {
            let mut lists_when_done = None;
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let done = sim
                    .snapshots(WEB)
                    .iter()
                    .any(|s| s.status == SnapshotStatus::Completed);
                let lists = sim.stats().request_count("list");
                match lists_when_done {
                    None if done => lists_when_done = Some(lists),
                    // A listing after completion has been answered: the run knows.
                    Some(n) if lists > n => break,
                    _ => {}
                }
            }
            sim.set_config(|c| c.error_rate = 1.0);
            tokio::time::sleep(outage).await;
            sim.set_config(|c| c.error_rate = 0.0);
        })
    };

    let out = once(&config).await;

    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        watcher.is_finished(),
        "once ended before the outage did\n{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    assert!(journal(&scratch).is_empty(), "{text}");
    assert!(
        text.contains("cannot look at the server; trying again until power_timeout")
            || text.contains("reading a server failed; retrying")
            || text.contains("start request failed"),
        "the outage did not hit the start path:\n{text}"
    );
}

#[tokio::test]
async fn a_stuck_snapshot_fails_the_run_and_names_it() {
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    sim.add_snapshot(
        WEB,
        "manual-before-upgrade",
        SnapshotStatus::InProgress,
        chrono::Utc::now() - chrono::Duration::hours(5),
    );
    let scratch = Scratch::new();
    let config = scratch.config(&config(&policy(YEARLY, ""), "", ""), &base_url);

    let out = once(&config).await;

    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("snapshot stuck longer than snapshot_timeout")
            && text.contains("manual-before-upgrade"),
        "{text}"
    );
    let stats = sim.stats();
    assert_eq!(
        stats.request_count("delete"),
        0,
        "the stuck snapshot is never deleted"
    );
    assert!(stats.created.is_empty());
}

#[tokio::test]
async fn a_future_stamped_own_snapshot_does_not_wipe_retention() {
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    // Made two days ago by a host whose clock said 2031.
    let stale = "nightly-20310601T023000Z";
    sim.add_snapshot(
        WEB,
        stale,
        SnapshotStatus::Completed,
        chrono::Utc::now() - chrono::Duration::days(2),
    );
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(&policy(YEARLY, "").replace("keep = 2", "keep = 1"), "", ""),
        &base_url,
    );

    let plan = {
        let mut cmd = bin();
        cmd.arg("--config").arg(&config).arg("plan");
        tokio::process::Command::from(cmd).output().await.unwrap()
    };
    let out = once(&config).await;

    assert!(
        stdout(&plan).contains("WARNING") && stdout(&plan).contains("host clock was ahead"),
        "{}",
        stdout(&plan)
    );
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let left: Vec<String> = sim.snapshots(WEB).into_iter().map(|s| s.name).collect();
    assert_eq!(left.len(), 1, "{left:?}\n{text}");
    assert_ne!(
        left[0], stale,
        "the new snapshot was deleted, the stale one kept\n{text}"
    );
}

#[tokio::test]
async fn an_own_snapshot_created_in_the_future_neither_wipes_retention_nor_silences_status() {
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    // The provider lists it as created next year.
    let from_the_future = "nightly-20260101T000000Z";
    sim.add_snapshot(
        WEB,
        from_the_future,
        SnapshotStatus::Completed,
        chrono::Utc::now() + chrono::Duration::days(365),
    );
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(&policy(YEARLY, "").replace("keep = 2", "keep = 1"), "", ""),
        &base_url,
    );
    let nagios = || {
        let mut cmd = bin();
        cmd.arg("--config")
            .arg(&config)
            .args(["status", "--nagios"]);
        tokio::process::Command::from(cmd).output()
    };

    let before = nagios().await.unwrap();
    let out = once(&config).await;
    let after = nagios().await.unwrap();

    assert_eq!(before.status.code(), Some(2), "{}", stdout(&before));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{text}");
    let left: Vec<String> = sim.snapshots(WEB).into_iter().map(|s| s.name).collect();
    assert_eq!(left.len(), 1, "{left:?}\n{text}");
    assert_ne!(
        left[0], from_the_future,
        "the new snapshot was deleted\n{text}"
    );
    assert_eq!(after.status.code(), Some(0), "{}", stdout(&after));
}

/// What a killed run leaves in the journal: server `WEB` stopped for a snapshot.
fn stopped_entry() -> Vec<u8> {
    let now = chrono::Utc::now();
    serde_json::to_vec(&serde_json::json!([{
        "server": WEB, "policy": "nightly", "snapshot": "nightly-20250115T023000Z",
        "stopped_at": now - chrono::Duration::minutes(5), "deadline": now + chrono::Duration::hours(1),
    }]))
    .expect("serializes")
}

/// `command` (`once` or `run`) through `cmd`, which must exit on its own within 15 s.
async fn acting(
    mut cmd: std::process::Command,
    command: &str,
    config: &Path,
) -> std::process::Output {
    cmd.arg("--config")
        .arg(config)
        .args(["--log-format", "text", command]);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{command} went on with a journal it could not read"))
        .expect("the binary runs")
}

/// `once` and `run` with `journal` (a path in state_dir) unreadable, by `cmd`: exit 1 naming
/// the file, not one request to the provider, the journal left as it was.
async fn assert_refused_to_act(
    what: &str,
    sim: &Simulator,
    config: &Path,
    journal: &Path,
    cmd: impl Fn() -> std::process::Command,
) {
    let before = std::fs::symlink_metadata(journal)
        .map(|m| (m.is_dir(), std::fs::read(journal).ok()))
        .expect("the journal is there");
    for command in ["once", "run"] {
        let out = acting(cmd(), command, config).await;

        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{what}, {command}:\n{err}");
        assert!(
            err.contains(&format!(
                "power journal {} cannot be read",
                journal.display()
            )),
            "{what}, {command}: the file is not named:\n{err}"
        );
        assert_eq!(
            sim.stats().total_requests,
            0,
            "{what}, {command} acted without its journal:\n{err}"
        );
        let after = std::fs::symlink_metadata(journal)
            .map(|m| (m.is_dir(), std::fs::read(journal).ok()))
            .expect("the journal is still there");
        assert_eq!(after, before, "{what}, {command} changed the journal");
    }
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_journal_cannot_be_read() {
    let whole = stopped_entry();
    let torn = whole[..whole.len() / 2].to_vec();
    for (what, contents) in [("a directory", None), ("torn", Some(torn))] {
        let (sim, base_url) = serve_sim(&[WEB], quick()).await;
        // A previous run stopped the server; its journal entry is what cannot be read now.
        sim.set_server_status(WEB, PowerState::Stopped);
        let scratch = Scratch::new();
        let config = scratch.config(
            &config(&policy(EVERY_2S, "stop_server = true"), "", ""),
            &base_url,
        );
        let journal = scratch.state_dir().join("power-journal.json");
        std::fs::create_dir_all(scratch.state_dir()).expect("mkdir state");
        match contents {
            None => std::fs::create_dir(&journal).expect("mkdir"),
            Some(bytes) => std::fs::write(&journal, bytes).expect("write the journal"),
        }

        assert_refused_to_act(what, &sim, &config, &journal, bin).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_journal_not_readable_by_the_user_it_runs_as() {
    // A journal root wrote (0600), and the service now runs as another user.
    if bin_as_nobody().is_none() {
        return;
    }
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    sim.set_server_status(WEB, PowerState::Stopped);
    let scratch = Scratch::new();
    let config = scratch.config(
        &config(&policy(EVERY_2S, "stop_server = true"), "", ""),
        &base_url,
    );
    let state = scratch.state_dir();
    std::fs::create_dir_all(&state).expect("mkdir state");
    let journal = state.join("power-journal.json");
    std::fs::write(&journal, stopped_entry()).expect("write the journal");
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown state_dir");
    std::os::unix::fs::chown(scratch.token_path(), Some(NOBODY), None).expect("chown token");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");

    assert_refused_to_act("permission denied", &sim, &config, &journal, || {
        bin_as_nobody().expect("checked above")
    })
    .await;
}

/// Root's `once` leaves the create ledger root's (0644); the service, running as another
/// user, must still record its creates (the ledger is written anew as that user), not refuse
/// every create from then on.
#[tokio::test]
async fn a_create_ledger_left_by_roots_once_does_not_stop_the_services_user_from_creating() {
    if bin_as_nobody().is_none() {
        return;
    }
    let (sim, base_url) = serve_sim(&[WEB], quick()).await;
    let scratch = Scratch::new();
    let second = policy(YEARLY, "").replace("name = \"nightly\"", "name = \"second\"");
    let config = scratch.config(
        &format!(
            "{}\n[[policy]]\n{second}\n",
            config(&policy(YEARLY, ""), "", "")
        ),
        &base_url,
    );
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&config)
        .args(["-q", "once", "--policy", "nightly"]);
    let root = tokio::process::Command::from(cmd).output().await.unwrap();
    assert_eq!(root.status.code(), Some(0), "{}", stderr(&root));
    let state = scratch.state_dir();
    let ledger = state.join("creates.jsonl");
    assert!(ledger.exists(), "root's once recorded its create");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown state_dir");
    std::os::unix::fs::chown(scratch.token_path(), Some(NOBODY), None).expect("chown token");
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");

    let mut cmd = bin_as_nobody().expect("checked above");
    cmd.arg("--config")
        .arg(&config)
        .args(["-q", "once", "--policy", "second"]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sim.stats().request_count("create"), 2);
    let text = std::fs::read_to_string(&ledger).expect("read the ledger");
    assert!(
        text.contains("\"nightly\"") && text.contains("\"second\""),
        "{text}"
    );
}
