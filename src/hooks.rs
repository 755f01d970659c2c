//! `pre_hook` / `post_hook`: commands run on this host around a snapshot (quiesce a database,
//! resume it). An argv, never a shell unless the operator asks for one; its own process group,
//! killed whole at `hook_timeout`; every output line logged with the server's fields. Its
//! result is its own exit status: processes it leaves running (a lock holder) keep running.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{ChildStderr, ChildStdout, Command};

/// The variables of this process a hook sees; everything else is withheld.
const PASSED_ON: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
];

/// How long a hook's output is still read after it exited, for what it wrote just before.
/// Processes it left running hold the pipes open beyond that.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// The longest output line logged as one; longer ones are logged in pieces.
const MAX_LINE: u64 = 64 * 1024;

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub success: bool,
    /// "exit status 0", "killed after 5m (hook_timeout)", "could not start: ...".
    pub detail: String,
}

/// Runs `argv` with `env` added, bounded by `timeout`, and returns once it exited (plus up to
/// `OUTPUT_AFTER_EXIT` for its last output). `phase` ("pre" or "post") labels the log lines.
pub async fn run(
    phase: &'static str,
    argv: &[String],
    env: &[(&'static str, String)],
    timeout: Duration,
) -> HookOutcome {
    let Some((program, args)) = argv.split_first() else {
        return HookOutcome {
            success: false,
            detail: "empty command".into(),
        };
    };
    let mut cmd = Command::new(program);
    // A clean environment: the daemon's may hold the API token (token_env), and hooks log
    // their output. Only what a command needs to run is passed on, plus the hook's own.
    cmd.env_clear();
    for key in PASSED_ON {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so the timeout can kill everything it started.
        .process_group(0)
        // Only the hook itself, and only if this future is dropped while it runs: a `Child`
        // that was waited for kills nothing when dropped, so what a hook that exited left
        // running (a lock holder) is never touched.
        .kill_on_drop(true);
    tracing::info!(hook = phase, command = ?argv, "running {phase} hook");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookOutcome {
                success: false,
                detail: format!("could not start {program}: {e}"),
            }
        }
    };
    let pgid = child.id();
    // The hook's result is its own exit status. Its output is read alongside, but the pipes
    // stay open as long as any process it started in the background does (a lock holder), so
    // waiting for their end would wait for those processes.
    let quiet = Arc::new(AtomicBool::new(false));
    let mut output = Box::pin(log_output(
        phase,
        child.stdout.take(),
        child.stderr.take(),
        quiet.clone(),
    ));
    let mut output_closed = false;
    let waited = tokio::time::timeout(timeout, async {
        loop {
            tokio::select! {
                status = child.wait() => return status,
                () = &mut output, if !output_closed => output_closed = true,
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(status)) => {
            // What it wrote just before exiting may still be in the pipes.
            if !output_closed
                && tokio::time::timeout(OUTPUT_AFTER_EXIT, &mut output)
                    .await
                    .is_err()
            {
                tracing::info!(
                    hook = phase,
                    "the {phase} hook exited and left processes running; they keep running, \
                     their output is not logged"
                );
                // Still drained, so they never block on a full pipe or die of SIGPIPE.
                quiet.store(true, Ordering::Relaxed);
                tokio::spawn(output);
            }
            HookOutcome {
                success: status.success(),
                detail: status.to_string(),
            }
        }
        Ok(Err(e)) => HookOutcome {
            success: false,
            detail: format!("could not wait for {program}: {e}"),
        },
        Err(_) => {
            if let Some(pgid) = pgid {
                // The whole group: a shell's children too.
                // SAFETY: kill(2) with a negative pid signals a process group; no memory involved.
                unsafe {
                    libc::kill(-(pgid as i32), libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            HookOutcome {
                success: false,
                detail: format!(
                    "killed after {} (hook_timeout)",
                    humantime::format_duration(timeout)
                ),
            }
        }
    }
}

/// Logs each line of a hook's stdout (info) and stderr (warning) until both are closed;
/// once `quiet` is set, reads and discards.
async fn log_output(
    phase: &'static str,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    quiet: Arc<AtomicBool>,
) {
    let out = async {
        if let Some(s) = stdout {
            log_lines(s, &quiet, |line| {
                tracing::info!(hook = phase, stream = "stdout", "{line}");
            })
            .await;
        }
    };
    let err = async {
        if let Some(s) = stderr {
            log_lines(s, &quiet, |line| {
                tracing::warn!(hook = phase, stream = "stderr", "{line}");
            })
            .await;
        }
    };
    tokio::join!(out, err);
}

/// Hands `log` each line of `stream` until it is closed. Lines are cut at [`MAX_LINE`] bytes
/// and need not be UTF-8, so no output can make the reading stop (and the hook block on a
/// full pipe) or grow without bound.
async fn log_lines(stream: impl AsyncRead + Unpin, quiet: &AtomicBool, log: impl Fn(&str)) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) if quiet.load(Ordering::Relaxed) => {}
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                log(text.trim_end_matches(['\n', '\r']));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn env_reaches_the_hook_and_exit_status_counts() {
        let ok = run(
            "pre",
            &argv(&["sh", "-c", "test \"$SERVER_ID\" = 7"]),
            &[("SERVER_ID", "7".into())],
            Duration::from_secs(10),
        )
        .await;
        assert!(ok.success, "{ok:?}");
        let bad = run("pre", &argv(&["false"]), &[], Duration::from_secs(10)).await;
        assert!(!bad.success);
    }

    #[tokio::test]
    async fn a_hanging_hook_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let out = run(
            "pre",
            &argv(&["sh", "-c", &script]),
            &[],
            Duration::from_millis(300),
        )
        .await;
        assert!(!out.success);
        assert!(out.detail.contains("hook_timeout"), "{}", out.detail);
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a child of the hook outlived the timeout");
    }

    /// Whether `pid` is a live process (not a zombie waiting to be reaped).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            // The state follows the command name in parentheses.
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            !matches!(state, Some(Some('Z' | 'X')) | None)
        })
    }

    #[tokio::test]
    async fn a_hook_that_leaves_a_holder_running_succeeds_and_the_holder_lives_on() {
        // A pre hook that takes a lock and leaves a process holding it (a database session
        // kept open in the background) exits 0 at once. It used to be waited for until its
        // output closed, so it was "killed at hook_timeout", holder and all.
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("holder.pid");
        let script = format!(
            "sleep 30 & echo $! > {}; echo held; exit 0",
            pid_file.display()
        );
        let started = std::time::Instant::now();
        let out = run(
            "pre",
            &argv(&["sh", "-c", &script]),
            &[],
            Duration::from_secs(5),
        )
        .await;
        let took = started.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let holder_alive = alive(pid);
        // SAFETY: kill(2) on the holder this test started; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        assert!(out.success, "{out:?}");
        assert_eq!(out.detail, "exit status: 0");
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(holder_alive, "the hook's background process was killed");
    }

    #[tokio::test]
    async fn a_holder_that_writes_after_the_hook_exited_is_not_killed_by_a_closed_pipe() {
        // Output after the hook exited is no longer logged, but still read: a closed pipe
        // would kill a holder at its next write (SIGPIPE) and release its lock early.
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("wrote-and-lived");
        let script = format!(
            "(sleep 2.5; echo late; echo late >&2; touch {}) & exit 0",
            marker.display()
        );
        let started = std::time::Instant::now();
        let out = run(
            "pre",
            &argv(&["sh", "-c", &script]),
            &[],
            Duration::from_secs(5),
        )
        .await;
        assert!(out.success, "{out:?}");
        // Returned before the holder wrote: its output went to a pipe no longer logged.
        assert!(started.elapsed() < Duration::from_millis(2400));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marker.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the holder died writing its output"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_failing_hook_is_judged_by_its_exit_status_not_by_its_holders() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("holder.pid");
        let script = format!("sleep 30 & echo $! > {}; exit 3", pid_file.display());
        let started = std::time::Instant::now();
        let out = run(
            "pre",
            &argv(&["sh", "-c", &script]),
            &[],
            Duration::from_secs(5),
        )
        .await;
        let took = started.elapsed();
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the holder this test started; no memory involved.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        assert!(!out.success);
        assert_eq!(out.detail, "exit status: 3");
        assert!(took < Duration::from_secs(3), "took {took:?}");
    }

    #[tokio::test]
    async fn a_hook_does_not_see_the_daemons_other_variables() {
        // As if token_env = "HOOK_TEST_API_TOKEN" held the API token.
        std::env::set_var("HOOK_TEST_API_TOKEN", "s3cret");
        let out = run(
            "pre",
            &argv(&[
                "sh",
                "-c",
                "test -z \"$HOOK_TEST_API_TOKEN\" && test -n \"$PATH\"",
            ]),
            &[],
            Duration::from_secs(10),
        )
        .await;
        assert!(out.success, "the hook saw the token or lost PATH: {out:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_failure_not_a_panic() {
        let out = run(
            "post",
            &argv(&["/nonexistent/hook"]),
            &[],
            Duration::from_secs(1),
        )
        .await;
        assert!(!out.success);
        assert!(out.detail.contains("could not start"));
    }
}
