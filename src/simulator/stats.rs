//! What the simulated provider saw and did: requests, faults, refusals, every snapshot created
//! and deleted, and every power state a server entered, for tests to assert on.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::{PowerState, ServerId, SnapshotId, SnapshotStatus};

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
