//! What `/healthz` answers (and `snapshot_scheduler_healthy` shows): the truth about this
//! process, not merely that it answers HTTP. 503 with the reason while the scheduler loop has
//! not woken for more than twice its longest sleep (it sleeps at most a minute, so a loop that
//! has not woken for two is stuck or gone), while the power journal cannot be written (the next
//! stop would be refused), while the process is stopping, and with `[ha]` while this host is
//! not acting (fenced, or out of etcd's reach). 200 `single`, `leader (…)` or `standby, …`
//! otherwise.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The daemon's health, kept up to date by the scheduler loop (every wake), the cluster's
/// role (`[ha]`) and the shutdown.
#[derive(Debug)]
pub(super) struct Health {
    /// The longest the scheduler loop sleeps between wakes.
    longest_sleep: Duration,
    stopping: CancellationToken,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// With `[ha]`: whether this host acts (leads or stands by) and the line that says so.
    /// `None` for a single host.
    role: Option<(bool, String)>,
    /// Whether a scheduler loop should be waking (a single host, or the leader), and since
    /// when; `None` on a standby, which runs no loop.
    looping: Option<Instant>,
    last_wake: Option<Instant>,
    /// Why the power journal could not be written at the last wake.
    journal: Option<String>,
}

impl Health {
    /// A single host's health: its loop runs from now.
    pub(super) fn single(longest_sleep: Duration, stopping: CancellationToken) -> Self {
        Self::new(longest_sleep, stopping, None, Some(Instant::now()))
    }

    /// A host of a cluster: not acting until its role is known.
    pub(super) fn clustered(longest_sleep: Duration, stopping: CancellationToken) -> Self {
        let role = Some((false, "starting".to_owned()));
        Self::new(longest_sleep, stopping, role, None)
    }

    fn new(
        longest_sleep: Duration,
        stopping: CancellationToken,
        role: Option<(bool, String)>,
        looping: Option<Instant>,
    ) -> Self {
        Self {
            longest_sleep,
            stopping,
            state: Mutex::new(State {
                role,
                looping,
                last_wake: None,
                journal: None,
            }),
        }
    }

    /// With `[ha]`: what this host does now. A leader's loop is expected to wake from the
    /// moment it takes the lead; a standby runs none.
    pub(super) fn role(&self, acting: bool, line: String, leading: bool) {
        let mut state = self.lock();
        match (leading, state.looping) {
            (true, None) => {
                state.looping = Some(Instant::now());
                state.last_wake = None;
            }
            (false, _) => state.looping = None,
            (true, Some(_)) => {}
        }
        state.role = Some((acting, line));
    }

    /// The scheduler loop woke; `journal` is why the power journal cannot be written, if it
    /// cannot.
    pub(super) fn woke(&self, journal: Option<String>) {
        let mut state = self.lock();
        state.last_wake = Some(Instant::now());
        state.journal = journal;
    }

