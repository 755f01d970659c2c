//! A validated policy: which servers, when, how many to keep, and how to take the snapshot.
//! Also the naming rule that tells the policy's own snapshots from everything else.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::model::ServerId;
use crate::schedule::Schedule;

/// The per-server snapshot cap of the provider (in-progress and foreign ones count).
pub const SERVER_CAP: usize = 5;

/// Longest policy name: the name plus `-YYYYMMDDTHHMMSSZ` must stay a short snapshot name.
pub const MAX_POLICY_NAME: usize = 40;

/// One policy's slot on one server, as a command asks for it (the policy shared by all its
/// servers' items).
pub type Work = (Arc<Policy>, ServerId, DateTime<Utc>);

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub schedule: Schedule,
    pub servers: Vec<ServerId>,
    pub retention: Retention,
    pub stop_server: bool,
    pub description: String,
    pub catch_up: bool,
    pub prune_unmanaged: bool,
    /// A random delay per server, so a fleet does not hit the API in the same second.
    pub jitter: Option<Duration>,
    pub hooks: Hooks,
    pub monitoring: Monitoring,
    /// What a `stop_server` policy does when the stop cannot be journaled first.
    pub on_journal_failure: JournalFailure,
}

/// A server is never stopped unless the stop is in the power journal first (or a crash could
/// leave it stopped for good). When `state_dir` cannot be written, a `stop_server` policy
/// either skips the snapshot or takes it with the server running, and says which.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JournalFailure {
    /// No snapshot; the run fails with the reason.
    #[default]
    Skip,
    /// Snapshot the running server (crash-consistent only) and warn.
    SnapshotRunning,
}

/// Commands run on this host around each snapshot (quiesce a database, resume it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooks {
    /// argv; no shell unless the operator writes `["sh", "-c", "..."]`.
    pub pre: Option<Vec<String>>,
    pub post: Option<Vec<String>>,
    /// The process group is killed at this limit.
    pub timeout: Duration,
    /// Take the snapshot even when the pre hook failed (default: skip the server).
    pub continue_on_pre_failure: bool,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            pre: None,
            post: None,
            timeout: Duration::from_secs(300),
            continue_on_pre_failure: false,
        }
    }
}

/// How the policy is watched from outside: a dead-man ping and freshness thresholds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Monitoring {
    /// healthchecks.io convention: `<url>/start`, `<url>` on success, `<url>/fail`.
    pub ping_url: Option<String>,
    /// Newest completed snapshot older than this is a warning (default 2 periods).
    pub warn_age: Option<Duration>,
    /// ... and a critical one (default 3 periods).
    pub crit_age: Option<Duration>,
}

/// Retention rules with union semantics: a snapshot is kept if any rule keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// The newest N completed snapshots.
    pub keep: u32,
    /// The newest completed snapshot in each of the last N hours / days / ISO weeks / months,
    /// counted in the policy's timezone.
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

impl Retention {
    /// The most snapshots these rules can keep at once (what counts toward the cap).
    pub fn total(&self) -> u32 {
        self.keep + self.hourly + self.daily + self.weekly + self.monthly
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

const SLOT_FORMAT: &str = "%Y%m%dT%H%M%SZ";

impl Policy {
    /// The snapshot name for a scheduled slot: `<policy>-<YYYYMMDDTHHMMSSZ>` in UTC. Deriving
    /// the name from the slot is what makes a retried or repeated create idempotent.
    pub fn snapshot_name(&self, slot: DateTime<Utc>) -> String {
        snapshot_name(&self.name, slot)
    }

    /// The slot a snapshot name belongs to, if this policy owns the name.
    pub fn owns(&self, snapshot_name: &str) -> Option<DateTime<Utc>> {
        parse_snapshot_name(&self.name, snapshot_name)
    }
}

pub fn snapshot_name(policy: &str, slot: DateTime<Utc>) -> String {
    format!("{policy}-{}", slot.format(SLOT_FORMAT))
}

/// `Some(slot)` exactly when `name` is `<policy>-<YYYYMMDDTHHMMSSZ>`; nothing else is managed.
pub fn parse_snapshot_name(policy: &str, name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(policy)?.strip_prefix('-')?;
    if stamp.len() != 16 {
        return None;
    }
    NaiveDateTime::parse_from_str(stamp, SLOT_FORMAT)
        .ok()
        .map(|n| n.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_only_exact_names_are_owned() {
        let slot: DateTime<Utc> = "2025-01-15T02:30:00Z".parse().unwrap();
        assert_eq!(snapshot_name("nightly", slot), "nightly-20250115T023000Z");
        let cases = [
            ("nightly-20250115T023000Z", Some(slot)),
            ("nightly-20250115T023000", None),
            ("nightly-20250115T023000Zx", None),
            ("nightly-extra-20250115T023000Z", None),
            ("nightly_20250115T023000Z", None),
            ("pre-migration-snapshot", None),
            ("nightly-20251315T023000Z", None),
        ];
        for (name, want) in cases {
            assert_eq!(parse_snapshot_name("nightly", name), want, "{name}");
        }
        // A policy whose name is a prefix of another's does not own the other's snapshots.
        assert_eq!(
            parse_snapshot_name("night", "nightly-20250115T023000Z"),
            None
        );
    }
}
