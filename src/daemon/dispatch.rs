//! Turns the scheduler's fires into work: one task per fire (one listing for its servers),
//! one sub-task per server, each slot recorded as handled before its work starts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::OnWake;
use crate::alerts::Ping;
use crate::execute::Executor;
use crate::model::ServerId;
use crate::policy::Policy;
use crate::provider::Provider;
use crate::runlog::{RunLog, RunLogError};
use crate::scheduler::{Fire, LoopEvents, Recorded, Scheduler};
use crate::shared::SharedError;

/// Turns fires into work: one task per fire (one listing for its servers), one sub-task per
/// server; a (policy, server) pair still busy from the previous fire is skipped.
pub(super) struct Dispatcher<P: Provider> {
    pub(super) executor: Arc<Executor<P>>,
    pub(super) tasks: JoinSet<()>,
    pub(super) shutdown: CancellationToken,
    pub(super) inflight: Arc<Mutex<HashSet<(String, ServerId)>>>,
    pub(super) on_wake: OnWake,
    /// Whether metrics are served, so the freshness of each policy is worth a listing at start
    /// and on each reload (without them it would cost requests and memory for nothing).
    pub(super) observe: bool,
    /// Cancels the freshness listing under way when a reload starts another.
    pub(super) observing: Option<CancellationToken>,
}

impl<P: Provider> Dispatcher<P> {
    /// The freshness metrics from the start, not from each policy's next fire (a weekly
    /// policy would show nothing for days after a restart, and its alerts have nothing to
    /// judge): listed now, and again with back-off while the provider cannot be reached. A
    /// shutdown does not wait for it; a reload's listing replaces it.
    fn observe(&mut self, policies: &[Policy]) {
        let (executor, policies) = (self.executor.clone(), policies.to_vec());
        let shutdown = self.shutdown.clone();
        let replaced = CancellationToken::new();
        if let Some(earlier) = self.observing.replace(replaced.clone()) {
            earlier.cancel();
        }
        self.tasks.spawn(async move {
            let mut pause = OBSERVE_RETRY_FIRST;
            loop {
                tokio::select! {
                    listed = executor.observe(&policies) => if listed { break },
                    () = shutdown.cancelled() => return,
                    () = replaced.cancelled() => return,
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                    () = replaced.cancelled() => return,
                }
                pause = (pause * 2).min(OBSERVE_RETRY_MAX);
            }
            // The listing's memory back to the system, as after start-up.
            super::release_startup_memory();
        });
    }
}

/// The back-off of the freshness listing while the provider cannot be reached.
const OBSERVE_RETRY_FIRST: Duration = Duration::from_secs(30);
const OBSERVE_RETRY_MAX: Duration = Duration::from_secs(600);

/// Records `policy` as handled up to `at`, by a fire of that slot or without one (durably,
/// before any work for it starts: the caller awaits this first). `false` when this host does
/// not lead the cluster (any more): the fire's work is not done, its writes would be refused.
async fn mark_handled(runlog: &RunLog, policy: &Policy, at: DateTime<Utc>, fired: bool) -> bool {
    let written = if fired {
        runlog.mark_fired(policy, at).await
    } else {
        runlog.mark_handled(policy, at).await
    };
    match written {
        Ok(()) => true,
        Err(RunLogError::Shared(SharedError::NotLeading)) => {
            tracing::info!(policy = %policy.name, slot = %at, "not leading the cluster: this slot is left to the leader");
            false
        }
        Err(e) => {
            tracing::warn!(policy = %policy.name, error = %e, "cannot record the handled slot; a restart (or the next leader) may take it for missed and run it again");
            true
        }
    }
}

impl<P: Provider> LoopEvents for Dispatcher<P> {
    fn recorded(&self, policy: &Policy) -> Option<Recorded> {
        self.executor.runlog().recorded(&policy.name)
    }

    fn handled(&mut self, policy: &Policy, at: DateTime<Utc>) {
        let (executor, policy) = (self.executor.clone(), policy.clone());
        self.tasks.spawn(async move {
            mark_handled(executor.runlog(), &policy, at, false).await;
        });
    }