    /// Healthy or not, and the line that says why.
    pub(super) fn verdict(&self) -> (bool, String) {
        if self.stopping.is_cancelled() {
            return (false, "stopping: finishing the work in flight".to_owned());
        }
        let state = self.lock();
        if let Some((false, line)) = &state.role {
            return (false, line.clone());
        }
        if let Some(since) = state.looping {
            let woke = state.last_wake.unwrap_or(since);
            let quiet = Instant::now().saturating_duration_since(woke);
            if quiet > 2 * self.longest_sleep {
                let quiet = humantime::format_duration(Duration::from_secs(quiet.as_secs()));
                let sleep = humantime::format_duration(self.longest_sleep);
                let line = match state.last_wake {
                    Some(_) => format!(
                        "stalled: the scheduler loop has not woken for {quiet} (it sleeps at most {sleep})"
                    ),
                    None => format!(
                        "starting: the scheduler loop has not begun after {quiet}; what a \
                         previous run left (servers it stopped, runs it was interrupted in) is \
                         still being settled"
                    ),
                };
                return (false, line);
            }
        }
        if let Some(journal) = &state.journal {
            return (
                false,
                format!("{journal}: cannot be written, so no server can be stopped for a snapshot"),
            );
        }
        match &state.role {
            Some((_, line)) => (true, line.clone()),
            None => (true, "single".to_owned()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Arc;

    use tokio::sync::watch;

    use super::*;
    use crate::alerts::Alerts;
    use crate::config::{Config, LoadOptions};
    use crate::daemon::{wake_handler, Service};
    use crate::retry::{RetryRules, Retrying};
    use crate::shutdown::Shutdown;

    const CAP: Duration = Duration::from_secs(60);

    fn config(state_dir: &Path) -> Config {
        let text =
            "[api]\nbase_url = \"https://provider.invalid/api/v1\"\n\n[[policy]]\nname = \"db\"\n\
                    schedule = \"0 3 * * *\"\nservers = [1]\nkeep = 2\nstop_server = true\n";
        let options = LoadOptions { simulate: true };
        let mut config = Config::parse(Path::new("health.toml"), text, options, &BTreeMap::new())
            .expect("a valid config");
        config.daemon.state_dir = state_dir.to_owned();
        config
    }

    /// `run`'s service on a simulated provider and tokio's paused clock, its loop waking
    /// through the daemon's own wake handler into `health`. Dropping the handle's task ends
    /// the loop as a crash of its task would.
    fn serve(
        state_dir: &Path,
        shutdown: &Shutdown,
    ) -> (Arc<Health>, tokio::task::JoinHandle<bool>) {
        let (sim, clock) =
            crate::fixtures::simulator(Default::default(), &[1], "2025-01-15T01:00:00Z");
        let config = config(state_dir);
        let service = Service::open(
            Retrying::new(sim, RetryRules::new(5).seeded(1)),
            clock,
            &config,
            Alerts::muted(),
            shutdown.clone(),
        )
        .expect("the service opens its state_dir");
        let health = Arc::new(Health::single(CAP, shutdown.stopping_token()));
        let on_wake = wake_handler(
            service.executor.clone(),
            None,
            String::new(),
            health.clone(),
        );
        let (_tx, reload) = watch::channel(config.policies.clone());
        let task = tokio::spawn(async move {
            let _tx = _tx;
            service
                .run(config.policies.clone(), reload, CAP, on_wake)
                .await
        });
        (health, task)
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_is_503_once_the_scheduler_loop_stops_waking() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let shutdown = Shutdown::new();
        let (health, task) = serve(dir.path(), &shutdown);
        // Hours of idle waking (and a fire at 03:00) are healthy.
        tokio::time::sleep(Duration::from_secs(3 * 3600)).await;
        assert_eq!(health.verdict(), (true, "single".to_owned()));
        task.abort();
        let _ = task.await;
        assert!(
            health.verdict().0,
            "not yet: the loop may sleep a whole minute"
        );
        tokio::time::sleep(2 * CAP + Duration::from_secs(1)).await;
        let (healthy, line) = health.verdict();
        assert!(!healthy);
        assert!(
            line.starts_with("stalled: the scheduler loop has not woken for ")
                && line.ends_with("(it sleeps at most 1m)"),
            "{line}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn healthz_is_503_while_the_power_journal_cannot_be_written() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let shutdown = Shutdown::new();
        let (health, task) = serve(dir.path(), &shutdown);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(health.verdict(), (true, "single".to_owned()));
        // The journal's temp file is a directory: every write of the journal fails (as root
        // too).
        let tmp = dir.path().join("power-journal.json.tmp");
        std::fs::create_dir(&tmp).expect("a directory");
        tokio::time::sleep(CAP).await;
        let (healthy, line) = health.verdict();
        assert!(!healthy);
        assert!(
            line.contains("power-journal.json") && line.contains("cannot be written"),
            "{line}"
        );
        std::fs::remove_dir(&tmp).expect("removed");
        tokio::time::sleep(CAP).await;
        assert_eq!(health.verdict(), (true, "single".to_owned()));
        // The journal itself was left alone, and no temp file lingers.
        assert!(!tmp.exists());
        shutdown.begin();
        assert_eq!(
            health.verdict(),
            (false, "stopping: finishing the work in flight".to_owned())
        );
        assert!(task.await.expect("the service ends"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_standby_runs_no_loop_and_a_new_leader_has_two_sleeps_to_wake() {
        let health = Health::clustered(CAP, CancellationToken::new());
        assert_eq!(health.verdict(), (false, "starting".to_owned()));
        let standby = "standby, leader is ops-2 (epoch 3)".to_owned();
        health.role(true, standby.clone(), false);
        tokio::time::sleep(10 * CAP).await;
        assert_eq!(health.verdict(), (true, standby));
        let leader = "leader (ops-1, epoch 4)".to_owned();
        health.role(true, leader.clone(), true);
        tokio::time::sleep(CAP).await;
        health.role(true, leader.clone(), true);
        assert_eq!(health.verdict(), (true, leader.clone()));
        tokio::time::sleep(CAP + Duration::from_secs(1)).await;
        assert!(!health.verdict().0, "a leader whose loop never began");
        health.woke(None);
        assert_eq!(health.verdict(), (true, leader));
        let fenced = "not acting: leadership lost (epoch 4)".to_owned();
        health.role(false, fenced.clone(), false);
        assert_eq!(health.verdict(), (false, fenced));
    }
}
