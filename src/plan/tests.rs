//! The planner's tests: tables of listings and the decisions they get, with their reasons,
//! and properties over random servers, judged by what the generator knows about each
//! snapshot (`truth`), never by the planner's own view of it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::Action::{DeleteAfterCreate, DeleteBeforeCreate, DeleteNow, Ignore, Keep};
use super::*;
use crate::model::SnapshotStatus::{Completed, Failed, InProgress};
use crate::model::{PowerState, ServerId, ServerRef, Snapshot, SnapshotId, SnapshotStatus};
use crate::policy::{snapshot_name, Policy, Retention};
use proptest::prelude::*;

const SERVER: ServerId = 12345;
const JAN10: &str = "2025-01-10T02:30:00Z";
const JAN11: &str = "2025-01-11T02:30:00Z";
const JAN12: &str = "2025-01-12T02:30:00Z";
const JAN13: &str = "2025-01-13T02:30:00Z";
const JAN14: &str = "2025-01-14T02:30:00Z";
const JAN15: &str = "2025-01-15T02:30:00Z";

const CREATE15: &str = "create: slot 2025-01-15T02:30:00Z";
const AFTER15: &str = "delete: beyond retention, once nightly-20250115T023000Z has completed";
const FREES: &str = "delete: frees a slot under the cap of 5 (oldest completed)";
const BEYOND: &str = "delete: beyond retention";
const FAILED: &str = "delete: own failed snapshot";
const FOREIGN: &str = "ignore: not created by this policy";
const IN_PROGRESS: &str = "keep: in progress (not usable, not deletable until it completes)";
const WAITING: &str = "keep: waiting for a newer completed snapshot";
const NO_RULE: &str = "keep: the policy has no retention rule, so nothing is deleted";

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn keep(n: u32) -> Retention {
    Retention {
        keep: n,
        ..Default::default()
    }
}

fn policy_in(tz: Tz, retention: Retention, prune_unmanaged: bool) -> Policy {
    Policy {
        servers: vec![SERVER],
        retention,
        prune_unmanaged,
        ..crate::fixtures::policy_at("nightly", "30 2 * * *", tz)
    }
}

fn policy(retention: Retention) -> Policy {
    policy_in(Tz::UTC, retention, false)
}

fn snap(id: SnapshotId, name: &str, created_at: DateTime<Utc>, status: SnapshotStatus) -> Snapshot {
    Snapshot {
        id,
        server: ServerRef {
            id: SERVER,
            name: "web-server-01".into(),
        },
        name: name.into(),
        status,
        size_mb: None,
        created_at,
        description: None,
    }
}

/// One of the policy's own, taken a minute after its slot.
fn own(id: SnapshotId, slot: &str, status: SnapshotStatus) -> Snapshot {
    let slot = t(slot);
    snap(
        id,
        &snapshot_name("nightly", slot),
        slot + chrono::Duration::minutes(1),
        status,
    )
}

/// Not the policy's; the higher the id, the newer (so "oldest" reads off the ids).
fn foreign(id: SnapshotId, name: &str, status: SnapshotStatus) -> Snapshot {
    snap(
        id,
        name,
        t("2025-01-01T00:00:00Z") + chrono::Duration::hours(id as i64),
        status,
    )
}

struct Case {
    name: &'static str,
    policy: Policy,
    snapshots: Vec<Snapshot>,
    slot: &'static str,
    outcome: &'static str,
    want: Vec<(SnapshotId, Action, &'static str)>,
}

/// How the line of each outcome begins, for the reader of `plan`.
fn verb(outcome: &SlotOutcome) -> &'static str {
    match outcome {
        SlotOutcome::Create(_) => "create: ",
        SlotOutcome::SlotTaken {
            completed: true, ..
        } => "no create: ",
        SlotOutcome::SlotTaken {
            completed: false, ..
        } => "the snapshot of this slot failed ",
        SlotOutcome::SnapshotInProgress { .. } | SlotOutcome::ServerInTransition { .. } => "skip: ",
        SlotOutcome::SnapshotStuck { .. } => "snapshot stuck ",
        SlotOutcome::CreateUnconfirmed { .. } => "a create of snapshot ",
        SlotOutcome::CapBlocked(_) | SlotOutcome::OtherServers(_) => "blocked: ",
    }
}

fn check(case: Case) -> Plan {
    let now = t(case.slot) + chrono::Duration::minutes(5);
    let p = plan(
        &case.policy,
        &SERVER.into(),
        &case.snapshots,
        t(case.slot),
        now,
    );
    assert_eq!(p.outcome_line(), case.outcome, "{}: outcome", case.name);
    assert!(
        case.outcome.starts_with(verb(&p.outcome)),
        "{}: {:?} explained as {:?}",
        case.name,
        p.outcome,
        case.outcome
    );
    let mut got: Vec<(SnapshotId, Action, &str)> = p
        .decisions
        .iter()
        .map(|d| (d.snapshot_id, d.action, d.reason.as_str()))
        .collect();
    got.sort_by_key(|d| d.0);
    let mut want = case.want.clone();
    want.sort_by_key(|d| d.0);
    assert_eq!(got, want, "{}: decisions", case.name);
    p
}

