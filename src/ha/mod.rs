//! Two ops hosts, one acting: leadership through a lease store (etcd in production, an
//! in-memory one for tests and the soak) with an epoch and self-fencing.
//!
//! - **Election**: a node grants a lease and creates `<prefix>leader` only if it is absent,
//!   bound to that lease. The leader's **epoch** is that key's create revision: it grows with
//!   every new leader.
//! - **Self-fencing**: the leader keeps its lease alive every `ttl / 3`. It acts only while the
//!   last keep-alive that succeeded was *sent* less than `ttl - margin` ago (the monotonic
//!   clock): the store cannot have expired the lease before then, so no other node can lead
//!   while this one acts. Past that, it stops acting, gives the lease up and campaigns again.
//! - **Fenced writes** ([`Coordination::write_if_leader`]): every write of shared state is one
//!   transaction that holds only while the leader key still has this epoch.
//! - **Hand-over**: a leader that shuts down revokes its lease, so a standby takes over at
//!   once, not after a TTL.

mod etcd;
pub mod memory;

pub use etcd::reader;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub type LeaseId = i64;

/// Who leads: the node's name and its epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub node: String,
    pub epoch: i64,
}

/// What a fenced write proves it holds: the leader key's create revision (the epoch) and the
/// lease it is bound to. The lease is compared too: an etcd wiped and started again counts
/// revisions from 1, so another host's key can carry an old epoch, never an old lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenure {
    pub epoch: i64,
    pub lease: LeaseId,
}

/// What a claim on the leader key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This node leads from now on, with this epoch.
    Won { epoch: i64 },
    /// Another node (or an older lease of this one) holds the key.
    Held(Holder),
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The store did not answer (or not in time): nothing can be known or changed.
    #[error("{0}")]
    Unavailable(String),
    /// The lease expired or was revoked.
    #[error("lease {0} is gone")]
    LeaseGone(LeaseId),
    /// The store answered something that makes no sense.
    #[error("{0}")]
    Invalid(String),
}

