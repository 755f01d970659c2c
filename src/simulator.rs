//! The simulated provider: API.md's snapshot and server endpoints, in memory and over HTTP, with
//! the faults a real provider has (latency, 5xx, lost answers, 429s, the cap of 5).
//!
//! One state machine serves both paths, so an engine test on tokio's paused clock (through
//! [`Provider`]) and a client test over a real socket (through [`router`]) meet the same rules
//! and the same seeded faults. Transitions are lazy: each snapshot and server stores a tokio
//! `Instant` deadline and is settled when next looked at, so `tokio::time::advance` drives them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::model::{
    is_valid_snapshot_name, CreateSnapshot, PowerState, RestoreStarted, Server, ServerId,
    ServerRef, Snapshot, SnapshotId, SnapshotStatus,
};
use crate::provider::{ApiError, ListedPage, Provider, Scope};

/// The provider's own cap, kept apart from `policy::SERVER_CAP` on purpose: if the program's
/// belief about the cap drifts, tests against the simulator must catch it, not follow it.
const PROVIDER_CAP: usize = 5;
const FIRST_SNAPSHOT_ID: SnapshotId = 800;
const CREATE_MESSAGE: &str =
    "Snapshot is being created. This may take 3-10 minutes depending on server size.";
const RESTORE_MESSAGE: &str = "Server is being restored from snapshot. This may take 5-15 minutes.";
const UNAUTHORIZED: &str = "Authentication credentials were not provided or are invalid.";

/// The knobs of the simulated provider. The default is a well-behaved provider that is fast
/// enough for tests (seconds, not minutes) and starts each server with foreign snapshots.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long a new snapshot stays `in_progress`.
    pub snapshot_duration: Duration,
    /// Probability that a new snapshot ends `failed` (drawn when it is created).
    pub failure_rate: f64,
    /// How long `stopping` and `starting` last.
    pub power_delay: Duration,
    /// How long a server stays `restoring`.
    pub restore_duration: Duration,
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// Probability that a request answers 500/502/503 without doing anything.
    pub error_rate: f64,
    /// Probability that a create is applied but its answer is lost (504 from the gateway).
    pub lost_create_rate: f64,
    /// Requests per second allowed (token bucket, burst of one second); `None` or <= 0: no limit.
    pub rate_limit: Option<f64>,
    /// Probability of a 429 with `Retry-After: burst_retry_after` whatever the rate.
    pub burst_429_rate: f64,
    /// The `Retry-After` (seconds) of those 429s.
    pub burst_retry_after: u64,
    /// Results per list page (DRF `PAGE_SIZE`).
    pub page_size: usize,
    /// Refuse a create while the server already has an `in_progress` snapshot (400).
    pub refuse_create_while_in_progress: bool,
    /// Refuse every start with 400, as a provider does for a server it will not start (a
    /// billing hold, a host in maintenance).
    pub refuse_start: bool,
    /// Seed of the one RNG behind every fault and size, so a failing run can be replayed.
    pub seed: u64,
    /// Start each server with hand-made completed snapshots the scheduler does not own.
    pub example_snapshots: bool,
    /// The bearer token the HTTP layer accepts.
    pub token: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            snapshot_duration: Duration::from_secs(3),
            failure_rate: 0.0,
            power_delay: Duration::from_secs(2),
            restore_duration: Duration::from_secs(5),
            latency: Duration::ZERO,
            error_rate: 0.0,
            lost_create_rate: 0.0,
            rate_limit: None,
            burst_429_rate: 0.0,
            burst_retry_after: 1,
            page_size: 50,
            refuse_create_while_in_progress: true,
            refuse_start: false,
            seed: 0x5eed,
            example_snapshots: true,
            token: "simulated-token".to_owned(),
        }
    }
}

/// What the simulator saw and did, for tests to assert on.
#[derive(Debug, Clone, Default)]
pub struct SimStats {
    /// Requests by endpoint: `list`, `create`, `delete`, `restore`, `get_server`, `stop`, `start`.
    pub requests: BTreeMap<&'static str, u64>,
    pub total_requests: u64,
    /// Injected faults by kind: `error_5xx`, `lost_create`, `rate_limited`.
    pub faults: BTreeMap<&'static str, u64>,
    /// Creates refused because the server already had 5 snapshots.
    pub cap_refusals: u64,
    /// Creates refused because the server already had an `in_progress` snapshot.
    pub in_progress_refusals: u64,
    /// Creates whose name already existed on that server (the provider allows them; we must not).
    pub duplicate_names: u64,
    /// Every snapshot deleted, in order.
    pub deleted: Vec<DeletedSnapshot>,
    /// Every snapshot created, in order, with the server's power state at that moment.
    pub created: Vec<CreatedSnapshot>,
    /// Every power state each server entered, stamped with the tokio instant it happened.
    pub power_log: BTreeMap<ServerId, Vec<PowerEvent>>,
}

impl SimStats {
    pub fn request_count(&self, endpoint: &str) -> u64 {
        self.requests.get(endpoint).copied().unwrap_or(0)
    }

    pub fn fault_count(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }

