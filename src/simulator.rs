//! The simulated provider: API.md's snapshot and server endpoints, in memory and over HTTP, with
//! the faults a real provider has (latency, 5xx, lost answers, 429s, the cap of 5).
//!
//! One state machine serves both paths, so an engine test on tokio's paused clock (through
//! [`Provider`]) and a client test over a real socket (through [`router`]) meet the same rules
//! and the same seeded faults. Transitions are lazy: each snapshot and server stores a tokio
//! `Instant` deadline and is settled when next looked at, so `tokio::time::advance` drives them.

use std::collections::{BTreeMap, HashMap};
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
use crate::provider::{ApiError, Provider};

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
    /// Probability of a 429 with `Retry-After: 1` whatever the rate.
    pub burst_429_rate: f64,
    /// Results per list page (DRF `PAGE_SIZE`).
    pub page_size: usize,
    /// Refuse a create while the server already has an `in_progress` snapshot (400).
    pub refuse_create_while_in_progress: bool,
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
            page_size: 50,
            refuse_create_while_in_progress: true,
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

struct SimState {
    config: SimConfig,
    rng: StdRng,
    servers: BTreeMap<ServerId, SimServer>,
    snapshots: BTreeMap<SnapshotId, SimSnapshot>,
    next_id: SnapshotId,
    /// Token bucket: tokens left and when they were counted; `None` means full.
    bucket: Option<(f64, Instant)>,
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

/// Which endpoint a request hit, for the stats and the error wording.
#[derive(Debug, Clone, Copy)]
enum Endpoint {
    List,
    Create,
    Delete,
    Restore,
    GetServer,
    Stop,
    Start,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Self::List => "list",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Restore => "restore",
            Self::GetServer => "get_server",
            Self::Stop => "stop",
            Self::Start => "start",
        }
    }
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
        let message = self.detail;
        match self.status {
            400 => ApiError::BadRequest { what, message },
            401 => ApiError::Unauthorized {
                token_source: "the simulator's token".to_owned(),
            },
            404 => ApiError::NotFound { what, message },
            429 => ApiError::RateLimited {
                what,
                retry_after: self.retry_after.map(Duration::from_secs),
            },
            status @ 500..=599 => ApiError::Server {
                what,
                status,
                message,
            },
            status => ApiError::Unexpected {
                what,
                status,
                message,
            },
        }
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
            next_id: FIRST_SNAPSHOT_ID,
            bucket: None,
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
                let id = state.seed(*id, &name, SnapshotStatus::Completed, weekly);
                state.describe(id, "Weekly snapshot", disk_mb * 95 / 100);
            }
            let before = (wall - chrono::Duration::days(1)).trunc_subsecs(0);
            let id = state.seed(
                *id,
                "pre-migration-snapshot",
                SnapshotStatus::Completed,
                before,
            );
            state.describe(id, "Before major migration", disk_mb);
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
        state.seed(server, name, status, created_at)
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
        endpoint: Endpoint,
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
        *state.stats.requests.entry(endpoint.label()).or_default() += 1;
        state.admit(&caller, now)?;
        op(&mut state, now, wall)
    }
}

impl SimState {
    /// Applies every transition whose deadline has passed, logging it at its deadline.
    fn settle(&mut self, now: Instant) {
        for (id, server) in &mut self.servers {
            match server.pending.take() {
                Some((at, status)) if at <= now => {
                    server.status = status.clone();
                    let log = self.stats.power_log.entry(*id).or_default();
                    log.push(PowerEvent { at, status });
                }
                pending => server.pending = pending,
            }
        }
        for snap in self.snapshots.values_mut() {
            match snap.pending.take() {
                Some((at, status, size_mb)) if at <= now => {
                    snap.snapshot.status = status;
                    snap.snapshot.size_mb = size_mb;
                }
                pending => snap.pending = pending,
            }
        }
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
            return Err(Refusal::throttled(1));
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
        list.sort_by(|a, b| (b.created_at, b.id).cmp(&(a.created_at, a.id)));
        list
    }

    /// Inserts a snapshot with no pending transition (examples and test seeds).
    fn seed(
        &mut self,
        server: ServerId,
        name: &str,
        status: SnapshotStatus,
        created_at: DateTime<Utc>,
    ) -> SnapshotId {
        let disk_mb = self.servers.get(&server).map_or(4096, |s| s.disk_mb);
        let size_mb = (status == SnapshotStatus::Completed).then_some(disk_mb);
        self.insert(server, name, None, status, size_mb, created_at, None)
    }