/// What leadership needs of a lease store (etcd's v3 API, or [`memory::Memory`]).
pub trait Coordination: Send + Sync + 'static {
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId, CoordError>> + Send;
    /// Keeps `lease` alive for another TTL; [`CoordError::LeaseGone`] when it is gone.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), CoordError>> + Send;
    /// Ends `lease` and deletes every key bound to it.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), CoordError>> + Send;
    /// Creates `key` = `node`, bound to `lease`, unless it exists (one transaction).
    fn claim(
        &self,
        key: &str,
        node: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<Claim, CoordError>> + Send;
    /// Who holds `key`, if anyone.
    fn holder(&self, key: &str) -> impl Future<Output = Result<Option<Holder>, CoordError>> + Send;
    /// Every key under `prefix`, with its value.
    fn read_prefix(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, CoordError>> + Send;
    /// Puts and deletes, in one transaction that holds only while `key` was created at
    /// `tenure.epoch` and is bound to `tenure.lease` (this node still leads): `false`, and
    /// nothing written, when it does not.
    fn write_if_leader(
        &self,
        key: &str,
        tenure: Tenure,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> impl Future<Output = Result<bool, CoordError>> + Send;
}

/// Where a node stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not known yet (the store has not answered).
    Unknown,
    /// Another node leads.
    Standby(Holder),
    /// This node leads and may act.
    Leader { epoch: i64 },
    /// This node led, but could not renew its lease in time: it acts no more.
    Fenced { epoch: i64 },
}

/// One node's part in the election.
pub struct Leadership<C> {
    store: Arc<C>,
    key: String,
    node: String,
    ttl: Duration,
    role: watch::Sender<Role>,
    /// While leading: the epoch, and until when it may act (when the last keep-alive that
    /// succeeded was sent, plus `ttl - margin`).
    acting: Mutex<Option<(Tenure, Instant)>>,
    /// A lease this node gave up but could not revoke (the store was away): revoked once the
    /// store answers again. etcd keeps leases across its restarts, so this one would hold the
    /// leader key for nobody for another TTL.
    unrevoked: Mutex<Option<LeaseId>>,
    /// The last error of the store said in the log, so a store that keeps failing the same
    /// way is said once, and each new way once more.
    said: Mutex<String>,
}

impl<C: Coordination> Leadership<C> {
    /// `prefix` is the cluster's (`/snapshot-scheduler/<cluster>/`).
    pub fn new(store: Arc<C>, prefix: &str, node: &str, ttl: Duration) -> Arc<Self> {
        Arc::new(Self {
            store,
            key: format!("{prefix}leader"),
            node: node.to_owned(),
            ttl,
            role: watch::Sender::new(Role::Unknown),
            acting: Mutex::new(None),
            unrevoked: Mutex::new(None),
            said: Mutex::new(String::new()),
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Follows every change of role.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// The epoch this node may act with now, checked on the monotonic clock (not only the
    /// role: the loop may be late to notice that the lease could be gone).
    pub fn acting_epoch(&self) -> Option<i64> {
        self.acting_tenure().map(|t| t.epoch)
    }

    /// The epoch and lease this node may act with now (see [`Leadership::acting_epoch`]).
    pub fn acting_tenure(&self) -> Option<Tenure> {
        let acting = *self.acting.lock().unwrap_or_else(|e| e.into_inner());
        acting.and_then(|(tenure, until)| (Instant::now() < until).then_some(tenure))
    }

    /// How long before the lease could expire the leader stops acting: a fifth of the TTL,
    /// at least a second (a scheduling delay, a slow disk), at most half of it.
    fn margin(&self) -> Duration {
        (self.ttl / 5).max(Duration::from_secs(1)).min(self.ttl / 2)
    }

    /// How often the leader renews its lease.
    fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// How often a standby looks whether the leader key is gone.
    fn look_every(&self) -> Duration {
        (self.ttl / 5).clamp(Duration::from_millis(200), Duration::from_secs(1))
    }

    fn set(&self, role: Role) {
        self.role.send_if_modified(|r| {
            if *r == role {
                return false;
            }
            if matches!(role, Role::Leader { .. } | Role::Standby(_)) {
                self.said.lock().unwrap_or_else(|e| e.into_inner()).clear();
            }
            match &role {
                Role::Leader { epoch } => {
                    tracing::info!(node = %self.node, epoch, "leading")
                }
                Role::Standby(h) => {
                    tracing::info!(node = %self.node, leader = %h.node, epoch = h.epoch, "standby")
                }
                Role::Fenced { epoch } => tracing::error!(
                    node = %self.node, epoch,
                    "leadership lost: the lease could not be renewed in time; acting no more"
                ),
                Role::Unknown => {
                    tracing::warn!(node = %self.node, "the lease store does not answer; not acting")
                }
            }
            *r = role;
            true
        });
    }

    /// A campaign step failed: said as a warning when it fails in a new way (a wrong CA, a
    /// wrong password and a closed port each say what to fix), at debug level when repeated.
    fn store_failed(&self, doing: &str, e: &CoordError) {
        let text = format!("{doing}: {e}");
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if *said == text {
            tracing::debug!(node = %self.node, "{text}");
        } else {
            tracing::warn!(node = %self.node, "etcd: {text}; not acting until it answers");
            *said = text;
        }
    }

    /// Campaigns, leads and stands by until `shutdown`; a leader then gives its lease up so
    /// a standby takes over at once.
    pub async fn run(&self, shutdown: CancellationToken) {
        self.run_until(shutdown.clone(), shutdown).await;
    }

    /// As [`Leadership::run`], but once `retire` is cancelled this node campaigns no more: a
    /// lead it holds goes on until `shutdown` (its work draining may still write), one it
    /// loses is not sought again (a host on its way out must not hold the lead for nobody).
    pub async fn run_until(&self, retire: CancellationToken, shutdown: CancellationToken) {
        loop {
            let lease = tokio::select! {
                lease = self.campaign() => lease,
                () = retire.cancelled() => return,
                () = shutdown.cancelled() => return,
            };
            let Some((lease, epoch)) = lease else {
                continue;
            };
            let clean = self.lead(lease, epoch, &shutdown).await;
            *self.acting.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // Given up either way: on shutdown so a standby takes over at once, after a
            // fencing so the lease (if it still exists) does not hold the key for nobody.
            if let Err(e) = self.store.revoke(lease).await {
                tracing::warn!(error = %e, "could not give the lease up; trying again once the store answers, else it expires on its own");
                *self.unrevoked.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
            }
            if clean || retire.is_cancelled() {
                return;
            }
        }
    }

    /// Until this node wins: `Some((lease, epoch))`. `None` after a failed attempt (the
    /// caller tries again).
    async fn campaign(&self) -> Option<(LeaseId, i64)> {
        let unrevoked = *self.unrevoked.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lease) = unrevoked {
            if let Ok(()) | Err(CoordError::LeaseGone(_)) = self.store.revoke(lease).await {
                tracing::info!(
                    lease,
                    "gave up the lease the store could not take back before"
                );
                *self.unrevoked.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
        match self.store.holder(&self.key).await {
            Ok(Some(holder)) => {
                self.set(Role::Standby(holder));
                tokio::time::sleep(self.look_every()).await;
                return None;
            }
            Ok(None) => {}
            Err(e) => {
                self.store_failed("looking for the leader", &e);
                self.set(Role::Unknown);
                tokio::time::sleep(self.look_every()).await;
                return None;
            }
        }
        let sent = Instant::now();
        let lease = match self.store.grant(self.ttl).await {
            Ok(lease) => lease,
            Err(e) => {
                self.store_failed("granting a lease", &e);
                self.set(Role::Unknown);
                tokio::time::sleep(self.look_every()).await;
                return None;
            }
        };
        match self.store.claim(&self.key, &self.node, lease).await {
            Ok(Claim::Won { epoch }) => {
                *self.acting.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Tenure { epoch, lease }, sent + self.ttl - self.margin()));
                self.set(Role::Leader { epoch });
                Some((lease, epoch))
            }
            Ok(Claim::Held(holder)) => {
                let _ = self.store.revoke(lease).await;
                self.set(Role::Standby(holder));
                None
            }
            Err(e) => {
                self.store_failed("claiming the leader key", &e);
                let _ = self.store.revoke(lease).await;
                self.set(Role::Unknown);
                tokio::time::sleep(self.look_every()).await;
                None
            }
        }
    }

    /// Renews the lease until `shutdown` (`true`) or until it cannot be renewed in time
    /// (`false`: fenced).
    async fn lead(&self, lease: LeaseId, epoch: i64, shutdown: &CancellationToken) -> bool {
        // Counted from when the last keep-alive was sent, not from its answer: a slow answer
        // must not push the next one past the acting deadline (which counts from the send).
        // The first from when the grant was sent (the acting deadline counts from it): a slow
        // store can take a good part of the TTL to grant and claim.
        let mut next = self
            .acting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or_else(Instant::now, |(_, until)| {
                until - (self.ttl - self.margin())
            })
            + self.renew_every();
        loop {
            let until = self
                .acting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_or_else(Instant::now, |(_, until)| until);
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = tokio::time::sleep_until(until) => {
                    self.set(Role::Fenced { epoch });
                    return false;
                }
                () = shutdown.cancelled() => return true,
            }
            let sent = Instant::now();
            next = sent + self.renew_every();
            let renewed = tokio::select! {
                renewed = self.store.keep_alive(lease) => renewed,
                () = tokio::time::sleep_until(until) => {
                    self.set(Role::Fenced { epoch });
                    return false;
                }
                () = shutdown.cancelled() => return true,
            };
            match renewed {
                Ok(()) => {
                    let mut acting = self.acting.lock().unwrap_or_else(|e| e.into_inner());
                    *acting = Some((Tenure { epoch, lease }, sent + self.ttl - self.margin()));
                }
                Err(CoordError::LeaseGone(_)) => {
                    *self.acting.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.set(Role::Fenced { epoch });
                    return false;
                }
                Err(e) => tracing::warn!(error = %e, "could not renew the lease; trying again"),
            }
        }
    }
}

/// The shared state of a cluster, written fenced by this node's leadership: what the journal
/// and the create ledger use with `[ha]`.
pub struct Fenced<C> {
    store: Arc<C>,
    leadership: Arc<Leadership<C>>,
    prefix: String,
    /// The lead its writes hold: the one acting when it was made (`None`: it only reads). A
    /// later lead of the same host is another term, with its own.
    tenure: Option<Tenure>,
}

impl<C> std::fmt::Debug for Fenced<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fenced")
            .field("prefix", &self.prefix)
            .field("node", &self.leadership.node)
            .finish()
    }
}

