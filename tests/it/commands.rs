//! The read-only and operator commands end to end with `--simulate`: `list`, `restore`.

use std::io::Write;
use std::process::Stdio;
use std::sync::Arc;

use chrono::Utc;
use snapshot_scheduler::clock::SystemClock;
use snapshot_scheduler::journal::{Entry, Journal};
use snapshot_scheduler::model::{PowerState, ServerId, SnapshotStatus};
use snapshot_scheduler::simulator::{self, SimConfig, Simulator};

use crate::common::{bin, config_with_policy, policy, run, stderr, stdout, Scratch, TOKEN};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");

#[test]
fn list_with_simulate_shows_the_hand_made_snapshots_unmanaged() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "list"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("pre-migration-snapshot"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("pre-migration-snapshot"))
        .unwrap();
    assert!(
        row.trim_end().ends_with('-'),
        "hand-made snapshots have no policy: {row}"
    );

    let out = run(bin().args([
        "--simulate",
        "-c",
        EXAMPLE,
        "list",
        "--json",
        "--server",
        "12345",
    ]));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows
        .iter()
        .all(|r| r["server"]["id"] == 12345 && r["policy"].is_null()));
}

#[test]
fn restore_yes_wait_with_simulate_waits_until_the_server_runs() {
    let out = run(bin().args([
        "--simulate",
        "-c",
        EXAMPLE,
        "restore",
        "800",
        "--yes",
        "--wait",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("cannot be undone"), "{text}");
    assert!(text.contains("is running again"), "{text}");
    // What is about to be restored: its status, size and age.
    let what = text.lines().nth(1).unwrap_or_default();
    assert!(what.starts_with("  completed, "), "{text}");
    assert!(
        what.contains(" GiB, taken ") && what.ends_with(" ago)."),
        "{text}"
    );
}

#[test]
fn restore_without_a_terminal_and_without_yes_is_refused() {
    let out = run(bin()
        .args(["--simulate", "-c", EXAMPLE, "restore", "800"])
        .stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
}

#[test]
fn restore_of_an_unknown_snapshot_names_it() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "restore", "4242", "--yes"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("snapshot 4242 does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_policy_is_a_usage_error_listing_the_allowed_ones() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "once", "--policy", "nightlyy"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("allowed: nightly, weekly-db"),
        "{}",
        stderr(&out)
    );
}

/// Every help text of the binary (`-h`, `--help`, `help <command>`, for the program and
/// each subcommand clap knows, so a new one is covered by itself) with the secret in every
/// variable an argument reads (but the config path) and in `VPS_API_TOKEN`, the README's
/// `token_env`: clap shows an `env` argument's value unless `hide_env_values` is set.
#[test]
fn no_help_text_of_any_command_shows_a_token_from_the_environment() {
    use clap::CommandFactory;
    const SECRET: &str = "s3cret-token-value";
    let cli = snapshot_scheduler::cli::Cli::command();
    let mut commands: Vec<Vec<String>> = vec![vec![]];
    let mut env: Vec<String> = vec!["VPS_API_TOKEN".into()];
    let mut note_env = |c: &clap::Command| {
        for arg in c.get_arguments() {
            if let Some(var) = arg.get_env().and_then(|v| v.to_str()) {
                if var != "SNAPSHOT_SCHEDULER_CONFIG" {
                    env.push(var.to_owned());
                }
            }
        }
    };
    note_env(&cli);
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        commands.push(vec![sub.get_name().to_owned()]);
        note_env(sub);
    }
    assert!(
        env.iter().any(|v| v == "SIMULATOR_TOKEN"),
        "simulate-provider --token reads SIMULATOR_TOKEN: {env:?}"
    );
    assert!(commands.len() >= 9, "{commands:?}");
    for command in &commands {
        let mut forms: Vec<Vec<String>> = ["-h", "--help"]
            .iter()
            .map(|flag| [command.clone(), vec![(*flag).to_owned()]].concat())
            .collect();
        if !command.is_empty() {
            forms.push([vec!["help".to_owned()], command.clone()].concat());
        }
        for args in forms {
            let mut cmd = bin();
            cmd.args(&args);
            for var in &env {
                cmd.env(var, SECRET);
            }
            let out = run(&mut cmd);
            let text = format!("{}{}", stdout(&out), stderr(&out));
            assert_eq!(out.status.code(), Some(0), "{args:?}:\n{text}");
            assert!(text.contains("Usage:"), "{args:?} printed no help:\n{text}");
            assert!(!text.contains(SECRET), "{args:?} shows the token:\n{text}");
        }
    }
}

/// Standard output as a pipe whose reading end is already closed (`list | head -0`).
fn closed_pipe() -> std::process::Stdio {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe fills two new descriptors, each owned once below.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    std::process::Stdio::from(write)
}

#[test]
fn every_printing_command_exits_quietly_when_its_reader_is_gone() {
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["plan"],
        vec!["plan", "--json"],
        vec!["status"],
        vec!["status", "--json"],
        vec!["status", "--nagios"],
        vec!["check"],
    ] {
        let out = run(bin()
            .args(["--simulate", "-q", "-c", EXAMPLE])
            .args(&args)
            .stdout(closed_pipe()));
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(err.is_empty(), "{args:?} says something: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

const WEB: ServerId = 12345;
const OTHER: ServerId = 12346;

/// A simulated provider on 127.0.0.1 whose servers have the given names (empty ones too),
/// a scratch directory and a config naming it; no example snapshots.
struct Provider {
    sim: Simulator,
    scratch: Scratch,
    config: std::path::PathBuf,
}

impl Provider {
    async fn new(servers: &[(ServerId, &str)]) -> Self {
        let named: Vec<(ServerId, String)> = servers
            .iter()
            .map(|(id, n)| (*id, (*n).to_owned()))
            .collect();
        let sim = Simulator::new(
            SimConfig {
                token: TOKEN.into(),
                example_snapshots: false,
                restore_duration: std::time::Duration::from_millis(100),
                ..SimConfig::default()
            },
            &named,
            Arc::new(SystemClock),
        );
        let (addr, _task) = simulator::serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("serve the simulator");
        let scratch = Scratch::new();
        let ids: Vec<ServerId> = servers.iter().map(|(id, _)| *id).collect();
        let config = scratch.config(
            &config_with_policy(&policy("nightly", "30 2 * * *", &ids, "")),
            &simulator::base_url(addr),
        );
        Self {
            sim,
            scratch,
            config,
        }
    }

    fn snapshot(&self, server: ServerId, name: &str, status: SnapshotStatus) -> String {
        let at = Utc::now() - chrono::Duration::hours(3);
        self.sim.add_snapshot(server, name, status, at).to_string()
    }

    fn restores(&self) -> u64 {
        self.sim.stats().request_count("restore")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_failed_or_in_progress_snapshot_is_refused_naming_its_status() {
    let p = Provider::new(&[(WEB, "web-1")]).await;
    for (status, word) in [
        (SnapshotStatus::Failed, "is failed"),
        (SnapshotStatus::InProgress, "is in_progress"),
        (SnapshotStatus::Other("deleting".into()), "is deleting"),
    ] {
        let id = p.snapshot(WEB, &format!("by-hand-{word}"), status);
        let out = run(bin()
            .arg("-c")
            .arg(&p.config)
            .args(["restore", &id, "--yes"]));
        assert_eq!(out.status.code(), Some(2), "{word}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("snapshot {id} \"by-hand-{word}\" {word}; only a completed snapshot can be restored")),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(p.restores(), 0, "no restore may be sent");
}

/// Runs `restore ID` at a pseudo-terminal (`script`, Debian package bsdutils) and types `answer`.
fn restore_at_a_terminal(
    config: &std::path::Path,
    id: &str,
    answer: &str,
) -> (Option<i32>, String) {
    let command = format!(
        "{} -c {} restore {id}",
        env!("CARGO_BIN_EXE_snapshot-scheduler"),
        config.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("SNAPSHOT_SCHEDULER_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("script runs (Debian package bsdutils)");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(answer.as_bytes())
        .expect("type the answer");
    let out = child.wait_with_output().expect("script ends");
    (out.status.code(), stdout(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_server_without_a_name_asks_for_its_id_and_enter_does_not_confirm() {
    let p = Provider::new(&[(WEB, "")]).await;
    let id = p.snapshot(WEB, "before-upgrade", SnapshotStatus::Completed);

    let (code, text) = restore_at_a_terminal(&p.config, &id, "\n");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("type its id (12345) to continue"), "{text}");
    assert!(
        text.contains("Not confirmed; nothing was changed."),
        "{text}"
    );
    assert_eq!(p.restores(), 0, "Enter confirmed the restore:\n{text}");

    let (code, text) = restore_at_a_terminal(&p.config, &id, "12345\n");
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(p.restores(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_at_a_terminal_needs_the_servers_name() {
    let p = Provider::new(&[(WEB, "web-1")]).await;
    let id = p.snapshot(WEB, "before-upgrade", SnapshotStatus::Completed);
    for answer in ["\n", "web-2\n", "12345\n"] {
        let (code, text) = restore_at_a_terminal(&p.config, &id, answer);
        assert_eq!(code, Some(1), "{answer:?}: {text}");
        assert!(text.contains("Type the server's name (web-1)"), "{text}");
    }
    assert_eq!(p.restores(), 0);
    let (code, text) = restore_at_a_terminal(&p.config, &id, "web-1\n");
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(p.restores(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_settles_only_its_own_servers_journal_entry() {
    let p = Provider::new(&[(WEB, "web-1"), (OTHER, "web-2")]).await;
    let id = p.snapshot(WEB, "before-upgrade", SnapshotStatus::Completed);
    let journal = Journal::open(&p.scratch.state_dir()).expect("the journal opens");
    let stopped = Utc::now() - chrono::Duration::hours(1);
    for server in [WEB, OTHER] {
        p.sim.set_server_status(server, PowerState::Stopped);
        journal
            .record(Entry {
                server,
                policy: "nightly".into(),
                snapshot: "nightly-20250115T023000Z".into(),
                stopped_at: stopped,
                deadline: stopped + chrono::Duration::minutes(50),
            })
            .await
            .expect("record");
    }
    drop(journal);
    let out = run(bin()
        .arg("-c")
        .arg(&p.config)
        .args(["restore", &id, "--yes"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left: Vec<ServerId> = Journal::open(&p.scratch.state_dir())
        .expect("the journal opens")
        .entries()
        .iter()
        .map(|e| e.server)
        .collect();
    assert_eq!(left, [OTHER], "restore settled an unrelated server");
    assert_eq!(
        p.sim.server(OTHER).map(|s| s.status),
        Some(PowerState::Stopped)
    );
    assert_eq!(p.restores(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_server_the_daemon_has_stopped_for_a_snapshot() {
    let p = Provider::new(&[(WEB, "web-1")]).await;
    let id = p.snapshot(WEB, "before-upgrade", SnapshotStatus::Completed);
    // This test holds the state lock, as a running daemon would, mid-snapshot of WEB.
    let daemon = Journal::open(&p.scratch.state_dir()).expect("the journal opens");
    assert!(daemon.try_lock().expect("lock"));
    let stopped = Utc::now();
    p.sim.set_server_status(WEB, PowerState::Stopped);
    daemon
        .record(Entry {
            server: WEB,
            policy: "nightly".into(),
            snapshot: "nightly-20250115T023000Z".into(),
            stopped_at: stopped,
            deadline: stopped + chrono::Duration::minutes(50),
        })
        .await
        .expect("record");
    let out = run(bin()
        .arg("-c")
        .arg(&p.config)
        .args(["restore", &id, "--yes"]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("server 12345 is stopped for snapshot nightly-20250115T023000Z by another snapshot-scheduler process"),
        "{}",
        stderr(&out)
    );
    assert_eq!(p.restores(), 0);
    assert_eq!(
        daemon.entries().len(),
        1,
        "the daemon's entry is its own to settle"
    );
}

#[test]
fn simulate_leaves_no_temporary_directory_behind() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    for args in [
        vec!["list"],
        vec!["plan"],
        vec!["status"],
        vec!["once"],
        vec!["once", "--dry-run"],
        vec!["restore", "800", "--yes"],
        // An error path: exit 2.
        vec!["restore", "4242", "--yes"],
    ] {
        let out = run(bin()
            .env("TMPDIR", tmp.path())
            .args(["--simulate", "-q", "-c", EXAMPLE])
            .args(&args));
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{args:?}: {}",
            stderr(&out)
        );
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("read the temp dir")
            .map(|e| e.map(|e| e.file_name()))
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// Spawns the binary with stderr collected line by line.
fn spawn_logged(
    cmd: &mut std::process::Command,
) -> (std::process::Child, Arc<std::sync::Mutex<String>>) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr is piped");
    let log = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// Polls `done` every 20 ms for up to 30 s.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn kill(child: &std::process::Child, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

fn entries(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map_or(0, Iterator::count)
}

#[test]
fn simulate_interrupted_or_killed_twice_leaves_no_temporary_directory_behind() {
    let tmp = tempfile::tempdir().expect("a temp dir");

    // `once`, interrupted while it works.
    let (mut once, log) = spawn_logged(bin().env("TMPDIR", tmp.path()).args([
        "--simulate",
        "--log-format",
        "text",
        "-c",
        EXAMPLE,
        "once",
    ]));
    eventually("once works on a server", || {
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains("rotation{")
    });
    assert_eq!(entries(tmp.path()), 1);
    kill(&once, "INT");
    let status = once.wait().expect("once ends");
    assert_eq!(status.code(), Some(130));
    assert_eq!(entries(tmp.path()), 0, "once left its state directory");

    // `run`, told twice to stop while a server is stopped for its snapshot.
    let scratch = Scratch::new();
    let config = scratch.config(
        &config_with_policy(&policy(
            "often",
            "*/2 * * * * *",
            &[WEB],
            "stop_server = true",
        )),
        "https://provider.invalid/api/v1",
    );
    let (mut daemon, log) = spawn_logged(
        bin()
            .env("TMPDIR", tmp.path())
            .args(["--simulate", "--log-format", "text", "-c"])
            .arg(&config)
            .arg("run"),
    );
    let logged = |what: &str| log.lock().unwrap_or_else(|e| e.into_inner()).contains(what);
    eventually("a server is stopped", || logged("stopping the server"));
    kill(&daemon, "TERM");
    eventually("the daemon drains", || logged("finishing in-flight work"));
    kill(&daemon, "TERM");
    let status = daemon.wait().expect("the daemon ends");
    assert_eq!(
        status.code(),
        Some(1),
        "{}",
        log.lock().unwrap_or_else(|e| e.into_inner())
    );
    assert_eq!(entries(tmp.path()), 0, "run left its state directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_neither_create_nor_need_the_state_dir() {
    let p = Provider::new(&[(WEB, "web-1")]).await;
    let state = p.scratch.state_dir();
    let commands = [
        vec!["plan"],
        vec!["once", "--dry-run"],
        vec!["status"],
        vec!["check"],
        vec!["list"],
    ];
    for args in &commands {
        let out = run(bin().arg("-c").arg(&p.config).args(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(!state.exists(), "{args:?} created the state_dir");
    }
    // A state_dir that cannot be read (here a file where the directory should be, which
    // stops root too) changes nothing for them.
    std::fs::write(&state, "not a directory").expect("write");
    for args in &commands {
        let out = run(bin().arg("-c").arg(&p.config).args(args));
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
}