    /// The spans a server was not `running`: from the moment it left `running` (stop accepted or
    /// restore begun) to the moment it was `running` again (`None` while still down).
    pub fn downtime(&self, server: ServerId) -> Vec<Downtime> {
        let mut spans: Vec<Downtime> = Vec::new();
        for event in self.power_log.get(&server).into_iter().flatten() {
            let open = spans.last().is_some_and(|d| d.started_at.is_none());
            match (&event.status, open) {
                (PowerState::Running, true) => {
                    if let Some(last) = spans.last_mut() {
                        last.started_at = Some(event.at);
                    }
                }
                (PowerState::Running, false) | (_, true) => {}
                (_, false) => spans.push(Downtime {
                    stopped_at: event.at,
                    started_at: None,
                }),
            }
        }
        spans
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeletedSnapshot {
    pub id: SnapshotId,
    pub name: String,
    pub server: ServerId,
    pub status: SnapshotStatus,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreatedSnapshot {
    pub id: SnapshotId,
    pub name: String,
    pub server: ServerId,
    pub server_status: PowerState,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PowerEvent {
    pub at: Instant,
    pub status: PowerState,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Downtime {
    pub stopped_at: Instant,
    pub started_at: Option<Instant>,
}

impl Downtime {
    pub fn duration(&self) -> Option<Duration> {
        self.started_at.map(|up| up.duration_since(self.stopped_at))
    }
}

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

/// Where a snapshot stands in a list: newest first, ties by id.
type ListKey = Reverse<(DateTime<Utc>, SnapshotId)>;

struct SimState {
    config: SimConfig,
    rng: StdRng,
    servers: BTreeMap<ServerId, SimServer>,
    snapshots: BTreeMap<SnapshotId, SimSnapshot>,
    /// The list order (newest first) with each snapshot's server, kept as snapshots come and
    /// go, so a page of a fleet's listing is found without sorting every snapshot again.
    order: BTreeSet<(ListKey, ServerId)>,
    /// The snapshots with a transition still to come: settling looks at these alone.
    pending_snapshots: BTreeSet<SnapshotId>,
    next_id: SnapshotId,
    /// Token bucket: tokens left and when they were counted; `None` means full.
    bucket: Option<(f64, Instant)>,
    /// No transition is due before this (`None`: none pending), so most requests settle
    /// nothing without walking every snapshot (a 90-day soak makes 150 000 requests).
    next_due: Option<Instant>,
    stats: SimStats,
}

struct SimServer {
    name: String,
    status: PowerState,
    /// The state it reaches, and when. `None`: it stays as it is.
    pending: Option<(Instant, PowerState)>,
    /// Disk usage, so that one server's snapshots have similar sizes.
    disk_mb: u64,
}

struct SimSnapshot {
    snapshot: Snapshot,
    /// When it leaves `in_progress`, with the outcome drawn at create time.
    pending: Option<(Instant, SnapshotStatus, Option<u64>)>,
}

/// Who is asking: the in-memory path is trusted; HTTP must show the token.
enum Caller {
    InMemory,
    Http(Option<String>),
}

/// A non-success answer, rendered as DRF JSON (or a gateway's HTML page) or as an [`ApiError`].
#[derive(Debug)]
struct Refusal {
    status: u16,
    detail: String,
    retry_after: Option<u64>,
    /// Answered by the gateway in front of the app (nginx HTML), not by the app (JSON).
    gateway: bool,
}

impl Refusal {
    fn new(status: u16, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            retry_after: None,
            gateway: false,
        }
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(400, detail)
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, detail)
    }

    fn throttled(seconds: u64) -> Self {
        let unit = if seconds == 1 { "second" } else { "seconds" };
        Self {
            retry_after: Some(seconds),
            ..Self::new(
                429,
                format!("Request was throttled. Expected available in {seconds} {unit}."),
            )
        }
    }

    /// 500 comes from the app (JSON); 502/503/504 from the gateway, as nginx words them.
    fn server_error(status: u16) -> Self {
        let title = match status {
            502 => "502 Bad Gateway",
            503 => "503 Service Temporarily Unavailable",
            504 => "504 Gateway Time-out",
            _ => return Self::new(status, "A server error occurred."),
        };
        Self {
            gateway: true,
            ..Self::new(status, title)
        }
    }

    fn into_api_error(self, what: String) -> ApiError {
        let retry_after = self.retry_after.map(Duration::from_secs);
        ApiError::from_status(
            self.status,
            what,
            self.detail,
            retry_after,
            "the simulator's token",
        )
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = if self.gateway {
            let title = &self.detail;
            let page = format!(
                "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
                 <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            let mut response = (status, page).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            response
        } else {
            (status, Json(json!({ "detail": self.detail }))).into_response()
        };
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == 401 {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A draw that never touches the RNG for a zero (or NaN) probability.
fn chance(rng: &mut StdRng, probability: f64) -> bool {
    probability > 0.0 && rng.random::<f64>() < probability
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
    async fn dispatch<T>(
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

impl SimState {
    /// Applies every transition whose deadline has passed, logging it at its deadline.
    fn settle(&mut self, now: Instant) {
        if self.next_due.is_none_or(|due| due > now) {
            return;
        }
        let mut next_due: Option<Instant> = None;
        let mut later = |at: Instant| next_due = Some(next_due.map_or(at, |d| d.min(at)));
        for (id, server) in &mut self.servers {
            match server.pending.take() {
                Some((at, status)) if at <= now => {
                    server.status = status.clone();
                    let log = self.stats.power_log.entry(*id).or_default();
                    log.push(PowerEvent { at, status });
                }
                pending => {
                    if let Some((at, _)) = &pending {
                        later(*at);
                    }
                    server.pending = pending;
                }
            }
        }
        let snapshots = &mut self.snapshots;
        self.pending_snapshots.retain(|id| {
            let Some(snap) = snapshots.get_mut(id) else {
                return false;
            };
            match snap.pending.take() {
                Some((at, status, size_mb)) if at <= now => {
                    snap.snapshot.status = status;
                    snap.snapshot.size_mb = size_mb;
                    false
                }
                pending => {
                    if let Some((at, ..)) = &pending {
                        later(*at);
                    }
                    snap.pending = pending;
                    snap.pending.is_some()
                }
            }
        });
        self.next_due = next_due;
    }

    fn due_at(&mut self, at: Instant) {
        self.next_due = Some(self.next_due.map_or(at, |d| d.min(at)));
    }

    fn log_power(&mut self, id: ServerId, at: Instant, status: PowerState) {
        let log = self.stats.power_log.entry(id).or_default();
        log.push(PowerEvent { at, status });
    }

    fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    /// What stands between a request and its handler, in DRF's order: an upstream failure,
    /// then authentication, then throttling.
    fn admit(&mut self, caller: &Caller, now: Instant) -> Result<(), Refusal> {
        if chance(&mut self.rng, self.config.error_rate) {
            let status = [500, 502, 503][self.rng.random_range(0..3)];
            self.fault("error_5xx");
            return Err(Refusal::server_error(status));
        }
        if let Caller::Http(token) = caller {
            if token.as_deref() != Some(self.config.token.as_str()) {
                return Err(Refusal::new(401, UNAUTHORIZED));
            }
        }
        if let Some(seconds) = self.throttle(now) {
            self.fault("rate_limited");
            return Err(Refusal::throttled(seconds));
        }
        if chance(&mut self.rng, self.config.burst_429_rate) {
            self.fault("rate_limited");
            return Err(Refusal::throttled(self.config.burst_retry_after));
        }
        Ok(())
    }

    /// Token bucket refilled at `rate_limit` per second, holding one second's worth (at least
    /// one). Returns the whole seconds to wait when empty.
    fn throttle(&mut self, now: Instant) -> Option<u64> {
        let Some(rate) = self.config.rate_limit.filter(|r| *r > 0.0) else {
            self.bucket = None;
            return None;
        };
        let capacity = rate.max(1.0);
        let (tokens, at) = self.bucket.unwrap_or((capacity, now));
        let tokens = (tokens + now.duration_since(at).as_secs_f64() * rate).min(capacity);
        if tokens >= 1.0 {
            self.bucket = Some((tokens - 1.0, now));
            None
        } else {
            self.bucket = Some((tokens, now));
            Some(((1.0 - tokens) / rate).ceil().max(1.0) as u64)
        }
    }

    fn server(&self, id: ServerId) -> Result<Server, Refusal> {
        let server = self
            .servers
            .get(&id)
            .ok_or_else(|| Refusal::not_found("Server not found."))?;
        Ok(Server {
            id,
            name: server.name.clone(),
            status: server.status.clone(),
        })
    }

    /// Snapshots newest first, as the document's list example orders them (so a create between
    /// two page fetches shifts later pages: clients must not assume stable pages).
    fn list(&self, server: Option<ServerId>) -> Vec<Snapshot> {
        let mut list: Vec<Snapshot> = self
            .snapshots
            .values()
            .filter(|s| server.is_none_or(|id| s.snapshot.server.id == id))
            .map(|s| s.snapshot.clone())
            .collect();
        list.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        list
    }

    /// Page `page` (from 1) of [`list`](Self::list)'s order, and how many there are in all.
    /// Walks the kept order and clones only that page: a fleet's listing is hundreds of pages
    /// over tens of thousands of snapshots, and a sorted copy per page made the simulator
    /// the bottleneck of the rotation benchmark.
    fn list_page(
        &self,
        server: Option<ServerId>,
        page: usize,
        size: usize,
    ) -> (usize, Vec<Snapshot>) {
        let matching = || {
            self.order
                .iter()
                .filter(move |(_, s)| server.is_none_or(|id| *s == id))
        };
        let total = match server {
            None => self.order.len(),
            Some(_) => matching().count(),
        };
        let start = page.saturating_sub(1).saturating_mul(size);
        let results = matching()
            .skip(start)
            .take(size)
            .filter_map(|(Reverse((_, id)), _)| self.snapshots.get(id))
            .map(|s| s.snapshot.clone())
            .collect();
        (total, results)
    }

    /// Adds a snapshot under the next id, with no pending transition (it stays as given) and
    /// the server's disk usage as size if completed; callers adjust the rest.
    fn insert(
        &mut self,
        server: ServerId,
        name: &str,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> &mut SimSnapshot {
        let id = self.next_id;
        self.next_id += 1;
        let (server_name, disk_mb) = self
            .servers
            .get(&server)
            .map_or((String::new(), 0), |s| (s.name.clone(), s.disk_mb));
        let size_mb = (status == SnapshotStatus::Completed).then_some(disk_mb);
        let server = ServerRef {
            id: server,
            name: server_name,
        };
        let name = name.to_owned();
        self.order.insert((Reverse((created_at, id)), server.id));
        let snapshot = Snapshot {
            id,
            server,
            name,
            status,
            size_mb,
            created_at,
            description: None,
        };
        self.snapshots.entry(id).or_insert(SimSnapshot {
            snapshot,
            pending: None,
        })
    }

    fn create(
        &mut self,
        request: &CreateSnapshot,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<Snapshot, Refusal> {
        let (disk_mb, server_status) = self
            .servers
            .get(&request.server_id)
            .map(|s| (s.disk_mb, s.status.clone()))
            .ok_or_else(|| Refusal::not_found("Server not found."))?;
        if !is_valid_snapshot_name(&request.name) {
            return Err(Refusal::bad_request(
                "name may contain only letters, digits, hyphens and underscores",
            ));
        }
        let existing: Vec<&Snapshot> = self
            .snapshots
            .values()
            .map(|s| &s.snapshot)
            .filter(|s| s.server.id == request.server_id)
            .collect();
        let in_progress = existing
            .iter()
            .any(|s| s.status == SnapshotStatus::InProgress);
        let duplicate = existing.iter().any(|s| s.name == request.name);
        if existing.len() >= PROVIDER_CAP {
            self.stats.cap_refusals += 1;
            return Err(Refusal::bad_request(
                "snapshot limit reached (5 per server)",
            ));
        }
        if in_progress && self.config.refuse_create_while_in_progress {
            self.stats.in_progress_refusals += 1;
            return Err(Refusal::bad_request(
                "a snapshot of this server is already in progress",
            ));
        }
        if duplicate {
            self.stats.duplicate_names += 1;
        }
        let outcome = if chance(&mut self.rng, self.config.failure_rate) {
            (SnapshotStatus::Failed, None)
        } else {
            let percent = self.rng.random_range(95..=105);
            (SnapshotStatus::Completed, Some(disk_mb * percent / 100))
        };
        let done_at = now + self.config.snapshot_duration;
        let snap = self.insert(
            request.server_id,
            &request.name,
            SnapshotStatus::InProgress,
            wall,
        );
        snap.snapshot.description.clone_from(&request.description);
        snap.pending = Some((done_at, outcome.0, outcome.1));
        let snapshot = snap.snapshot.clone();
        self.pending_snapshots.insert(snapshot.id);
        self.due_at(done_at);
        self.stats.created.push(CreatedSnapshot {
            id: snapshot.id,
            name: snapshot.name.clone(),
            server: request.server_id,
            server_status,
        });
        if chance(&mut self.rng, self.config.lost_create_rate) {
            self.fault("lost_create");
            return Err(Refusal::server_error(504));
        }
        Ok(snapshot)
    }

    fn delete(&mut self, id: SnapshotId) -> Result<(), Refusal> {
        let snap = self
            .snapshots
            .get(&id)
            .ok_or_else(|| Refusal::not_found("Snapshot not found."))?;
        if snap.snapshot.status == SnapshotStatus::InProgress {
            return Err(Refusal::bad_request(
                "cannot delete a snapshot that is in progress",
            ));
        }
        if let Some(snap) = self.snapshots.remove(&id) {
            let s = &snap.snapshot;
            self.order
                .remove(&(Reverse((s.created_at, id)), s.server.id));
            self.pending_snapshots.remove(&id);
            self.stats.deleted.push(DeletedSnapshot {
                id,
                name: snap.snapshot.name,
                server: snap.snapshot.server.id,
                status: snap.snapshot.status,
            });
        }
        Ok(())
    }

    fn restore(&mut self, id: SnapshotId, now: Instant) -> Result<(Snapshot, Server), Refusal> {
        let snapshot = self
            .snapshots
            .get(&id)
            .ok_or_else(|| Refusal::not_found("Snapshot not found."))?
            .snapshot
            .clone();
        if snapshot.status != SnapshotStatus::Completed {
            return Err(Refusal::bad_request(format!(
                "snapshot is {}; only a completed snapshot can be restored",
                snapshot.status
            )));
        }
        let until = now + self.config.restore_duration;
        let server_id = snapshot.server.id;
        let server = self
            .servers
            .get_mut(&server_id)
            .ok_or_else(|| Refusal::not_found("Server not found."))?;
        if !matches!(server.status, PowerState::Running | PowerState::Stopped) {
            return Err(Refusal::bad_request(format!(
                "server is not in a valid state for restoration (status: {})",
                server.status
            )));
        }
        server.status = PowerState::Restoring;
        server.pending = Some((until, PowerState::Running));
        self.due_at(until);
        self.log_power(server_id, now, PowerState::Restoring);
        Ok((snapshot, self.server(server_id)?))
    }

    /// Stop (running → stopping → stopped) or start (stopped → starting → running).
    fn power(&mut self, id: ServerId, stop: bool, now: Instant) -> Result<Server, Refusal> {
        let (from, via, to, verb) = if stop {
            let s = PowerState::Stopping;
            (PowerState::Running, s, PowerState::Stopped, "stopped")
        } else {
            let s = PowerState::Starting;
            (PowerState::Stopped, s, PowerState::Running, "started")
        };
        let until = now + self.config.power_delay;
        let refuse_start = !stop && self.config.refuse_start;
        let server = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| Refusal::not_found("Server not found."))?;
        if refuse_start {
            return Err(Refusal::bad_request(
                "server cannot be started: the account is on hold",
            ));
        }
        if server.status != from {
            return Err(Refusal::bad_request(format!(
                "server is {}; it can only be {verb} when {from}",
                server.status
            )));
        }
        server.status = via.clone();
        server.pending = Some((until, to));
        self.due_at(until);
        self.log_power(id, now, via);
        self.server(id)
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

// ---- HTTP ---------------------------------------------------------------------------------

/// API.md's endpoints under `/api/v1`, with bearer auth and DRF-shaped answers.
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/api/v1/snapshots/", get(http_list).post(http_create))
        .route("/api/v1/snapshots/{id}/", delete(http_delete))
        .route("/api/v1/snapshots/{id}/restore/", post(http_restore))
        .route("/api/v1/servers/{id}/", get(http_get_server))
        .route("/api/v1/servers/{id}/stop/", post(http_stop))
        .route("/api/v1/servers/{id}/start/", post(http_start))
        .fallback(|| async { Refusal::not_found("Not found.") })
        .with_state(sim)
}

/// Serves the simulator on `listen` (port 0 picks a free one) and returns the bound address.
pub async fn serve(
    sim: Simulator,
    listen: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(sim)).await {
            tracing::error!(error = %e, "the simulated provider stopped serving");
        }
    });
    Ok((addr, handle))
}

/// The base URL a client should use for a simulator served on `addr`.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1")
}

fn bearer(headers: &HeaderMap) -> Caller {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    Caller::Http(token)
}

/// An id in the path; anything else is a URL that does not exist (Django's `<int:pk>`).
fn path_id(raw: &str) -> Result<u64, Refusal> {
    raw.parse().map_err(|_| Refusal::not_found("Not found."))
}

fn server_json(server: &Server) -> Value {
    json!({ "id": server.id, "name": server.name, "status": server.status })
}

/// DRF's page links: absolute, other query parameters kept, page 1 without `page=`.
fn page_link(host: &str, page: usize, server: Option<ServerId>) -> String {
    let mut params = Vec::new();
    if page > 1 {
        params.push(format!("page={page}"));
    }
    if let Some(id) = server {
        params.push(format!("server_id={id}"));
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    format!("http://{host}/api/v1/snapshots/{query}")
}

async fn http_list(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    // Checked inside the request, after auth, as DRF's filters and paginator are.
    let server = query.get("server_id").map(|raw| {
        let invalid = || Refusal::bad_request(format!("server_id must be an integer, not {raw:?}"));
        raw.parse::<ServerId>().map_err(|_| invalid())
    });
    let page = query.get("page").map_or(Ok(1), |raw| {
        let page = raw.parse::<usize>().ok().filter(|p| *p >= 1);
        page.ok_or_else(|| Refusal::not_found("Invalid page."))
    });
    let (server, page, (count, results), page_size) = sim
        .dispatch("list", bearer(&headers), |state, _, _| {
            let (server, page) = (server.transpose()?, page?);
            let page_size = state.config.page_size.max(1);
            Ok((
                server,
                page,
                state.list_page(server, page, page_size),
                page_size,
            ))
        })
        .await?;
    let pages = count.div_ceil(page_size).max(1);
    if page > pages {
        return Err(Refusal::not_found("Invalid page."));
    }
    let next = (page < pages).then(|| page_link(&host, page + 1, server));
    let previous = (page > 1).then(|| page_link(&host, page - 1, server));
    let body = json!({ "count": count, "next": next, "previous": previous, "results": results });
    Ok(Json(body).into_response())
}

async fn http_create(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    // Parsed after auth, as DRF does: an unauthenticated bad body is still a 401.
    let request = serde_json::from_slice::<CreateSnapshot>(&body)
        .map_err(|e| Refusal::bad_request(format!("invalid request body: {e}")));
    let snapshot = sim
        .dispatch("create", bearer(&headers), |state, now, wall| {
            state.create(&request?, now, wall)
        })
        .await?;
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    body["message"] = json!(CREATE_MESSAGE);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn http_delete(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    sim.dispatch("delete", bearer(&headers), |state, _, _| state.delete(id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn http_restore(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    let (snapshot, server) = sim
        .dispatch("restore", bearer(&headers), |state, now, _| {
            state.restore(id, now)
        })
        .await?;
    Ok(Json(json!({
        "status": "success",
        "message": RESTORE_MESSAGE,
        "snapshot": { "id": snapshot.id, "name": snapshot.name, "created_at": snapshot.created_at },
        "server": server_json(&server),
    }))
    .into_response())
}

async fn http_get_server(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    let server = sim
        .dispatch("get_server", bearer(&headers), |state, _, _| {
            state.server(id)
        })
        .await?;
    Ok(Json(server_json(&server)).into_response())
}

async fn http_power(
    sim: &Simulator,
    headers: &HeaderMap,
    id: &str,
    stop: bool,
) -> Result<Response, Refusal> {
    let id = path_id(id)?;
    let endpoint = if stop { "stop" } else { "start" };
    let op = |state: &mut SimState, now, _| state.power(id, stop, now);
    let server = sim.dispatch(endpoint, bearer(headers), op).await?;
    Ok(Json(json!({ "status": "success", "server": server_json(&server) })).into_response())
}

async fn http_stop(
    sim: AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(&sim, &headers, &id, true).await
}

async fn http_start(
    sim: AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(&sim, &headers, &id, false).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SystemClock, TokioClock};

    const WEB: ServerId = 12345;

    fn quiet() -> SimConfig {
        SimConfig {
            example_snapshots: false,
            ..SimConfig::default()
        }
    }

    fn paused(config: SimConfig) -> Simulator {
        let clock = TokioClock::starting_at("2025-01-16T16:15:00Z".parse().unwrap());
        Simulator::with_server_ids(config, &[WEB], clock)
    }

    fn request(name: &str) -> CreateSnapshot {
        CreateSnapshot {
            server_id: WEB,
            name: name.to_owned(),
            description: None,
        }
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn snapshot_completes_after_snapshot_duration_with_a_size() {
        let sim = paused(quiet());
        let created = sim.create_snapshot(&request("a")).await.unwrap();
        assert_eq!(created.id, FIRST_SNAPSHOT_ID);
        assert_eq!(created.status, SnapshotStatus::InProgress);
        assert_eq!(created.size_mb, None);
        assert_eq!(created.created_at.to_rfc3339(), "2025-01-16T16:15:00+00:00");
        advance(Duration::from_millis(2900)).await;
        assert_eq!(sim.snapshots(WEB)[0].status, SnapshotStatus::InProgress);
        advance(Duration::from_millis(100)).await;
        let done = &sim.list_snapshots(Some(WEB)).await.unwrap()[0];
        assert_eq!(done.status, SnapshotStatus::Completed);
        assert!(done.size_mb.is_some_and(|mb| mb > 1000));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_one_ends_failed_without_size() {
        let sim = paused(SimConfig {
            failure_rate: 1.0,
            ..quiet()
        });
        sim.create_snapshot(&request("a")).await.unwrap();
        advance(Duration::from_secs(3)).await;
        let snap = &sim.snapshots(WEB)[0];
        assert_eq!(
            (snap.status.clone(), snap.size_mb),
            (SnapshotStatus::Failed, None)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn examples_count_toward_the_cap_of_five() {
        let sim = paused(SimConfig::default());
        let examples = sim.snapshots(WEB);
        let names: Vec<&str> = examples.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["weekly-snapshot-2025-01-08", "pre-migration-snapshot"]
        );
        assert_eq!(examples[0].id, 800);
        for name in ["a", "b", "c"] {
            sim.create_snapshot(&request(name)).await.unwrap();
            advance(Duration::from_secs(3)).await;
        }
        let err = sim.create_snapshot(&request("d")).await.unwrap_err();
        assert!(matches!(&err, ApiError::BadRequest { message, .. }
            if message == "snapshot limit reached (5 per server)"));
        assert_eq!(sim.stats().cap_refusals, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn second_create_while_in_progress_is_refused_and_duplicates_are_counted() {
        let sim = paused(quiet());
        sim.create_snapshot(&request("a")).await.unwrap();
        let err = sim.create_snapshot(&request("b")).await.unwrap_err();
        assert!(err.to_string().contains("already in progress"), "{err}");
        advance(Duration::from_secs(3)).await;
        sim.create_snapshot(&request("a")).await.unwrap();
        let stats = sim.stats();
        assert_eq!((stats.in_progress_refusals, stats.duplicate_names), (1, 1));
        assert_eq!(stats.request_count("create"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_names_unknown_ids_and_in_progress_deletes_are_refused() {
        let sim = paused(quiet());
        let bad = sim.create_snapshot(&request("no spaces")).await;
        assert!(matches!(bad, Err(ApiError::BadRequest { .. })));
        let mut elsewhere = request("a");
        elsewhere.server_id = 1;
        let missing = sim.create_snapshot(&elsewhere).await;
        assert!(matches!(missing, Err(ApiError::NotFound { .. })));
        let id = sim.create_snapshot(&request("a")).await.unwrap().id;
        let busy = sim.delete_snapshot(id).await;
        assert!(matches!(busy, Err(ApiError::BadRequest { .. })));
        assert!(matches!(
            sim.delete_snapshot(9999).await,
            Err(ApiError::NotFound { .. })
        ));
        advance(Duration::from_secs(3)).await;
        sim.delete_snapshot(id).await.unwrap();
        let deleted = &sim.stats().deleted;
        assert_eq!(deleted.len(), 1);
        assert_eq!(
            (deleted[0].id, deleted[0].status.clone()),
            (id, SnapshotStatus::Completed)
        );
        assert!(sim.snapshots(WEB).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn stop_and_start_take_power_delay_and_downtime_is_measured() {
        let sim = paused(quiet());
        assert!(matches!(
            sim.start_server(WEB).await,
            Err(ApiError::BadRequest { .. })
        ));
        let stopping = sim.stop_server(WEB).await.unwrap();
        assert_eq!(stopping.status, PowerState::Stopping);
        assert!(matches!(
            sim.stop_server(WEB).await,
            Err(ApiError::BadRequest { .. })
        ));
        advance(Duration::from_secs(2)).await;
        assert_eq!(
            sim.get_server(WEB).await.unwrap().status,
            PowerState::Stopped
        );
        advance(Duration::from_secs(10)).await;
        assert_eq!(
            sim.start_server(WEB).await.unwrap().status,
            PowerState::Starting
        );
        advance(Duration::from_secs(5)).await;
        assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
        let downtime = sim.stats().downtime(WEB);
        assert_eq!(downtime.len(), 1);
        // Stop accepted at 0 s, running again when starting ended at 12 + 2 s.
        assert_eq!(downtime[0].duration(), Some(Duration::from_secs(14)));
    }

    #[tokio::test(start_paused = true)]
    async fn restore_runs_for_restore_duration_and_refuses_busy_servers() {
        let sim = paused(SimConfig::default());
        let snap = sim.snapshots(WEB)[1].id;
        let started = sim.restore_snapshot(snap).await.unwrap();
        assert_eq!(started.server.status, PowerState::Restoring);
        assert!(matches!(
            sim.restore_snapshot(snap).await,
            Err(ApiError::BadRequest { .. })
        ));
        advance(Duration::from_secs(5)).await;
        assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
        let stuck = sim.add_snapshot(WEB, "x", SnapshotStatus::InProgress, Utc::now());
        assert!(matches!(
            sim.restore_snapshot(stuck).await,
            Err(ApiError::BadRequest { .. })
        ));
        assert!(matches!(
            sim.restore_snapshot(1).await,
            Err(ApiError::NotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_answers_429_with_whole_seconds_then_recovers() {
        let sim = paused(SimConfig {
            rate_limit: Some(0.5),
            ..quiet()
        });
        sim.get_server(WEB).await.unwrap();
        let err = sim.get_server(WEB).await.unwrap_err();
        assert!(
            matches!(err, ApiError::RateLimited { retry_after: Some(d), .. }
            if d == Duration::from_secs(2))
        );
        advance(Duration::from_secs(2)).await;
        sim.get_server(WEB).await.unwrap();
        assert_eq!(sim.stats().fault_count("rate_limited"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_do_nothing_and_lost_creates_still_apply() {
        let sim = paused(SimConfig {
            error_rate: 1.0,
            ..quiet()
        });
        let err = sim.create_snapshot(&request("a")).await.unwrap_err();
        assert!(err.outcome_unknown() && sim.snapshots(WEB).is_empty());
        sim.set_config(|c| {
            c.error_rate = 0.0;
            c.lost_create_rate = 1.0;
        });
        let err = sim.create_snapshot(&request("a")).await.unwrap_err();
        assert!(matches!(err, ApiError::Server { status: 504, .. }));
        assert_eq!(sim.snapshots(WEB).len(), 1);
        let stats = sim.stats();
        assert_eq!(
            (
                stats.fault_count("error_5xx"),
                stats.fault_count("lost_create")
            ),
            (1, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_every_request() {
        let sim = paused(SimConfig {
            latency: Duration::from_millis(250),
            ..quiet()
        });
        let start = Instant::now();
        sim.get_server(WEB).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_seed_replays_the_same_faults() {
        async fn outcomes(seed: u64) -> Vec<bool> {
            let sim = paused(SimConfig {
                seed,
                error_rate: 0.5,
                ..quiet()
            });
            let mut seen = Vec::new();
            for _ in 0..32 {
                seen.push(sim.get_server(WEB).await.is_ok());
            }
            seen
        }
        let first = outcomes(7).await;
        assert_eq!(first, outcomes(7).await);
        assert!(first.contains(&true) && first.contains(&false));
    }

    // ---- over HTTP, on a real socket ----

    async fn served(config: SimConfig, ids: &[ServerId]) -> (Simulator, String) {
        let sim = Simulator::with_server_ids(config, ids, Arc::new(SystemClock));
        let (addr, _) = serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        (sim, base_url(addr))
    }

    fn authed(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth("simulated-token")
    }

    #[tokio::test]
    async fn http_pages_follow_absolute_next_links() {
        let config = SimConfig {
            page_size: 2,
            ..SimConfig::default()
        };
        let (_sim, base) = served(config, &[1, 2, 3]).await;
        let http = reqwest::Client::new();
        let mut url = format!("{base}/snapshots/");
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page: Value = authed(http.get(&url))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(page["count"], 5);
            pages += 1;
            seen.extend(
                page["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["id"].as_u64()),
            );
            match page["next"].as_str() {
                Some(next) => {
                    assert!(next.starts_with(&base), "{next}");
                    url = next.to_owned();
                }
                None => break,
            }
        }
        assert_eq!((pages, seen.len()), (3, 5));
        let last: Value = authed(http.get(&url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(last["previous"], format!("{base}/snapshots/?page=2"));
        let one: Value = authed(http.get(format!("{base}/snapshots/?server_id=2")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (one["count"].as_u64(), one["next"].is_null()),
            (Some(1), true)
        );
        let beyond = authed(http.get(format!("{base}/snapshots/?page=9")))
            .send()
            .await
            .unwrap();
        assert_eq!(beyond.status(), 404);
    }

    #[tokio::test]
    async fn http_without_or_with_a_wrong_token_is_401() {
        let (_sim, base) = served(quiet(), &[WEB]).await;
        let http = reqwest::Client::new();
        for request in [
            http.get(format!("{base}/servers/{WEB}/")),
            http.post(format!("{base}/snapshots/")).bearer_auth("wrong"),
        ] {
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status(), 401);
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["detail"], UNAUTHORIZED);
        }
    }

    #[tokio::test]
    async fn http_create_is_201_in_progress_and_the_cap_is_400() {
        let config = SimConfig {
            refuse_create_while_in_progress: false,
            ..SimConfig::default()
        };
        let (_sim, base) = served(config, &[WEB]).await;
        let http = reqwest::Client::new();
        let create = |name: &str| {
            authed(http.post(format!("{base}/snapshots/")))
                .json(&json!({ "server_id": WEB, "name": name, "description": "d" }))
                .send()
        };
        let answer = create("before-update-snapshot").await.unwrap();
        assert_eq!(answer.status(), 201);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            (body["status"].as_str(), body["size_mb"].is_null()),
            (Some("in_progress"), true)
        );
        assert_eq!(body["server"]["name"], format!("web-{WEB}"));
        assert_eq!(body["message"], CREATE_MESSAGE);
        create("b").await.unwrap();
        create("c").await.unwrap();
        let refused = create("d").await.unwrap();
        assert_eq!(refused.status(), 400);
        let body: Value = refused.json().await.unwrap();
        assert_eq!(body["detail"], "snapshot limit reached (5 per server)");
        let unknown = authed(http.post(format!("{base}/snapshots/")))
            .json(&json!({ "server_id": 1, "name": "x" }))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
    }

    #[tokio::test]
    async fn http_lost_create_answers_504_but_the_snapshot_exists() {
        let config = SimConfig {
            lost_create_rate: 1.0,
            ..quiet()
        };
        let (sim, base) = served(config, &[WEB]).await;
        let answer = authed(reqwest::Client::new().post(format!("{base}/snapshots/")))
            .json(&json!({ "server_id": WEB, "name": "lost" }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 504);
        assert!(answer
            .text()
            .await
            .unwrap()
            .contains("504 Gateway Time-out"));
        assert_eq!(sim.snapshots(WEB)[0].name, "lost");
    }

    #[tokio::test]
    async fn http_delete_in_progress_is_400_and_completed_is_204() {
        let (sim, base) = served(quiet(), &[WEB]).await;
        let busy = sim.add_snapshot(WEB, "busy", SnapshotStatus::InProgress, Utc::now());
        let done = sim.add_snapshot(WEB, "done", SnapshotStatus::Completed, Utc::now());
        let http = reqwest::Client::new();
        let delete = |id: SnapshotId| authed(http.delete(format!("{base}/snapshots/{id}/"))).send();
        let refused = delete(busy).await.unwrap();
        assert_eq!(refused.status(), 400);
        let deleted = delete(done).await.unwrap();
        assert_eq!(deleted.status(), 204);
        assert!(deleted.bytes().await.unwrap().is_empty());
        assert_eq!(delete(done).await.unwrap().status(), 404);
        assert_eq!(sim.stats().request_count("delete"), 3);
    }

    #[tokio::test]
    async fn http_stop_start_restore_and_429_answer_as_documented() {
        let config = SimConfig {
            power_delay: Duration::from_millis(50),
            restore_duration: Duration::from_millis(50),
            ..SimConfig::default()
        };
        let (sim, base) = served(config, &[WEB]).await;
        let http = reqwest::Client::new();
        let post = |path: String| authed(http.post(format!("{base}{path}"))).send();
        let stop: Value = post(format!("/servers/{WEB}/stop/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            stop,
            json!({"status": "success",
            "server": {"id": WEB, "name": format!("web-{WEB}"), "status": "stopping"}})
        );
        assert_eq!(
            post(format!("/servers/{WEB}/stop/"))
                .await
                .unwrap()
                .status(),
            400
        );
        tokio::time::sleep(Duration::from_millis(80)).await;
        let server: Value = authed(http.get(format!("{base}/servers/{WEB}/")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(server["status"], "stopped");
        let start: Value = post(format!("/servers/{WEB}/start/"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(start["server"]["status"], "starting");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);

        let snap = sim.snapshots(WEB)[1].clone();
        let restore: Value = post(format!("/snapshots/{}/restore/", snap.id))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(restore["status"], "success");
        assert_eq!(restore["snapshot"]["name"], "pre-migration-snapshot");
        assert_eq!(restore["server"]["status"], "restoring");

        sim.set_config(|c| c.burst_429_rate = 1.0);
        let throttled = post(format!("/servers/{WEB}/start/")).await.unwrap();
        assert_eq!(throttled.status(), 429);
        assert_eq!(throttled.headers()[header::RETRY_AFTER], "1");
    }
}