    fn describe(&mut self, id: SnapshotId, description: &str, size_mb: u64) {
        if let Some(snap) = self.snapshots.get_mut(&id) {
            snap.snapshot.description = Some(description.to_owned());
            snap.snapshot.size_mb = Some(size_mb);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        server: ServerId,
        name: &str,
        description: Option<String>,
        status: SnapshotStatus,
        size_mb: Option<u64>,
        created_at: DateTime<Utc>,
        pending: Option<(Instant, SnapshotStatus, Option<u64>)>,
    ) -> SnapshotId {
        let id = self.next_id;
        self.next_id += 1;
        let server_name = self
            .servers
            .get(&server)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let snapshot = Snapshot {
            id,
            server: ServerRef {
                id: server,
                name: server_name,
            },
            name: name.to_owned(),
            status,
            size_mb,
            created_at,
            description,
        };
        self.snapshots.insert(id, SimSnapshot { snapshot, pending });
        id
    }

    fn create(
        &mut self,
        request: &CreateSnapshot,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> Result<Snapshot, Refusal> {
        let disk_mb = self
            .servers
            .get(&request.server_id)
            .ok_or_else(|| Refusal::not_found("Server not found."))?
            .disk_mb;
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
        let id = self.insert(
            request.server_id,
            &request.name,
            request.description.clone(),
            SnapshotStatus::InProgress,
            None,
            wall,
            Some((done_at, outcome.0, outcome.1)),
        );
        if chance(&mut self.rng, self.config.lost_create_rate) {
            self.fault("lost_create");
            return Err(Refusal::server_error(504));
        }
        Ok(self.snapshots[&id].snapshot.clone())
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
        let server = self
            .servers
            .get_mut(&id)
            .ok_or_else(|| Refusal::not_found("Server not found."))?;
        if server.status != from {
            return Err(Refusal::bad_request(format!(
                "server is {}; it can only be {verb} when {from}",
                server.status
            )));
        }
        server.status = via.clone();
        server.pending = Some((until, to));
        self.log_power(id, now, via);
        self.server(id)
    }
}

impl Provider for Simulator {
    /// One request however many snapshots there are: the in-memory path does not paginate.
    async fn list_snapshots(&self, server: Option<ServerId>) -> Result<Vec<Snapshot>, ApiError> {
        self.dispatch(Endpoint::List, Caller::InMemory, |state, _, _| {
            Ok(state.list(server))
        })
        .await
        .map_err(|r| r.into_api_error("listing snapshots".to_owned()))
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        self.dispatch(Endpoint::Create, Caller::InMemory, |state, now, wall| {
            state.create(request, now, wall)
        })
        .await
        .map_err(|r| {
            r.into_api_error(format!(
                "creating snapshot {:?} of server {}",
                request.name, request.server_id
            ))
        })
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        self.dispatch(Endpoint::Delete, Caller::InMemory, |state, _, _| {
            state.delete(id)
        })
        .await
        .map_err(|r| r.into_api_error(format!("deleting snapshot {id}")))
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.dispatch(Endpoint::Restore, Caller::InMemory, |state, now, _| {
            state.restore(id, now)
        })
        .await
        .map(|(_, server)| RestoreStarted {
            message: RESTORE_MESSAGE.to_owned(),
            server,
        })
        .map_err(|r| r.into_api_error(format!("restoring snapshot {id}")))
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.dispatch(Endpoint::GetServer, Caller::InMemory, |state, _, _| {
            state.server(id)
        })
        .await
        .map_err(|r| r.into_api_error(format!("reading server {id}")))
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.dispatch(Endpoint::Stop, Caller::InMemory, |state, now, _| {
            state.power(id, true, now)
        })
        .await
        .map_err(|r| r.into_api_error(format!("stopping server {id}")))
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.dispatch(Endpoint::Start, Caller::InMemory, |state, now, _| {
            state.power(id, false, now)
        })
        .await
        .map_err(|r| r.into_api_error(format!("starting server {id}")))
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
    let server = match query.get("server_id") {
        Some(raw) => Some(raw.parse::<ServerId>().map_err(|_| {
            Refusal::bad_request(format!("server_id must be an integer, not {raw:?}"))
        })?),
        None => None,
    };
    let page: usize = match query.get("page") {
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| Refusal::not_found("Invalid page."))?,
        None => 1,
    };
    let (all, page_size) = sim
        .dispatch(Endpoint::List, bearer(&headers), |state, _, _| {
            Ok((state.list(server), state.config.page_size.max(1)))
        })
        .await?;
    let pages = all.len().div_ceil(page_size).max(1);
    if page > pages {
        return Err(Refusal::not_found("Invalid page."));
    }
    let results: Vec<&Snapshot> = all
        .iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .collect();
    let next = (page < pages).then(|| page_link(&host, page + 1, server));
    let previous = (page > 1).then(|| page_link(&host, page - 1, server));
    let body =
        json!({ "count": all.len(), "next": next, "previous": previous, "results": results });
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
        .dispatch(Endpoint::Create, bearer(&headers), |state, now, wall| {
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
    sim.dispatch(Endpoint::Delete, bearer(&headers), |state, _, _| {
        state.delete(id)
    })
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
        .dispatch(Endpoint::Restore, bearer(&headers), |state, now, _| {
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
        .dispatch(Endpoint::GetServer, bearer(&headers), |state, _, _| {
            state.server(id)
        })
        .await?;
    Ok(Json(server_json(&server)).into_response())
}

async fn http_power(
    sim: Simulator,
    headers: HeaderMap,
    id: String,
    stop: bool,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    let endpoint = if stop {
        Endpoint::Stop
    } else {
        Endpoint::Start
    };
    let server = sim
        .dispatch(endpoint, bearer(&headers), |state, now, _| {
            state.power(id, stop, now)
        })
        .await?;
    Ok(Json(json!({ "status": "success", "server": server_json(&server) })).into_response())
}

async fn http_stop(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(sim, headers, id, true).await
}

async fn http_start(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(sim, headers, id, false).await
}