#[test]
fn retention_cap_and_ownership() {
    let k3 = "keep: newest completed (keep=3)";
    let k5 = "keep: newest completed (keep=5)";
    let k1 = "keep: newest completed (keep=1)";
    // One case a block, one snapshot list a line: kept as written, not reflowed.
    #[rustfmt::skip]
    let cases = vec![
        Case {
            name: "steady state: the oldest goes once the new one has completed",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN12, Completed), own(2, JAN13, Completed), own(3, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteAfterCreate, AFTER15), (2, Keep, k3), (3, Keep, k3)],
        },
        Case {
            name: "steady state, second plan: the slot completed, the deferred one goes now",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN12, Completed), own(2, JAN13, Completed), own(3, JAN14, Completed), own(4, JAN15, Completed)],
            slot: JAN15,
            outcome: "no create: slot already taken by nightly-20250115T023000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, Keep, k3), (3, Keep, k3), (4, Keep, k3)],
        },
        Case {
            name: "beyond keep: all beyond ones wait for the new one",
            policy: policy(keep(1)),
            snapshots: vec![own(1, JAN12, Completed), own(2, JAN13, Completed), own(3, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteAfterCreate, AFTER15), (2, DeleteAfterCreate, AFTER15), (3, DeleteAfterCreate, AFTER15)],
        },
        Case {
            name: "few snapshots: nothing beyond keep",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, Keep, k3)],
        },
        Case {
            name: "full server of own snapshots: the oldest frees a slot",
            policy: policy(keep(5)),
            snapshots: vec![own(1, JAN10, Completed), own(2, JAN11, Completed), own(3, JAN12, Completed), own(4, JAN13, Completed), own(5, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteBeforeCreate, FREES), (2, Keep, k5), (3, Keep, k5), (4, Keep, k5), (5, Keep, k5)],
        },
        Case {
            name: "full server, keep=3: one goes before, the rest beyond keep after",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN10, Completed), own(2, JAN11, Completed), own(3, JAN12, Completed), own(4, JAN13, Completed), own(5, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteBeforeCreate, FREES), (2, DeleteAfterCreate, AFTER15), (3, DeleteAfterCreate, AFTER15), (4, Keep, k3), (5, Keep, k3)],
        },
        Case {
            name: "full server with foreign ones: only own are deleted",
            policy: policy(keep(3)),
            snapshots: vec![foreign(101, "pre-migration-snapshot", Completed), foreign(102, "weekly-20250112T000000Z", Completed), own(1, JAN12, Completed), own(2, JAN13, Completed), own(3, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (1, DeleteBeforeCreate, FREES), (2, Keep, k3), (3, Keep, k3)],
        },
        Case {
            name: "server filled by foreign snapshots: blocked, nothing touched",
            policy: policy(keep(3)),
            snapshots: vec![foreign(101, "a", Completed), foreign(102, "b", Completed), foreign(103, "c", Failed), foreign(104, "d", Completed), foreign(105, "weekly-20250112T000000Z", Completed)],
            slot: JAN15,
            outcome: "blocked: the server is at the cap of 5 and this policy may delete none of its snapshots: a, b, c, d, weekly-20250112T000000Z",
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, Ignore, FOREIGN), (104, Ignore, FOREIGN), (105, Ignore, FOREIGN)],
        },
        Case {
            name: "blocked: not even an own failed snapshot is deleted",
            policy: policy(keep(3)),
            snapshots: vec![foreign(101, "a", Completed), foreign(102, "b", Completed), foreign(103, "c", Completed), foreign(104, "d", Completed), foreign(105, "e", Completed), own(1, JAN14, Failed)],
            slot: JAN15,
            outcome: "blocked: the server is at the cap of 5 and this policy may delete none of its snapshots: a, b, c, d, e, nightly-20250114T023000Z",
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, Ignore, FOREIGN), (104, Ignore, FOREIGN), (105, Ignore, FOREIGN), (1, Keep, "keep: failed, not deleted: the plan is blocked")],
        },
        Case {
            name: "over the cap by two: blocked, one freed slot would not be enough",
            policy: policy(keep(1)),
            snapshots: vec![foreign(101, "a", Completed), foreign(102, "b", Completed), foreign(103, "c", Completed), foreign(104, "d", Completed), own(1, JAN13, Completed), own(2, JAN14, Completed)],
            slot: JAN15,
            outcome: "blocked: the server holds 6 snapshots, over the cap of 5; a plan frees at most one slot per create: a, b, c, d, nightly-20250113T023000Z, nightly-20250114T023000Z",
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, Ignore, FOREIGN), (104, Ignore, FOREIGN), (1, Keep, "keep: beyond retention, not deleted: the plan is blocked"), (2, Keep, k1)],
        },
        Case {
            name: "in progress: skip, nothing deleted",
            policy: policy(keep(1)),
            snapshots: vec![own(1, JAN13, Completed), own(2, JAN14, Completed), own(3, JAN15, InProgress), own(4, JAN12, Failed)],
            slot: JAN15,
            outcome: "skip: server has a snapshot in progress (nightly-20250115T023000Z)",
            want: vec![
                (1, Keep, "keep: beyond retention, not deleted: server has a snapshot in progress (nightly-20250115T023000Z)"),
                (2, Keep, k1),
                (3, Keep, IN_PROGRESS),
                (4, Keep, "keep: failed, not deleted: server has a snapshot in progress (nightly-20250115T023000Z)"),
            ],
        },
        Case {
            name: "a foreign snapshot in progress also freezes the server",
            policy: policy(keep(1)),
            snapshots: vec![own(1, JAN13, Completed), own(2, JAN14, Completed), foreign(101, "manual", InProgress)],
            slot: JAN15,
            outcome: "skip: server has a snapshot in progress (manual)",
            want: vec![(1, Keep, "keep: beyond retention, not deleted: server has a snapshot in progress (manual)"), (2, Keep, k1), (101, Ignore, FOREIGN)],
        },
        Case {
            name: "unknown status counts as in progress and is never kept by a rule",
            policy: policy(keep(1)),
            snapshots: vec![own(1, JAN14, SnapshotStatus::Other("queued".into())), own(2, JAN13, Completed)],
            slot: JAN15,
            outcome: "skip: server has a snapshot in progress or in an unknown state (nightly-20250114T023000Z: unknown status \"queued\")",
            want: vec![(1, Keep, "keep: unknown status \"queued\" (not usable, not deletable until it settles)"), (2, Keep, k1)],
        },
        Case {
            name: "own failed snapshots go first and are never kept",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN13, Failed), own(2, JAN14, Completed), own(3, JAN12, Failed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteNow, FAILED), (2, Keep, k3), (3, DeleteNow, FAILED)],
        },
        Case {
            name: "own failed ones make room under the cap before any good one",
            policy: policy(keep(3)),
            snapshots: vec![own(1, JAN11, Completed), own(2, JAN12, Completed), own(3, JAN13, Completed), own(4, JAN14, Failed), foreign(101, "manual", Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteAfterCreate, AFTER15), (2, Keep, k3), (3, Keep, k3), (4, DeleteNow, FAILED), (101, Ignore, FOREIGN)],
        },
        Case {
            name: "slot taken by a failed snapshot: deleted, not recreated, the old ones wait",
            policy: policy(keep(1)),
            snapshots: vec![own(1, JAN13, Completed), own(2, JAN14, Completed), own(3, JAN15, Failed)],
            slot: JAN15,
            outcome: "the snapshot of this slot failed (nightly-20250115T023000Z); it is not retried in this slot: the next fire takes a new slot",
            want: vec![(1, Keep, WAITING), (2, Keep, k1), (3, DeleteNow, FAILED)],
        },
        Case {
            name: "a second policy's snapshots are never touched, even at the cap",
            policy: policy_in(Tz::UTC, keep(1), true),
            snapshots: vec![foreign(101, "weekly-20250105T000000Z", Completed), foreign(102, "weekly-20250112T000000Z", Completed), foreign(103, "nightly-extra-20250112T000000Z", Completed), foreign(104, "weekly-20250113T000000Z", Failed), foreign(105, "night-20250113T000000Z", Completed)],
            slot: JAN15,
            outcome: "blocked: the server is at the cap of 5 and this policy may delete none of its snapshots: weekly-20250105T000000Z, weekly-20250112T000000Z, nightly-extra-20250112T000000Z, weekly-20250113T000000Z, night-20250113T000000Z",
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, Ignore, FOREIGN), (104, Ignore, FOREIGN), (105, Ignore, FOREIGN)],
        },
        Case {
            name: "prune_unmanaged frees a slot with the oldest hand-made completed one",
            policy: policy_in(Tz::UTC, keep(1), true),
            snapshots: vec![foreign(101, "weekly-20250105T000000Z", Completed), foreign(102, "failed-by-hand", Failed), foreign(103, "pre-migration", Completed), foreign(104, "before-upgrade", Completed), foreign(105, "weekly-20250112T000000Z", Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, DeleteBeforeCreate, "delete: frees a slot under the cap of 5 (oldest hand-made completed; prune_unmanaged)"), (104, Ignore, FOREIGN), (105, Ignore, FOREIGN)],
        },
        Case {
            name: "prune_unmanaged: an own snapshot frees the slot while there is one",
            policy: policy_in(Tz::UTC, keep(1), true),
            snapshots: vec![foreign(101, "a", Completed), foreign(102, "b", Completed), foreign(103, "c", Completed), foreign(104, "d", Completed), own(1, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(101, Ignore, FOREIGN), (102, Ignore, FOREIGN), (103, Ignore, FOREIGN), (104, Ignore, FOREIGN), (1, DeleteBeforeCreate, FREES)],
        },
        Case {
            name: "a policy with no rule deletes nothing, not even failed ones",
            policy: policy(Retention::default()),
            snapshots: vec![own(1, JAN12, Completed), own(2, JAN13, Completed), own(3, JAN14, Failed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, Keep, NO_RULE), (2, Keep, NO_RULE), (3, Keep, "keep: failed, not deleted: the policy has no retention rule")],
        },
        Case {
            name: "a policy with no rule at the cap is blocked rather than deleting",
            policy: policy(Retention::default()),
            snapshots: vec![own(1, JAN10, Completed), own(2, JAN11, Completed), own(3, JAN12, Completed), own(4, JAN13, Completed), own(5, JAN14, Completed)],
            slot: JAN15,
            outcome: "blocked: the server is at the cap of 5 and the policy has no retention rule, so nothing is deleted to make room: nightly-20250110T023000Z, nightly-20250111T023000Z, nightly-20250112T023000Z, nightly-20250113T023000Z, nightly-20250114T023000Z",
            want: vec![(1, Keep, NO_RULE), (2, Keep, NO_RULE), (3, Keep, NO_RULE), (4, Keep, NO_RULE), (5, Keep, NO_RULE)],
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn calendar_rules_keep_the_newest_of_each_period() {
    let r = |hourly, daily, weekly, monthly| Retention {
        hourly,
        daily,
        weekly,
        monthly,
        ..Default::default()
    };
    // One case a block, one snapshot list a line: kept as written, not reflowed.
    #[rustfmt::skip]
    let cases = vec![
        Case {
            name: "keep_hourly",
            policy: policy(r(2, 0, 0, 0)),
            snapshots: vec![own(1, "2025-01-15T10:00:00Z", Completed), own(2, "2025-01-15T10:30:00Z", Completed), own(3, "2025-01-15T11:00:00Z", Completed), own(4, "2025-01-15T11:30:00Z", Completed)],
            slot: "2025-01-15T11:30:00Z",
            outcome: "no create: slot already taken by nightly-20250115T113000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, Keep, "keep: newest of hour 2025-01-15 10:00+00:00 (keep_hourly=2)"), (3, DeleteNow, BEYOND), (4, Keep, "keep: newest of hour 2025-01-15 11:00+00:00 (keep_hourly=2)")],
        },
        Case {
            name: "keep_daily counts days that have a snapshot (a gap does not shorten it)",
            policy: policy(r(0, 2, 0, 0)),
            snapshots: vec![own(1, JAN10, Completed), own(2, JAN12, Completed), own(3, "2025-01-12T14:30:00Z", Completed), own(4, JAN15, Completed)],
            slot: JAN15,
            outcome: "no create: slot already taken by nightly-20250115T023000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, DeleteNow, BEYOND), (3, Keep, "keep: newest of day 2025-01-12 (keep_daily=2)"), (4, Keep, "keep: newest of day 2025-01-15 (keep_daily=2)")],
        },
        Case {
            name: "keep_weekly uses ISO weeks (Monday first)",
            policy: policy(r(0, 0, 2, 0)),
            snapshots: vec![own(1, "2025-01-06T02:30:00Z", Completed), own(2, JAN12, Completed), own(3, JAN13, Completed), own(4, JAN15, Completed)],
            slot: JAN15,
            outcome: "no create: slot already taken by nightly-20250115T023000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, Keep, "keep: newest of week 2025-W02 (keep_weekly=2)"), (3, DeleteNow, BEYOND), (4, Keep, "keep: newest of week 2025-W03 (keep_weekly=2)")],
        },
        Case {
            name: "keep_monthly",
            policy: policy(r(0, 0, 0, 2)),
            snapshots: vec![own(1, "2024-11-30T02:30:00Z", Completed), own(2, "2024-12-01T02:30:00Z", Completed), own(3, "2024-12-31T02:30:00Z", Completed), own(4, JAN15, Completed)],
            slot: JAN15,
            outcome: "no create: slot already taken by nightly-20250115T023000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, DeleteNow, BEYOND), (3, Keep, "keep: newest of month 2024-12 (keep_monthly=2)"), (4, Keep, "keep: newest of month 2025-01 (keep_monthly=2)")],
        },
        Case {
            name: "rules are a union and every reason is given",
            policy: policy(Retention { keep: 1, daily: 2, ..Default::default() }),
            snapshots: vec![own(1, JAN13, Completed), own(2, JAN14, Completed), own(3, JAN15, Completed)],
            slot: JAN15,
            outcome: "no create: slot already taken by nightly-20250115T023000Z (completed)",
            want: vec![(1, DeleteNow, BEYOND), (2, Keep, "keep: newest of day 2025-01-14 (keep_daily=2)"), (3, Keep, "keep: newest completed (keep=1); newest of day 2025-01-15 (keep_daily=2)")],
        },
        Case {
            name: "the planned create counts for calendar rules too",
            policy: policy(r(0, 2, 0, 0)),
            snapshots: vec![own(1, JAN13, Completed), own(2, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![(1, DeleteAfterCreate, AFTER15), (2, Keep, "keep: newest of day 2025-01-14 (keep_daily=2)")],
        },
        Case {
            name: "the cap takes the oldest one no rule keeps, not a monthly one",
            policy: policy(Retention { keep: 2, monthly: 2, ..Default::default() }),
            snapshots: vec![own(1, "2024-12-31T02:30:00Z", Completed), own(2, JAN11, Completed), own(3, JAN12, Completed), own(4, JAN13, Completed), own(5, JAN14, Completed)],
            slot: JAN15,
            outcome: CREATE15,
            want: vec![
                (1, Keep, "keep: newest of month 2024-12 (keep_monthly=2)"),
                (2, DeleteBeforeCreate, "delete: frees a slot under the cap of 5 (oldest completed that no rule keeps)"),
                (3, DeleteAfterCreate, AFTER15),
                (4, DeleteAfterCreate, AFTER15),
                (5, Keep, "keep: newest completed (keep=2)"),
            ],
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn one_snapshot_per_local_day_across_dst_in_berlin() {
    let berlin = chrono_tz::Europe::Berlin;
    let daily3 = Retention {
        daily: 3,
        ..Default::default()
    };
    // One case a block, one snapshot list a line: kept as written, not reflowed.
    #[rustfmt::skip]
    let cases = vec![
        Case {
            name: "spring forward 2025-03-30 (02:30 does not exist; the fire is 03:00 CEST)",
            policy: policy_in(berlin, daily3, false),
            snapshots: vec![
                own(1, "2025-03-29T01:30:00Z", Completed), // 02:30 CET
                own(2, "2025-03-29T23:30:00Z", Completed), // 00:30 CET on the 30th, by hand
                own(3, "2025-03-30T01:00:00Z", Completed), // 03:00 CEST
                own(4, "2025-03-31T00:30:00Z", Completed), // 02:30 CEST
            ],
            slot: "2025-03-31T00:30:00Z",
            outcome: "no create: slot already taken by nightly-20250331T003000Z (completed)",
            want: vec![
                (1, Keep, "keep: newest of day 2025-03-29 (keep_daily=3)"),
                (2, DeleteNow, BEYOND),
                (3, Keep, "keep: newest of day 2025-03-30 (keep_daily=3)"),
                (4, Keep, "keep: newest of day 2025-03-31 (keep_daily=3)"),
            ],
        },
        Case {
            name: "fall back 2025-10-26 (02:30 happens twice; the fire is once)",
            policy: policy_in(berlin, daily3, false),
            snapshots: vec![
                own(1, "2025-10-25T00:30:00Z", Completed), // 02:30 CEST
                own(2, "2025-10-26T00:30:00Z", Completed), // 02:30 CEST, the first of two
                own(3, "2025-10-26T22:30:00Z", Completed), // 23:30 CET, same local day
                own(4, "2025-10-27T01:30:00Z", Completed), // 02:30 CET
            ],
            slot: "2025-10-27T01:30:00Z",
            outcome: "no create: slot already taken by nightly-20251027T013000Z (completed)",
            want: vec![
                (1, Keep, "keep: newest of day 2025-10-25 (keep_daily=3)"),
                (2, DeleteNow, BEYOND),
                (3, Keep, "keep: newest of day 2025-10-26 (keep_daily=3)"),
                (4, Keep, "keep: newest of day 2025-10-27 (keep_daily=3)"),
            ],
        },
        Case {
            name: "the repeated hour of a fall-back is two hours for keep_hourly",
            policy: policy_in(
                berlin,
                Retention {
                    hourly: 2,
                    ..Default::default()
                },
                false,
            ),
            snapshots: vec![
                own(1, "2025-10-26T00:30:00Z", Completed),
                own(2, "2025-10-26T01:30:00Z", Completed),
            ],
            slot: "2025-10-26T01:30:00Z",
            outcome: "no create: slot already taken by nightly-20251026T013000Z (completed)",
            want: vec![
                (
                    1,
                    Keep,
                    "keep: newest of hour 2025-10-26 02:00+02:00 (keep_hourly=2)",
                ),
                (
                    2,
                    Keep,
                    "keep: newest of hour 2025-10-26 02:00+01:00 (keep_hourly=2)",
                ),
            ],
        },
    ];
    for case in cases {
        check(case);
    }
}

#[test]
fn deferred_deletes_become_deletes_now_once_the_new_snapshot_completed() {
    let p = policy(keep(2));
    let mut server = vec![
        own(1, JAN12, Completed),
        own(2, JAN13, Completed),
        own(3, JAN14, Completed),
    ];
    let first = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));
    let deferred: Vec<SnapshotId> = first.deferred().map(|d| d.snapshot_id).collect();
    assert_eq!(deferred, [2, 1]);
    assert!(first.deletes_now().next().is_none());
    // While the new one is in progress, nothing moves.
    server.push(own(4, JAN15, InProgress));
    let waiting = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));
    assert!(waiting.is_noop());
    server.last_mut().unwrap().status = Completed;
    let second = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));
    let now: Vec<SnapshotId> = second.deletes_now().map(|d| d.snapshot_id).collect();
    assert_eq!(now, deferred);
    assert!(second.create().is_none());
}

/// An own name stamped years ahead, made on Jan 13 by a host whose clock was wrong.
fn future_stamped(id: SnapshotId) -> Snapshot {
    snap(
        id,
        &snapshot_name("nightly", t("2031-06-01T02:30:00Z")),
        t(JAN13) + chrono::Duration::minutes(1),
        Completed,
    )
}

#[test]
fn a_future_stamped_own_snapshot_does_not_outrank_the_new_one() {
    let p = policy(keep(1));
    // Jan 15's snapshot has just completed: it is the one kept, the stale one goes.
    let server = [future_stamped(1), own(2, JAN15, Completed)];

    let after = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));

    let decided: Vec<(SnapshotId, Action)> = after
        .decisions
        .iter()
        .map(|d| (d.snapshot_id, d.action))
        .collect();
    assert_eq!(decided, [(2, Keep), (1, DeleteNow)]);
    assert_eq!(after.warnings.len(), 1, "{:?}", after.warnings);
    assert!(after.warnings[0].contains("nightly-20310601T023000Z"));
    assert!(after.warnings[0].contains("host clock was ahead"));
}

