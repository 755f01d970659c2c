//! The provider's data as the rest of the program sees it: snapshots, servers, their states.
//!
//! Unknown `status` values are kept (not rejected) because a provider may add states at any time;
//! the planner treats them as "not usable, not deletable" until they settle.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub type ServerId = u64;
pub type SnapshotId = u64;

/// The server a snapshot belongs to, as the list answer embeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    pub id: ServerId,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub server: ServerRef,
    pub name: String,
    pub status: SnapshotStatus,
    #[serde(default)]
    pub size_mb: Option<u64>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub description: Option<String>,
}

/// A snapshot's lifecycle state. `Other` keeps whatever the provider sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SnapshotStatus {
    InProgress,
    Completed,
    Failed,
    Other(String),
}

impl SnapshotStatus {
    /// Finished one way or the other. Anything else (in progress, or a state this program
    /// does not know) may still be changing: not usable, not deletable, not done.
    pub fn is_settled(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for SnapshotStatus {
    fn from(s: &str) -> Self {
        match s {
            "in_progress" => Self::InProgress,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for SnapshotStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SnapshotStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SnapshotStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

/// A server's power state. Anything but `Running`/`Stopped` is a transition ("busy").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PowerState {
    Running,
    Stopped,
    Stopping,
    Starting,
    Restoring,
    Other(String),
}

impl PowerState {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Stopping => "stopping",
            Self::Starting => "starting",
            Self::Restoring => "restoring",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for PowerState {
    fn from(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "stopped" => Self::Stopped,
            "stopping" => Self::Stopping,
            "starting" => Self::Starting,
            "restoring" => Self::Restoring,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PowerState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PowerState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from(String::deserialize(d)?.as_str()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Server {
    pub id: ServerId,
    #[serde(default)]
    pub name: String,
    pub status: PowerState,
}

/// The body of `POST /snapshots/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSnapshot {
    pub server_id: ServerId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What `POST /snapshots/{id}/restore/` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreStarted {
    #[serde(default)]
    pub message: String,
    pub server: Server,
}

/// The Django REST Framework page shape every list answer uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    #[serde(default)]
    pub count: Option<u64>,
    #[serde(default)]
    pub next: Option<String>,
    #[serde(default)]
    pub previous: Option<String>,
    pub results: Vec<T>,
}

/// Snapshot names the provider accepts: letters, digits, hyphens, underscores.
pub fn is_valid_snapshot_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_is_kept_not_rejected() {
        let s: Snapshot = serde_json::from_str(
            r#"{"id": 1, "server": {"id": 2, "name": "w"}, "name": "n", "status": "queued",
                "size_mb": null, "created_at": "2025-01-15T18:30:00+01:00"}"#,
        )
        .unwrap();
        assert_eq!(s.status, SnapshotStatus::Other("queued".into()));
        assert_eq!(s.created_at.to_rfc3339(), "2025-01-15T17:30:00+00:00");
    }
}
