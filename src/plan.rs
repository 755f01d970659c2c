//! The pure planner: from one policy, the server it decides about (with its power state when
//! the policy stops it), that server's full snapshot listing and the slot being served, decide
//! what the slot gets (a typed [`SlotOutcome`]) and what to delete, every decision with the
//! reason the `plan` command prints. The outcome's variant is the decision; its reason only
//! explains it. No clock, network, file or environment in here.
//!
//! The safety rules, each pinned by a test below:
//! - Only `<policy>-<YYYYMMDDTHHMMSSZ>` is the policy's own; everything else is ignored, except
//!   that `prune_unmanaged` may delete the oldest hand-made completed snapshot when nothing of
//!   the policy's own can free a slot under the cap. Another policy's snapshots are never touched.
//! - A snapshot in progress (or in a state we do not know) anywhere on the server freezes it:
//!   no create and no delete until it settles. So does a server in transition (restoring,
//!   starting, ...) for a policy that stops it.
//! - A listing holding another server's snapshots is blocked: nothing in it is trusted.
//! - Retention is the union of its rules over the policy's own completed snapshots; a policy
//!   without any rule deletes nothing (zero rules never mean "delete all").
//! - A good snapshot beyond retention is deleted only once a newer one has completed: with a
//!   create planned it is deferred, and the executor's second plan deletes it.
//! - The server never holds more than the cap: at the cap one slot is freed before the create;
//!   if nothing may be freed the plan is blocked and touches nothing.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use crate::model::{PowerState, ServerId, Snapshot, SnapshotId, SnapshotStatus};
use crate::policy::{parse_snapshot_name, Policy, Retention, SERVER_CAP};

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
    /// This slot's snapshot exists already (completed, or failed: then it is deleted and not
    /// retried in this slot). Nothing to create; what is beyond retention may go.
    SlotTaken { snapshot: String, reason: String },
    /// A snapshot in progress, or in a state we do not know, freezes the server: nothing is
    /// created or deleted until it settles. Not an error; the next fire tries again.
    SnapshotInProgress {
        snapshots: Vec<String>,
        reason: String,
    },
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
            | Self::ServerInTransition { reason, .. } => reason,
            Self::CapBlocked(b) | Self::OtherServers(b) => &b.reason,
        }
    }

    /// Not an error, and nothing done now: the next fire tries again.
    pub fn is_skip(&self) -> bool {
        matches!(
            self,
            Self::SnapshotInProgress { .. } | Self::ServerInTransition { .. }
        )
    }

    /// Why the plan cannot do its job, if it cannot.
    pub fn blocked(&self) -> Option<&Blocked> {
        match self {
            Self::CapBlocked(b) | Self::OtherServers(b) => Some(b),
            _ => None,
        }
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

    pub fn is_delete(self) -> bool {
        matches!(
            self,
            Self::DeleteNow | Self::DeleteBeforeCreate | Self::DeleteAfterCreate
        )
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

/// Who a snapshot belongs to, from its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// This policy's, with the slot its name carries.
    Own(DateTime<Utc>),
    /// Named like some policy's snapshot: never touched, even with `prune_unmanaged`.
    OtherPolicy,
    /// Made by hand (or by another tool): only `prune_unmanaged` may delete it.
    HandMade,
}

impl Owner {
    fn of(policy: &Policy, name: &str) -> Self {
        if let Some(slot) = policy.owns(name) {
            Self::Own(slot)
        } else if looks_managed(name) {
            Self::OtherPolicy
        } else {
            Self::HandMade
        }
    }
}

/// `<policy name chars>-<stamp>`: any policy's name shape. Judged without a length limit on the
/// prefix, so a doubtful name counts as managed and is never pruned.
fn looks_managed(name: &str) -> bool {
    let Some(split) = name.len().checked_sub(17) else {
        return false;
    };
    let Some(prefix) = name.get(..split) else {
        return false;
    };
    !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && parse_snapshot_name(prefix, name).is_some()
}

/// What a status allows: only completed snapshots count, only settled ones may be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Completed,
    Failed,
    /// In progress or unknown: not usable, not deletable.
    Busy,
}

impl State {
    fn of(status: &SnapshotStatus) -> Self {
        match status {
            SnapshotStatus::Completed => Self::Completed,
            SnapshotStatus::Failed => Self::Failed,
            SnapshotStatus::InProgress | SnapshotStatus::Other(_) => Self::Busy,
        }
    }
}