#[test]
fn a_future_stamp_does_not_make_a_failed_slot_count_as_done() {
    let p = policy(keep(1));
    // Jan 15's snapshot failed: the newest good one (Jan 14) and the older one stay.
    let server = [
        future_stamped(1),
        own(2, JAN14, Completed),
        own(3, JAN15, Failed),
    ];

    let after = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));

    assert!(after.create().is_none());
    assert_eq!(deleted(&after), [3], "only the failed one goes: {after:#?}");
}

#[test]
fn a_blocked_reason_names_at_most_ten_snapshots() {
    let names = |n: u64| -> Vec<Snapshot> {
        (1..=n)
            .map(|i| foreign(i, &format!("f{i:04}"), Completed))
            .collect()
    };
    let first_ten = "f0001, f0002, f0003, f0004, f0005, f0006, f0007, f0008, f0009, f0010";
    for (count, want) in [
        (
            5,
            "blocked: the server is at the cap of 5 and this policy may delete none of its \
             snapshots: f0001, f0002, f0003, f0004, f0005"
                .to_owned(),
        ),
        (
            10,
            format!(
                "blocked: the server holds 10 snapshots, over the cap of 5; a plan frees at \
                 most one slot per create: {first_ten}"
            ),
        ),
        (
            11,
            format!(
                "blocked: the server holds 11 snapshots, over the cap of 5; a plan frees at \
                 most one slot per create: {first_ten} and 1 more"
            ),
        ),
        (
            3000,
            format!(
                "blocked: the server holds 3000 snapshots, over the cap of 5; a plan frees \
                 at most one slot per create: {first_ten} and 2990 more"
            ),
        ),
    ] {
        let p = plan(
            &policy(keep(1)),
            &SERVER.into(),
            &names(count),
            t(JAN15),
            t(JAN15),
        );
        assert_eq!(p.outcome_line(), want, "{count} snapshots");
        let SlotOutcome::CapBlocked(blocked) = p.outcome else {
            panic!("{count} snapshots: {:?}", p.outcome)
        };
        assert_eq!(blocked.reason, want);
        assert_eq!(
            blocked.snapshots.len() as u64,
            count,
            "the full list stays data"
        );
    }
}

