//! `run`, the service, end to end: the real binary against a simulated provider served from the
//! test process, driven by signals and observed through what the provider saw, the log on
//! stderr, sd_notify datagrams and the metrics endpoint. Schedules have a seconds field so fires
//! come every few seconds; every wait is a poll with a generous deadline, never a fixed sleep.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Timelike;
use serde_json::Value;
use snapshot_scheduler::model::{PowerState, ServerId, SnapshotStatus};
use snapshot_scheduler::policy::parse_snapshot_name;
use snapshot_scheduler::simulator::SimConfig;
use tokio::time::Instant;

use crate::common::{
    bin, bin_as_nobody, fast_config, policy, stderr, unavailable, with_open_files_limit, Setup,
    NOBODY,
};

const WEB: ServerId = 12345;
/// A server the provider does not know: every request about it answers 404.
const GONE: ServerId = 99999;

const EVERY_2S: &str = "*/2 * * * * *";
const EVERY_3S: &str = "*/3 * * * * *";
/// January 1st, 03:00:00: does not come round during a test run.
const YEARLY: &str = "0 0 3 1 1 *";

/// How long any one condition may take to come true before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// A simulator quick enough for real time, without foreign snapshots.
fn quick(snapshot_duration: Duration) -> SimConfig {
    SimConfig {
        snapshot_duration,
        power_delay: Duration::from_millis(300),
        example_snapshots: false,
        refuse_create_while_in_progress: true,
        ..SimConfig::default()
    }
}

impl Setup {
    /// Replaces config.toml (as an operator would before `systemctl reload`).
    fn rewrite(&self, text: &str) {
        let written = self.scratch.config(text, &self.base_url);
        assert_eq!(written, self.config);
    }

    fn start(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start(&self.config, env)
    }

    /// Names of every snapshot the provider accepted for `server`, in order.
    fn created(&self, server: ServerId) -> Vec<String> {
        self.sim
            .stats()
            .created
            .into_iter()
            .filter(|c| c.server == server)
            .map(|c| c.name)
            .collect()
    }
}

