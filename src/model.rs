//! The provider's data as the rest of the program sees it: snapshots, servers, their states.
//!
//! Unknown `status` values are kept (not rejected) because a provider may add states at any time;
//! the planner treats them as "not usable, not deletable" until they settle.
//!
//! Every string the provider chooses (names, descriptions, unknown states, messages) is escaped
//! as it is decoded ([`crate::text`]): from here on it can be logged and printed as it is. Our
//! own names are ASCII letters, digits, `-` and `_`, so escaping never changes them, and a name
//! that needed escaping can never be mistaken for one of ours.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub type ServerId = u64;
pub type SnapshotId = u64;

/// The server a snapshot belongs to, as the list answer embeds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRef {
    pub id: ServerId,
    #[serde(default, deserialize_with = "crate::text::escaped")]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: SnapshotId,
    pub server: ServerRef,
    #[serde(deserialize_with = "crate::text::escaped")]
    pub name: String,
    pub status: SnapshotStatus,
    #[serde(default, deserialize_with = "size_mb")]
    pub size_mb: Option<u64>,
    pub created_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "crate::text::escaped_option")]
    pub description: Option<String>,
}

/// `size_mb` as a whole number of MiB: a fractional size (`5120.5`) is rounded up; a negative,
/// infinite or too large one is an error.
fn size_mb<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(mb) = number.as_u64() {
        return Ok(Some(mb));
    }
    match number.as_f64() {
        // 2^64 is the first f64 past u64::MAX.
        Some(mb) if mb >= 0.0 && mb.ceil() < 18_446_744_073_709_551_616.0 => {
            Ok(Some(mb.ceil() as u64))
        }
        _ => Err(serde::de::Error::custom(format_args!(
            "{number} is not a size in MiB (a number from 0 to {})",
            u64::MAX
        ))),
    }
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
            other => Self::Other(crate::text::escape(other).into_owned()),
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
            other => Self::Other(crate::text::escape(other).into_owned()),
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
    #[serde(default, deserialize_with = "crate::text::escaped")]
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
    #[serde(default, deserialize_with = "crate::text::escaped")]
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

    fn with_size(size: &str) -> Result<Snapshot, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"id": 1, "server": {{"id": 2}}, "name": "n", "status": "completed",
                "size_mb": {size}, "created_at": "2025-01-15T18:30:00Z"}}"#
        ))
    }

    #[test]
    fn a_fractional_size_is_rounded_up_and_a_nonsense_one_refused() {
        let cases: &[(&str, Option<u64>)] = &[
            ("null", None),
            ("0", Some(0)),
            ("5120", Some(5120)),
            ("5120.5", Some(5121)),
            ("5120.0", Some(5120)),
            ("0.001", Some(1)),
            ("1e3", Some(1000)),
            ("18446744073709551615", Some(u64::MAX)),
        ];
        for (size, want) in cases {
            assert_eq!(with_size(size).unwrap().size_mb, *want, "size_mb {size}");
        }
        for size in ["-1", "-0.5", "1e30", "18446744073709551616", "\"5120\""] {
            let err = with_size(size).unwrap_err().to_string();
            assert!(
                err.contains("size") || err.contains("number"),
                "size_mb {size}: {err}"
            );
        }
    }

    /// Names are escaped as they are decoded; one that needed it can never pass for a name a
    /// policy owns, because escapes are not in the alphabet of our names.
    #[test]
    fn a_name_with_control_or_bidi_characters_is_escaped_and_never_owned() {
        let ours = "nightly-20261127T023000Z";
        let names = [
            r"nightly-20261127T023000Z\u202e",
            r"\u202dnightly-20261127T023000Z",
            r"nightly-20261127T0230\u000700Z",
            r"nightly-20261127T023000Z\n",
            r"nightly-2026112\t7T02300Z",
            r"nightly-\u001b[0m20261127T023000Z",
            r"nightly-20261127T023000Z\u200e",
            r"nightly-20261127T023000Z\u0085",
        ];
        for raw in names {
            let s: Snapshot = serde_json::from_str(&format!(
                r#"{{"id": 1, "server": {{"id": 2, "name": "web\u001b]0;x\u0007"}},
                    "name": "{raw}", "status": "completed\u2066",
                    "created_at": "2025-01-15T18:30:00Z", "description": "a\nb"}}"#
            ))
            .unwrap();
            assert!(!s.name.chars().any(char::is_control), "{raw}: {:?}", s.name);
            assert!(
                s.name.contains("\\u{") || s.name.contains("\\n") || s.name.contains("\\t"),
                "{raw}: {}",
                s.name
            );
            assert_ne!(s.name, ours);
            assert!(!is_valid_snapshot_name(&s.name), "{raw}: {}", s.name);
            assert_eq!(
                crate::policy::parse_snapshot_name("nightly", &s.name),
                None,
                "{raw}"
            );
            assert_eq!(s.server.name, "web\\u{1b}]0;x\\u{7}");
            assert_eq!(s.status, SnapshotStatus::Other("completed\\u{2066}".into()));
            assert_eq!(s.description.as_deref(), Some("a\\nb"));
        }
        assert!(crate::policy::parse_snapshot_name("nightly", ours).is_some());
    }
}
