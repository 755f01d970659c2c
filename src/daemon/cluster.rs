//! `run` with `[ha]`: two hosts, one acting. Each host campaigns for the lead; while it leads
//! (a *term*, one epoch) it runs the service over the cluster's shared state, and while it does
//! not it takes no fires and only says who leads.
//!
//! A term begins once this host may act: the shared journal, create ledger and run log are
//! read, the servers a previous leader left stopped are settled, the runs it left unfinished
//! are finished, and the slots nobody handled are caught up (all of it [`Service::run`]). A
//! term ends when the lead is lost (the lease could not be renewed in time) or the process
//! shuts down: no new fire is taken, work in flight drains as on a shutdown (its stops,
//! creates and deletes are fenced, so a host that lost the lead sends none; it may still start
//! a server it stopped). On shutdown the lease is given up only after the drain, so the
//! standby takes over at once, not after a TTL.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use sd_notify::NotifyState;

use super::health::Health;
use super::{endpoint, handle_signals, notify, wake_handler, OnWake, Reloader, Service};
use crate::alerts::Alerts;
use crate::client::HttpClient;
use crate::config::{AlertEvent, HaConfig};
use crate::context::Context;
use crate::etcd::Etcd;
use crate::ha::{Coordination, Fenced, Leadership, Role, Tenure};
use crate::policy::Policy;
use crate::provider::Provider;
use crate::retry::MayWrite;
use crate::scheduler;
use crate::shared::SharedState;
use crate::shutdown::Shutdown;

/// What a host's terms tell the world (`run`: STATUS=, metrics, `/healthz`, the
/// `User-Agent`, alerts; the soak: nothing).
pub trait TermEvents: Send {
    /// The role changed (and every `cap` while not leading: the watchdog must hear from a
    /// standby too).
    fn role(&mut self, _role: &Role) {}
    /// A term begins (`Some(epoch)`) or ends (`None`).
    fn term(&mut self, _epoch: Option<i64>) {}
    /// The lead was lost mid-term: the lease could not be renewed in time.
    fn lost(&mut self, _epoch: i64) {}
    /// Leading, but the shared state cannot be read, so the term does not begin.
    fn unreadable(&mut self, _epoch: i64, _error: &str) {}
}

/// A term's service over the shared state, with what its scheduler calls on every wake.
pub type Term<P> = (Service<P>, OnWake);

/// What a term's service is built with.
pub struct TermParts {
    /// The cluster's journal, ledger and run log, written fenced by this term's epoch.
    pub shared: Arc<dyn SharedState>,
    /// For the provider's retry layer ([`crate::retry::Retrying::fenced`]): whether this host
    /// still leads with the term's epoch, asked before every attempt of a write.
    pub may_write: MayWrite,
    /// Begun when the lead is lost or the process shuts down.
    pub shutdown: Shutdown,
    pub epoch: i64,
}

/// One host's part in a cluster: its election and where the shared state lives.
pub struct Cluster<C> {
    pub leadership: Arc<Leadership<C>>,
    pub store: Arc<C>,
    /// `/snapshot-scheduler/<cluster>/`.
    pub prefix: String,
}

impl<C: Coordination> Cluster<C> {
    /// Campaigns, and runs a term of the service `open` builds (over the shared state, with
    /// the term's shutdown and epoch) each time this host leads, until `shutdown`. Returns
    /// whether every term drained in time.
    pub async fn serve<P: Provider>(
        &self,
        mut open: impl FnMut(TermParts) -> Term<P> + Send,
        reload: watch::Receiver<Vec<Policy>>,
        cap: Duration,
        events: &mut dyn TermEvents,
        shutdown: Shutdown,
    ) -> bool {
        let campaign = CancellationToken::new();
        let election = {
            let (leadership, campaign) = (self.leadership.clone(), campaign.clone());
            let retire = shutdown.stopping_token();
            tokio::spawn(async move { leadership.run_until(retire, campaign).await })
        };
        let mut roles = self.leadership.watch();
        let mut clean = true;
        let mut unreadable_for = Duration::from_secs(1);
        while let Some(tenure) = self.elected(&mut roles, cap, events, &shutdown).await {
            let epoch = tenure.epoch;
            let term = Shutdown::new();
            let shared: Arc<dyn SharedState> = Arc::new(Fenced::for_term(
                self.store.clone(),
                self.leadership.clone(),
                &self.prefix,
                Some(tenure),
            ));
            let leadership = self.leadership.clone();
            let (service, on_wake) = open(TermParts {
                shared,
                may_write: Arc::new(move || leadership.acting_tenure() == Some(tenure)),
                shutdown: term.clone(),
                epoch,
            });
            if let Err(e) = service.load_shared().await {
                // Read as empty, it could forget a server left stopped: nothing acts without
                // it, loudly (the log, STATUS=, /healthz), looking again with a back-off.
                let text = format!("{e:#}");
                tracing::error!(epoch, error = %text, "leading, but the cluster's shared state cannot be read; not acting until it can (fix or delete the key named)");
                events.unreadable(epoch, &text);
                tokio::select! {
                    () = tokio::time::sleep(unreadable_for) => {}
                    () = shutdown.stopping() => {}
                }
                unreadable_for = (unreadable_for * 2).min(Duration::from_secs(60));
                continue;
            }
            unreadable_for = Duration::from_secs(1);
            tracing::info!(epoch, "acting for the cluster");
            events.term(Some(epoch));
            let policies = reload.borrow().clone();
            let done = CancellationToken::new();
            let run = async {
                let drained = service.run(policies, reload.clone(), cap, on_wake).await;
                done.cancel();
                drained
            };
            let watched = self.watch_term(epoch, &term, &shutdown, &done, cap, events);
            let (drained, ()) = tokio::join!(run, watched);
            clean &= drained;
            events.term(None);
        }
        // Only now, after the drain: the standby takes over at once.
        campaign.cancel();
        let _ = election.await;
        events.role(&self.leadership.role());
        clean
    }