/// The real binary running `run`, its stderr collected on a thread. Dropping it kills the
/// process, so a failing assertion never leaves a daemon behind.
struct Daemon {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with(bin(), config, env)
    }

    /// [`Daemon::start`] with `cmd` as the binary (run as another user, with other limits).
    fn start_with(mut cmd: Command, config: &Path, env: &[(&str, &str)]) -> Self {
        cmd.arg("--config")
            .arg(config)
            .args(["--log-format", "text", "run"])
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("the binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Polls until `done` (given the log so far) holds. Fails at once if the daemon exits, and
    /// after [`WAIT`] otherwise, showing the log either way.
    async fn until(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("the daemon exited ({status}) while waiting until {what}\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting until {what}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the daemon logs that it is running (signal handlers installed).
    async fn running(&mut self) {
        self.until("the daemon is running", |log| {
            log.contains("snapshot-scheduler running")
        })
        .await;
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {within:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The second of the minute a policy's snapshot name stands for.
fn second_of(policy: &str, name: &str) -> u32 {
    parse_snapshot_name(policy, name)
        .unwrap_or_else(|| panic!("{name} is not a snapshot of policy {policy}"))
        .second()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_on_one_server_never_overlap() {
    let policies = format!(
        "{}\n[[policy]]\n{}",
        policy("alpha", EVERY_3S, &[WEB], ""),
        policy("beta", EVERY_3S, &[WEB], "")
    );
    let setup = Setup::new(&[WEB], quick(Duration::from_secs(1)), &policies, "").await;
    let mut daemon = setup.start(&[]);

    let mut most_in_progress = 0;
    daemon
        .until("both policies have created two snapshots", |_| {
            let in_progress = setup
                .sim
                .snapshots(WEB)
                .iter()
                .filter(|s| s.status == SnapshotStatus::InProgress)
                .count();
            most_in_progress = most_in_progress.max(in_progress);
            let created = setup.created(WEB);
            let of = |p: &str| created.iter().filter(|n| n.starts_with(p)).count();
            of("alpha-") >= 2 && of("beta-") >= 2
        })
        .await;

    let log = daemon.log();
    let stats = setup.sim.stats();
    assert_eq!(
        stats.in_progress_refusals, 0,
        "a create went out while the other policy's snapshot was in progress\n{log}"
    );
    assert!(
        most_in_progress <= 1,
        "{most_in_progress} snapshots in progress at once\n{log}"
    );
    // They were due at the same moments: the same slot was taken by both, one after the other.
    let created = setup.created(WEB);
    let slots = |p: &str| -> Vec<String> {
        created
            .iter()
            .filter_map(|n| n.strip_prefix(p).map(str::to_owned))
            .collect()
    };
    let (alpha, beta) = (slots("alpha-"), slots("beta-"));
    assert!(
        alpha.iter().any(|s| beta.contains(s)),
        "no slot was taken by both policies: {created:?}"
    );
    assert!(!log.contains(" ERROR "), "a run failed\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stopped_server_snapshot_exits_0_with_the_server_running() {
    let snapshot_duration = Duration::from_secs(20);
    let setup = Setup::new(
        &[WEB],
        quick(snapshot_duration),
        &policy("nightly", EVERY_3S, &[WEB], "stop_server = true"),
        "shutdown_grace = \"1s\"",
    )
    .await;
    let mut daemon = setup.start(&[]);

    daemon
        .until("the server is stopped and its snapshot requested", |_| {
            let stopped = setup.sim.server(WEB).expect("simulated").status == PowerState::Stopped;
            stopped && setup.sim.stats().created.len() == 1
        })
        .await;
    let created = setup.sim.stats().created;
    assert_eq!(created[0].server_status, PowerState::Stopped);
    assert_eq!(
        setup.journal().len(),
        1,
        "the stop is not journaled\n{}",
        daemon.log()
    );

    daemon.signal("TERM");
    let sent = Instant::now();
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    let took = sent.elapsed();

    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        took < snapshot_duration / 2,
        "took {took:?}: waited for the snapshot instead of the grace period\n{log}"
    );
    assert!(log.contains("shutdown_grace 1s is over"), "{log}");
    assert_eq!(
        setup.sim.server(WEB).expect("simulated").status,
        PowerState::Running,
        "the daemon exited with the server it stopped not running\n{log}"
    );
    let stats = setup.sim.stats();
    assert_eq!(
        (stats.request_count("stop"), stats.request_count("start")),
        (1, 1)
    );
    assert_eq!(setup.journal(), Vec::<Value>::new(), "{log}");
    // The snapshot is left to finish on its own, not deleted.
    let snapshots = setup.sim.snapshots(WEB);
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0].name, created[0].name);
    assert_eq!(snapshots[0].status, SnapshotStatus::InProgress);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_valid_config_changes_the_schedule() {
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "catch_up = false"),
        "",
    )
    .await;
    let mut daemon = setup.start(&[]);
    daemon.running().await;
    assert!(setup.created(WEB).is_empty(), "{}", daemon.log());

    setup.rewrite(&fast_config(&policy("nightly", EVERY_2S, &[WEB], ""), ""));
    daemon.signal("HUP");

    daemon
        .until("the new schedule has created two snapshots", |_| {
            setup.created(WEB).len() >= 2
        })
        .await;
    let log = daemon.log();
    assert!(log.contains("config reloaded"), "{log}");
    let created = setup.created(WEB);
    assert!(
        created.iter().all(|n| second_of("nightly", n) % 2 == 0),
        "not on the */2 schedule: {created:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_config_keeps_the_old_one() {
    let nightly = policy("nightly", EVERY_2S, &[WEB], "");
    let setup = Setup::new(&[WEB], quick(Duration::from_secs(1)), &nightly, "").await;
    let mut daemon = setup.start(&[]);
    daemon
        .until("a first snapshot is created", |_| {
            !setup.created(WEB).is_empty()
        })
        .await;

    // Also a new schedule, so that applying any part of this file would show.
    let good = fast_config(&nightly, "");
    let broken = format!(
        "{}this line is not toml\n",
        good.replace(EVERY_2S, "*/5 * * * * *")
    );
    let line = broken.lines().count();
    setup.rewrite(&broken);
    daemon.signal("HUP");
    daemon
        .until("the reload failure is logged", |log| {
            log.contains("config reload failed")
        })
        .await;
    let before = setup.created(WEB).len();

    daemon
        .until("two more snapshots are created", |_| {
            setup.created(WEB).len() >= before + 2
        })
        .await;
    let log = daemon.log();
    // The error spans lines: the summary, then one located problem a line.
    let at = log.find("config reload failed").expect("logged");
    let failure: String = log[at..].lines().take(2).collect::<Vec<_>>().join("\n");
    assert!(
        failure.contains(&format!("config.toml:{line}:")),
        "the failure does not name the file's line {line}: {failure}"
    );
    assert!(daemon.exited().is_none(), "{log}");
    let created = setup.created(WEB);
    assert!(
        created.iter().all(|n| second_of("nightly", n) % 2 == 0),
        "not on the old */2 schedule: {created:?}"
    );

    // A FIFO where the config was: the reload says why it failed, and blocks nothing.
    std::fs::remove_file(&setup.config).expect("remove the config");
    let made = Command::new("mkfifo")
        .arg(&setup.config)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    daemon.signal("HUP");
    daemon
        .until("the second reload failure says why", |log| {
            log.matches("config reload failed").count() >= 2 && log.contains("not a regular file")
        })
        .await;
    let before = setup.created(WEB).len();
    daemon
        .until("snapshots go on after the failed reload", |_| {
            setup.created(WEB).len() > before
        })
        .await;
}

/// Every line of every datagram sent to a bound socket, collected on a thread.
struct NotifySocket {
    path: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    fn bind(path: PathBuf) -> Self {
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("set a read timeout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (lines.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(n) = socket.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
                    lines.extend(text.lines().map(str::to_owned));
                }
            }
        });
        Self { path, lines, stop }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_receives_ready_status_and_stopping() {
    // A schedule that never fires, so every WATCHDOG=1 comes from the watchdog's own wakes.
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "catch_up = false"),
        "",
    )
    .await;
    let socket = NotifySocket::bind(setup.scratch.path().join("notify.sock"));
    let path = socket.path.display().to_string();
    // WATCHDOG_PID stays unset (it cannot name the child before it exists): sd-notify then
    // takes WATCHDOG_USEC as meant for this process. 2 s: a ping at least every second.
    let mut daemon = setup.start(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "2000000")]);

    daemon
        .until(
            "READY=1, a STATUS with the next fire and two watchdog pings",
            |_| {
                let lines = socket.lines();
                lines.iter().any(|l| l == "READY=1")
                    && lines
                        .iter()
                        .any(|l| l.starts_with("STATUS=next: nightly at "))
                    && socket.count("WATCHDOG=1") >= 2
            },
        )
        .await;
    assert_eq!(socket.count("STOPPING=1"), 0, "{:?}", socket.lines());

    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    let deadline = Instant::now() + WAIT;
    while socket.count("STOPPING=1") == 0 {
        assert!(
            Instant::now() < deadline,
            "no STOPPING=1: {:?}",
            socket.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = socket.lines();
    let ready = lines.iter().position(|l| l == "READY=1").expect("READY=1");
    let stopping = lines
        .iter()
        .position(|l| l == "STOPPING=1")
        .expect("STOPPING=1");
    assert!(ready < stopping, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_right_after_ready_does_not_kill_the_daemon() {
    // The signal handlers used to be installed by a spawned task that had not always run when
    // READY=1 went out: a SIGHUP then (`systemctl reload` just after a start) killed the daemon
    // in up to one start in ten. Each round sends SIGHUP the moment READY=1 arrives; 100 rounds
    // caught the old code in 7 runs of 8.
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "catch_up = false"),
        "",
    )
    .await;
    for round in 0..100 {
        let path = setup.scratch.path().join(format!("notify-{round}.sock"));
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(WAIT))
            .expect("set a read timeout");
        let path = path.display().to_string();
        let mut daemon = setup.start(&[("NOTIFY_SOCKET", &path)]);
        // A shell already waiting to send SIGHUP, woken from this thread the moment READY=1
        // arrives: starting `kill` only then would often miss the window.
        let mut kill = std::process::Command::new("sh")
            .args([
                "-c",
                "read _ && kill -HUP \"$0\"",
                &daemon.child.id().to_string(),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("sh starts");
        let mut trigger = kill.stdin.take().expect("stdin is piped");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    let _ = trigger.write_all(b"\n");
                    return;
                }
            }
        });
        daemon
            .until(
                &format!("round {round}: the reload right after READY=1 is done"),
                |log| log.contains("config reloaded"),
            )
            .await;
        let _ = kill.wait();
    }
}