    fn configured(&mut self, policies: &[Policy]) {
        let log = self.executor.runlog();
        for warning in log.retired_warnings(policies) {
            tracing::warn!("{warning}");
        }
        if self.observe {
            self.observe(policies);
        }
    }

    fn fire(&mut self, fire: Fire) {
        let Fire { policy, slot, kind } = fire;
        tracing::info!(policy = %policy.name, %slot, ?kind, "policy fired");
        let mut servers = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            for s in &policy.servers {
                if inflight.insert((policy.name.clone(), *s)) {
                    servers.push(*s);
                } else {
                    metrics::counter!(crate::series::FIRES_SKIPPED, "policy" => policy.name.clone()).increment(1);
                    tracing::warn!(policy = %policy.name, server = *s, %slot, "previous run of this policy on this server is still going; skipping this fire");
                }
            }
        }
        let executor = self.executor.clone();
        if servers.is_empty() {
            self.tasks.spawn(async move {
                mark_handled(executor.runlog(), &policy, slot, true).await;
            });
            return;
        }
        let inflight = self.inflight.clone();
        let shutdown = self.shutdown.clone();
        let next_fire = policy.schedule.next_after(slot);
        self.tasks.spawn(async move {
            // Before the work: a crash mid-run must not make the next start run this slot
            // again, and a failed slot is not retried by a restart either.
            if !mark_handled(executor.runlog(), &policy, slot, true).await {
                let mut inflight = inflight.lock().unwrap_or_else(|e| e.into_inner());
                for server in &servers {
                    inflight.remove(&(policy.name.clone(), *server));
                }
                return;
            }
            // One listing for the whole fire, unless jitter spreads the servers out anyway.
            let listing = match policy.jitter {
                Some(_) => None,
                None => executor.list(&servers).await.ok().map(Arc::new),
            };
            let policy = Arc::new(policy);
            let alerts = executor.alerts().clone();
            let ping_url = policy.monitoring.ping_url.clone();
            alerts.ping(ping_url.as_deref(), Ping::Start);
            let mut per_server = JoinSet::new();
            for server in servers {
                let (executor, policy, listing, inflight, shutdown) = (
                    executor.clone(),
                    policy.clone(),
                    listing.clone(),
                    inflight.clone(),
                    shutdown.clone(),
                );
                per_server.spawn(async move {
                    let delay = jitter_delay(policy.jitter, next_fire, executor.clock().now());
                    let go = delay.is_zero()
                        || tokio::select! {
                            () = tokio::time::sleep(delay) => true,
                            () = shutdown.cancelled() => false,
                        };
                    let mut failed = false;
                    if go {
                        let started = tokio::time::Instant::now();
                        failed = executor
                            .run_server(&policy, server, slot, listing.as_deref())
                            .await
                            .result
                            .is_failure();
                        metrics::histogram!(crate::series::RUN_DURATION, "policy" => policy.name.clone())
                            .record(started.elapsed().as_secs_f64());
                    }
                    inflight
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(policy.name.clone(), server));
                    failed
                });
            }
            let mut any_failed = false;
            while let Some(r) = per_server.join_next().await {
                any_failed |= r.unwrap_or(true);
            }
            executor.flush().await;
            let ping = if any_failed { Ping::Fail } else { Ping::Success };
            alerts.ping(ping_url.as_deref(), ping);
        });
    }

    fn woke(&mut self, scheduler: &Scheduler, now: DateTime<Utc>) {
        // Reap finished work so a daemon that runs for years holds nothing for it.
        while self.tasks.try_join_next().is_some() {}
        (self.on_wake)(scheduler, now);
    }
}

/// A random delay in `[0, jitter)`, never reaching the policy's next fire.
fn jitter_delay(
    jitter: Option<Duration>,
    next_fire: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Duration {
    let Some(jitter) = jitter.filter(|j| !j.is_zero()) else {
        return Duration::ZERO;
    };
    let until_next = next_fire
        .and_then(|t| (t - now).to_std().ok())
        .unwrap_or(jitter);
    let bound = jitter.min(until_next / 2);
    if bound.is_zero() {
        return Duration::ZERO;
    }
    rand::rng().random_range(Duration::ZERO..bound)
}