    /// Waits until this host may act, and returns its epoch and lease; `None` once
    /// `shutdown` began.
    async fn elected(
        &self,
        roles: &mut watch::Receiver<Role>,
        cap: Duration,
        events: &mut dyn TermEvents,
        shutdown: &Shutdown,
    ) -> Option<Tenure> {
        loop {
            if shutdown.is_stopping() {
                return None;
            }
            let role = roles.borrow_and_update().clone();
            events.role(&role);
            if let Role::Leader { epoch } = role {
                match self.leadership.acting_tenure() {
                    Some(tenure) if tenure.epoch == epoch => return Some(tenure),
                    _ => {}
                }
            }
            tokio::select! {
                _ = roles.changed() => {}
                () = tokio::time::sleep(cap) => {}
                () = shutdown.stopping() => return None,
            }
        }
    }

    /// Ends `term` (no new fire; work in flight drains) when this host stops leading with
    /// `epoch` (said at once: the log, the `leadership_lost` alert and metric) or when
    /// `shutdown` begins; tells `events` of every change of role (and every `cap`, as a
    /// standby's wait does: a term draining after a lost lead has no scheduler to do it) until
    /// the term is `done`.
    async fn watch_term(
        &self,
        epoch: i64,
        term: &Shutdown,
        shutdown: &Shutdown,
        done: &CancellationToken,
        cap: Duration,
        events: &mut dyn TermEvents,
    ) {
        let mut roles = self.leadership.watch();
        let mut lost = false;
        loop {
            let role = roles.borrow_and_update().clone();
            events.role(&role);
            if !lost && !matches!(role, Role::Leader { epoch: e } if e == epoch) {
                lost = true;
                tracing::error!(epoch, "leadership lost: taking no new fire; work in flight ends without stopping, creating or deleting anything");
                metrics::counter!(crate::series::LEADERSHIP_LOST).increment(1);
                events.lost(epoch);
                term.begin();
            }
            tokio::select! {
                changed = roles.changed() => if changed.is_err() {
                    // The election is gone (it cannot be, while this runs): no more acting.
                    term.begin();
                    done.cancelled().await;
                    return;
                },
                () = shutdown.stopping(), if !term.is_stopping() => term.begin(),
                () = tokio::time::sleep(cap), if term.is_stopping() => {}
                () = done.cancelled() => return,
            }
        }
    }
}

/// How long one etcd request may take: a third of the TTL (a keep-alive that takes longer
/// could not keep the lease anyway), between 1 and 5 seconds.
fn etcd_timeout(ttl: Duration) -> Duration {
    (ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5))
}