async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

/// A daemon's setup with `policies` that serves `/metrics` and `/healthz`, and their base URL.
async fn serving_metrics(policies: &str) -> (Setup, String) {
    let port = crate::etcd_support::free_port();
    let daemon = format!("metrics_listen = \"127.0.0.1:{port}\"");
    let setup = Setup::new(&[WEB], quick(Duration::from_secs(1)), policies, &daemon).await;
    (setup, format!("http://127.0.0.1:{port}"))
}

/// `/healthz` once it answers `code` (or its last answer after [`WAIT`]).
async fn healthz_until(base: &str, code: u16) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = get(&format!("{base}/healthz")).await;
        if answer.0 == code || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A daemon whose power journal cannot be written would refuse the next stop: `/healthz` says
/// so (503, naming the journal) and `snapshot_scheduler_healthy` is 0, from the first wake,
/// long before a stop is due; once the journal can be written again, both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_power_journal_cannot_be_written() {
    let (setup, base) =
        serving_metrics(&policy("nightly", YEARLY, &[WEB], "stop_server = true")).await;
    // The journal's temp file is a directory: every write of the journal fails (as root too).
    let tmp = setup.scratch.state_dir().join("power-journal.json.tmp");
    std::fs::create_dir_all(&tmp).expect("a directory");
    let mut daemon = setup.start(&[]);
    daemon
        .until("metrics are served", |log| log.contains("serving /metrics"))
        .await;
    let (status, body) = healthz_until(&base, 503).await;
    assert_eq!(status, 503, "{body}\n{}", daemon.log());
    assert!(
        body.contains("power-journal.json") && body.contains("cannot be written"),
        "{body}"
    );
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    assert!(
        metrics.lines().any(|l| l == "snapshot_scheduler_healthy 0"),
        "{metrics}"
    );
    std::fs::remove_dir(&tmp).expect("removed");
    // The next wake (within a minute) sees the journal writable again: signal a reload,
    // which wakes the loop at once.
    daemon.signal("HUP");
    let (status, body) = healthz_until(&base, 200).await;
    assert_eq!((status, body.trim()), (200, "single"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_counters_and_healthz() {
    let (setup, base) = serving_metrics(&policy("nightly", EVERY_2S, &[WEB], "")).await;
    let mut daemon = setup.start(&[]);
    daemon
        .until("a snapshot is completed", |_| {
            setup
                .sim
                .snapshots(WEB)
                .iter()
                .any(|s| s.status == SnapshotStatus::Completed)
        })
        .await;

    let (status, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.trim()), (200, "single"));

    // The counter (at 0 from the start) moves once the run has pruned and logged, a moment
    // after the provider's snapshot completed.
    let created = "snapshot_scheduler_snapshots_created_total{policy=\"nightly\"} ";
    let deadline = Instant::now() + WAIT;
    let metrics = loop {
        let (status, body) = get(&format!("{base}/metrics")).await;
        assert_eq!(status, 200, "{body}");
        let moved = body
            .lines()
            .filter_map(|l| l.strip_prefix(created))
            .any(|v| v.parse::<f64>().is_ok_and(|v| v >= 1.0));
        if moved {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no {created}in /metrics:\n{body}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for name in [
        "snapshot_scheduler_snapshots_created_total",
        "snapshot_scheduler_api_requests_total",
        "snapshot_scheduler_next_fire_timestamp_seconds",
        "snapshot_scheduler_last_success_timestamp_seconds",
        "snapshot_scheduler_newest_snapshot_age_seconds",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    let value = |prefix: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().expect("a number")
    };
    assert!(value(created) >= 1.0, "{metrics}");
    let last_success = value("snapshot_scheduler_last_success_timestamp_seconds{");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - WAIT.as_secs_f64()..=now).contains(&last_success),
        "last success {last_success} is not in the last {WAIT:?} (now {now})\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_server_does_not_stop_the_daemon() {
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", EVERY_2S, &[WEB, GONE], ""),
        "",
    )
    .await;
    let mut daemon = setup.start(&[]);

    daemon
        .until(
            "three snapshots of the known server, after as many failures",
            |log| {
                let failures = log
                    .lines()
                    .filter(|l| l.contains(" ERROR ") && l.contains(&format!("server={GONE}")))
                    .count();
                setup.created(WEB).len() >= 3 && failures >= 3
            },
        )
        .await;
    assert!(daemon.exited().is_none(), "{}", daemon.log());
    assert!(setup.created(GONE).is_empty());
    let completed = setup
        .sim
        .snapshots(WEB)
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed)
        .count();
    assert!(completed >= 1, "{:?}", setup.sim.snapshots(WEB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_owned_lock_file_still_keeps_a_root_once_out_while_the_daemon_runs() {
    // A root `once` leaves state_dir/lock root-owned, mode 0644. The daemon, running as
    // another user, could not open it for writing and went on without the lock, so the next
    // root `once` ran beside it, each with its own copy of the power journal.
    let Some(as_nobody) = bin_as_nobody() else {
        return;
    };
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "catch_up = false"),
        "",
    )
    .await;
    let state = setup.scratch.state_dir();
    std::fs::create_dir_all(&state).expect("mkdir state");
    let lock = state.join("lock");
    std::fs::write(&lock, "").expect("write the lock file");
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown state_dir");
    std::os::unix::fs::chown(setup.scratch.token_path(), Some(NOBODY), None).expect("chown");
    std::fs::set_permissions(setup.scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");

    let mut daemon = Daemon::start_with(as_nobody, &setup.config, &[]);
    daemon.running().await;

    let mut once = bin();
    once.arg("--config").arg(&setup.config).arg("once");
    let out = tokio::task::spawn_blocking(move || once.output().expect("the binary runs"))
        .await
        .expect("the blocking task ends");
    let log = daemon.log();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a root once ran beside the daemon\n{}\ndaemon:\n{log}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("another snapshot-scheduler process"),
        "{}",
        stderr(&out)
    );
    assert!(setup.created(WEB).is_empty());
    assert!(daemon.exited().is_none(), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_state_lock_possible_refuses_to_run_and_says_what_to_fix() {
    // state_dir belongs to root and has no lock file yet: a daemon running as another user
    // can neither open nor create one. It used to go on without the lock.
    let Some(as_nobody) = bin_as_nobody() else {
        return;
    };
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", EVERY_2S, &[WEB], ""),
        "",
    )
    .await;
    let state = setup.scratch.state_dir();
    std::fs::create_dir_all(&state).expect("mkdir state");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(setup.scratch.token_path(), Some(NOBODY), None).expect("chown");
    std::fs::set_permissions(setup.scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the scratch directory");

    let mut daemon = Daemon::start_with(as_nobody, &setup.config, &[]);
    let status = daemon.wait_exit(WAIT).await;

    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let lock = state.join("lock").display().to_string();
    assert!(
        log.contains(&format!("state lock {lock}: Permission denied"))
            && log.contains("does not act without it"),
        "{log}"
    );
    assert!(setup.created(WEB).is_empty(), "{log}");
}

/// The soft and hard open-files limits of a running process, from `/proc/PID/limits`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open files limit in\n{limits}"));
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap_or_default().to_owned();
    let hard = fields.next().unwrap_or_default().to_owned();
    (soft, hard)
}

/// Raises this test process's own soft open-files limit to at least `need`; false where the
/// hard limit does not allow it.
fn raise_own_open_files_limit(need: u64) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read only the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return false;
        }
        if limit.rlim_cur >= need {
            return true;
        }
        if limit.rlim_max < need {
            return false;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_raises_its_open_files_soft_limit_to_the_hard_limit() {
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "catch_up = false"),
        "",
    )
    .await;
    let cmd = with_open_files_limit(bin(), 256, 4096);
    let mut daemon = Daemon::start_with(cmd, &setup.config, &[]);
    daemon.running().await;
    assert_eq!(
        open_files_limit(daemon.child.id()),
        ("4096".to_owned(), "4096".to_owned()),
        "{}",
        daemon.log()
    );
}

