//! Whose a snapshot is, from its name alone, and what its status allows.

use chrono::{DateTime, Utc};

use crate::model::SnapshotStatus;
use crate::policy::{parse_snapshot_name, Policy};

/// Who a snapshot belongs to, from its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    /// This policy's, with the slot its name carries.
    Own(DateTime<Utc>),
    /// Named like some policy's snapshot: never touched, even with `prune_unmanaged`.
    OtherPolicy,
    /// Made by hand (or by another tool): only `prune_unmanaged` may delete it.
    HandMade,
}

impl Owner {
    pub(super) fn of(policy: &Policy, name: &str) -> Self {
        if let Some(slot) = policy.owns(name) {
            Self::Own(slot)
        } else if looks_managed(name) {
            Self::OtherPolicy
        } else {
            Self::HandMade
        }
    }
}

/// `<policy name chars>-<stamp>`: any policy's name shape. Judged without a length limit on the
/// prefix, so a doubtful name counts as managed and is never pruned.
fn looks_managed(name: &str) -> bool {
    let Some(split) = name.len().checked_sub(17) else {
        return false;
    };
    let Some(prefix) = name.get(..split) else {
        return false;
    };
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && parse_snapshot_name(prefix, name).is_some()
}

/// What a status allows: only completed snapshots count, only settled ones may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Completed,
    Failed,
    /// In progress or unknown: not usable, not deletable.
    Busy,
}

impl State {
    pub(super) fn of(status: &SnapshotStatus) -> Self {
        match status {
            SnapshotStatus::Completed => Self::Completed,
            SnapshotStatus::Failed => Self::Failed,
            SnapshotStatus::InProgress | SnapshotStatus::Other(_) => Self::Busy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_managed_only_for_policy_shaped_names() {
        let cases = [
            ("weekly-20250115T023000Z", true),
            ("my_policy-2-20250115T023000Z", true),
            ("-20250115T023000Z", false),
            ("pre-migration-snapshot", false),
            ("weekly-20251315T023000Z", false),
            ("weekly 20250115T023000Z", false),
            ("wéekly-20250115T023000Z", false),
            ("20250115T023000Z", false),
        ];
        for (name, want) in cases {
            assert_eq!(looks_managed(name), want, "{name}");
        }
    }
}
