//! [`Simulator`]: a handle on one shared state and its clock, the one path every request takes
//! (latency, then admission, then the endpoint), and the [`Provider`] trait served in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, SubsecRound, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::config::SimConfig;
use super::refusal::Refusal;
use super::state::{Caller, SimServer, SimState, FIRST_SNAPSHOT_ID};
use super::stats::SimStats;
use crate::clock::Clock;
use crate::model::{
    CreateSnapshot, PowerState, RestoreStarted, Server, ServerId, Snapshot, SnapshotId,
    SnapshotStatus,
};
use crate::provider::{ApiError, ListedPage, Provider, Scope};

pub(super) const RESTORE_MESSAGE: &str =
    "Server is being restored from snapshot. This may take 5-15 minutes.";

/// The simulated provider. Clones share one state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    clock: Arc<dyn Clock>,
    state: Mutex<SimState>,
}

impl fmt::Debug for Simulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

impl Simulator {
    /// A provider holding `servers` (id, name), all `running`.
    pub fn new(config: SimConfig, servers: &[(ServerId, String)], clock: Arc<dyn Clock>) -> Self {
        let wall = clock.now().trunc_subsecs(6);
        let mut state = SimState {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            servers: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            order: BTreeSet::new(),
            pending_snapshots: BTreeSet::new(),
            next_id: FIRST_SNAPSHOT_ID,
            bucket: None,
            next_due: None,
            stats: SimStats::default(),
        };
        for (index, (id, name)) in servers.iter().enumerate() {
            let disk_mb = state.rng.random_range(2048..=16384);
            state.servers.insert(
                *id,
                SimServer {
                    name: name.clone(),
                    status: PowerState::Running,
                    pending: None,
                    disk_mb,
                },
            );
            if !state.config.example_snapshots {
                continue;
            }
            // Like the document's examples: every other server also has an older weekly one.
            if index % 2 == 0 {
                let weekly = (wall - chrono::Duration::days(8))
                    .date_naive()
                    .and_hms_opt(12, 0, 0)
                    .map_or(wall, |t| t.and_utc());
                let name = format!("weekly-snapshot-{}", weekly.format("%Y-%m-%d"));
                let snap = &mut state
                    .insert(*id, &name, SnapshotStatus::Completed, weekly)
                    .snapshot;
                snap.description = Some("Weekly snapshot".to_owned());
                snap.size_mb = Some(disk_mb * 95 / 100);
            }
            let before = (wall - chrono::Duration::days(1)).trunc_subsecs(0);
            let name = "pre-migration-snapshot";
            let snap = &mut state
                .insert(*id, name, SnapshotStatus::Completed, before)
                .snapshot;
            snap.description = Some("Before major migration".to_owned());
        }
        Self {
            inner: Arc::new(Inner {
                clock,
                state: Mutex::new(state),
            }),
        }
    }

    /// A provider with servers named `web-<id>`.
    pub fn with_server_ids(config: SimConfig, ids: &[ServerId], clock: Arc<dyn Clock>) -> Self {
        let servers: Vec<(ServerId, String)> =
            ids.iter().map(|id| (*id, format!("web-{id}"))).collect();
        Self::new(config, &servers, clock)
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state after every transition due by now.
    fn settled(&self) -> MutexGuard<'_, SimState> {
        let mut state = self.lock();
        state.settle(Instant::now());
        state
    }

    /// The snapshots of one server as they are now, in id order (oldest first). Not a request.
    pub fn snapshots(&self, server: ServerId) -> Vec<Snapshot> {
        let state = self.settled();
        let mut list = state.list(Some(server));
        list.sort_by_key(|s| s.id);
        list
    }

    /// One snapshot as it is now, whichever server it is on. Not a request.
    pub fn snapshot(&self, id: SnapshotId) -> Option<Snapshot> {
        let state = self.settled();
        state.snapshots.get(&id).map(|s| s.snapshot.clone())
    }

    /// A server as it is now. Not a request.
    pub fn server(&self, id: ServerId) -> Option<Server> {
        self.settled().server(id).ok()
    }

