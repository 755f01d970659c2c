//! Power and the journal: stop for a snapshot (journaled first), start again on every way
//! out, and settle what a previous process left stopped.

use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tokio::time::Instant;
use tracing::Instrument;

use crate::journal;
use crate::model::{PowerState, ServerId, Snapshot};
use crate::policy::{JournalFailure, Policy};
use crate::provider::{ApiError, Provider};

use super::poll::Waited;
use super::{deadline_after, wall_after, Executor};

/// How the start path ended without an error.
#[derive(Debug)]
enum Up {
    Running,
    /// The provider no longer knows the server.
    Gone(ApiError),
}

impl<P: Provider> Executor<P> {
    /// The server's power state when it is running or stopped; else why it is not snapshotted.
    pub(super) async fn power_state(
        &self,
        server: ServerId,
    ) -> anyhow::Result<Result<PowerState, String>> {
        let state = self.provider.get_server(server).await?.status;
        Ok(match state {
            PowerState::Running | PowerState::Stopped => Ok(state),
            other => Err(format!(
                "server is {other} (neither running nor stopped); not snapshotted"
            )),
        })
    }

    /// Stop (if asked and running) → create → wait → start. `Ok(None)`: server busy, nothing
    /// done. Once the stop was requested, the server is started again on every way out of
    /// this function: an error, a timeout, a shutdown, and a panic in the code between.
    pub(super) async fn snapshot(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
        power: Option<PowerState>,
    ) -> anyhow::Result<Option<(Snapshot, Vec<Snapshot>)>> {
        let span = AssertUnwindSafe(self.stop_and_snapshot(policy, server, name, power))
            .catch_unwind()
            .await;
        let (stopped_by_us, result) = match span {
            Ok(done) => done,
            Err(panic) => {
                // Whatever unwound, the journal knows whether this server was stopped.
                let stopped = self.journal.entries().iter().any(|e| e.server == server);
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                tracing::error!(panic = %what, "internal error during the snapshot");
                (stopped, Err(anyhow::anyhow!("internal error: {what}")))
            }
        };
        if stopped_by_us {
            if let Err(e) = self.start_again(server).await {
                return Err(match result {
                    Ok(_) => e,
                    Err(first) => first.context(format!("{e:#}")),
                });
            }
        }
        result
    }

    /// The part of [`snapshot`](Self::snapshot) that may leave the server stopped: whether it
    /// did, and how the snapshot went.
    async fn stop_and_snapshot(
        &self,
        policy: &Policy,
        server: ServerId,
        name: &str,
        power: Option<PowerState>,
    ) -> (bool, anyhow::Result<Option<(Snapshot, Vec<Snapshot>)>>) {
        let mut stopped_by_us = false;
        if let Some(state) = power {
            match state {
                PowerState::Running => match self.stop(policy, server, name).await {
                    Ok(stopped) => stopped_by_us = stopped,
                    Err(e) => return (false, Err(e)),
                },
                PowerState::Stopped => {
                    tracing::info!("server is already stopped; snapshotting it as it is and leaving it stopped");
                }
                _ => return (false, Ok(None)),
            }
        }
        // A shutdown that began while the server was stopping takes no snapshot: the
        // shutdown may hurry (and start the server) any moment, under a snapshot in progress.
        if stopped_by_us && self.shutdown.is_stopping() {
            return (
                true,
                Err(anyhow::anyhow!(
                    "shutting down: no snapshot taken of the stopped server; it is started again"
                )),
            );
        }
        let result = self.create_and_wait(policy, server, name).await;
        (stopped_by_us, result.map(Some))
    }