/// Opens up to `n` connections to `port` on loopback, each sending the start of a request and
/// then nothing. Stops early once connecting keeps failing (a listener that stopped accepting).
fn open_idle_connections(port: u16, n: usize) -> Vec<std::net::TcpStream> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut open = Vec::new();
    let mut failures = 0;
    while open.len() < n && failures < 3 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(mut stream) => {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n");
                open.push(stream);
            }
            Err(_) => failures += 1,
        }
    }
    open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_metrics_connections_neither_exhaust_descriptors_nor_keep_a_server_stopped() {
    // 1,100 half-sent requests from a local user used to take every file descriptor of the
    // daemon: its journal and provider calls then failed with "Too many open files" while a
    // server was stopped for its snapshot.
    const IDLE: usize = 1_100;
    if !raise_own_open_files_limit(IDLE as u64 + 1_000) {
        unavailable(&format!(
            "an open-files limit of {} (this process may not raise its own that far)",
            IDLE + 1_000
        ));
        return;
    }
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
        free.local_addr().expect("local addr").port()
    };
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", EVERY_3S, &[WEB], "stop_server = true"),
        &format!("metrics_listen = \"127.0.0.1:{port}\""),
    )
    .await;
    let cmd = with_open_files_limit(bin(), 256, 256);
    let mut daemon = Daemon::start_with(cmd, &setup.config, &[]);
    daemon
        .until("metrics are served", |log| log.contains("serving /metrics"))
        .await;

    let idle = tokio::task::spawn_blocking(move || open_idle_connections(port, IDLE))
        .await
        .expect("the blocking task ends");
    assert!(
        idle.len() > 300,
        "only {} connections opened; the flood proves nothing",
        idle.len()
    );
    let before = setup.sim.stats().created.len();
    daemon
        .until(
            "a snapshot taken with the server stopped after the flood has completed",
            |_| {
                let completed: Vec<String> = setup
                    .sim
                    .snapshots(WEB)
                    .into_iter()
                    .filter(|s| s.status == SnapshotStatus::Completed)
                    .map(|s| s.name)
                    .collect();
                setup.sim.stats().created[before..]
                    .iter()
                    .any(|c| c.server_status == PowerState::Stopped && completed.contains(&c.name))
            },
        )
        .await;
    drop(idle);

    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + WAIT;
    loop {
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => break,
            other => assert!(
                Instant::now() < deadline,
                "/metrics does not answer after the idle connections are gone: {other:?}\n{}",
                daemon.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.signal("TERM");
    let status = daemon.wait_exit(WAIT).await;
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        setup.sim.server(WEB).expect("simulated").status,
        PowerState::Running,
        "{log}"
    );
    assert!(!log.contains("Too many open files"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_says_which_sections_need_a_restart_instead_of_ignoring_them() {
    let nightly = policy("nightly", YEARLY, &[WEB], "catch_up = false");
    let setup = Setup::new(&[WEB], quick(Duration::from_secs(1)), &nightly, "").await;
    let mut daemon = setup.start(&[]);
    daemon.running().await;

    // Only a policy changes: nothing to warn about.
    let renamed = nightly
        .replace("catch_up = false", "catch_up = false\nkeep = 1")
        .replace("keep = 2\n", "");
    setup.rewrite(&fast_config(&renamed, ""));
    daemon.signal("HUP");
    daemon
        .until("the first reload is done", |log| {
            log.matches("config reloaded").count() >= 1
        })
        .await;
    assert!(!daemon.log().contains("NOT applied"), "{}", daemon.log());

    // [daemon] and [[notify]] change: said, not silently ignored.
    let text = format!(
        "{}\n[[notify]]\nurl = \"http://127.0.0.1:9/hook\"\n",
        fast_config(&renamed, "max_concurrent = 3")
    );
    setup.rewrite(&text);
    daemon.signal("HUP");
    // The warning is logged right after "config reloaded": waited for, not raced.
    daemon
        .until("the second reload's warning", |log| {
            log.matches("config reloaded").count() >= 2 && log.contains("NOT applied")
        })
        .await;
    let log = daemon.log();
    assert!(
        log.contains("the changes to [daemon], [[notify]] are NOT applied by a reload"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_daemon_settles_a_previous_runs_stop_starts_the_server_after_the_grace() {
    let setup = Setup::new(
        &[WEB],
        quick(Duration::from_secs(1)),
        &policy("nightly", YEARLY, &[WEB], "stop_server = true"),
        "shutdown_grace = \"1s\"",
    )
    .await;
    // What a killed run leaves: the server stopped, its snapshot in progress for long, the entry.
    let name = "nightly-20260101T030000Z";
    setup.sim.set_server_status(WEB, PowerState::Stopped);
    setup.sim.add_snapshot(
        WEB,
        name,
        SnapshotStatus::InProgress,
        chrono::Utc::now() - chrono::Duration::seconds(10),
    );
    let state = setup.scratch.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let now = chrono::Utc::now();
    let entry = serde_json::json!([{
        "server": WEB, "policy": "nightly", "snapshot": name,
        "stopped_at": now - chrono::Duration::seconds(10),
        "deadline": now + chrono::Duration::hours(1),
    }]);
    std::fs::write(state.join("power-journal.json"), entry.to_string()).unwrap();
    let mut daemon = setup.start(&[]);
    daemon
        .until("the daemon settles the previous run's stop", |log| {
            log.contains("settling it")
        })
        .await;

    daemon.signal("TERM");
    let sent = Instant::now();
    let status = daemon.wait_exit(Duration::from_secs(20)).await;

    let log = daemon.log();
    assert!(sent.elapsed() < Duration::from_secs(15), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        setup.sim.server(WEB).expect("simulated").status,
        PowerState::Running,
        "{log}"
    );
    assert_eq!(setup.journal(), Vec::<Value>::new(), "{log}");
    assert!(!log.contains("policy fired"), "fired after SIGTERM\n{log}");
}

/// A reload does not apply `[ha]` (the election runs with what it started with): a changed
/// cluster, node or endpoint, or `[ha]` added or removed, is named as needing a restart.
#[test]
fn a_changed_ha_section_is_named_as_needing_a_restart() {
    use snapshot_scheduler::config::{Config, LoadOptions};
    use snapshot_scheduler::daemon::needs_restart;
    let parse = |ha: &str| {
        let text = format!(
            "[api]\nbase_url = \"https://provider.invalid/api/v1\"\n\n{ha}\n[[policy]]\nname = \"db\"\n\
             schedule = \"0 3 * * *\"\nservers = [1]\nkeep = 2\n"
        );
        Config::parse(
            std::path::Path::new("ha.toml"),
            &text,
            LoadOptions { simulate: true },
            &std::collections::BTreeMap::new(),
        )
        .expect("a valid config")
    };
    let ha = |node: &str| {
        format!("[ha]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\nnode = \"{node}\"\n")
    };
    let running = parse(&ha("ops-1"));
    assert!(needs_restart(&running, &parse(&ha("ops-1"))).is_empty());
    assert_eq!(needs_restart(&running, &parse(&ha("ops-9"))), ["[ha]"]);
    assert_eq!(needs_restart(&running, &parse("")), ["[ha]"]);
}
