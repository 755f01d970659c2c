//! What one run of one policy on one server came to: the executor writes it, the run log
//! keeps it, `once` and `status` show it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::ServerId;

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
    /// The plan changed something (or tried to): a listing taken before is stale.
    #[serde(skip)]
    pub wrote: bool,
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
            wrote: false,
        }
    }
}

/// What `once` keeps of one run for its summary: small, since a fleet's worth is kept to the
/// end (texts repeated on many rows, like a slot's snapshot name, are shared).
#[derive(Debug, Clone)]
pub struct Row {
    pub policy: Arc<str>,
    pub server: ServerId,
    pub result: RunResult,
    pub created: Option<Arc<str>>,
    pub deleted: Box<[Arc<str>]>,
    pub message: Arc<str>,
}

impl Row {
    /// A run whose task ended abnormally (a bug): a failure the summary and exit code show.
    pub fn abnormal(e: &dyn std::fmt::Display) -> Self {
        Self {
            policy: "?".into(),
            server: 0,
            result: RunResult::Failed,
            created: None,
            deleted: Box::default(),
            message: format!("a server task ended abnormally: {e}").into(),
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