    /// Journal first, then stop, then wait for `stopped`. On any failure after the request,
    /// the server is started again before the error is returned.
    /// `Ok(false)`: the stop could not be journaled and `on_journal_failure = "snapshot_running"`,
    /// so the server was left running (never stopped unjournaled).
    async fn stop(&self, policy: &Policy, server: ServerId, name: &str) -> anyhow::Result<bool> {
        let now = self.clock.now();
        // Time to stop and to take the snapshot; the start after the deadline must still fit
        // in snapshot_timeout + 2 × power_timeout, crash or not.
        let budget = self
            .settings
            .power_timeout
            .saturating_add(self.settings.snapshot_timeout);
        let entry = journal::Entry {
            server,
            policy: policy.name.clone(),
            snapshot: name.to_owned(),
            stopped_at: now,
            deadline: wall_after(now, budget),
        };
        if let Err(e) = self.journal.record(entry).await {
            metrics::counter!(crate::series::JOURNAL_FAILURES).increment(1);
            match policy.on_journal_failure {
                JournalFailure::Skip => anyhow::bail!(
                    "refusing to stop server {server}: its stop cannot be journaled ({e}); no \
                     snapshot taken (on_journal_failure = \"skip\")"
                ),
                JournalFailure::SnapshotRunning => {
                    tracing::warn!(error = %e, "refusing to stop the server: its stop cannot be journaled; snapshotting it while it runs (on_journal_failure = \"snapshot_running\")");
                    return Ok(false);
                }
            }
        }
        tracing::info!("stopping the server for a consistent snapshot");
        let stopped = match self.request_stop(server).await {
            Ok(()) => self.wait_stopped(server).await,
            Err(e) => Err(e),
        };
        if let Err(e) = stopped {
            let again = self.start_again(server).await;
            let e = e.context(format!("stopping server {server}"));
            return Err(match again {
                Ok(()) => e,
                Err(a) => e.context(format!("{a:#}")),
            });
        }
        Ok(true)
    }

    /// Brings a server this program stopped back to `running` and clears its journal entry.
    /// The whole path (wait out `stopping`, send the start, wait for `running`) is bounded by
    /// one `power_timeout`, and transient API errors (an outage, 5xx, 429) are retried
    /// throughout; a shutdown does not cut it short. Any way out of it without a running
    /// server is "left stopped": a loud log line, the `server_left_stopped` alert and metric,
    /// and the journal entry stays, so the next settle tries again. A server the provider no
    /// longer knows (404) has nothing to start: warned once, its entry cleared.
    pub async fn start_again(&self, server: ServerId) -> anyhow::Result<()> {
        if !self.journal.may_start(server).await {
            tracing::warn!("this host no longer leads the cluster, and the leader has stopped this server again for its own snapshot: not starting it (the leader starts it)");
            return Ok(());
        }
        match self.bring_up(server).await {
            Ok(Up::Running) => {
                self.journal.clear(server).await?;
                self.alerted().remove(&server);
                Ok(())
            }
            Ok(Up::Gone(e)) => {
                let message = format!(
                    "server {server} was stopped for a snapshot and the provider no longer knows \
                     it ({e}); nothing to start, its journal entry is cleared"
                );
                tracing::warn!("{message}");
                // The entry goes with this alert, so it cannot repeat.
                self.alert_left_stopped(server, &message);
                self.journal.clear(server).await?;
                self.alerted().remove(&server);
                Ok(())
            }
            Err(e) => {
                self.report_left_stopped(server, &format!("{e:#}"));
                Err(e.context(format!(
                    "server {server} was stopped for a snapshot and could not be started again"
                )))
            }
        }
    }

    /// A server this program stopped is not running and this attempt is over: a loud log
    /// line, the metric, and the `server_left_stopped` alert (once per streak).
    pub fn report_left_stopped(&self, server: ServerId, why: &str) {
        metrics::counter!(crate::series::SERVER_LEFT_STOPPED).increment(1);
        let message = format!(
            "server {server} was stopped for a snapshot and could not be started again: {why}; \
             it stays in the power journal and is retried"
        );
        tracing::error!("SERVER LEFT STOPPED: {message}");
        if self.alerted().insert(server) {
            self.alert_left_stopped(server, &message);
        }
    }

    fn alert_left_stopped(&self, server: ServerId, message: &str) {
        self.alerts.send(
            crate::config::AlertEvent::ServerLeftStopped,
            None,
            Some(server),
            message,
        );
    }

