//! Shared set-up: temporary config files, the binary, a simulated provider on 127.0.0.1:0.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snapshot_scheduler::clock::SystemClock;
use snapshot_scheduler::model::ServerId;
use snapshot_scheduler::simulator::{self, SimConfig, Simulator};

pub const TOKEN: &str = "test-token-3f9a1c";

/// Set to `1` by `.ci/run`, where every test must run: what a test needs and lacks (a tool,
/// root) fails it instead of skipping it. `CI` (set by CI services) means the same.
pub const REQUIRE_TOOLS: &str = "SNAPSHOT_SCHEDULER_REQUIRE_TOOLS";

/// The programs tests run besides the binary, each with the Debian package it comes in.
/// `.ci/run` installs the package of any that is missing.
pub const TOOLS: &[(&str, &str)] = &[
    ("systemd-analyze", "systemd"),
    ("setpriv", "util-linux"),
    ("script", "bsdutils"),
    ("kill", "procps"),
    ("etcd", "etcd-server"),
    ("promtool", "prometheus"),
    ("dpkg-deb", "dpkg"),
    ("man", "man-db"),
    ("zsh", "zsh"),
    ("fish", "fish"),
];

/// Whether every test must run here: [`REQUIRE_TOOLS`] set to anything but `0`, or, without
/// it, `CI` set to anything but `0` or `false`.
fn tools_required() -> bool {
    let set = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
    match set(REQUIRE_TOOLS) {
        Some(v) => v != "0",
        None => set("CI").is_some_and(|v| v != "0" && v != "false"),
    }
}

/// Whether `tool` (one of [`TOOLS`]) runs here. A test that goes on without it proves nothing,
/// so where every test must run a missing tool fails the test, naming its Debian package;
/// elsewhere the skip is announced (see [`unavailable`]) and `false` returned.
pub fn tool_available(tool: &str) -> bool {
    let package = TOOLS
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or("?", |(_, p)| *p);
    let runs = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    runs || unavailable(&format!(
        "`{tool}` is not installed (Debian package {package}: apt-get install {package})"
    ))
}

/// A test cannot run here because `missing` is missing. Where every test must run, that fails
/// the test; elsewhere it prints a line to stderr, around the test harness's capture (which
/// hides what a passing test prints), and returns `false` for the test to return early.
pub fn unavailable(missing: &str) -> bool {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    assert!(
        !tools_required(),
        "{test}: {missing}; every test must run here ({REQUIRE_TOOLS} or CI is set)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {test}: {missing}. It proved nothing here; with {REQUIRE_TOOLS}=1 \
         (as in .ci/run) this fails. ***\n"
    );
    false
}

/// The real binary, with a clean environment for the variables it reads.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snapshot-scheduler"));
    clean_env(&mut cmd);
    cmd
}

/// The user and group [`bin_as_nobody`] runs the binary as.
pub const NOBODY: u32 = 65534;

/// Like [`bin`], run as user and group [`NOBODY`] (through setpriv), for what a daemon that
/// does not run as root meets. `None` where that cannot be done (not root, no setpriv): the
/// test fails where every test must run, and is skipped loudly elsewhere ([`unavailable`]).
pub fn bin_as_nobody() -> Option<Command> {
    // SAFETY: geteuid has no preconditions and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        unavailable("root, to run the binary as another user (CI runs as root)");
        return None;
    }
    if !tool_available("setpriv") {
        return None;
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(env!("CARGO_BIN_EXE_snapshot-scheduler"));
    clean_env(&mut cmd);
    Some(cmd)
}

