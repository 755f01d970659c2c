//! What a plan says: what the slot gets (a typed outcome) and one decision per snapshot, each
//! with the reason the `plan` command prints.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{PowerState, ServerId, SnapshotId, SnapshotStatus};

/// What to do on one server for one slot of one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The server the plan decides about.
    pub server: ServerId,
    pub policy: String,
    pub slot: DateTime<Utc>,
    /// What the slot gets: a snapshot, or why not.
    pub outcome: SlotOutcome,
    /// One decision per snapshot in the listing, newest first.
    pub decisions: Vec<Decision>,
    pub notes: Vec<String>,
    /// What the operator should look at (a name stamped in the future).
    pub warnings: Vec<String>,
}

/// What the planner decided about the slot. The variant is the decision (the executor acts
/// on it); the reason only explains it, and is what `plan` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SlotOutcome {
    /// A snapshot is made for the slot.
    Create(Create),
    /// This slot's snapshot exists already. Nothing to create. Completed: what is beyond
    /// retention may go. Failed: the slot has no good snapshot, which is a failure of the run;
    /// the failed one is deleted and not retried in this slot (the next fire takes a new
    /// one), and no good snapshot goes for it.
    SlotTaken {
        snapshot: String,
        completed: bool,
        reason: String,
    },
    /// A snapshot in progress, or in a state we do not know, freezes the server: nothing is
    /// created or deleted until it settles. Not an error; the next fire tries again.
    SnapshotInProgress {
        snapshots: Vec<String>,
        reason: String,
    },
    /// A snapshot in progress for longer than `snapshot_timeout`: it freezes the server as
    /// one in progress does, but the run fails naming it, since no fire will get past it
    /// unless someone acts. Only the executor's plan step knows the timeout and marks it.
    SnapshotStuck {
        snapshots: Vec<String>,
        reason: String,
    },
    /// A create of this slot's snapshot was sent before and its answer was lost; the server's
    /// own listing does not show it. It may still appear (a provider can list a snapshot a
    /// while after making it), so it is not sent again: a second create could make a
    /// duplicate. The run fails naming it; the next fire takes a new slot. Only the
    /// executor's plan step knows what was sent and marks it.
    CreateUnconfirmed { snapshot: String, reason: String },
    /// The server is neither running nor stopped (restoring, starting, ...): not snapshotted,
    /// nothing deleted. Not an error; the next fire tries again.
    ServerInTransition { state: PowerState, reason: String },
    /// The server is at (or over) the cap and this plan may not free enough: foreign
    /// snapshots fill it, the policy has no retention rule, or it is over by more than one.
    /// An error for the operator; nothing is deleted.
    CapBlocked(Blocked),
    /// The listing holds snapshots of another server than the one planned for: nothing in it
    /// can be trusted to be this server's. An error; nothing is deleted.
    OtherServers(Blocked),
}

impl SlotOutcome {
    /// The one line about the slot, as `plan` prints it.
    pub fn reason(&self) -> &str {
        match self {
            Self::Create(c) => &c.reason,
            Self::SlotTaken { reason, .. }
            | Self::SnapshotInProgress { reason, .. }
            | Self::SnapshotStuck { reason, .. }
            | Self::CreateUnconfirmed { reason, .. }
            | Self::ServerInTransition { reason, .. } => reason,
            Self::CapBlocked(b) | Self::OtherServers(b) => &b.reason,
        }
    }

    /// The run fails on this outcome (the slot gets no good snapshot, and the next fire
    /// alone will not change that): why, as the run reports it.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Self::SlotTaken {
                completed: false, ..
            }
            | Self::SnapshotStuck { .. }
            | Self::CreateUnconfirmed { .. }
            | Self::CapBlocked(_)
            | Self::OtherServers(_) => Some(self.reason()),
            Self::Create(_)
            | Self::SlotTaken {
                completed: true, ..
            }
            | Self::SnapshotInProgress { .. }
            | Self::ServerInTransition { .. } => None,
        }
    }

    /// Not an error, and nothing done now: the next fire tries again.
    pub fn is_skip(&self) -> bool {
        matches!(
            self,
            Self::SnapshotInProgress { .. } | Self::ServerInTransition { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Create {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub snapshot_id: SnapshotId,
    pub name: String,
    pub status: SnapshotStatus,
    pub created_at: DateTime<Utc>,
    pub action: Action,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Keep,
    /// Not this policy's to manage.
    Ignore,
    DeleteNow,
    /// Frees a slot under the cap; deleted before the create.
    DeleteBeforeCreate,
    /// Informational: the executor's second plan, made once the new snapshot has completed,
    /// turns these into `DeleteNow`.
    DeleteAfterCreate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Ignore => "ignore",
            Self::DeleteNow => "delete",
            Self::DeleteBeforeCreate => "delete before create",
            Self::DeleteAfterCreate => "delete after create",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Nothing can be done on this server until an operator acts; the plan deletes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocked {
    pub reason: String,
    /// Every snapshot in the listing (the reason names the first few).
    pub snapshots: Vec<String>,
}

impl Plan {
    /// The snapshot to create, if the slot gets one.
    pub fn create(&self) -> Option<&Create> {
        match &self.outcome {
            SlotOutcome::Create(c) => Some(c),
            _ => None,
        }
    }

    pub fn deletes_now(&self) -> impl Iterator<Item = &Decision> {
        self.with_action(Action::DeleteNow)
    }

    pub fn deletes_before_create(&self) -> impl Iterator<Item = &Decision> {
        self.with_action(Action::DeleteBeforeCreate)
    }

    /// Deleted by the next plan once the new snapshot has completed.
    pub fn deferred(&self) -> impl Iterator<Item = &Decision> {
        self.with_action(Action::DeleteAfterCreate)
    }

    /// Nothing to create and nothing to delete now.
    pub fn is_noop(&self) -> bool {
        self.create().is_none()
            && self.deletes_now().next().is_none()
            && self.deletes_before_create().next().is_none()
    }

    /// The one line about the slot: the create's reason, or why there is none.
    pub fn outcome_line(&self) -> &str {
        self.outcome.reason()
    }

    fn with_action(&self, action: Action) -> impl Iterator<Item = &Decision> {
        self.decisions.iter().filter(move |d| d.action == action)
    }
}