    fn alerted(&self) -> std::sync::MutexGuard<'_, HashSet<ServerId>> {
        self.alerted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The start path of [`start_again`](Self::start_again), without its reporting.
    async fn bring_up(&self, server: ServerId) -> anyhow::Result<Up> {
        let timeout = self.settings.power_timeout;
        let deadline = deadline_after(timeout);
        let mut delay = self.settings.poll_interval.min(Duration::from_secs(2));
        let longest = self.settings.poll_interval.max(Duration::from_secs(1));
        // When a start was last accepted: a server still `stopped` long after that is sent
        // another (the provider dropped it); sooner, a lagging status is waited out.
        let mut started_at: Option<Instant> = None;
        let mut last: String = "not looked at yet".into();
        // No call may outlast the deadline (a 429's Retry-After pauses every request, the
        // retry layer's re-sends add up): the path as a whole is bounded by power_timeout.
        let no_answer = || ApiError::Timeout {
            what: format!("get server {server}"),
            timeout,
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let looked = tokio::time::timeout(left, self.provider.get_server(server))
                .await
                .unwrap_or_else(|_| Err(no_answer()));
            match looked {
                Ok(s) => match s.status {
                    PowerState::Running => return Ok(Up::Running),
                    PowerState::Stopped => {
                        let resend = started_at.is_none_or(|t| {
                            t.elapsed() >= Duration::from_secs(60).max(longest * 4)
                        });
                        if resend {
                            tracing::info!("starting the server again");
                            let left = deadline.saturating_duration_since(Instant::now());
                            let sent =
                                tokio::time::timeout(left, self.provider.start_server(server))
                                    .await
                                    .unwrap_or_else(|_| Err(no_answer()));
                            match sent {
                                Ok(_) => started_at = Some(Instant::now()),
                                Err(e) if e.is_retryable() => {
                                    tracing::warn!(error = %e, "start request failed; looking at the server before sending it again");
                                    last = format!("stopped; the start request failed: {e}");
                                }
                                Err(e @ ApiError::NotFound { .. }) => return Ok(Up::Gone(e)),
                                Err(e) => return Err(e.into()),
                            }
                        }
                        if started_at.is_some() {
                            last = "stopped (start requested)".into();
                        }
                    }
                    other => last = other.to_string(),
                },
                Err(e @ ApiError::NotFound { .. }) => return Ok(Up::Gone(e)),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(error = %e, "cannot look at the server; trying again until power_timeout");
                    last = format!("unknown ({e})");
                }
                Err(e) => return Err(e.into()),
            }
            let now = Instant::now();
            if now >= deadline {
                anyhow::bail!(
                    "server {server} is {last}, not running, after power_timeout {}",
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 3 / 2).min(longest);
        }
    }

    /// Sends the stop ([`Retrying::stop_server_unless`](crate::retry::Retrying::stop_server_unless): sent again only after a look shows the
    /// server still running, and not once the shutdown is hurried).
    async fn request_stop(&self, server: ServerId) -> anyhow::Result<()> {
        self.provider
            .stop_server_unless(server, self.shutdown.hurried())
            .await?;
        Ok(())
    }

