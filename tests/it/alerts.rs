//! Hooks, webhooks, dead-man pings and `status --nagios`: the real binary against a simulated
//! provider served from the test and a local HTTP receiver (wiremock), asserting what the hook
//! saw in its environment, what the receiver got, and what a monitoring system reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use snapshot_scheduler::model::{ServerId, SnapshotStatus};
use snapshot_scheduler::policy::snapshot_name;
use snapshot_scheduler::simulator::{SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::any;
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{
    bin, config_with_policy, serve_sim, stderr, stdout, with_open_files_limit, Scratch,
};

const WEB: ServerId = 12345;

/// January 1st: the slot stays the same for the whole test run, whatever the time of day.
const YEARLY: &str = "0 0 1 1 *";

/// Fast enough for real time, and no foreign snapshots.
fn quick() -> SimConfig {
    SimConfig {
        snapshot_duration: Duration::from_millis(300),
        power_delay: Duration::from_millis(100),
        example_snapshots: false,
        ..SimConfig::default()
    }
}

/// One policy "nightly" on WEB with `extra` policy lines, then `tail` (e.g. `[[notify]]`).
/// The API is fast and does not retry, so an unreachable provider fails at once.
fn config_text(extra: &str, tail: &str) -> String {
    let policy = format!(
        "name = \"nightly\"\nschedule = \"{YEARLY}\"\nservers = [{WEB}]\nkeep = 2\n{extra}"
    );
    let text = config_with_policy(&policy).replacen(
        "\n[daemon]\n",
        "requests_per_second = 1000\nmax_retries = 0\ntimeout = \"2s\"\n\n[daemon]\n",
        1,
    );
    assert!(
        text.contains("max_retries"),
        "config_with_policy changed shape:\n{text}"
    );
    format!("{text}\n{tail}\n")
}

/// A TOML string array for a hook: `["sh", "-c", script]`.
fn sh(script: &str) -> String {
    format!("[\"sh\", \"-c\", {}]", toml_string(script))
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

struct Setup {
    sim: Simulator,
    scratch: Scratch,
    config: PathBuf,
}

impl Setup {
    async fn new(sim: SimConfig, extra: &str, tail: &str) -> Self {
        let (sim, base_url) = serve_sim(&[WEB], sim).await;
        Self::with_base_url(sim, &base_url, extra, tail)
    }

    fn with_base_url(sim: Simulator, base_url: &str, extra: &str, tail: &str) -> Self {
        let scratch = Scratch::new();
        let text = config_text(&fill(extra, scratch.path()), tail);
        let config = scratch.config(&text, base_url);
        Self {
            sim,
            scratch,
            config,
        }
    }

    /// Where the hooks of `extra` write (`{dir}` in the hook scripts).
    fn file(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Runs the binary on a blocking thread, so the runtime keeps serving the simulator and
    /// the receiver. Returns the output and how long it took.
    async fn run(&self, args: &[&str]) -> (Output, Duration) {
        let mut cmd: Command = bin();
        cmd.arg("--config").arg(&self.config).args(args);
        let started = Instant::now();
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
            .await
            .expect("the blocking task ends");
        (out, started.elapsed())
    }

    fn created(&self) -> Vec<String> {
        self.sim
            .stats()
            .created
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }
}

/// Fills `{dir}` (the scratch directory) into a policy's extra lines.
fn fill(extra: &str, dir: &Path) -> String {
    extra.replace("{dir}", &dir.display().to_string())
}

fn explain(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// The variables a hook wrote with `env > file`.
fn hook_env(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the hook did not write {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn current_name() -> String {
    let s = snapshot_scheduler::schedule::Schedule::parse(YEARLY, chrono_tz::Tz::UTC).unwrap();
    snapshot_name("nightly", s.slot_at(Utc::now()).unwrap())
}

/// A receiver that answers 200 to everything and records what it got.
async fn receiver() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    server
}

/// (method, path) of every request the receiver got, in order.
async fn hits(server: &MockServer) -> Vec<(String, String)> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| (r.method.to_string(), r.url.path().to_owned()))
        .collect()
}

/// The JSON bodies the receiver got.
async fn alerts(server: &MockServer) -> Vec<Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("an alert is JSON"))
        .collect()
}

// ---- hooks ----

const POST_WRITES_ENV: &str = "post_hook = [\"sh\", \"-c\", \"env > {dir}/post.env\"]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_hook_skips_the_snapshot_and_the_post_hook_sees_failure() {
    let setup = Setup::new(
        quick(),
        &format!("pre_hook = {}\n{POST_WRITES_ENV}", sh("exit 3")),
        "",
    )
    .await;

    let (out, _) = setup.run(&["once"]).await;

    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        setup.created().is_empty(),
        "snapshotted after a failed pre hook"
    );
    let summary = stdout(&out);
    assert!(summary.contains("FAILED"), "{summary}");
    assert!(
        summary.contains("pre hook failed (exit status: 3); snapshot skipped"),
        "{summary}"
    );
    let env = hook_env(&setup.file("post.env"));
    let name = current_name();
    for (key, want) in [
        ("PHASE", "post"),
        ("RESULT", "failure"),
        ("SNAPSHOT_POLICY", "nightly"),
        ("SERVER_ID", "12345"),
        ("SERVER_NAME", "web-12345"),
        ("SNAPSHOT_NAME", name.as_str()),
    ] {
        assert_eq!(
            env.get(key).map(String::as_str),
            Some(want),
            "{key} in {env:?}"
        );
    }
    assert!(
        !env.contains_key("SNAPSHOT_ID"),
        "no snapshot, no id: {env:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_pre_hook_failure_continue_takes_the_snapshot_and_the_post_hook_gets_its_id() {
    let setup = Setup::new(
        quick(),
        &format!(
            "pre_hook = {}\non_pre_hook_failure = \"continue\"\n{POST_WRITES_ENV}",
            sh("env > {dir}/pre.env; exit 3")
        ),
        "",
    )
    .await;

    let (out, _) = setup.run(&["once"]).await;

    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let name = current_name();
    assert_eq!(setup.created(), std::slice::from_ref(&name));
    let pre = hook_env(&setup.file("pre.env"));
    assert_eq!(pre.get("PHASE").map(String::as_str), Some("pre"), "{pre:?}");
    assert!(!pre.contains_key("RESULT"), "{pre:?}");
    let post = hook_env(&setup.file("post.env"));
    assert_eq!(
        post.get("RESULT").map(String::as_str),
        Some("success"),
        "{post:?}"
    );
    let id = setup
        .sim
        .snapshots(WEB)
        .into_iter()
        .find(|s| s.name == name)
        .expect("the snapshot exists")
        .id;
    assert_eq!(post.get("SNAPSHOT_ID"), Some(&id.to_string()), "{post:?}");
    assert_eq!(post.get("SNAPSHOT_NAME"), Some(&name), "{post:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_pre_hook_is_killed_at_hook_timeout() {
    let setup = Setup::new(
        quick(),
        &format!("pre_hook = {}\nhook_timeout = \"1s\"", sh("sleep 30")),
        "",
    )
    .await;

    let (out, took) = setup.run(&["once"]).await;

    assert!(took < Duration::from_secs(10), "once took {took:?}");
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stdout(&out).contains("killed after 1s (hook_timeout)"),
        "{}",
        explain(&out)
    );
    assert!(setup.created().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_hook_that_leaves_a_lock_holder_running_takes_the_snapshot_with_the_lock_held() {
    // `FLUSH TABLES WITH READ LOCK` kept by a background session: the pre hook exits 0 and
    // leaves a process holding the lock until the post hook ends it. Such a hook used to be
    // reported "killed after 5s (hook_timeout)", its holder killed and the snapshot skipped.
    let pre = sh("sleep 30 & echo $! > {dir}/holder.pid; echo lock taken; exit 0");
    let post = sh(
        "pid=$(cat {dir}/holder.pid); kill -0 $pid && echo alive > {dir}/holder.state; kill $pid",
    );
    let setup = Setup::new(
        quick(),
        &format!("pre_hook = {pre}\npost_hook = {post}\nhook_timeout = \"20s\""),
        "",
    )
    .await;

    let (out, took) = setup.run(&["once"]).await;

    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(setup.created(), [current_name()], "{}", explain(&out));
    assert!(
        took < Duration::from_secs(10),
        "once took {took:?}: waited for the holder"
    );
    assert!(
        stderr(&out).contains("lock taken"),
        "the hook's output before it exited is logged\n{}",
        explain(&out)
    );
    let state = std::fs::read_to_string(setup.file("holder.state")).unwrap_or_default();
    assert_eq!(
        state.trim(),
        "alive",
        "the holder did not live until the post hook\n{}",
        explain(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_raises_its_open_files_soft_limit_to_the_hard_limit() {
    // What the hook sees is what the process that started it had.
    let setup = Setup::new(
        quick(),
        &format!("pre_hook = {}", sh("ulimit -n > {dir}/nofile")),
        "",
    )
    .await;
    let mut cmd = with_open_files_limit(bin(), 256, 4096);
    cmd.arg("--config").arg(&setup.config).arg("once");
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .expect("the blocking task ends");
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let nofile = std::fs::read_to_string(setup.file("nofile")).unwrap_or_default();
    assert_eq!(nofile.trim(), "4096", "{}", explain(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_dry_run_show_the_hooks_without_running_them() {
    let setup = Setup::new(
        quick(),
        &format!(
            "pre_hook = {}\npost_hook = {}",
            sh("touch {dir}/pre-ran"),
            sh("touch {dir}/post-ran")
        ),
        "",
    )
    .await;

    let (plan, _) = setup.run(&["plan"]).await;
    assert_eq!(plan.status.code(), Some(0), "{}", explain(&plan));
    let text = stdout(&plan);
    assert!(
        text.contains("pre hook (not run by plan): [\"sh\", \"-c\", \"touch "),
        "{text}"
    );
    assert!(text.contains("post hook (not run by plan)"), "{text}");

    let (dry, _) = setup.run(&["once", "--dry-run"]).await;
    assert_eq!(dry.status.code(), Some(0), "{}", explain(&dry));
    let text = stdout(&dry);
    assert!(text.contains("would run pre hook [\"sh\""), "{text}");
    assert!(text.contains("would run post hook [\"sh\""), "{text}");

    assert!(!setup.file("pre-ran").exists(), "a hook ran");
    assert!(!setup.file("post-ran").exists(), "a hook ran");
    assert!(setup.created().is_empty());
}

// ---- webhooks and pings ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_alerts_once_a_repeat_stays_quiet_and_a_success_sends_recovered() {
    let hook = receiver().await;
    let tail = format!("[[notify]]\nurl = \"{}/hooks/ops\"", hook.uri());
    let setup = Setup::new(
        SimConfig {
            failure_rate: 1.0,
            ..quick()
        },
        "",
        &tail,
    )
    .await;

    let (first, _) = setup.run(&["once"]).await;
    assert_eq!(first.status.code(), Some(1), "{}", explain(&first));
    let sent = alerts(&hook).await;
    assert_eq!(sent.len(), 1, "{sent:#?}");
    let alert = &sent[0];
    assert_eq!(alert["event"], "failure", "{alert}");
    assert_eq!(alert["policy"], "nightly", "{alert}");
    assert_eq!(alert["server"], WEB, "{alert}");
    let message = alert["message"].as_str().expect("message");
    assert!(message.contains("ended failed"), "{alert}");
    let time: DateTime<Utc> = alert["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("time is RFC 3339");
    assert!((Utc::now() - time).num_seconds().abs() < 60, "{alert}");
    assert_eq!(
        alert["text"],
        format!("snapshot-scheduler failure, policy nightly, server {WEB}: {message}"),
        "{alert}"
    );
    let requests = hook.received_requests().await.unwrap_or_default();
    assert_eq!(requests[0].method.as_str(), "POST");
    assert_eq!(requests[0].url.path(), "/hooks/ops");

    // The same failure from the next `once` (a new process) is not news.
    let (second, _) = setup.run(&["once"]).await;
    assert_eq!(second.status.code(), Some(1), "{}", explain(&second));
    assert_eq!(
        alerts(&hook).await.len(),
        1,
        "a repeated failure alerted again"
    );

    setup.sim.set_config(|c| c.failure_rate = 0.0);
    let (third, _) = setup.run(&["once"]).await;
    assert_eq!(third.status.code(), Some(0), "{}", explain(&third));
    let sent = alerts(&hook).await;
    assert_eq!(sent.len(), 2, "{sent:#?}");
    assert_eq!(sent[1]["event"], "recovered", "{}", sent[1]);
    assert_eq!(sent[1]["server"], WEB);

    // Success after success is quiet too.
    let (fourth, _) = setup.run(&["once"]).await;
    assert_eq!(fourth.status.code(), Some(0), "{}", explain(&fourth));
    assert_eq!(alerts(&hook).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_url_gets_start_then_success_or_fail() {
    let (ok_pings, fail_pings) = tokio::join!(receiver(), receiver());
    let ping = |r: &MockServer| format!("ping_url = \"{}/ping/abc123\"", r.uri());
    let ok = Setup::new(quick(), &ping(&ok_pings), "").await;
    let failing = Setup::new(
        SimConfig {
            failure_rate: 1.0,
            ..quick()
        },
        &ping(&fail_pings),
        "",
    )
    .await;

    let ((ok_out, _), (failed_out, _)) = tokio::join!(ok.run(&["once"]), failing.run(&["once"]));

    assert_eq!(ok_out.status.code(), Some(0), "{}", explain(&ok_out));
    assert_eq!(
        hits(&ok_pings).await,
        [
            ("GET".to_owned(), "/ping/abc123/start".to_owned()),
            ("GET".to_owned(), "/ping/abc123".to_owned()),
        ]
    );
    assert_eq!(
        failed_out.status.code(),
        Some(1),
        "{}",
        explain(&failed_out)
    );
    assert_eq!(
        hits(&fail_pings).await,
        [
            ("GET".to_owned(), "/ping/abc123/start".to_owned()),
            ("GET".to_owned(), "/ping/abc123/fail".to_owned()),
        ]
    );
}

/// A receiver that fails each request target's first request by closing the connection
/// unanswered, answers its second with 500 and later ones with 200. Returns its base URL and
/// every request target it was sent, in order.
async fn flaky_receiver() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let base = format!("http://{}", listener.local_addr().expect("local addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let Some(target) = read_request(&mut stream).await else {
                    return;
                };
                let times = {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push(target.clone());
                    log.iter().filter(|t| **t == target).count()
                };
                let status = match times {
                    1 => return,
                    2 => "500 Internal Server Error",
                    _ => "200 OK",
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (base, seen)
}

/// Reads one request (head and body) and returns its target (path and query).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&chunk[..n]);
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..head_len]).into_owned();
    let body_len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < head_len + body_len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    head.split_whitespace().nth(1).map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_and_ping_urls_are_logged_as_scheme_and_host_only() {
    // Webhook and ping URLs are secrets (whoever has one can post to the channel or silence
    // the check). Each delivery here fails once (connection closed), is refused once (500),
    // then goes through, so every log line about a delivery is written, at the most verbose
    // level.
    let (base, seen) = flaky_receiver().await;
    let host = base.trim_start_matches("http://");
    let webhook =
        format!("http://hook:SECRET-PASSWORD@{host}/hooks/SECRET-WEBHOOK?key=SECRET-QUERY");
    let setup = Setup::new(
        SimConfig {
            failure_rate: 1.0,
            ..quick()
        },
        &format!("ping_url = \"{base}/ping/SECRET-PING\""),
        &format!("[[notify]]\nurl = \"{webhook}\""),
    )
    .await;

    let (out, _) = setup.run(&["-vv", "once"]).await;

    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for target in [
        "/hooks/SECRET-WEBHOOK?key=SECRET-QUERY",
        "/ping/SECRET-PING/start",
        "/ping/SECRET-PING/fail",
    ] {
        assert_eq!(
            seen.iter().filter(|t| *t == target).count(),
            3,
            "{target} not delivered on the third attempt: {seen:?}\n{}",
            explain(&out)
        );
    }
    let log = stderr(&out);
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains("SECRET")).collect();
    assert!(
        leaks.is_empty(),
        "secrets in the log:\n{}",
        leaks.join("\n")
    );
    for what in [
        "alert refused",
        "alert not delivered",
        "ping refused",
        "ping failed",
    ] {
        assert!(
            log.lines().any(|l| l.contains(what) && l.contains(&base)),
            "no {what:?} line naming {base}:\n{log}"
        );
    }
}

#[tokio::test]
async fn config_errors_about_webhook_and_ping_urls_do_not_show_their_secrets() {
    let scratch = Scratch::new();
    let text = config_text(
        "ping_url = \"http://hc.example.com/ping/SECRET-PING\"",
        "[[notify]]\nurl = \"ftp://u:SECRET-PASSWORD@hooks.example.com/SECRET-PATH?k=SECRET-QUERY\"\n\n\
         [[notify]]\nurl = \"hooks.example.com/services/SECRET-NOT-A-URL\"",
    );
    let config = scratch.config(&text, "http://127.0.0.1:9");

    let out = bin()
        .arg("--config")
        .arg(&config)
        .arg("check")
        .output()
        .expect("the binary runs");

    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let err = stderr(&out);
    assert!(!err.contains("SECRET"), "{err}");
    for said in [
        "ping_url",
        "\"http://hc.example.com/...\"",
        "notify.url",
        "\"ftp://hooks.example.com/...\"",
        "is not a URL",
    ] {
        assert!(err.contains(said), "{said:?} missing:\n{err}");
    }
}

// ---- status --nagios ----

const THRESHOLDS: &str = "warn_age = \"1m\"\ncrit_age = \"1h\"";

/// `status --nagios` with an own completed snapshot created `age` ago (none for `None`).
async fn nagios_with(age: Option<chrono::Duration>) -> Output {
    let setup = Setup::new(quick(), THRESHOLDS, "").await;
    if let Some(age) = age {
        let at = Utc::now() - age;
        setup.sim.add_snapshot(
            WEB,
            &snapshot_name("nightly", at),
            SnapshotStatus::Completed,
            at,
        );
    }
    setup.run(&["status", "--nagios"]).await.0
}

fn first_line(out: &Output) -> String {
    stdout(out).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nagios_is_ok_right_after_once() {
    let setup = Setup::new(quick(), THRESHOLDS, "").await;
    let (once, _) = setup.run(&["once"]).await;
    assert_eq!(once.status.code(), Some(0), "{}", explain(&once));

    let (out, _) = setup.run(&["status", "--nagios"]).await;

    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let line = first_line(&out);
    assert!(
        line.starts_with("SNAPSHOTS OK - 1 policy/server pairs fresh"),
        "{line}"
    );
    assert!(line.contains("'nightly_12345'="), "{line}");
    assert!(
        line.ends_with(";60;3600"),
        "perfdata with warn and crit: {line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nagios_warns_past_warn_age_and_is_critical_past_crit_age_or_without_snapshot() {
    let (stale, older, missing) = tokio::join!(
        nagios_with(Some(chrono::Duration::minutes(10))),
        nagios_with(Some(chrono::Duration::hours(2))),
        nagios_with(None),
    );
    let cases = [
        (
            &stale,
            1,
            "SNAPSHOTS WARNING - nightly/12345: newest is 10m old (warning after 1m)",
        ),
        (
            &older,
            2,
            "SNAPSHOTS CRITICAL - nightly/12345: newest is 2h00m old (critical after 1h00m)",
        ),
        (
            &missing,
            2,
            "SNAPSHOTS CRITICAL - nightly/12345: no completed snapshot",
        ),
    ];
    for (out, code, start) in cases {
        assert_eq!(out.status.code(), Some(code), "{}", explain(out));
        let line = first_line(out);
        assert!(line.starts_with(start), "want {start:?}, got {line:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_nagios_is_unknown_when_the_provider_is_unreachable() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (sim, _) = serve_sim(&[WEB], quick()).await;
    let setup = Setup::with_base_url(sim, &format!("http://{closed}/api/v1"), THRESHOLDS, "");

    let (out, took) = setup.run(&["status", "--nagios"]).await;

    assert_eq!(out.status.code(), Some(3), "{}", explain(&out));
    let line = first_line(&out);
    assert!(line.starts_with("SNAPSHOTS UNKNOWN - "), "{line}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn webhook_text_shows_provider_text_without_chat_links_or_mentions() {
    let receiver = receiver().await;
    let sender =
        snapshot_scheduler::alerts::Alerts::new(vec![snapshot_scheduler::config::NotifyTarget {
            url: format!("{}/hook", receiver.uri()),
            token: None,
            events: vec![snapshot_scheduler::config::AlertEvent::Failure],
        }]);
    let message =
        "the API refused create snapshot: <!channel> @here & <https://evil.example|re-login> \
                   [re-login](https://evil.example)\n\u{202e}";

    sender.failure(
        snapshot_scheduler::config::AlertEvent::Failure,
        "nightly",
        WEB,
        message,
    );
    sender.drain(Duration::from_secs(10)).await;

    let got = alerts(&receiver).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let text = got[0]["text"].as_str().expect("text");
    assert_eq!(
        text,
        "snapshot-scheduler failure, policy nightly, server 12345: the API refused create \
         snapshot: &lt;!channel&gt; ＠here &amp; &lt;https://evil.example|re-login&gt; \
         [re-login] (https://evil.example)\\n\\u{202e}"
    );
    assert_eq!(
        got[0]["message"], message,
        "the message itself stays as it was"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_left_stopped_is_delivered_before_once_and_restore_exit_on_the_settle_error() {
    // A receiver that refuses each alert once: the retry, a second later, is lost unless the
    // exit waits for deliveries.
    let hook = MockServer::start().await;
    let tail = format!(
        "[[notify]]\nurl = \"{}/hooks/ops\"\nevents = [\"server_left_stopped\"]",
        hook.uri()
    );
    let setup = Setup::new(
        SimConfig {
            refuse_start: true,
            ..quick()
        },
        "stop_server = true",
        &tail,
    )
    .await;
    // What a killed run leaves: the server stopped, its journal entry.
    setup
        .sim
        .set_server_status(WEB, snapshot_scheduler::model::PowerState::Stopped);
    let state = setup.scratch.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let now = Utc::now();
    let entry = serde_json::json!([{
        "server": WEB, "policy": "nightly", "snapshot": current_name(),
        "stopped_at": now - chrono::Duration::hours(2), "deadline": now - chrono::Duration::hours(1),
    }]);
    std::fs::write(state.join("power-journal.json"), entry.to_string()).unwrap();

    let good = setup.sim.add_snapshot(
        WEB,
        "before-upgrade",
        SnapshotStatus::Completed,
        now - chrono::Duration::days(1),
    );
    let good = good.to_string();
    for args in [&["once"][..], &["restore", &good, "--yes"][..]] {
        hook.reset().await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(503))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&hook)
            .await;
        Mock::given(any())
            .respond_with(ResponseTemplate::new(200))
            .with_priority(2)
            .mount(&hook)
            .await;
        let (out, _) = setup.run(args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", explain(&out));
        assert!(
            stderr(&out).contains("could not be started again"),
            "{}",
            explain(&out)
        );
        let sent = alerts(&hook).await;
        assert_eq!(
            sent.len(),
            2,
            "{args:?}: the retried alert was lost at exit: {sent:#?}"
        );
        assert!(
            sent.iter().all(|a| a["event"] == "server_left_stopped"),
            "{sent:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_sends_no_webhook_and_no_ping_about_the_real_account() {
    let hook = receiver().await;
    let scratch = Scratch::new();
    let text = config_text(
        &format!(
            "ping_url = \"{}/ping/abc\"\npre_hook = [\"false\"]",
            hook.uri()
        ),
        &format!("[[notify]]\nurl = \"{}/hooks/ops\"", hook.uri()),
    );
    let config = scratch.config(&text, "https://provider.invalid/api/v1");
    let mut cmd: Command = bin();
    cmd.arg("--simulate")
        .arg("--config")
        .arg(&config)
        .arg("once");

    let out = tokio::task::spawn_blocking(move || cmd.output().expect("the binary runs"))
        .await
        .unwrap();

    // The pre hook fails: a real run would send a failure alert and a /fail ping.
    assert_eq!(out.status.code(), Some(1), "{}", explain(&out));
    assert!(
        stderr(&out).contains("webhooks and pings are not sent"),
        "{}",
        explain(&out)
    );
    assert_eq!(hits(&hook).await, Vec::<(String, String)>::new());
}