#[test]
fn an_own_snapshot_created_in_the_future_ranks_below_the_new_one() {
    let p = policy(keep(1));
    let mut from_the_future = own(1, JAN14, Completed);
    from_the_future.created_at = t("2027-06-01T00:00:00Z");
    let server = [from_the_future, own(2, JAN15, Completed)];

    let after = plan(
        &p,
        &SERVER.into(),
        &server,
        t(JAN15),
        t(JAN15) + chrono::Duration::minutes(5),
    );

    let decided: Vec<(SnapshotId, Action)> = after
        .decisions
        .iter()
        .map(|d| (d.snapshot_id, d.action))
        .collect();
    assert!(decided.contains(&(2, Keep)), "{decided:?}");
    assert!(decided.contains(&(1, DeleteNow)), "{decided:?}");
    assert!(
        after.warnings[0].contains("after now"),
        "{:?}",
        after.warnings
    );
}

#[test]
fn a_skip_names_at_most_ten_busy_snapshots() {
    let p = policy(keep(2));
    let server: Vec<Snapshot> = (1..=40)
        .map(|id| {
            foreign(
                id,
                &format!("import-{id}"),
                SnapshotStatus::Other("queued".into()),
            )
        })
        .collect();

    let plan = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));

    let why = plan.outcome_line();
    assert!(why.contains("and 30 more"), "{why}");
    assert!(why.len() < 600, "{} characters", why.len());
    assert!(plan.notes.len() <= 10, "{} notes", plan.notes.len());
}