/// `cmd` with its open-files limit set to `soft` and `hard` in the child before it starts.
pub fn with_open_files_limit(mut cmd: Command, soft: u64, hard: u64) -> Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and only calls setrlimit(2),
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn clean_env(cmd: &mut Command) {
    cmd.env_remove("SNAPSHOT_SCHEDULER_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG");
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch directory with a token file (mode 600) beside the config.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let s = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        s.write_token(TOKEN, 0o600);
        s
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn token_path(&self) -> PathBuf {
        self.path().join("token")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path().join("state")
    }

    pub fn write_token(&self, token: &str, mode: u32) {
        let p = self.token_path();
        std::fs::write(&p, token).expect("write token");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Writes `config.toml`; `{token_file}`, `{state_dir}` and `{base_url}` are filled in.
    pub fn config(&self, body: &str, base_url: &str) -> PathBuf {
        let text = body
            .replace("{token_file}", &self.token_path().display().to_string())
            .replace("{state_dir}", &self.state_dir().display().to_string())
            .replace("{base_url}", base_url);
        let p = self.path().join("config.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }
}

/// A minimal valid config around one policy body.
pub fn config_with_policy(policy: &str) -> String {
    format!(
        r#"[api]
base_url = "{{base_url}}"
token_file = "{{token_file}}"

[daemon]
state_dir = "{{state_dir}}"
poll_interval = "200ms"

[[policy]]
{policy}
"#
    )
}

/// One `[[policy]]` body keeping 2, with `extra` lines.
pub fn policy(name: &str, schedule: &str, servers: &[ServerId], extra: &str) -> String {
    let ids: Vec<String> = servers.iter().map(ToString::to_string).collect();
    format!(
        "name = \"{name}\"\nschedule = \"{schedule}\"\nservers = [{}]\nkeep = 2\n{extra}",
        ids.join(", ")
    )
}

/// Like [`config_with_policy`], with a request budget that never slows a test down and extra
/// `[daemon]` lines.
pub fn fast_config(policies: &str, daemon: &str) -> String {
    format!(
        r#"[api]
base_url = "{{base_url}}"
token_file = "{{token_file}}"
requests_per_second = 1000

[daemon]
state_dir = "{{state_dir}}"
poll_interval = "200ms"
{daemon}

[[policy]]
{policies}
"#
    )
}

/// A simulated provider of `servers` (named `web-<id>`) that takes the test token.
pub fn test_sim(servers: &[ServerId], config: SimConfig) -> Simulator {
    let named: Vec<(ServerId, String)> = servers
        .iter()
        .map(|id| (*id, format!("web-{id}")))
        .collect();
    Simulator::new(
        SimConfig {
            token: TOKEN.into(),
            ..config
        },
        &named,
        Arc::new(SystemClock),
    )
}

/// A simulated provider served on 127.0.0.1:0 with the test token.
pub async fn serve_sim(servers: &[ServerId], config: SimConfig) -> (Simulator, String) {
    let sim = test_sim(servers, config);
    let (addr, _task) = simulator::serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("serve simulator");
    (sim, simulator::base_url(addr))
}

/// A simulated provider served for the test, a scratch directory, and a fast config naming it.
pub struct Setup {
    pub sim: Simulator,
    pub scratch: Scratch,
    pub base_url: String,
    pub config: PathBuf,
}

impl Setup {
    pub async fn new(servers: &[ServerId], sim: SimConfig, policies: &str, daemon: &str) -> Self {
        let (sim, base_url) = serve_sim(servers, sim).await;
        let scratch = Scratch::new();
        let config = scratch.config(&fast_config(policies, daemon), &base_url);
        Self {
            sim,
            scratch,
            base_url,
            config,
        }
    }

    pub fn journal_path(&self) -> PathBuf {
        self.scratch.state_dir().join("power-journal.json")
    }

    /// The power journal's entries as the next start would read them (none without a file).
    pub fn journal(&self) -> Vec<serde_json::Value> {
        read_journal(&self.journal_path())
    }
}

/// A power journal file's entries as JSON (none when the file does not exist).
pub fn read_journal(path: &Path) -> Vec<serde_json::Value> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).expect("the journal is JSON"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

/// How long a running daemon may take for any one condition before a test fails.
pub const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// The binary running `run` (text logs, no watchdog) with `args` before the command; its
/// stderr collected. Dropping it kills the process.
pub struct Daemon {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Daemon {
    pub fn start(args: &[&str], config: &Path) -> Self {
        let mut child = bin()
            .args(args)
            .arg("--config")
            .arg(config)
            .args(["--log-format", "text", "run"])
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Polls until `done` holds; fails if the daemon exits or after [`DAEMON_WAIT`], with the log.
    pub async fn until(&mut self, what: &str, mut done: impl FnMut(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + DAEMON_WAIT;
        loop {
            let log = self.log();
            if done(&log) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("the daemon exited ({status}) while waiting until {what}\n{log}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting until {what}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the daemon exited ({status})\n{}", self.log());
        }
    }

    /// SIGTERM, then the exit (in-flight work drains first).
    pub async fn stop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started.
        let sent = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        let deadline = tokio::time::Instant::now() + DAEMON_WAIT;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no exit after SIGTERM\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
