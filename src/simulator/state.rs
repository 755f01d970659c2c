//! The one state machine behind both paths: servers and snapshots with their lazy transitions,
//! what stands before a request (faults, auth, throttling), and each endpoint's rules.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::Rng;
use tokio::time::Instant;

use super::config::SimConfig;
use super::refusal::Refusal;
use super::stats::{CreatedSnapshot, DeletedSnapshot, PowerEvent, SimStats};
use crate::model::{
    is_valid_snapshot_name, CreateSnapshot, PowerState, Server, ServerId, ServerRef, Snapshot,
    SnapshotId, SnapshotStatus,
};

/// The provider's own cap, kept apart from `policy::SERVER_CAP` on purpose: if the program's
/// belief about the cap drifts, tests against the simulator must catch it, not follow it.
const PROVIDER_CAP: usize = 5;
pub(super) const FIRST_SNAPSHOT_ID: SnapshotId = 800;
pub(super) const UNAUTHORIZED: &str =
    "Authentication credentials were not provided or are invalid.";

/// Where a snapshot stands in a list: newest first, ties by id.
type ListKey = Reverse<(DateTime<Utc>, SnapshotId)>;

pub(super) struct SimState {
    pub(super) config: SimConfig,
    pub(super) rng: StdRng,
    pub(super) servers: BTreeMap<ServerId, SimServer>,
    pub(super) snapshots: BTreeMap<SnapshotId, SimSnapshot>,
    /// The list order (newest first) with each snapshot's server, kept as snapshots come and
    /// go, so a page of a fleet's listing is found without sorting every snapshot again.
    pub(super) order: BTreeSet<(ListKey, ServerId)>,
    /// The snapshots with a transition still to come: settling looks at these alone.
    pub(super) pending_snapshots: BTreeSet<SnapshotId>,
    pub(super) next_id: SnapshotId,
    /// Token bucket: tokens left and when they were counted; `None` means full.
    pub(super) bucket: Option<(f64, Instant)>,
    /// No transition is due before this (`None`: none pending), so most requests settle
    /// nothing without walking every snapshot (a 90-day soak makes 150 000 requests).
    pub(super) next_due: Option<Instant>,
    pub(super) stats: SimStats,
}

pub(super) struct SimServer {
    pub(super) name: String,
    pub(super) status: PowerState,
    /// The state it reaches, and when. `None`: it stays as it is.
    pub(super) pending: Option<(Instant, PowerState)>,
    /// Disk usage, so that one server's snapshots have similar sizes.
    pub(super) disk_mb: u64,
}

pub(super) struct SimSnapshot {
    pub(super) snapshot: Snapshot,
    /// When it leaves `in_progress`, with the outcome drawn at create time.
    pending: Option<(Instant, SnapshotStatus, Option<u64>)>,
}

/// Who is asking: the in-memory path is trusted; HTTP must show the token.
pub(super) enum Caller {
    InMemory,
    Http(Option<String>),
}

/// A draw that never touches the RNG for a zero (or NaN) probability.
fn chance(rng: &mut StdRng, probability: f64) -> bool {
    probability > 0.0 && rng.random::<f64>() < probability
}

impl SimState {
    /// Applies every transition whose deadline has passed, logging it at its deadline.
    pub(super) fn settle(&mut self, now: Instant) {
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

    pub(super) fn log_power(&mut self, id: ServerId, at: Instant, status: PowerState) {
        let log = self.stats.power_log.entry(id).or_default();
        log.push(PowerEvent { at, status });
    }

    fn fault(&mut self, kind: &'static str) {
        *self.stats.faults.entry(kind).or_default() += 1;
    }

    /// What stands between a request and its handler, in DRF's order: an upstream failure,
    /// then authentication, then throttling.
    pub(super) fn admit(&mut self, caller: &Caller, now: Instant) -> Result<(), Refusal> {
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

    pub(super) fn server(&self, id: ServerId) -> Result<Server, Refusal> {
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
    pub(super) fn list(&self, server: Option<ServerId>) -> Vec<Snapshot> {
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
    pub(super) fn list_page(
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
    pub(super) fn insert(
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

    pub(super) fn create(
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
        let lax = self.config.lax;
        if existing.len() >= PROVIDER_CAP && !lax {
            self.stats.cap_refusals += 1;
            return Err(Refusal::bad_request(
                "snapshot limit reached (5 per server)",
            ));
        }
        if in_progress && self.config.refuse_create_while_in_progress && !lax {
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

    pub(super) fn delete(&mut self, id: SnapshotId) -> Result<(), Refusal> {
        let snap = self
            .snapshots
            .get(&id)
            .ok_or_else(|| Refusal::not_found("Snapshot not found."))?;
        if snap.snapshot.status == SnapshotStatus::InProgress && !self.config.lax {
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

    pub(super) fn restore(
        &mut self,
        id: SnapshotId,
        now: Instant,
    ) -> Result<(Snapshot, Server), Refusal> {
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
    pub(super) fn power(
        &mut self,
        id: ServerId,
        stop: bool,
        now: Instant,
    ) -> Result<Server, Refusal> {
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