    /// Polls the server until it is `stopped`, bounded by `power_timeout`; a shutdown ends
    /// the wait (the caller starts the server again).
    async fn wait_stopped(&self, server: ServerId) -> anyhow::Result<()> {
        let deadline = deadline_after(self.settings.power_timeout);
        let mut delay = self.settings.poll_interval.min(Duration::from_secs(2));
        loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.hurried() => anyhow::bail!("shutting down before the server had stopped"),
            }
            let state = self.provider.get_server(server).await?.status;
            if state == PowerState::Stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "server {server} is {state}, not stopped, after power_timeout {}",
                    humantime::format_duration(self.settings.power_timeout)
                );
            }
            delay = (delay * 3 / 2).min(self.settings.poll_interval.max(Duration::from_secs(1)));
        }
    }

    /// For commands that exit after their work (`once`): journal entries left behind (a
    /// start that failed, say during an outage) are settled again with back-off for up to
    /// `power_timeout`. Returns what still could not be settled.
    pub async fn settle_leftovers(self: &Arc<Self>) -> Vec<anyhow::Error> {
        let deadline = deadline_after(self.settings.power_timeout);
        let mut delay = Duration::from_secs(5);
        loop {
            if self.journal.entries().is_empty() {
                return Vec::new();
            }
            let errors = self.reconcile().await;
            if errors.is_empty() || Instant::now() + delay >= deadline {
                return errors;
            }
            tracing::warn!(retry_in = ?delay, "a server this run stopped is not running yet; trying again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    /// [`reconcile`](Self::reconcile), as one error for commands that must not act on a
    /// server a previous run left stopped.
    pub async fn reconcile_or_fail(self: &Arc<Self>) -> anyhow::Result<()> {
        let errors = self.reconcile().await;
        if errors.is_empty() {
            return Ok(());
        }
        let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
        anyhow::bail!(
            "could not settle servers stopped by a previous run:\n  {}",
            text.join("\n  ")
        )
    }

    /// Finishes what a previous process left: for each journaled stop, wait for its snapshot
    /// to leave `in_progress` (up to the recorded deadline), start the server if it is still
    /// stopped, clear the entry. Returns one error per server that could not be settled.
    /// Holds the server's lock meanwhile, so it may run beside the scheduler: an entry of work
    /// still in flight is settled by that work, and is gone once the lock is free.
    pub async fn reconcile(self: &Arc<Self>) -> Vec<anyhow::Error> {
        // All at once: one by one, the last of ten servers would wait for nine starts.
        let mut settling = tokio::task::JoinSet::new();
        for entry in self.journal.entries() {
            let this = self.clone();
            settling.spawn(async move { this.settle(entry).await });
        }
        let mut errors = Vec::new();
        while let Some(done) = settling.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(anyhow::anyhow!("settling a server ended abnormally: {e}")),
            }
        }
        errors
    }

    /// Settles the journal entry of one server, if it has one (see
    /// [`reconcile`](Self::reconcile)): `restore` must not act on a server a previous run
    /// left stopped, nor wait for servers it does not touch.
    pub async fn settle_server(&self, server: ServerId) -> anyhow::Result<()> {
        match self
            .journal
            .entries()
            .into_iter()
            .find(|e| e.server == server)
        {
            Some(entry) => self.settle(entry).await,
            None => Ok(()),
        }
    }

    /// Settles one journal entry (see [`reconcile`](Self::reconcile)).
    async fn settle(&self, entry: journal::Entry) -> anyhow::Result<()> {
        let lock = self.locks.entry(entry.server);
        let _held = lock.lock().await;
        if !self.journal.entries().contains(&entry) {
            return Ok(());
        }
        let span = tracing::info_span!("reconcile", policy = %entry.policy, server = entry.server, snapshot = %entry.snapshot);
        async {
            tracing::warn!(stopped_at = %entry.stopped_at, "a previous run stopped this server; settling it");
            // The recorded deadline, but never later than the current config allows from the
            // stop (a journal written under a longer snapshot_timeout, by a clock that was
            // ahead, or by hand).
            let now = self.clock.now();
            let budget = self
                .settings
                .power_timeout
                .saturating_add(self.settings.snapshot_timeout);
            let deadline = entry
                .deadline
                .min(wall_after(entry.stopped_at.min(now), budget));
            let left = (deadline - now).to_std().unwrap_or(Duration::ZERO);
            // Waiting for the snapshot is a courtesy to its consistency; starting the server
            // is the rule. Nothing on the way to the start may stop it: a listing that fails
            // (an unreadable record of this server, a server the provider no longer lists)
            // means the server is started now.
            let listed = if left.is_zero() || self.shutdown.is_hurried() {
                tracing::warn!("past the deadline recorded for its snapshot, or shutting down; starting the server now");
                None
            } else {
                // Bounded like the start path: a provider that throttles or hangs must not
                // hold the start back.
                let listing = self.provider.list_snapshots(Some(entry.server));
                Some(
                    tokio::time::timeout(self.settings.power_timeout, listing)
                        .await
                        .unwrap_or_else(|_| {
                            Err(ApiError::Timeout {
                                what: format!("list snapshots of server {}", entry.server),
                                timeout: self.settings.power_timeout,
                            })
                        }),
                )
            };
            if let Some(listed) = listed {
                match listed {
                    Ok(snapshots) => {
                        let in_progress = snapshots
                            .iter()
                            .any(|s| s.name == entry.snapshot && !s.status.is_settled());
                        if in_progress {
                            let wait = tokio::time::timeout(left, self.wait_for(entry.server, &entry.snapshot, true)).await;
                            if !matches!(wait, Ok(Waited::Settled(..))) {
                                tracing::warn!("snapshot still not finished at its deadline (or shutting down); starting the server anyway");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "cannot see whether its snapshot is still in progress; starting the server now (the snapshot may be inconsistent)"
                    ),
                }
            }
            self.start_again(entry.server).await
        }
        .instrument(span)
        .await
        .map_err(|e| e.context(format!("server {} (stopped by a previous run)", entry.server)))
    }
}
