//! `status`: is every policy's newest completed snapshot on every server fresh enough? Ages
//! against `warn_age`/`crit_age` (default 2 and 3 periods of the schedule), the last run's
//! result from `state_dir`, the next fire; and a Nagios/Icinga line with its exit code.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{ServerId, Snapshot, SnapshotStatus};
use crate::policy::Policy;
use crate::runlog::{LastRun, RunLog};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl Level {
    /// The Nagios plugin exit code.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Ok => 0,
            Self::Warning => 1,
            Self::Critical => 2,
            Self::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warning => "WARNING",
            Self::Critical => "CRITICAL",
            Self::Unknown => "UNKNOWN",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub policy: String,
    pub server: ServerId,
    pub newest: Option<String>,
    pub newest_at: Option<DateTime<Utc>>,
    pub age_seconds: Option<i64>,
    pub warn_after_seconds: u64,
    pub crit_after_seconds: u64,
    pub level: Level,
    pub last_run: Option<LastRun>,
    pub next_fire: Option<DateTime<Utc>>,
}

/// The thresholds of a policy: configured, or 2 and 3 periods of its schedule.
pub fn thresholds(policy: &Policy, now: DateTime<Utc>) -> (Duration, Duration) {
    let period = policy
        .schedule
        .period(now)
        .to_std()
        .unwrap_or(Duration::from_secs(86_400));
    (
        policy.monitoring.warn_age.unwrap_or(period * 2),
        policy.monitoring.crit_age.unwrap_or(period * 3),
    )
}

/// One row per (policy, server): pure, from a listing of that server's snapshots.
pub fn row(
    policy: &Policy,
    server: ServerId,
    snapshots: &[Snapshot],
    last_run: Option<LastRun>,
    now: DateTime<Utc>,
) -> Row {
    let (warn, crit) = thresholds(policy, now);
    // A snapshot "created" in the future (a provider's clock, a forged answer) proves nothing
    // about freshness: counted, it would keep the check OK for as long as it exists.
    let newest = snapshots
        .iter()
        .filter(|s| s.status == SnapshotStatus::Completed && policy.owns(&s.name).is_some())
        .filter(|s| s.created_at <= now + crate::plan::STAMP_SKEW)
        .max_by_key(|s| s.created_at);
    let age = newest.map(|s| (now - s.created_at).to_std().unwrap_or(Duration::ZERO));
    let level = match age {
        None => Level::Critical,
        Some(a) if a >= crit => Level::Critical,
        Some(a) if a >= warn => Level::Warning,
        Some(_) => Level::Ok,
    };
    Row {
        policy: policy.name.clone(),
        server,
        newest: newest.map(|s| s.name.clone()),
        newest_at: newest.map(|s| s.created_at),
        age_seconds: age.map(|a| a.as_secs() as i64),
        warn_after_seconds: warn.as_secs(),
        crit_after_seconds: crit.as_secs(),
        level,
        last_run,
        next_fire: policy.schedule.next_after(now),
    }
}

pub fn rows(
    work: &[crate::policy::Work],
    snapshots_of: impl Fn(ServerId) -> Vec<Snapshot>,
    runlog: &RunLog,
    now: DateTime<Utc>,
) -> Vec<Row> {
    work.iter()
        .map(|(p, s, _)| row(p, *s, &snapshots_of(*s), runlog.get(&p.name, *s), now))
        .collect()
}

fn human(d: Duration) -> String {
    crate::format::format_age(chrono::Duration::from_std(d).unwrap_or_default())
}

