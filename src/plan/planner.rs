//! The planner itself: from a policy, its server, the listing and the slot, the outcome of the
//! slot and a decision for every snapshot. No clock, network, file or environment in here.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, SecondsFormat, Timelike, Utc};

use super::decision::{Action, Blocked, Create, Decision, Plan, SlotOutcome};
use super::order::{Point, Suspect};
use super::ownership::{Owner, State};
use super::retention::retain_own;
use crate::model::{PowerState, ServerId, Snapshot, SnapshotStatus};
use crate::policy::{Policy, Retention, SERVER_CAP};

/// The server a plan decides about, as read just before planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: ServerId,
    /// Its power state, read when the policy stops the server for the snapshot (`None`: not
    /// read). A server in transition (restoring, starting, ...) is not snapshotted.
    pub power: Option<PowerState>,
}

impl From<ServerId> for Target {
    /// A server whose power state was not read.
    fn from(id: ServerId) -> Self {
        Self { id, power: None }
    }
}
/// At most this many names in one reason; the rest are counted. A reason is logged and sent
/// in alerts, and a server can hold thousands of snapshots.
const NAMES_IN_A_REASON: usize = 10;

/// `names` for a reason: the first [`NAMES_IN_A_REASON`], then how many more there are.
fn name_list(names: &[String]) -> String {
    match names.len().checked_sub(NAMES_IN_A_REASON) {
        Some(more) if more > 0 => {
            format!("{} and {more} more", names[..NAMES_IN_A_REASON].join(", "))
        }
        _ => names.join(", "),
    }
}

