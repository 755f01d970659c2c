//! Every Prometheus series the daemon exports: its name (one `const` each, used wherever it is
//! set), its type, unit and help text, and the buckets of the duration histograms. The exporter
//! only learns a help text once its recorder is installed, so the endpoint calls [`describe`]
//! right after installing it; alert rules and the dashboard in `contrib/` use these names.

use metrics::Unit;

use crate::model::{ServerId, Snapshot, SnapshotStatus};

pub const SNAPSHOTS_CREATED: &str = "snapshot_scheduler_snapshots_created_total";
pub const SNAPSHOTS_DELETED: &str = "snapshot_scheduler_snapshots_deleted_total";
pub const SNAPSHOTS_FAILED: &str = "snapshot_scheduler_snapshots_failed_total";
pub const RUNS_FAILED: &str = "snapshot_scheduler_runs_failed_total";
pub const RUNS_IN_FLIGHT: &str = "snapshot_scheduler_runs_in_flight";
pub const RUN_DURATION: &str = "snapshot_scheduler_run_duration_seconds";
pub const FIRES_SKIPPED: &str = "snapshot_scheduler_fires_skipped_total";
pub const NEXT_FIRE: &str = "snapshot_scheduler_next_fire_timestamp_seconds";
pub const API_REQUESTS: &str = "snapshot_scheduler_api_requests_total";
pub const LAST_SUCCESS: &str = "snapshot_scheduler_last_success_timestamp_seconds";
pub const NEWEST_SNAPSHOT_AGE: &str = "snapshot_scheduler_newest_snapshot_age_seconds";
pub const NEWEST_SNAPSHOT: &str = "snapshot_scheduler_newest_snapshot_timestamp_seconds";
pub const WARN_AGE: &str = "snapshot_scheduler_policy_warn_age_seconds";
pub const CRIT_AGE: &str = "snapshot_scheduler_policy_crit_age_seconds";
pub const SNAPSHOTS: &str = "snapshot_scheduler_snapshots";
pub const FOREIGN_SNAPSHOTS: &str = "snapshot_scheduler_foreign_snapshots";
pub const SERVERS_STOPPED: &str = "snapshot_scheduler_servers_stopped";
pub const OLDEST_STOP: &str = "snapshot_scheduler_oldest_stop_age_seconds";
pub const SERVER_LEFT_STOPPED: &str = "snapshot_scheduler_server_left_stopped_total";
pub const JOURNAL_FAILURES: &str = "snapshot_scheduler_journal_failures_total";
pub const CONFIG_RELOAD_FAILURES: &str = "snapshot_scheduler_config_reload_failures_total";
pub const BUILD_INFO: &str = "snapshot_scheduler_build_info";
pub const HEALTHY: &str = "snapshot_scheduler_healthy";
pub const LOOP_WAKE: &str = "snapshot_scheduler_loop_wake_timestamp_seconds";
pub const LEADER: &str = "snapshot_scheduler_leader";
pub const LEADER_EPOCH: &str = "snapshot_scheduler_leader_epoch";
pub const LEADERSHIP_LOST: &str = "snapshot_scheduler_leadership_lost_total";

/// Unix time of the oldest stop in the power journal (0: none), kept by the journal; the
/// endpoint turns it into [`OLDEST_STOP`] at each scrape, so the age grows by itself between
/// wakes (and while a previous run's stop is settled, before the first).
static OLDEST_STOP_AT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Sets [`SERVERS_STOPPED`] and what [`OLDEST_STOP`] is measured from, from the journal's
/// entries now (`None` when there are none).
pub fn export_stopped(count: usize, oldest: Option<chrono::DateTime<chrono::Utc>>) {
    metrics::gauge!(SERVERS_STOPPED).set(count as f64);
    let at = oldest.map_or(0, |t| t.timestamp());
    OLDEST_STOP_AT.store(at, std::sync::atomic::Ordering::Relaxed);
}

/// Sets [`OLDEST_STOP`] as of `now` (called at each scrape).
pub fn export_oldest_stop_age(now: chrono::DateTime<chrono::Utc>) {
    let at = OLDEST_STOP_AT.load(std::sync::atomic::Ordering::Relaxed);
    let age = if at == 0 {
        0
    } else {
        (now.timestamp() - at).max(0)
    };
    metrics::gauge!(OLDEST_STOP).set(age as f64);
}

