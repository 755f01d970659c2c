//! What one run of one policy on one server came to: the executor writes it, the run log
//! keeps it, `once` and `status` show it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::ServerId;
use crate::plan::Plan;

/// What happened on one server for one policy's slot.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    pub policy: String,
    pub server: ServerId,
    pub slot: DateTime<Utc>,
    pub snapshot: String,
    pub result: RunResult,
    pub created: Option<String>,
    pub deleted: Vec<String>,
    pub message: String,
    /// The plan was blocked by the cap (an alert of its own).
    pub blocked: bool,
    #[serde(skip)]
    pub created_id: Option<u64>,
    #[serde(skip)]
    pub plan: Option<Plan>,
}

impl ServerReport {
    /// A run of `policy` on `server` for `slot` that has not got anywhere yet: failed until
    /// it says otherwise.
    pub fn starting(policy: &str, server: ServerId, slot: DateTime<Utc>, snapshot: String) -> Self {
        Self {
            policy: policy.to_owned(),
            server,
            slot,
            snapshot,
            result: RunResult::Failed,
            created: None,
            deleted: Vec::new(),
            message: String::new(),
            blocked: false,
            created_id: None,
            plan: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    /// A new snapshot completed (and pruning ran).
    Created,
    /// Nothing needed doing (slot already taken), or only pruning.
    Unchanged,
    /// Not attempted now, for a reason that is not an error (a snapshot in progress).
    Skipped,
    /// Dry run: what would have happened is in `message`.
    DryRun,
    Failed,
}

impl RunResult {
    pub fn is_failure(self) -> bool {
        self == Self::Failed
    }
}