impl<C: Coordination> Fenced<C> {
    /// Writes under the lead this host holds now, if any (none: a view that only reads).
    pub fn new(store: Arc<C>, leadership: Arc<Leadership<C>>, prefix: &str) -> Self {
        let tenure = leadership.acting_tenure();
        Self::for_term(store, leadership, prefix, tenure)
    }

    /// Writes only under `tenure`, and only while this host still acts with it.
    pub fn for_term(
        store: Arc<C>,
        leadership: Arc<Leadership<C>>,
        prefix: &str,
        tenure: Option<Tenure>,
    ) -> Self {
        Self {
            store,
            leadership,
            prefix: prefix.to_owned(),
            tenure,
        }
    }

    /// The term's tenure, while this host still acts with it.
    fn acting(&self) -> Option<Tenure> {
        self.tenure
            .filter(|t| self.leadership.acting_tenure() == Some(*t))
    }
}

impl<C: Coordination> crate::shared::SharedState for Fenced<C> {
    fn write(
        &self,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> crate::shared::Boxed<'_, Result<(), crate::shared::SharedError>> {
        use crate::shared::SharedError;
        Box::pin(async move {
            let tenure = self.acting().ok_or(SharedError::NotLeading)?;
            let puts = puts
                .into_iter()
                .map(|(k, v)| (format!("{}{k}", self.prefix), v))
                .collect();
            let deletes = deletes
                .into_iter()
                .map(|k| format!("{}{k}", self.prefix))
                .collect();
            match self
                .store
                .write_if_leader(self.leadership.key(), tenure, puts, deletes)
                .await
            {
                // Applied, but the answer may have come late: acting still needs a lease
                // that cannot have expired (the request this write allows goes out next).
                Ok(true) if self.acting() == Some(tenure) => Ok(()),
                Ok(_) => Err(SharedError::NotLeading),
                Err(e) => Err(SharedError::Unavailable(e.to_string())),
            }
        })
    }

    fn leads(&self) -> bool {
        self.acting().is_some()
    }

    fn read<'a>(
        &'a self,
        section: &'a str,
    ) -> crate::shared::Boxed<'a, Result<Vec<(String, String)>, crate::shared::SharedError>> {
        Box::pin(async move {
            let under = format!("{}{section}", self.prefix);
            let found = self
                .store
                .read_prefix(&under)
                .await
                .map_err(|e| crate::shared::SharedError::Unavailable(e.to_string()))?;
            // Keys outside the prefix (a store that answers what was not asked) are left out.
            Ok(found
                .into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&self.prefix)?.to_owned(), v)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests;