/// An age as a person reads it: seconds under a minute, whole minutes above.
pub fn rough_age(age: std::time::Duration) -> String {
    let secs = age.as_secs();
    let rounded = if secs < 60 { secs } else { secs / 60 * 60 };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Decides what to do on `server` for `slot`. `snapshots` is everything on that server: any
/// policy, hand-made, any status. `now` only feeds notes (ages, a slot in the future).
pub fn plan(
    policy: &Policy,
    server: &Target,
    snapshots: &[Snapshot],
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Plan {
    // Names carry whole seconds; compare slots the way names do.
    let slot = slot.with_nanosecond(0).unwrap_or(slot);
    let new_name = policy.snapshot_name(slot);
    let rules = policy.retention;
    let tz = policy.schedule.timezone();
    let mut notes = Vec::new();

    let owners: Vec<Owner> = snapshots
        .iter()
        .map(|s| Owner::of(policy, &s.name))
        .collect();
    let states: Vec<State> = snapshots.iter().map(|s| State::of(&s.status)).collect();

    // The policy's own completed snapshots, newest first: all retention looks at.
    let mut own_completed: Vec<(usize, Point)> = snapshots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match (owners[i], states[i]) {
            // This slot's own snapshot is the newest there is, whatever the clocks say: it
            // is what the run just made (counted as older than one dated ahead, it was
            // deleted right after it completed).
            (Owner::Own(slot), State::Completed) if s.name == new_name => {
                Some((i, Point::newest(slot)))
            }
            (Owner::Own(slot), State::Completed) => Some((i, Point::of(slot, s.created_at, now))),
            _ => None,
        })
        .collect();
    own_completed.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let warnings: Vec<String> = own_completed
        .iter()
        .filter_map(|&(i, _)| {
            let s = &snapshots[i];
            let Owner::Own(slot) = owners[i] else {
                return None;
            };
            match Suspect::of(slot, s.created_at, now)? {
                Suspect::CreatedInFuture => Some(format!(
                    "{} is listed as created {}, after now ({}): the provider's clock or its \
                     answer is wrong; it ranks below every other snapshot and does not count \
                     as fresh",
                    s.name,
                    stamp(s.created_at),
                    stamp(now)
                )),
                Suspect::StampAhead => Some(format!(
                    "{} carries the stamp {} but was created {}: the host clock was ahead when \
                     it was made; retention orders it by its creation time",
                    s.name,
                    stamp(slot),
                    stamp(s.created_at)
                )),
            }
        })
        .collect();
    let own_failed = (0..snapshots.len())
        .filter(|&i| matches!(owners[i], Owner::Own(_)) && states[i] == State::Failed)
        .count();
    let busy: Vec<&Snapshot> = snapshots
        .iter()
        .zip(&states)
        .filter(|(_, st)| **st == State::Busy)
        .map(|(s, _)| s)
        .collect();
    let others: BTreeSet<ServerId> = snapshots
        .iter()
        .map(|s| s.server.id)
        .filter(|&id| id != server.id)
        .collect();
    let all_names = || snapshots.iter().map(|s| s.name.clone()).collect::<Vec<_>>();

    if slot > now {
        notes.push(format!(
            "the slot {} is after now ({}): check the caller's clock",
            stamp(slot),
            stamp(now)
        ));
    }
    if rules.is_empty() {
        notes.push(
            "the policy has no retention rule: nothing is deleted (zero rules never mean \
             delete all)"
                .into(),
        );
    }

    // `outcome`: what the slot gets, once something rules out the create (the first that
    // does, in this order). `hold`: why nothing at all is deleted.
    let mut outcome: Option<SlotOutcome> = None;
    let mut hold: Option<String> = None;

    if !others.is_empty() {
        let ids: Vec<String> = others.iter().map(|s| s.to_string()).collect();
        let reason = format!(
            "blocked: the listing of server {} holds snapshots of other servers ({}); a plan \
             covers one server",
            server.id,
            name_list(&ids)
        );
        hold = Some("the plan is blocked".into());
        outcome = Some(SlotOutcome::OtherServers(Blocked {
            reason,
            snapshots: all_names(),
        }));
    } else if !busy.is_empty() {
        let unknown = busy
            .iter()
            .any(|s| matches!(s.status, SnapshotStatus::Other(_)));
        let names: Vec<String> = busy
            .iter()
            .map(|s| match &s.status {
                SnapshotStatus::Other(st) => format!("{}: unknown status \"{st}\"", s.name),
                _ => s.name.clone(),
            })
            .collect();
        let what = format!(
            "server has a snapshot in progress{} ({})",
            if unknown {
                " or in an unknown state"
            } else {
                ""
            },
            name_list(&names)
        );
        for s in busy.iter().take(NAMES_IN_A_REASON) {
            if let Ok(age) = (now - s.created_at).to_std() {
                notes.push(format!(
                    "{} has been {} for {} (created {})",
                    s.name,
                    s.status,
                    rough_age(age),
                    stamp(s.created_at)
                ));
            }
        }
        outcome = Some(SlotOutcome::SnapshotInProgress {
            snapshots: busy.iter().map(|s| s.name.clone()).collect(),
            reason: format!("skip: {what}"),
        });
        hold = Some(what);
    } else if let Some(state) = server
        .power
        .as_ref()
        .filter(|p| !matches!(p, PowerState::Running | PowerState::Stopped))
    {
        let what = format!("server is {state} (neither running nor stopped)");
        outcome = Some(SlotOutcome::ServerInTransition {
            state: state.clone(),
            reason: format!("skip: {what}; not snapshotted"),
        });
        hold = Some(what);
    } else if let Some(holder) = snapshots
        .iter()
        .filter(|s| s.name == new_name)
        // With duplicate names, a completed one is what makes the slot done.
        .min_by_key(|s| State::of(&s.status) != State::Completed)
    {
        let completed = State::of(&holder.status) == State::Completed;
        let reason = if completed {
            format!(
                "no create: slot already taken by {} ({})",
                holder.name, holder.status
            )
        } else {
            // Retried in this slot, a snapshot that keeps failing would loop.
            format!(
                "the snapshot of this slot failed ({}); it is not retried in this slot: the \
                 next fire takes a new slot",
                holder.name
            )
        };
        outcome = Some(SlotOutcome::SlotTaken {
            snapshot: holder.name.clone(),
            completed,
            reason,
        });
    }
    if rules.is_empty() && hold.is_none() {
        hold = Some("the policy has no retention rule".into());
    }

    // The cap: make room for the create, or block.
    let mut freed: HashMap<usize, String> = HashMap::new();
    if outcome.is_none() {
        let failed_deleted = if hold.is_none() { own_failed } else { 0 };
        let count = snapshots.len() - failed_deleted;
        let need = (count + 1).saturating_sub(SERVER_CAP);
        let refusal = if need == 0 {
            None
        } else if need > 1 {
            Some(format!(
                "blocked: the server holds {count} snapshots, over the cap of {SERVER_CAP}; a \
                 plan frees at most one slot per create: {}",
                name_list(&all_names())
            ))
        } else if rules.is_empty() {
            Some(format!(
                "blocked: the server is at the cap of {SERVER_CAP} and the policy has no \
                 retention rule, so nothing is deleted to make room: {}",
                name_list(&all_names())
            ))
        } else if let Some((index, reason)) = free_one_slot(
            policy,
            snapshots,
            &owners,
            &states,
            &own_completed,
            slot,
            &mut notes,
        ) {
            freed.insert(index, reason);
            None
        } else {
            Some(format!(
                "blocked: the server is at the cap of {SERVER_CAP} and this policy may delete \
                 none of its snapshots: {}",
                name_list(&all_names())
            ))
        };
        if let Some(reason) = refusal {
            hold.get_or_insert_with(|| "the plan is blocked".into());
            outcome = Some(SlotOutcome::CapBlocked(Blocked {
                reason,
                snapshots: all_names(),
            }));
        }
    }
    let outcome = outcome.unwrap_or_else(|| {
        SlotOutcome::Create(Create {
            name: new_name.clone(),
            reason: format!("create: slot {}", stamp(slot)),
        })
    });
    let create = match &outcome {
        SlotOutcome::Create(c) => Some(c),
        _ => None,
    };

    // Retention, counting the planned create as the completed snapshot it will become.
    // The planned snapshot will be the newest of all, whatever the clocks say.
    let planned = create.map(|_| Point::newest(slot));
    let survivors: Vec<(usize, Point)> = own_completed
        .iter()
        .filter(|(i, _)| !freed.contains_key(i))
        .copied()
        .collect();
    let kept = retain_own(&rules, tz, &survivors, planned);
    // Beyond-retention snapshots go only once the slot's snapshot has completed.
    // Exactly this slot's snapshot, by name: not "some snapshot stamped this late or later".
    let slot_done = snapshots
        .iter()
        .any(|s| s.name == new_name && State::of(&s.status) == State::Completed);

    let mut decisions: Vec<Decision> = snapshots
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (action, reason) = if let Some(reason) = freed.get(&i) {
                (Action::DeleteBeforeCreate, reason.clone())
            } else {
                match (owners[i], states[i]) {
                    (Owner::Own(_), State::Busy) => (Action::Keep, busy_reason(&s.status)),
                    (Owner::Own(_), State::Failed) => match &hold {
                        Some(why) => (Action::Keep, format!("keep: failed, not deleted: {why}")),
                        None => (Action::DeleteNow, "delete: own failed snapshot".into()),
                    },
                    (Owner::Own(_), State::Completed) => completed_decision(
                        &rules,
                        kept.get(&i).map(Vec::as_slice).unwrap_or_default(),
                        create,
                        hold.as_deref(),
                        slot_done,
                    ),
                    (Owner::OtherPolicy | Owner::HandMade, _) => {
                        (Action::Ignore, "ignore: not created by this policy".into())
                    }
                }
            };
            Decision {
                snapshot_id: s.id,
                name: s.name.clone(),
                status: s.status.clone(),
                created_at: s.created_at,
                action,
                reason,
            }
        })
        .collect();
    decisions.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(b.snapshot_id.cmp(&a.snapshot_id))
    });

    Plan {
        server: server.id,
        policy: policy.name.clone(),
        slot,
        outcome,
        decisions,
        notes,
        warnings,
    }
}

