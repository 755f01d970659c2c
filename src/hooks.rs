//! `pre_hook` / `post_hook`: commands run on this host around a snapshot (quiesce a database,
//! resume it). An argv, never a shell unless the operator asks for one; its own process group,
//! killed whole at `hook_timeout`; every output line logged with the server's fields.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The variables of this process a hook sees; everything else is withheld.
const PASSED_ON: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR",
];

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    pub success: bool,
    /// "exit status 0", "killed after 5m (hook_timeout)", "could not start: ...".
    pub detail: String,
}

/// Runs `argv` with `env` added, bounded by `timeout`. `phase` ("pre" or "post") labels the
/// log lines.
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
        .process_group(0)
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
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let log_lines = async {
        let out = async {
            if let Some(s) = stdout {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(hook = phase, stream = "stdout", "{line}");
                }
            }
        };
        let err = async {
            if let Some(s) = stderr {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!(hook = phase, stream = "stderr", "{line}");
                }
            }
        };
        tokio::join!(out, err);
    };
    let waited = tokio::time::timeout(timeout, async {
        let (status, ()) = tokio::join!(child.wait(), log_lines);
        status
    })
    .await;
    match waited {
        Ok(Ok(status)) => HookOutcome {
            success: status.success(),
            detail: status.to_string(),
        },
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