/// A completed snapshot as retention orders it: by when the provider says it was created,
/// then by the slot in its name. The name's stamp came from the host's clock, which can have
/// been wrong (an RTC, an NTP step, a mistaken `date`): ordered by the stamp, one snapshot
/// stamped in the future would outrank every real one forever and have each new one deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Point {
    created_at: DateTime<Utc>,
    slot: DateTime<Utc>,
    /// The time whose hour, day, week and month the calendar rules count it in: the slot,
    /// unless the stamp is suspect (then when it was really created).
    bucket: DateTime<Utc>,
}

/// How far a name's stamp may lie after its `created_at` (clocks of host and provider
/// disagree a little) before the stamp is suspect. A stamp before `created_at` is normal:
/// snapshots are made after their slot, late ones (catch-up, jitter) much later.
pub const STAMP_SKEW: chrono::Duration = chrono::Duration::hours(1);

impl Point {
    /// The snapshot of the slot being run (planned, or just made): the newest of all,
    /// whatever the clocks say.
    fn newest(slot: DateTime<Utc>) -> Self {
        Self {
            created_at: DateTime::<Utc>::MAX_UTC,
            slot,
            bucket: slot,
        }
    }

    fn of(slot: DateTime<Utc>, created_at: DateTime<Utc>, now: DateTime<Utc>) -> Self {
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
enum Suspect {
    /// The provider says it was created after now.
    CreatedInFuture,
    /// Its name's stamp lies well after its creation: the host clock was ahead.
    StampAhead,
}

impl Suspect {
    fn of(slot: DateTime<Utc>, created_at: DateTime<Utc>, now: DateTime<Utc>) -> Option<Self> {
        if created_at > now + STAMP_SKEW {
            Some(Self::CreatedInFuture)
        } else if slot > created_at + STAMP_SKEW {
            Some(Self::StampAhead)
        } else {
            None
        }
    }
}

/// The calendar rules, each with its period in the policy's timezone.
#[derive(Debug, Clone, Copy)]
enum Period {
    Hour,
    Day,
    Week,
    Month,
}

impl Period {
    const ALL: [Self; 4] = [Self::Hour, Self::Day, Self::Week, Self::Month];

    fn count(self, rules: &Retention) -> u32 {
        match self {
            Self::Hour => rules.hourly,
            Self::Day => rules.daily,
            Self::Week => rules.weekly,
            Self::Month => rules.monthly,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Hour => "keep_hourly",
            Self::Day => "keep_daily",
            Self::Week => "keep_weekly",
            Self::Month => "keep_monthly",
        }
    }

    /// The period a slot falls in, as printed. The hour carries the UTC offset so the hour a
    /// fall-back repeats is two hours, not one.
    fn label(self, slot: DateTime<Utc>, tz: Tz) -> String {
        let local = slot.with_timezone(&tz);
        match self {
            Self::Hour => format!("hour {}", local.format("%Y-%m-%d %H:00%:z")),
            Self::Day => format!("day {}", local.format("%Y-%m-%d")),
            Self::Week => format!("week {}", local.format("%G-W%V")),
            Self::Month => format!("month {}", local.format("%Y-%m")),
        }
    }
}

/// Why each point is kept (empty: no rule keeps it). `points` must be newest first.
/// Calendar rules follow restic: the newest snapshot in each of the last N periods that have
/// one, so a gap of idle days does not shorten what is kept.
fn retain(rules: &Retention, tz: Tz, points: &[Point]) -> Vec<Vec<String>> {
    let mut reasons = vec![Vec::new(); points.len()];
    for r in reasons.iter_mut().take(rules.keep as usize) {
        r.push(format!("newest completed (keep={})", rules.keep));
    }
    for period in Period::ALL {
        let count = period.count(rules);
        let mut left = count;
        let mut last: Option<String> = None;
        for (point, r) in points.iter().zip(reasons.iter_mut()) {
            if left == 0 {
                break;
            }
            let label = period.label(point.bucket, tz);
            if last.as_deref() != Some(label.as_str()) {
                r.push(format!("newest of {label} ({}={count})", period.key()));
                last = Some(label);
                left -= 1;
            }
        }
    }
    reasons
}

/// Retention over the given own completed snapshots plus, if planned, the new one (which will
/// be the newest completed snapshot of its slot). Returns the reasons per listing index.
fn retain_own(
    rules: &Retention,
    tz: Tz,
    own: &[(usize, Point)],
    planned: Option<Point>,
) -> HashMap<usize, Vec<String>> {
    let mut items: Vec<(Option<usize>, Point)> = own
        .iter()
        .map(|&(i, p)| (Some(i), p))
        .chain(planned.map(|p| (None, p)))
        .collect();
    items.sort_by_key(|&(_, p)| std::cmp::Reverse(p));
    let points: Vec<Point> = items.iter().map(|(_, p)| *p).collect();
    items
        .iter()
        .zip(retain(rules, tz, &points))
        .filter_map(|((i, _), r)| i.map(|i| (i, r)))
        .collect()
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
        let reason = if State::of(&holder.status) == State::Failed {
            format!(
                "no create: slot already taken by {} (failed; it is deleted, and not retried \
                 in this slot to avoid a loop: the next fire takes a new slot)",
                holder.name
            )
        } else {
            format!(
                "no create: slot already taken by {} ({})",
                holder.name, holder.status
            )
        };
        outcome = Some(SlotOutcome::SlotTaken {
            snapshot: holder.name.clone(),
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

#[cfg(test)]
mod tests {
    use super::Action::{DeleteAfterCreate, DeleteBeforeCreate, DeleteNow, Ignore, Keep};
    use super::*;
    use crate::model::ServerRef;
    use crate::model::SnapshotStatus::{Completed, Failed, InProgress};
    use crate::policy::snapshot_name;
    use crate::schedule::Schedule;
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
            name: "nightly".into(),
            schedule: Schedule::parse("30 2 * * *", tz).unwrap(),
            servers: vec![SERVER],
            retention,
            stop_server: false,
            description: String::new(),
            catch_up: true,
            prune_unmanaged,
            jitter: None,
            hooks: Default::default(),
            monitoring: Default::default(),
            on_journal_failure: Default::default(),
        }
    }

    fn policy(retention: Retention) -> Policy {
        policy_in(Tz::UTC, retention, false)
    }

    fn snap(
        id: SnapshotId,
        name: &str,
        created_at: DateTime<Utc>,
        status: SnapshotStatus,
    ) -> Snapshot {
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
            SlotOutcome::SlotTaken { .. } => "no create: ",
            SlotOutcome::SnapshotInProgress { .. } | SlotOutcome::ServerInTransition { .. } => {
                "skip: "
            }
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
                outcome: "no create: slot already taken by nightly-20250115T023000Z (failed; it is deleted, and not retried in this slot to avoid a loop: the next fire takes a new slot)",
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
        let deleted: Vec<SnapshotId> = after
            .decisions
            .iter()
            .filter(|d| d.action.is_delete())
            .map(|d| d.snapshot_id)
            .collect();
        assert_eq!(deleted, [3], "only the failed one goes: {after:#?}");
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

        let deleted: Vec<SnapshotId> = after
            .decisions
            .iter()
            .filter(|d| d.action.is_delete())
            .map(|d| d.snapshot_id)
            .collect();
        assert_eq!(deleted, [1], "{after:#?}");
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
        assert!(p.decisions.iter().all(|d| !d.action.is_delete()));
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
        assert!(p.decisions.iter().all(|d| !d.action.is_delete()));
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

    #[test]
    fn looks_managed_only_for_policy_shaped_names() {
        let cases = [
            ("weekly-20250115T023000Z", true),
            ("my_policy-2-20250115T023000Z", true),
            ("-20250115T023000Z", false),
            ("pre-migration-snapshot", false),
            ("weekly-20251315T023000Z", false),
            ("weekly 20250115T023000Z", false),
            ("wéekly-20250115T023000Z", false),
            ("20250115T023000Z", false),
        ];
        for (name, want) in cases {
            assert_eq!(looks_managed(name), want, "{name}");
        }
    }

    // ---- properties over random server states ----

    const BASE: &str = "2025-01-15T02:30:00Z";

    /// (kind: 0 own / 1 hand-made / 2 other policy, slot offset in days, status draw)
    fn arb_server() -> impl Strategy<Value = (Vec<(u8, i64, u8)>, u32, u32, bool)> {
        (
            prop::collection::vec((0u8..3, -1i64..8, 0u8..10), 0..=6),
            1u32..=5,
            0u32..=3,
            any::<bool>(),
        )
    }

    fn build(entries: &[(u8, i64, u8)]) -> Vec<Snapshot> {
        entries
            .iter()
            .enumerate()
            .map(|(n, &(kind, offset, status))| {
                let id = n as SnapshotId + 1;
                let slot = t(BASE) - chrono::Duration::days(offset);
                let status = match status {
                    0..=5 => Completed,
                    6 => InProgress,
                    7 | 8 => Failed,
                    _ => SnapshotStatus::Other("queued".into()),
                };
                match kind {
                    0 => snap(
                        id,
                        &snapshot_name("nightly", slot),
                        slot + chrono::Duration::minutes(1),
                        status,
                    ),
                    1 => snap(
                        id,
                        &format!("manual-{id}"),
                        slot + chrono::Duration::minutes(id as i64),
                        status,
                    ),
                    _ => snap(id, &snapshot_name("weekly", slot), slot, status),
                }
            })
            .collect()
    }

    fn retention(keep: u32, daily: u32) -> Retention {
        Retention {
            keep,
            daily,
            ..Default::default()
        }
    }

    fn deletes(p: &Plan) -> Vec<SnapshotId> {
        p.deletes_now()
            .chain(p.deletes_before_create())
            .map(|d| d.snapshot_id)
            .collect()
    }

    fn own_completed(p: &Policy, server: &[Snapshot]) -> usize {
        server
            .iter()
            .filter(|s| p.owns(&s.name).is_some() && s.status == Completed)
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_deletes_foreign_or_busy_snapshots((entries, keep, daily, prune) in arb_server()) {
            let pol = policy_in(Tz::UTC, retention(keep, daily), prune);
            let server = build(&entries);
            let p = plan(&pol, &SERVER.into(), &server, t(BASE), t(BASE));
            prop_assert_eq!(p.decisions.len(), server.len());
            for d in p.decisions.iter().filter(|d| d.action.is_delete()) {
                let busy = matches!(d.status, InProgress | SnapshotStatus::Other(_));
                prop_assert!(!busy, "deletes busy {:?}", d);
                match Owner::of(&pol, &d.name) {
                    Owner::Own(_) => {}
                    Owner::HandMade => prop_assert!(
                        prune && d.status == Completed && d.action == DeleteBeforeCreate,
                        "deletes hand-made {:?}", d
                    ),
                    Owner::OtherPolicy => prop_assert!(false, "deletes another policy's {:?}", d),
                }
            }
        }

        #[test]
        fn never_plans_more_than_the_cap((entries, keep, daily, prune) in arb_server()) {
            let pol = policy_in(Tz::UTC, retention(keep, daily), prune);
            let server = build(&entries);
            let p = plan(&pol, &SERVER.into(), &server, t(BASE), t(BASE));
            let after = server.len() - deletes(&p).len();
            if p.create().is_some() {
                prop_assert!(after < SERVER_CAP, "{} left plus a create", after);
            }
            if p.outcome.blocked().is_some() {
                prop_assert!(p.decisions.iter().all(|d| !d.action.is_delete()));
            }
        }

        #[test]
        fn executing_never_leaves_fewer_good_snapshots_than_keep((entries, keep, daily, prune) in arb_server()) {
            let pol = policy_in(Tz::UTC, retention(keep, daily), prune);
            let mut server = build(&entries);
            let before = own_completed(&pol, &server);
            let first = plan(&pol, &SERVER.into(), &server, t(BASE), t(BASE));
            let gone = deletes(&first);
            server.retain(|s| !gone.contains(&s.id));
            if let Some(c) = first.create() {
                server.push(snap(1000, &c.name, t(BASE) + chrono::Duration::minutes(1), Completed));
            }
            let later = t(BASE) + chrono::Duration::minutes(10);
            let second = plan(&pol, &SERVER.into(), &server, t(BASE), later);
            let gone: Vec<SnapshotId> = second.deletes_now().map(|d| d.snapshot_id).collect();
            server.retain(|s| !gone.contains(&s.id));
            let after = own_completed(&pol, &server);
            prop_assert!(after >= before.min(keep as usize), "{} own completed left, had {}, keep={}", after, before, keep);
        }
    }
}