#[test]
fn the_slots_own_snapshot_outranks_one_dated_a_little_ahead() {
    let p = policy(keep(1));
    // Dated 55 minutes ahead: not yet suspect, still never above what the run just made.
    let mut ahead = own(1, JAN14, Completed);
    ahead.created_at = t(JAN15) + chrono::Duration::minutes(55);
    let server = [ahead, own(2, JAN15, Completed)];

    let after = plan(
        &p,
        &SERVER.into(),
        &server,
        t(JAN15),
        t(JAN15) + chrono::Duration::minutes(2),
    );

    assert_eq!(deleted(&after), [1], "{after:#?}");
}

#[test]
fn a_listing_of_several_servers_is_blocked_not_planned() {
    let mut other = own(2, JAN13, Completed);
    other.server.id = SERVER + 1;
    let server = [own(1, JAN12, Completed), other, own(3, JAN14, Failed)];
    let p = plan(
        &policy(keep(1)),
        &SERVER.into(),
        &server,
        t(JAN15),
        t(JAN15),
    );
    assert_eq!(
        p.outcome_line(),
        "blocked: the listing of server 12345 holds snapshots of other servers (12346); a \
         plan covers one server"
    );
    assert!(matches!(p.outcome, SlotOutcome::OtherServers(_)));
    assert!(deleted(&p).is_empty(), "{p:#?}");
}