/// `run` with `[ha]`, on etcd.
pub(super) async fn serve_cluster(
    ctx: &Context,
    reloader: Reloader,
    ha: &HaConfig,
) -> anyhow::Result<i32> {
    let shutdown = Shutdown::new();
    // This host's own state_dir: its lock (one daemon per state_dir), held for the process.
    let local = Service::for_run(ctx, shutdown.clone())?;
    let store = Arc::new(Etcd::for_cluster(ha, etcd_timeout(ha.lease_ttl))?);
    let prefix = ha.prefix();
    let cluster = Cluster {
        leadership: Leadership::new(store.clone(), &prefix, &ha.node, ha.lease_ttl),
        store,
        prefix,
    };
    let watchdog = sd_notify::watchdog_enabled();
    let cap = watchdog.map_or(scheduler::MAX_SLEEP, |w| (w / 2).min(scheduler::MAX_SLEEP));
    let health = Arc::new(Health::clustered(cap, shutdown.stopping_token()));
    if let Some(addr) = ctx.config.daemon.metrics_listen {
        endpoint::serve_metrics(addr, health.clone()).await?;
    }
    let (reload_tx, reload_rx) = watch::channel(ctx.config.policies.clone());
    tokio::spawn(handle_signals(
        shutdown.clone(),
        reload_tx,
        reloader,
        ctx.alerts.clone(),
        ctx.simulated_state_dir().map(ToOwned::to_owned),
    ));
    // A journal a run without `[ha]` left in state_dir is settled before campaigning: a
    // server stopped then is started again whoever leads.
    if !local.executor.journal().entries().is_empty() {
        tracing::warn!("state_dir's power journal (from a run without [ha]) names servers left stopped; settling them before campaigning");
        for e in local.executor.reconcile().await {
            tracing::error!(error = %format!("{e:#}"), "a server stopped by a run without [ha] is not settled; the journal in state_dir keeps it for the next start");
        }
    }
    // Ready as a process (the metrics endpoint and the signal handlers are up), whatever its
    // role: a standby is a healthy service.
    notify(&[NotifyState::Ready]);
    tracing::info!(
        node = %ha.node,
        cluster = %ha.cluster,
        policies = ctx.config.policies.len(),
        servers = ctx.config.servers().len(),
        "snapshot-scheduler running with [ha]"
    );
    let mut events = Announce {
        node: ha.node.clone(),
        client: ctx.client.inner().clone(),
        alerts: ctx.alerts.clone(),
        health: health.clone(),
        watchdog: watchdog.is_some(),
        status: String::new(),
        unreadable: None,
    };
    let node = ha.node.clone();
    let open = |term: TermParts| {
        let epoch = term.epoch;
        let service = Service::open_shared(
            ctx.client.clone().fenced(term.may_write),
            ctx.clock.clone(),
            &ctx.config,
            ctx.alerts.clone(),
            term.shutdown,
            term.shared,
        );
        let acting = format!("leading ({node}, epoch {epoch}); ");
        let on_wake = wake_handler(service.executor.clone(), watchdog, acting, health.clone());
        (service, on_wake)
    };
    let clean = cluster
        .serve(open, reload_rx, cap, &mut events, shutdown)
        .await;
    drop(local);
    tracing::info!("stopped");
    Ok(if clean { 0 } else { 1 })
}

/// What `run` tells the world about its role: STATUS=, `/healthz`, the leader metrics, the
/// `User-Agent` of its requests, the `leadership_lost` alert.
struct Announce {
    node: String,
    client: HttpClient,
    alerts: Arc<Alerts>,
    health: Arc<Health>,
    watchdog: bool,
    status: String,
    /// Leading with this epoch, but the shared state could not be read: `/healthz` and
    /// STATUS= keep saying so until a term begins.
    unreadable: Option<i64>,
}

impl TermEvents for Announce {
    fn role(&mut self, role: &Role) {
        let (healthy, line) = match role {
            Role::Leader { epoch } => (true, format!("leader ({}, epoch {epoch})", self.node)),
            Role::Standby(h) => (
                true,
                format!("standby, leader is {} (epoch {})", h.node, h.epoch),
            ),
            Role::Unknown => (
                false,
                "not acting: etcd cannot be reached (or has not answered yet)".to_owned(),
            ),
            Role::Fenced { epoch } => (
                false,
                format!("not acting: leadership lost (epoch {epoch}); the lease could not be renewed in time"),
            ),
        };
        let leading = matches!(role, Role::Leader { .. });
        if matches!(role, Role::Leader { epoch } if self.unreadable == Some(*epoch)) {
            if self.watchdog {
                notify(&[NotifyState::Watchdog]);
            }
            return;
        }
        metrics::gauge!(crate::series::LEADER).set(if leading { 1.0 } else { 0.0 });
        if let Role::Leader { epoch } = role {
            metrics::gauge!(crate::series::LEADER_EPOCH).set(*epoch as f64);
        }
        self.health.role(healthy, line.clone(), leading);
        // A leader's STATUS= is its scheduler's (who leads, and the next fire).
        if !leading && line != self.status {
            notify(&[NotifyState::Status(&line)]);
            self.status = line;
        }
        if self.watchdog {
            notify(&[NotifyState::Watchdog]);
        }
    }

    fn term(&mut self, epoch: Option<i64>) {
        self.status.clear();
        self.unreadable = None;
        if epoch.is_none() {
            // The term's servers are the cluster's journal's now, reported by whoever leads
            // next: a standby reporting the count it had would raise a false alert.
            crate::series::export_stopped(0, None);
        }
        self.client
            .set_acting_as(epoch.map(|epoch| (self.node.as_str(), epoch)));
    }

    fn unreadable(&mut self, epoch: i64, error: &str) {
        self.unreadable = Some(epoch);
        let line = format!(
            "not acting: leading (epoch {epoch}) but the cluster's shared state cannot be read: {}",
            error.replace('\n', " ")
        );
        self.health.role(false, line.clone(), false);
        if line != self.status {
            notify(&[NotifyState::Status(&line)]);
            self.status = line;
        }
    }

    fn lost(&mut self, epoch: i64) {
        let message = format!(
            "{} lost the lead of the cluster (epoch {epoch}): it could not renew its etcd lease in \
             time, so it acts no more; the other host takes over once the lease expires",
            self.node
        );
        self.alerts
            .send(AlertEvent::LeadershipLost, None, None, &message);
    }
}