fn busy_reason(status: &SnapshotStatus) -> String {
    match status {
        SnapshotStatus::Other(st) => {
            format!("keep: unknown status \"{st}\" (not usable, not deletable until it settles)")
        }
        _ => "keep: in progress (not usable, not deletable until it completes)".into(),
    }
}

fn completed_decision(
    rules: &Retention,
    kept_by: &[String],
    create: Option<&Create>,
    hold: Option<&str>,
    slot_done: bool,
) -> (Action, String) {
    if rules.is_empty() {
        (
            Action::Keep,
            "keep: the policy has no retention rule, so nothing is deleted".into(),
        )
    } else if !kept_by.is_empty() {
        (Action::Keep, format!("keep: {}", kept_by.join("; ")))
    } else if let Some(c) = create {
        (
            Action::DeleteAfterCreate,
            format!("delete: beyond retention, once {} has completed", c.name),
        )
    } else if let Some(why) = hold {
        (
            Action::Keep,
            format!("keep: beyond retention, not deleted: {why}"),
        )
    } else if slot_done {
        (Action::DeleteNow, "delete: beyond retention".into())
    } else {
        // The slot's snapshot failed or never came: never delete the last good ones for it.
        (
            Action::Keep,
            "keep: waiting for a newer completed snapshot".into(),
        )
    }
}

/// The one snapshot deleted before the create to stay under the cap: the policy's own oldest
/// completed one that no rule keeps once the create counts, else its oldest completed one;
/// only when it has none, and `prune_unmanaged` allows it, the oldest hand-made completed one.
fn free_one_slot(
    policy: &Policy,
    snapshots: &[Snapshot],
    owners: &[Owner],
    states: &[State],
    own_completed: &[(usize, Point)],
    slot: DateTime<Utc>,
    notes: &mut Vec<String>,
) -> Option<(usize, String)> {
    let planned = Point::newest(slot);
    let kept = retain_own(
        &policy.retention,
        policy.schedule.timezone(),
        own_completed,
        Some(planned),
    );
    if let Some(&(oldest, _)) = own_completed.last() {
        let pick = own_completed
            .iter()
            .rev()
            .map(|(i, _)| *i)
            .find(|i| kept[i].is_empty())
            .unwrap_or(oldest);
        if !kept[&pick].is_empty() {
            notes.push(format!(
                "the cap of {SERVER_CAP} forces deleting {} although a rule keeps it ({})",
                snapshots[pick].name,
                kept[&pick].join("; ")
            ));
        }
        let which = if pick == oldest {
            "oldest completed"
        } else {
            "oldest completed that no rule keeps"
        };
        return Some((
            pick,
            format!("delete: frees a slot under the cap of {SERVER_CAP} ({which})"),
        ));
    }
    if !policy.prune_unmanaged {
        return None;
    }
    (0..snapshots.len())
        .filter(|&i| owners[i] == Owner::HandMade && states[i] == State::Completed)
        .min_by_key(|&i| (snapshots[i].created_at, snapshots[i].id))
        .map(|i| {
            (
                i,
                format!(
                    "delete: frees a slot under the cap of {SERVER_CAP} (oldest hand-made \
                     completed; prune_unmanaged)"
                ),
            )
        })
}