#[test]
fn a_listing_of_another_server_alone_is_blocked_not_planned_for_this_one() {
    let theirs: Vec<Snapshot> = [
        own(1, JAN12, Completed),
        own(2, JAN13, Completed),
        own(3, JAN14, Failed),
    ]
    .into_iter()
    .map(|mut s| {
        s.server.id = SERVER + 1;
        s
    })
    .collect();

    let p = plan(
        &policy(keep(1)),
        &SERVER.into(),
        &theirs,
        t(JAN15),
        t(JAN15),
    );

    assert_eq!(p.server, SERVER);
    assert_eq!(
        p.outcome_line(),
        "blocked: the listing of server 12345 holds snapshots of other servers (12346); a \
         plan covers one server"
    );
    assert!(matches!(p.outcome, SlotOutcome::OtherServers(_)));
    assert!(deleted(&p).is_empty(), "{p:#?}");
}

#[test]
fn a_server_in_transition_is_skipped_and_nothing_is_deleted() {
    let p = policy(keep(1));
    // Beyond keep, a failed one, and a free slot: a running server would see all go.
    let server = [
        own(1, JAN12, Completed),
        own(2, JAN13, Completed),
        own(3, JAN14, Failed),
    ];
    let restoring = Target {
        id: SERVER,
        power: Some(PowerState::Restoring),
    };

    let skipped = plan(&p, &restoring, &server, t(JAN15), t(JAN15));

    assert_eq!(
        skipped.outcome_line(),
        "skip: server is restoring (neither running nor stopped); not snapshotted"
    );
    assert!(skipped.outcome.is_skip(), "{:?}", skipped.outcome);
    let decided: Vec<(SnapshotId, Action, &str)> = skipped
        .decisions
        .iter()
        .map(|d| (d.snapshot_id, d.action, d.reason.as_str()))
        .collect();
    assert_eq!(
        decided,
        [
            (
                3,
                Keep,
                "keep: failed, not deleted: server is restoring (neither running nor stopped)"
            ),
            (2, Keep, "keep: newest completed (keep=1)"),
            (
                1,
                Keep,
                "keep: beyond retention, not deleted: server is restoring (neither running \
                 nor stopped)"
            ),
        ]
    );
    for power in [PowerState::Running, PowerState::Stopped] {
        let target = Target {
            id: SERVER,
            power: Some(power.clone()),
        };
        let p = plan(&p, &target, &server, t(JAN15), t(JAN15));
        assert_eq!(p.outcome_line(), CREATE15, "{power}");
    }
}

#[test]
fn plan_serializes_for_json_output() {
    let p = plan(
        &policy(keep(1)),
        &SERVER.into(),
        &[own(1, JAN14, Completed)],
        t(JAN15),
        t(JAN15),
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["outcome"]["kind"], "create");
    assert_eq!(json["outcome"]["name"], "nightly-20250115T023000Z");
    assert_eq!(json["outcome"]["reason"], CREATE15);
    assert_eq!(json["decisions"][0]["action"], "delete_after_create");
    assert_eq!(json["decisions"][0]["status"], "completed");
    assert_eq!(json["server"], SERVER);

    let full: Vec<Snapshot> = (1..=5)
        .map(|i| foreign(i, &format!("f{i}"), Completed))
        .collect();
    let p = plan(&policy(keep(1)), &SERVER.into(), &full, t(JAN15), t(JAN15));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["outcome"]["kind"], "cap_blocked");
    assert_eq!(json["outcome"]["snapshots"][4], "f5");
    assert!(json["outcome"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("blocked: the server is at the cap of 5"));
}

#[test]
fn notes_say_how_long_a_snapshot_has_been_in_progress() {
    let p = plan(
        &policy(keep(1)),
        &SERVER.into(),
        &[own(1, JAN15, InProgress)],
        t(JAN15),
        t("2025-01-15T04:41:30Z"),
    );
    assert_eq!(
        p.notes,
        ["nightly-20250115T023000Z has been in_progress for 2h 10m (created 2025-01-15T02:31:00Z)"]
    );
}

// ---- properties over random servers, judged by the truth the generator keeps ----

mod truth;

use truth::{Fate, Held, State, Whose, BASE, PROVIDER_CAP};

/// Snapshots the plan deletes, now, before or after its create.
fn deleted(p: &Plan) -> Vec<SnapshotId> {
    p.decisions
        .iter()
        .filter(|d| truth::fate(d.action) != Fate::Stays)
        .map(|d| d.snapshot_id)
        .collect()
}

