//! How the policy's own completed snapshots are ordered by time when a clock may have been
//! wrong: by when the provider says they were created, a suspect stamp never on top.

use chrono::{DateTime, Utc};

/// A completed snapshot as retention orders it: by when the provider says it was created,
/// then by the slot in its name. The name's stamp came from the host's clock, which can have
/// been wrong (an RTC, an NTP step, a mistaken `date`): ordered by the stamp, one snapshot
/// stamped in the future would outrank every real one forever and have each new one deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Point {
    created_at: DateTime<Utc>,
    slot: DateTime<Utc>,
    /// The time whose hour, day, week and month the calendar rules count it in: the slot,
    /// unless the stamp is suspect (then when it was really created).
    pub(super) bucket: DateTime<Utc>,
}

/// How far a name's stamp may lie after its `created_at` (clocks of host and provider
/// disagree a little) before the stamp is suspect. A stamp before `created_at` is normal:
/// snapshots are made after their slot, late ones (catch-up, jitter) much later.
pub const STAMP_SKEW: chrono::Duration = chrono::Duration::hours(1);

impl Point {
    /// The snapshot of the slot being run (planned, or just made): the newest of all,
    /// whatever the clocks say.
    pub(super) fn newest(slot: DateTime<Utc>) -> Self {
        Self {
            created_at: DateTime::<Utc>::MAX_UTC,
            slot,
            bucket: slot,
        }
    }

    pub(super) fn of(slot: DateTime<Utc>, created_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        match Suspect::of(slot, created_at, now) {
            // Neither time can be trusted: it ranks below every other snapshot.
            Some(Suspect::CreatedInFuture) => Self {
                created_at: DateTime::<Utc>::MIN_UTC,
                slot: slot.min(now),
                bucket: slot.min(now),
            },
            Some(Suspect::StampAhead) => Self {
                created_at,
                slot,
                bucket: created_at,
            },
            None => Self {
                created_at,
                slot,
                bucket: slot,
            },
        }
    }
}

/// Why an own completed snapshot's times are not taken at their word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Suspect {
    /// The provider says it was created after now.
    CreatedInFuture,
    /// Its name's stamp lies well after its creation: the host clock was ahead.
    StampAhead,
}

impl Suspect {
    pub(super) fn of(
        slot: DateTime<Utc>,
        created_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<Self> {
        if created_at > now + STAMP_SKEW {
            Some(Self::CreatedInFuture)
        } else if slot > created_at + STAMP_SKEW {
            Some(Self::StampAhead)
        } else {
            None
        }
    }
}