/// The provider's cap, as the help text of [`SNAPSHOTS`] states it.
const _: () = assert!(crate::policy::SERVER_CAP == 5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every series: name, kind, unit, help.
pub const ALL: &[(&str, Kind, Unit, &str)] = &[
    (SNAPSHOTS_CREATED, Kind::Counter, Unit::Count, "Snapshots this process created and saw completed, by policy."),
    (SNAPSHOTS_DELETED, Kind::Counter, Unit::Count, "Snapshots this process deleted (rotation, or freeing a slot under the cap), by policy."),
    (SNAPSHOTS_FAILED, Kind::Counter, Unit::Count, "Snapshots this process created that ended failed or timed out, by policy."),
    (RUNS_FAILED, Kind::Counter, Unit::Count, "Runs of a policy on a server that failed (any cause: API, cap blocked, hook, timeout), by policy."),
    (RUNS_IN_FLIGHT, Kind::Gauge, Unit::Count, "Runs of a policy on a server going on now (waiting for their turn included)."),
    (RUN_DURATION, Kind::Histogram, Unit::Seconds, "How long one run of a policy on one server took, in seconds, by policy."),
    (FIRES_SKIPPED, Kind::Counter, Unit::Count, "Fires skipped because the previous run of the policy on the server was still going, by policy."),
    (NEXT_FIRE, Kind::Gauge, Unit::Seconds, "Unix time of the next fire of the policy, by policy."),
    (API_REQUESTS, Kind::Counter, Unit::Count, "Requests to the provider's API, by endpoint and HTTP status (\"error\": no answer)."),
    (LAST_SUCCESS, Kind::Gauge, Unit::Seconds, "Unix time this process last created a snapshot for the policy on the server."),
    (NEWEST_SNAPSHOT_AGE, Kind::Gauge, Unit::Seconds, "Age in seconds of the newest completed snapshot of any owner on the server, by server."),
    (NEWEST_SNAPSHOT, Kind::Gauge, Unit::Seconds, "Unix time of the newest completed snapshot the policy owns on the server (0: none), read from the provider at start and on every run, by policy and server."),
    (WARN_AGE, Kind::Gauge, Unit::Seconds, "Age in seconds past which the policy's newest snapshot on a server is stale (warn_age, default 2 periods), by policy."),
    (CRIT_AGE, Kind::Gauge, Unit::Seconds, "Age in seconds past which the policy's newest snapshot on a server is critical (crit_age, default 3 periods), by policy."),
    (SNAPSHOTS, Kind::Gauge, Unit::Count, "Snapshots on the server now, of any owner, by server and state (completed, in_progress, failed, other); all count toward the provider's cap of 5."),
    (FOREIGN_SNAPSHOTS, Kind::Gauge, Unit::Count, "Snapshots on the server now that no policy owns (never deleted by this program), by server."),
    (SERVERS_STOPPED, Kind::Gauge, Unit::Count, "Servers this program stopped and has not started again (entries of the power journal)."),
    (OLDEST_STOP, Kind::Gauge, Unit::Seconds, "Age in seconds of the oldest stop in the power journal by this host's clock (0: no server stopped), as of the scrape, so an alert can tell one server stopped for long from many stopped in turn."),
    (SERVER_LEFT_STOPPED, Kind::Counter, Unit::Count, "Times a server this program stopped could not be started again (it is retried)."),
    (JOURNAL_FAILURES, Kind::Counter, Unit::Count, "Writes of the power journal that failed."),
    (CONFIG_RELOAD_FAILURES, Kind::Counter, Unit::Count, "Config reloads (SIGHUP) that failed; the running config stays."),
    (BUILD_INFO, Kind::Gauge, Unit::Count, "Always 1; the version of snapshot-scheduler in its label."),
    (HEALTHY, Kind::Gauge, Unit::Count, "1 when /healthz answers 200, 0 when it answers 503 (the loop stalled, the power journal cannot be written, stopping, or with [ha] not acting); set at each scrape."),
    (LOOP_WAKE, Kind::Gauge, Unit::Seconds, "Unix time the scheduler loop last woke (at least once a minute on a host that acts)."),
    (LEADER, Kind::Gauge, Unit::Count, "With [ha]: 1 on the host that acts, 0 on a standby."),
    (LEADER_EPOCH, Kind::Gauge, Unit::Count, "With [ha]: the epoch of this host's lead."),
    (LEADERSHIP_LOST, Kind::Counter, Unit::Count, "With [ha]: times this host lost the lead."),
];

/// The counters by policy, set to 0 for every policy configured so that their first
/// increment shows as an increase (`increase()` cannot see the one that created a series).
pub const POLICY_COUNTERS: [&str; 5] = [
    SNAPSHOTS_CREATED,
    SNAPSHOTS_DELETED,
    SNAPSHOTS_FAILED,
    RUNS_FAILED,
    FIRES_SKIPPED,
];

/// The counters without labels, at 0 from the start for the same reason.
const PROCESS_COUNTERS: [&str; 3] = [
    SERVER_LEFT_STOPPED,
    JOURNAL_FAILURES,
    CONFIG_RELOAD_FAILURES,
];

/// Upper bounds of the [`RUN_DURATION`] buckets, in seconds: a run is a snapshot taken (and maybe
/// a server stopped for it), which takes from seconds to an hour or two.
pub const RUN_DURATION_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0,
];