/// The plan for [`BASE`] with the server as it is, and what it does with each snapshot.
fn planned(pol: &Policy, server: &[Held]) -> Result<(Plan, Vec<Fate>), TestCaseError> {
    let p = plan(
        pol,
        &SERVER.into(),
        &truth::listing(server),
        t(BASE),
        t(BASE),
    );
    let fates = truth::fates(&p, server)?;
    Ok((p, fates))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Rules 1 and 3: only this policy's own settled snapshots on this server are deleted; a
    /// hand-made one only when the policy prunes them, as the one that frees a slot for the
    /// create, and only when none of the policy's own completed ones is there to go instead.
    #[test]
    fn never_deletes_what_is_not_its_own_or_is_still_busy(
        pol in truth::policies(),
        server in truth::servers(true),
    ) {
        let (p, fates) = planned(&pol, &server)?;
        let own_completed = truth::own_completed(&server);
        for (h, &fate) in server.iter().zip(&fates) {
            if fate == Fate::Stays {
                continue;
            }
            prop_assert!(!h.state.is_busy(), "deletes a busy snapshot ({:?}): {:?}", fate, h);
            match h.whose {
                Whose::Own => {}
                Whose::HandMade => prop_assert!(
                    pol.prune_unmanaged
                        && h.state == State::Completed
                        && fate == Fate::GoesBeforeCreate
                        && p.create().is_some()
                        && own_completed == 0,
                    "deletes a hand-made snapshot ({:?}, prune_unmanaged={}): {:?}",
                    fate, pol.prune_unmanaged, h
                ),
                Whose::OtherPolicy | Whose::OtherServer => {
                    prop_assert!(false, "deletes a snapshot not its own ({:?}): {:?}", fate, h)
                }
            }
        }
    }

    /// Rule 3: a snapshot in progress or in an unknown state anywhere on the server freezes
    /// it: no create, no delete.
    #[test]
    fn a_busy_snapshot_anywhere_freezes_the_server(
        pol in truth::policies(),
        server in truth::servers(true),
    ) {
        let (p, fates) = planned(&pol, &server)?;
        if server.iter().any(|h| h.state.is_busy()) {
            prop_assert!(
                p.create().is_none(),
                "creates beside a busy snapshot: {:?}", p.outcome
            );
            prop_assert!(fates.iter().all(|&f| f == Fate::Stays), "deletes: {:?}", fates);
        }
    }

    /// Rule 3: only the policy's own completed snapshots count toward `keep`. Of those, the
    /// plan keeps `keep` (the create it plans counting as one), short of the one it frees
    /// under the cap; a policy without rules deletes none.
    #[test]
    fn only_completed_own_snapshots_count_toward_keep(
        pol in truth::policies(),
        server in truth::servers(true),
    ) {
        let (p, fates) = planned(&pol, &server)?;
        let had = truth::own_completed(&server);
        let own_completed_that = |fate: Fate| {
            server
                .iter()
                .zip(&fates)
                .filter(|&(h, &f)| h.is_own_completed() && f == fate)
                .count()
        };
        let kept = own_completed_that(Fate::Stays);
        let freed = own_completed_that(Fate::GoesBeforeCreate);
        let created = usize::from(p.create().is_some());
        let rules = pol.retention;
        let keep = rules.keep as usize;
        prop_assert!(
            kept + created >= keep.min(had + created - freed),
            "keeps {} of {} own completed (create: {}, freed: {}), keep={}: {:?}",
            kept, had, created, freed, keep, p.decisions
        );
        if rules.keep + rules.hourly + rules.daily + rules.weekly + rules.monthly == 0 {
            prop_assert_eq!(kept, had, "a policy without rules deletes its snapshots");
        }
    }

    /// Rule 3: before the new snapshot exists, at most one good snapshot is deleted, and only
    /// when the provider would refuse the create without it (the policy's own failed ones,
    /// which go first, counted out); after those deletes the create is accepted. Without a
    /// create, a good snapshot goes only once this slot's snapshot has completed, and a
    /// blocked plan deletes nothing.
    #[test]
    fn at_most_one_good_snapshot_goes_before_the_create_and_only_at_the_cap(
        pol in truth::policies(),
        server in truth::servers(true),
    ) {
        let (p, fates) = planned(&pol, &server)?;
        // The executor deletes both of these before it sends the create.
        let before: Vec<&Held> = server
            .iter()
            .zip(&fates)
            .filter(|&(_, &f)| matches!(f, Fate::GoesNow | Fate::GoesBeforeCreate))
            .map(|(h, _)| h)
            .collect();
        let (good, others): (Vec<&Held>, Vec<&Held>) =
            before.iter().partition(|h| h.state == State::Completed);
        match p.outcome {
            SlotOutcome::Create(_) => {
                let counted = server.iter().filter(|h| h.whose != Whose::OtherServer).count();
                for h in &others {
                    prop_assert!(
                        h.whose == Whose::Own && h.state == State::Failed,
                        "deletes before the create what is not its own failed: {:?}", h
                    );
                }
                prop_assert!(
                    good.len() <= 1,
                    "{} good snapshots go before the create: {:?}", good.len(), good
                );
                if !good.is_empty() {
                    prop_assert!(
                        counted - others.len() >= PROVIDER_CAP,
                        "a good snapshot goes before the create with {} of {} counted: {:?}",
                        counted - others.len(), PROVIDER_CAP, good
                    );
                }
                prop_assert!(
                    counted - before.len() < PROVIDER_CAP,
                    "the provider refuses the create: {} snapshots left of {}",
                    counted - before.len(), PROVIDER_CAP
                );
            }
            SlotOutcome::CapBlocked(_)
            | SlotOutcome::OtherServers(_)
            | SlotOutcome::SnapshotStuck { .. }
            | SlotOutcome::CreateUnconfirmed { .. } => {
                prop_assert!(
                    fates.iter().all(|&f| f == Fate::Stays),
                    "a blocked plan deletes: {:?}", fates
                );
            }
            SlotOutcome::SlotTaken { .. }
            | SlotOutcome::SnapshotInProgress { .. }
            | SlotOutcome::ServerInTransition { .. } => {
                prop_assert!(
                    !fates.contains(&Fate::GoesBeforeCreate),
                    "frees a slot for no create: {:?}", fates
                );
                let slot_done = server
                    .iter()
                    .any(|h| h.is_own_completed() && h.slot == Some(t(BASE)));
                prop_assert!(
                    good.is_empty() || slot_done,
                    "good snapshots go with no newer one completed: {:?}", good
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Rule 3 over a run of slots where each create completes, fails or times out (and then
    /// completes or fails later), deletes fail, slots are run twice and others add or remove
    /// snapshots, with the executor modelled as it works: the first plan's deletes, the
    /// create, the wait, and only after a settled wait the second plan's deletes. After every
    /// run the policy has at least min(keep, what it had before the run) completed snapshots,
    /// short only of the one freed under the cap for a create that did not complete; and
    /// the provider never refuses a planned create for the cap.
    #[test]
    fn never_fewer_good_snapshots_than_keep_when_creates_fail_or_time_out(
        pol in truth::policies(),
        server in truth::servers(false),
        steps in truth::steps(),
    ) {
        let keep = pol.retention.keep as usize;
        let mut server = truth::Server::new(server);
        let mut slot = t(BASE);
        for (n, step) in steps.iter().enumerate() {
            if n > 0 && !step.again {
                slot += chrono::Duration::days(1);
            }
            let now = slot + chrono::Duration::minutes(if step.again { 120 } else { 1 });
            server.before_run(step, now);
            let had = truth::own_completed(&server.snapshots);
            let start = server.snapshots.clone();
            let ran = server.run(&pol, slot, now, step);
            let left = truth::own_completed(&server.snapshots);
            prop_assert!(
                !ran.refused_at_cap,
                "run {}: the provider refused the create at its cap: {:?}", n, start
            );
            let freed = if ran.completed { 0 } else { ran.freed_own_completed.min(1) };
            prop_assert!(
                left + freed >= keep.min(had),
                "run {} ({:?}): {} own completed left of {}, keep={}, freed {}\n\
                 before: {:?}\nafter: {:?}",
                n, step, left, had, keep, ran.freed_own_completed, start, server.snapshots
            );
        }
    }
}

/// Two snapshots of this slot's name (a retried create both made): a completed one makes the
/// slot done, whichever is listed first; the run is not failed for the other.
#[test]
fn a_slot_with_a_failed_and_a_completed_snapshot_of_its_name_is_done() {
    let p = policy(keep(2));
    let server = [own(1, JAN15, Failed), own(2, JAN15, Completed)];

    let planned = plan(&p, &SERVER.into(), &server, t(JAN15), t(JAN15));

    assert!(
        matches!(
            planned.outcome,
            SlotOutcome::SlotTaken {
                completed: true,
                ..
            }
        ),
        "{:?}",
        planned.outcome
    );
}

/// The clock-skew tolerance is a bound that is allowed: a snapshot created exactly
/// `STAMP_SKEW` after now, or stamped exactly `STAMP_SKEW` after its creation, is taken at its
/// word (no warning); a second more is suspect.
#[test]
fn times_exactly_at_the_skew_tolerance_are_trusted_and_a_second_more_is_not() {
    let p = policy(keep(2));
    let now = t(JAN15);
    let skew = crate::plan::STAMP_SKEW;
    let second = chrono::Duration::seconds(1);
    let created_late = |late: chrono::Duration| {
        let mut s = own(1, JAN14, Completed);
        s.created_at = now + skew + late;
        s
    };
    let stamped_ahead = |ahead: chrono::Duration| {
        let mut s = own(2, JAN14, Completed);
        s.created_at = t(JAN14) - skew - ahead;
        s
    };
    for (listing, suspect) in [
        (vec![created_late(chrono::Duration::zero())], false),
        (vec![created_late(second)], true),
        (vec![stamped_ahead(chrono::Duration::zero())], false),
        (vec![stamped_ahead(second)], true),
    ] {
        let planned = plan(&p, &SERVER.into(), &listing, now, now);
        assert_eq!(
            !planned.warnings.is_empty(),
            suspect,
            "{:?}: {:?}",
            listing[0].created_at,
            planned.warnings
        );
    }
}

/// The words `plan` prints for each action, as the README shows them.
#[test]
fn each_action_reads_as_plan_prints_it() {
    let words: Vec<String> = [
        Keep,
        Ignore,
        DeleteNow,
        DeleteBeforeCreate,
        DeleteAfterCreate,
    ]
    .iter()
    .map(|a| format!("{a}|{}", a.as_str()))
    .collect();
    assert_eq!(
        words,
        [
            "keep|keep",
            "ignore|ignore",
            "delete|delete",
            "delete before create|delete before create",
            "delete after create|delete after create"
        ]
    );
}

/// At the cap, the slot is freed from what no rule keeps when there is such a snapshot;
/// only when every one is kept does the plan say a kept one is deleted, and which rule it
/// overrides.
#[test]
fn the_cap_overriding_a_rule_is_noted_only_when_it_does() {
    let five = [
        own(1, JAN10, Completed),
        own(2, JAN11, Completed),
        own(3, JAN12, Completed),
        own(4, JAN13, Completed),
        own(5, JAN14, Completed),
    ];
    let forced = |keep_n: u32| {
        let planned = plan(
            &policy(keep(keep_n)),
            &SERVER.into(),
            &five,
            t(JAN15),
            t(JAN15),
        );
        planned
            .notes
            .iter()
            .any(|n| n.contains("forces deleting") && n.contains("although a rule keeps it"))
    };
    // The new snapshot counts toward keep: with keep 6 every old one is still kept.
    assert!(
        forced(6),
        "keep 6 at the cap: the oldest kept one must go, and say so"
    );
    assert!(
        !forced(2),
        "keep 2: an unkept one goes, nothing is overridden"
    );
}