    /// Seeds a snapshot in any state, e.g. one the scheduler does not own or one stuck
    /// `in_progress`. It stays in that state: seeded snapshots have no pending transition.
    ///
    /// # Panics
    /// If `server` is not simulated (a test mistake).
    pub fn add_snapshot(
        &self,
        server: ServerId,
        name: &str,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> SnapshotId {
        let mut state = self.settled();
        assert!(
            state.servers.contains_key(&server),
            "add_snapshot: server {server} is not simulated"
        );
        state.insert(server, name, status, created_at).snapshot.id
    }

    /// Changes knobs mid-test; pending transitions keep the deadlines they were given.
    pub fn set_config(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.lock().config);
    }

    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    pub fn set_token(&self, token: impl Into<String>) {
        self.lock().config.token = token.into();
    }

    /// Puts a server in a state at once, cancelling any transition. A transitional state set
    /// this way (`Stopping`, `Restoring`, ...) stays until changed: a stuck server.
    ///
    /// # Panics
    /// If `id` is not simulated (a test mistake).
    pub fn set_server_status(&self, id: ServerId, status: PowerState) {
        let now = Instant::now();
        let mut state = self.settled();
        let server = state
            .servers
            .get_mut(&id)
            .unwrap_or_else(|| panic!("set_server_status: server {id} is not simulated"));
        server.status = status.clone();
        server.pending = None;
        state.log_power(id, now, status);
    }

    pub fn stats(&self) -> SimStats {
        self.lock().stats.clone()
    }

    /// One request through the provider: latency, then faults, auth and throttling, then `op`.
    /// The lock is taken only after the sleep and never held across an await.
    pub(super) async fn dispatch<T>(
        &self,
        endpoint: &'static str,
        caller: Caller,
        op: impl FnOnce(&mut SimState, Instant, DateTime<Utc>) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let latency = self.lock().config.latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let wall = self.inner.clock.now().trunc_subsecs(6);
        let now = Instant::now();
        let mut state = self.lock();
        state.settle(now);
        state.stats.total_requests += 1;
        *state.stats.requests.entry(endpoint).or_default() += 1;
        state.admit(&caller, now)?;
        op(&mut state, now, wall)
    }
}

impl Simulator {
    /// The in-memory path: no auth, the same faults, refusals worded as the client words them.
    async fn local<T>(
        &self,
        endpoint: &'static str,
        what: impl FnOnce() -> String,
        op: impl FnOnce(&mut SimState, Instant, DateTime<Utc>) -> Result<T, Refusal>,
    ) -> Result<T, ApiError> {
        let answer = self.dispatch(endpoint, Caller::InMemory, op).await;
        answer.map_err(|r| r.into_api_error(what()))
    }
}

impl Provider for Simulator {
    /// One request however many snapshots there are: the in-memory path answers with one page.
    async fn list_page(
        &self,
        scope: Scope<'_>,
        _link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        let server = match scope {
            Scope::Server(id) => Some(id),
            Scope::Servers(_) | Scope::Account => None,
        };
        let snapshots = self
            .local("list", || scope.what(), |st, _, _| Ok(st.list(server)))
            .await?;
        Ok(ListedPage {
            count: Some(snapshots.len() as u64),
            records: snapshots.len(),
            snapshots,
            ..ListedPage::default()
        })
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        let what = || {
            format!(
                "creating snapshot {:?} of server {}",
                request.name, request.server_id
            )
        };
        self.local("create", what, |st, now, wall| {
            st.create(request, now, wall)
        })
        .await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        let what = || format!("deleting snapshot {id}");
        self.local("delete", what, |st, _, _| st.delete(id)).await
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        let what = || format!("restoring snapshot {id}");
        let (_, server) = self
            .local("restore", what, |st, now, _| st.restore(id, now))
            .await?;
        let message = RESTORE_MESSAGE.to_owned();
        Ok(RestoreStarted { message, server })
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = || format!("reading server {id}");
        self.local("get_server", what, |st, _, _| st.server(id))
            .await
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = || format!("stopping server {id}");
        self.local("stop", what, |st, now, _| st.power(id, true, now))
            .await
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = || format!("starting server {id}");
        self.local("start", what, |st, now, _| st.power(id, false, now))
            .await
    }
}