/// One Nagios/Icinga line (with perfdata) and its level.
pub fn nagios(rows: &[Row]) -> (Level, String) {
    let level = rows.iter().map(|r| r.level).max().unwrap_or(Level::Unknown);
    let mut problems: Vec<String> = rows
        .iter()
        .filter(|r| r.level != Level::Ok)
        .map(|r| match r.age_seconds {
            None => format!("{}/{}: no completed snapshot", r.policy, r.server),
            Some(a) => format!(
                "{}/{}: newest is {} old ({} after {})",
                r.policy,
                r.server,
                human(Duration::from_secs(a as u64)),
                r.level.as_str().to_lowercase(),
                human(Duration::from_secs(if r.level == Level::Critical {
                    r.crit_after_seconds
                } else {
                    r.warn_after_seconds
                }))
            ),
        })
        .collect();
    if rows.is_empty() {
        problems.push("nothing to check".into());
    }
    let summary = if problems.is_empty() {
        let oldest = rows.iter().filter_map(|r| r.age_seconds).max().unwrap_or(0);
        format!(
            "{} policy/server pairs fresh, oldest newest-snapshot {} old",
            rows.len(),
            human(Duration::from_secs(oldest as u64))
        )
    } else {
        problems.join("; ")
    };
    let perf: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            r.age_seconds.map(|a| {
                format!(
                    "'{}_{}'={a}s;{};{}",
                    r.policy, r.server, r.warn_after_seconds, r.crit_after_seconds
                )
            })
        })
        .collect();
    (
        level,
        format!(
            "SNAPSHOTS {} - {summary} | {}",
            level.as_str(),
            perf.join(" ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServerRef;
    use crate::policy::Retention;

    fn policy() -> Policy {
        Policy {
            retention: Retention {
                keep: 3,
                ..Default::default()
            },
            ..crate::fixtures::policy("nightly")
        }
    }

    fn snap(name: &str, at: &str, status: SnapshotStatus) -> Snapshot {
        Snapshot {
            id: 1,
            server: ServerRef {
                id: 1,
                name: "w".into(),
            },
            name: name.into(),
            status,
            size_mb: None,
            created_at: at.parse().unwrap(),
            description: None,
        }
    }

    #[test]
    fn levels_follow_the_newest_completed_own_snapshot() {
        let now: DateTime<Utc> = "2025-01-20T12:00:00Z".parse().unwrap();
        let cases = [
            // (snapshots, level): daily schedule, warn 2d, crit 3d
            (
                vec![snap(
                    "nightly-20250120T023000Z",
                    "2025-01-20T02:31:00Z",
                    SnapshotStatus::Completed,
                )],
                Level::Ok,
            ),
            (
                vec![snap(
                    "nightly-20250118T023000Z",
                    "2025-01-18T02:31:00Z",
                    SnapshotStatus::Completed,
                )],
                Level::Warning,
            ),
            (
                vec![snap(
                    "nightly-20250116T023000Z",
                    "2025-01-16T02:31:00Z",
                    SnapshotStatus::Completed,
                )],
                Level::Critical,
            ),
            (vec![], Level::Critical),
            // "Created" next year: no proof of freshness.
            (
                vec![snap(
                    "nightly-20250116T023000Z",
                    "2026-01-16T02:31:00Z",
                    SnapshotStatus::Completed,
                )],
                Level::Critical,
            ),
            // Fresh but failed or hand-made does not count.
            (
                vec![snap(
                    "nightly-20250120T023000Z",
                    "2025-01-20T02:31:00Z",
                    SnapshotStatus::Failed,
                )],
                Level::Critical,
            ),
            (
                vec![snap(
                    "by-hand",
                    "2025-01-20T02:31:00Z",
                    SnapshotStatus::Completed,
                )],
                Level::Critical,
            ),
        ];
        for (snaps, want) in cases {
            assert_eq!(
                row(&policy(), 1, &snaps, None, now).level,
                want,
                "{snaps:?}"
            );
        }
    }

    #[test]
    fn nagios_line_is_the_worst_level_with_perfdata() {
        let now: DateTime<Utc> = "2025-01-20T12:00:00Z".parse().unwrap();
        let fresh = row(
            &policy(),
            1,
            &[snap(
                "nightly-20250120T023000Z",
                "2025-01-20T02:31:00Z",
                SnapshotStatus::Completed,
            )],
            None,
            now,
        );
        let missing = row(&policy(), 2, &[], None, now);
        let (level, line) = nagios(&[fresh.clone(), missing]);
        assert_eq!(level, Level::Critical);
        assert!(
            line.starts_with("SNAPSHOTS CRITICAL - nightly/2: no completed snapshot"),
            "{line}"
        );
        assert!(line.contains("'nightly_1'=34140s;172800;259200"), "{line}");
        let (level, line) = nagios(&[fresh]);
        assert_eq!((level, level.exit_code()), (Level::Ok, 0));
        assert!(line.starts_with("SNAPSHOTS OK"), "{line}");
    }
}