/// Gives every series its help text and unit, and sets [`BUILD_INFO`]. Call once, right after
/// the recorder is installed (a recorder installed later would not know them).
pub fn describe() {
    for &(name, kind, unit, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, unit, help),
            Kind::Gauge => metrics::describe_gauge!(name, unit, help),
            Kind::Histogram => metrics::describe_histogram!(name, unit, help),
        }
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for counter in PROCESS_COUNTERS {
        metrics::counter!(counter).increment(0);
    }
}

/// The states [`SNAPSHOTS`] counts; a state the provider added later counts as `other`.
const STATES: [&str; 4] = ["completed", "in_progress", "failed", "other"];

fn state_of(status: &SnapshotStatus) -> &'static str {
    match status {
        SnapshotStatus::Completed => "completed",
        SnapshotStatus::InProgress => "in_progress",
        SnapshotStatus::Failed => "failed",
        SnapshotStatus::Other(_) => "other",
    }
}

/// How many of `snapshots` are in each of [`STATES`], every state present (a state none is in
/// any more reads 0, not its last count).
pub fn count_by_state(snapshots: &[Snapshot]) -> [(&'static str, u64); 4] {
    STATES.map(|state| {
        let n = snapshots.iter().filter(|s| state_of(&s.status) == state);
        (state, n.count() as u64)
    })
}

/// Sets [`SNAPSHOTS`] and [`FOREIGN_SNAPSHOTS`] of `server` from a listing of it; `owned` says
/// whether some policy owns a snapshot name.
pub fn export_snapshots(server: ServerId, snapshots: &[Snapshot], owned: impl Fn(&str) -> bool) {
    let server = server.to_string();
    for (state, n) in count_by_state(snapshots) {
        metrics::gauge!(SNAPSHOTS, "server" => server.clone(), "state" => state).set(n as f64);
    }
    let foreign = snapshots.iter().filter(|s| !owned(&s.name)).count();
    metrics::gauge!(FOREIGN_SNAPSHOTS, "server" => server).set(foreign as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_named_once_in_base_units_and_counters_end_in_total() {
        let mut names: Vec<&str> = ALL.iter().map(|(n, ..)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "a series is listed twice");
        for &(name, kind, unit, help) in ALL {
            assert!(name.starts_with("snapshot_scheduler_"), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
            assert_eq!(unit == Unit::Seconds, name.ends_with("_seconds"), "{name}");
            assert!(help.ends_with('.'), "{name}: {help}");
        }
    }

    #[test]
    fn a_state_that_emptied_counts_zero_and_unknown_states_are_other() {
        let snap = |status: &str| -> Snapshot {
            serde_json::from_value(serde_json::json!({
                "id": 1, "server": {"id": 7}, "name": "n", "status": status,
                "created_at": "2026-01-01T00:00:00Z",
            }))
            .expect("a snapshot")
        };
        let listing = [snap("completed"), snap("completed"), snap("restoring")];
        assert_eq!(
            count_by_state(&listing),
            [
                ("completed", 2),
                ("in_progress", 0),
                ("failed", 0),
                ("other", 1)
            ]
        );
    }
}
