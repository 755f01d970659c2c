//! Random servers whose every snapshot carries the truth about it (whose it is, what state it
//! is in, the slot it was made for), and a model of the provider and the executor that runs
//! plans over a sequence of slots. The properties judge plans by this truth, never by what the
//! planner says a snapshot is: a planner that misjudged a name would otherwise be checked
//! against its own mistake.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::{policy_in, t, SERVER};
use crate::model::{ServerRef, Snapshot, SnapshotId, SnapshotStatus};
use crate::plan::{plan, Action, Plan, SlotOutcome};
use crate::policy::{Policy, Retention};

/// What the provider counts toward its cap: every snapshot of the server, whoever made it,
/// whatever its state (API.md: "at most 5 snapshots per server (in-progress ones count)").
/// Written here, not taken from the program, so a drift of the program's belief shows.
pub(super) const PROVIDER_CAP: usize = 5;

/// The policy the properties plan for, and the first slot they plan.
pub(super) const POLICY: &str = "nightly";
pub(super) const BASE: &str = "2025-01-15T02:30:00Z";

/// Other policies' names; some begin like this policy's, one ends in a stamp of its own.
const OTHER_POLICIES: [&str; 9] = [
    "weekly",
    "Nightly",
    "nightly-db",
    "nightly_2",
    "nightly-",
    "nightly-2025",
    "nightly-20250101T000000Z",
    "xnightly",
    "night",
];

/// Names no policy makes: not `<policy name>-<YYYYMMDDTHHMMSSZ>` for any policy name, some of
/// them close to this policy's.
const HAND_MADE: [&str; 14] = [
    "manual",
    "pre-migration-snapshot",
    "nightly",
    "nightly-",
    "nightly-20250115",
    "nightly-20250115T0230Z",
    "nightly-20250115T023000",
    "nightly-20251315T023000Z",
    "nightly-20250115T023000Z-copy",
    "nightly-20250115t023000z",
    "nightly--0250115T023000Z",
    "nightly-+0250115T023000Z",
    "20250115T023000Z",
    "-20250115T023000Z",
];

/// Whose a snapshot is, as whoever made it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whose {
    /// Made by this policy on this server.
    Own,
    /// Made by another policy on this server.
    OtherPolicy,
    /// Made by hand or by another tool: what `prune_unmanaged` opts in to.
    HandMade,
    /// Made by this policy, but on another server: a listing holding it is not this server's.
    OtherServer,
}

/// What state a snapshot is in, as the provider knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    Completed,
    Failed,
    InProgress,
    /// A status the program does not know.
    Unknown(&'static str),
}

impl State {
    fn status(&self) -> SnapshotStatus {
        match self {
            Self::Completed => SnapshotStatus::Completed,
            Self::Failed => SnapshotStatus::Failed,
            Self::InProgress => SnapshotStatus::InProgress,
            Self::Unknown(s) => SnapshotStatus::Other((*s).to_owned()),
        }
    }

    /// Still changing: neither usable nor deletable.
    pub(super) fn is_busy(&self) -> bool {
        matches!(self, Self::InProgress | Self::Unknown(_))
    }
}

/// How a snapshot that is still busy ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settles {
    Completes,
    Fails,
}

impl Settles {
    fn state(self) -> State {
        match self {
            Self::Completes => State::Completed,
            Self::Fails => State::Failed,
        }
    }
}

/// One snapshot on the server, with the truth about it.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub id: SnapshotId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub whose: Whose,
    pub state: State,
    /// The slot this policy made it for (its own only).
    pub slot: Option<DateTime<Utc>>,
    /// What it becomes when it settles, while busy.
    pub then: Settles,
}

impl Held {
    pub(super) fn is_own_completed(&self) -> bool {
        self.whose == Whose::Own && self.state == State::Completed
    }

    fn snapshot(&self) -> Snapshot {
        let server = if self.whose == Whose::OtherServer {
            SERVER + 1
        } else {
            SERVER
        };
        Snapshot {
            id: self.id,
            server: ServerRef {
                id: server,
                name: "web-server-01".into(),
            },
            name: self.name.clone(),
            status: self.state.status(),
            size_mb: None,
            created_at: self.created_at,
            description: None,
        }
    }
}

/// The name this policy gives the snapshot of `slot`, spelled out here rather than asked of
/// the program.
pub(super) fn own_name(slot: DateTime<Utc>) -> String {
    format!("{POLICY}-{}", slot.format("%Y%m%dT%H%M%SZ"))
}

/// The listing the provider answers for the server.
pub(super) fn listing(server: &[Held]) -> Vec<Snapshot> {
    server.iter().map(Held::snapshot).collect()
}

/// The own completed snapshots on the server.
pub(super) fn own_completed(server: &[Held]) -> usize {
    server.iter().filter(|h| h.is_own_completed()).count()
}

/// What the plan does with a snapshot, for every action there is (no catch-all: an action
/// added later has to be placed here before any property runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    Stays,
    /// Deleted before the create, or with no create at all.
    GoesNow,
    /// Deleted before the create to free a slot under the cap.
    GoesBeforeCreate,
    /// Deleted by the executor's second plan once the new snapshot has completed.
    GoesAfterCreate,
}

pub(super) fn fate(action: Action) -> Fate {
    match action {
        Action::Keep | Action::Ignore => Fate::Stays,
        Action::DeleteNow => Fate::GoesNow,
        Action::DeleteBeforeCreate => Fate::GoesBeforeCreate,
        Action::DeleteAfterCreate => Fate::GoesAfterCreate,
    }
}

/// The fate of every snapshot on the server, in the server's order. Fails the case when the
/// plan decides about a snapshot not in the listing, or not exactly once about each.
pub(super) fn fates(p: &Plan, server: &[Held]) -> Result<Vec<Fate>, TestCaseError> {
    prop_assert_eq!(p.decisions.len(), server.len(), "one decision per snapshot");
    server
        .iter()
        .map(|h| {
            let mut about = p.decisions.iter().filter(|d| d.snapshot_id == h.id);
            let d = about.next();
            prop_assert!(
                d.is_some() && about.next().is_none(),
                "not exactly one decision about {:?}",
                h
            );
            Ok(d.map_or(Fate::Stays, |d| fate(d.action)))
        })
        .collect()
}

/// Policies: any rules (often none at all: zero rules must never mean "delete all"),
/// pruning of hand-made snapshots or not, two zones.
pub(super) fn policies() -> impl Strategy<Value = Policy> {
    let rules = prop_oneof![
        1 => Just(Retention::default()),
        5 => (0u32..=5, 0u32..=3, 0u32..=2).prop_map(|(keep, daily, weekly)| Retention {
            keep,
            daily,
            weekly,
            ..Default::default()
        }),
    ];
    (rules, any::<bool>(), any::<bool>()).prop_map(|(rules, prune, berlin)| {
        let tz = if berlin {
            chrono_tz::Europe::Berlin
        } else {
            chrono_tz::UTC
        };
        policy_in(tz, rules, prune)
    })
}

/// How a server's snapshots are drawn: how many of this policy's for every 8 of others,
/// whether some are busy, whether some are another server's.
#[derive(Debug, Clone, Copy)]
struct Mix {
    own: usize,
    busy: bool,
    elsewhere: bool,
}

fn whose(mix: Mix) -> impl Strategy<Value = Whose> {
    let mut kinds = vec![Whose::Own; mix.own];
    kinds.extend([Whose::OtherPolicy; 4]);
    kinds.extend([Whose::HandMade; 4]);
    if mix.elsewhere {
        kinds.push(Whose::OtherServer);
    }
    prop::sample::select(kinds)
}

fn state(mix: Mix) -> impl Strategy<Value = State> {
    let mut states = vec![State::Completed; 6];
    states.extend([State::Failed, State::Failed]);
    if mix.busy {
        states.push(State::InProgress);
        states.extend(["queued", "restoring", ""].map(State::Unknown));
    }
    prop::sample::select(states)
}

fn settles() -> impl Strategy<Value = Settles> {
    prop_oneof![Just(Settles::Completes), Just(Settles::Fails)]
}

/// One snapshot as drawn: whose, state, its slot as days before [`BASE`] (-1: a day after)
/// and hours off the schedule, minutes from its slot to its creation, which name of a list,
/// how it settles.
type Drawn = (Whose, State, i64, i64, i64, usize, Settles);

fn drawn(mix: Mix) -> impl Strategy<Value = Drawn> {
    (
        whose(mix),
        state(mix),
        prop_oneof![1 => Just(0i64), 4 => -1i64..8],
        prop_oneof![4 => Just(0i64), 1 => -12i64..12],
        // Mostly a minute after the slot; sometimes a clock was days off either way.
        prop_oneof![6 => Just(1i64), 1 => -4320i64..4320],
        0usize..64,
        settles(),
    )
}

fn held(id: SnapshotId, (whose, state, days, hours, minutes, pick, then): Drawn) -> Held {
    let slot = t(BASE) - Duration::days(days) + Duration::hours(hours);
    let stamp = slot.format("%Y%m%dT%H%M%SZ");
    let name = match whose {
        Whose::Own | Whose::OtherServer => own_name(slot),
        Whose::OtherPolicy => format!("{}-{stamp}", OTHER_POLICIES[pick % OTHER_POLICIES.len()]),
        Whose::HandMade => HAND_MADE[pick % HAND_MADE.len()].to_owned(),
    };
    Held {
        id,
        name,
        created_at: slot + Duration::minutes(minutes),
        whose,
        state,
        slot: (whose == Whose::Own).then_some(slot),
        then,
    }
}

/// A server of up to 7 snapshots (over the cap too), of any kind and state, some servers
/// with none of this policy's, most with nothing busy. With `other_servers`, the listing may
/// hold another server's snapshots.
pub(super) fn servers(other_servers: bool) -> impl Strategy<Value = Vec<Held>> {
    (
        prop::sample::select(vec![0usize, 2, 4, 8, 16]),
        prop::bool::weighted(0.3),
        prop::bool::weighted(0.15),
    )
        .prop_flat_map(move |(own, busy, elsewhere)| {
            let mix = Mix {
                own,
                busy,
                elsewhere: elsewhere && other_servers,
            };
            prop::collection::vec(drawn(mix), 0..=7)
        })
        .prop_map(|drawn| {
            drawn
                .into_iter()
                .zip(1..)
                .map(|(d, id)| held(id, d))
                .collect()
        })
}

/// How a create the executor waits for ends.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    Completes,
    Fails,
    /// Still in progress at `snapshot_timeout`: the run ends without a second plan, and the
    /// snapshot settles later.
    TimesOut(Settles),
}

/// What someone else does on the server before a run.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event {
    Nothing,
    /// An operator takes a snapshot by hand (if the cap lets them).
    HandMade,
    /// Another policy's snapshot appears (if the cap lets it).
    OtherPolicy,
    /// An operator deletes the oldest snapshot that is not this policy's.
    OperatorDeletesForeign,
}

/// One run of the policy on the server.
#[derive(Debug, Clone)]
pub(super) struct Step {
    /// Runs the previous run's slot again (a second `once` in one slot), not the next slot.
    pub again: bool,
    /// Snapshots left busy (by a timeout, or from the start) settle before this run.
    pub settle: bool,
    pub event: Event,
    /// How this run's create ends, if it makes one.
    pub wait: Wait,
    /// The n-th delete request of this run fails (the provider answers 5xx).
    pub failing_delete: Option<usize>,
}

pub(super) fn steps() -> impl Strategy<Value = Vec<Step>> {
    let wait = prop_oneof![
        3 => Just(Wait::Completes),
        1 => Just(Wait::Fails),
        1 => settles().prop_map(Wait::TimesOut),
    ];
    let event = prop_oneof![
        6 => Just(Event::Nothing),
        1 => Just(Event::HandMade),
        1 => Just(Event::OtherPolicy),
        1 => Just(Event::OperatorDeletesForeign),
    ];
    let step = (
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.6),
        event,
        wait,
        prop::option::weighted(0.15, 0usize..3),
    )
        .prop_map(|(again, settle, event, wait, failing_delete)| Step {
            again,
            settle,
            event,
            wait,
            failing_delete,
        });
    prop::collection::vec(step, 1..=10)
}

/// What one run did, as the provider saw it.
#[derive(Debug, Default)]
pub(super) struct Ran {
    /// Own completed snapshots deleted before the create to free a slot.
    pub freed_own_completed: usize,
    /// The run's snapshot exists and has completed.
    pub completed: bool,
    /// The provider refused the create: the server was at its cap.
    pub refused_at_cap: bool,
}

/// One server as the provider keeps it, and the executor acting on it the way
/// `Executor::rotate` and `create_and_prune` do.
pub(super) struct Server {
    pub snapshots: Vec<Held>,
    next_id: SnapshotId,
    deletes: usize,
    failing_delete: Option<usize>,
}

impl Server {
    pub(super) fn new(snapshots: Vec<Held>) -> Self {
        let next_id = snapshots.iter().map(|h| h.id).max().unwrap_or(0) + 1;
        Self {
            snapshots,
            next_id,
            deletes: 0,
            failing_delete: None,
        }
    }

    /// A create request; `false` when the provider refuses it at its cap.
    fn add(&mut self, made: Held) -> bool {
        if self.snapshots.len() >= PROVIDER_CAP {
            return false;
        }
        self.next_id += 1;
        self.snapshots.push(made);
        true
    }

    /// A completed snapshot someone else makes now.
    fn foreign(&self, name: String, at: DateTime<Utc>, whose: Whose) -> Held {
        Held {
            id: self.next_id,
            name,
            created_at: at,
            whose,
            state: State::Completed,
            slot: None,
            then: Settles::Completes,
        }
    }

    /// A delete request; `false` when it fails (the snapshot stays).
    fn delete(&mut self, id: SnapshotId) -> bool {
        let n = self.deletes;
        self.deletes += 1;
        if self.failing_delete == Some(n) {
            return false;
        }
        self.snapshots.retain(|h| h.id != id);
        true
    }

    /// What happens on the server before the run: busy snapshots settle, someone else acts.
    pub(super) fn before_run(&mut self, step: &Step, at: DateTime<Utc>) {
        if step.settle {
            for h in self.snapshots.iter_mut().filter(|h| h.state.is_busy()) {
                h.state = h.then.state();
            }
        }
        let stamp = at.format("%Y%m%dT%H%M%SZ");
        match step.event {
            Event::Nothing => {}
            Event::HandMade => {
                self.add(self.foreign(format!("manual-{stamp}"), at, Whose::HandMade));
            }
            Event::OtherPolicy => {
                self.add(self.foreign(format!("weekly-{stamp}"), at, Whose::OtherPolicy));
            }
            Event::OperatorDeletesForeign => {
                let oldest = self
                    .snapshots
                    .iter()
                    .filter(|h| h.whose != Whose::Own)
                    .min_by_key(|h| (h.created_at, h.id))
                    .map(|h| h.id);
                if let Some(id) = oldest {
                    self.snapshots.retain(|h| h.id != id);
                }
            }
        }
    }

    /// One run for `slot`: the first plan; if it is not blocked, its deletes (now, then the
    /// slot-freeing one; a failed request ends the run); the create; the wait; and, when the
    /// snapshot settled in time (completed or failed), the second plan's deletes (a failed
    /// request is left for the next run).
    pub(super) fn run(
        &mut self,
        policy: &Policy,
        slot: DateTime<Utc>,
        now: DateTime<Utc>,
        step: &Step,
    ) -> Ran {
        self.deletes = 0;
        self.failing_delete = step.failing_delete;
        let mut ran = Ran::default();
        let first = plan(policy, &SERVER.into(), &listing(&self.snapshots), slot, now);
        match first.outcome {
            SlotOutcome::CapBlocked(_)
            | SlotOutcome::OtherServers(_)
            | SlotOutcome::SnapshotStuck { .. }
            | SlotOutcome::CreateUnconfirmed { .. } => return ran,
            SlotOutcome::Create(_)
            | SlotOutcome::SlotTaken { .. }
            | SlotOutcome::SnapshotInProgress { .. }
            | SlotOutcome::ServerInTransition { .. } => {}
        }
        let now_deletes = first
            .decisions
            .iter()
            .filter(|d| d.action == Action::DeleteNow);
        let freeing = first
            .decisions
            .iter()
            .filter(|d| d.action == Action::DeleteBeforeCreate);
        for d in now_deletes.chain(freeing) {
            let own_completed = self
                .snapshots
                .iter()
                .any(|h| h.id == d.snapshot_id && h.is_own_completed());
            if !self.delete(d.snapshot_id) {
                return ran;
            }
            if d.action == Action::DeleteBeforeCreate && own_completed {
                ran.freed_own_completed += 1;
            }
        }
        let Some(create) = first.create() else {
            return ran;
        };
        let (state, then) = match step.wait {
            Wait::Completes => (State::Completed, Settles::Completes),
            Wait::Fails => (State::Failed, Settles::Fails),
            Wait::TimesOut(then) => (State::InProgress, then),
        };
        let made = Held {
            id: self.next_id,
            name: create.name.clone(),
            created_at: now + Duration::minutes(1),
            whose: Whose::Own,
            state: state.clone(),
            slot: Some(slot),
            then,
        };
        if !self.add(made) {
            ran.refused_at_cap = true;
            return ran;
        }
        if state.is_busy() {
            return ran;
        }
        ran.completed = state == State::Completed;
        let later = now + Duration::minutes(10);
        let second = plan(
            policy,
            &SERVER.into(),
            &listing(&self.snapshots),
            slot,
            later,
        );
        for d in second
            .decisions
            .iter()
            .filter(|d| d.action == Action::DeleteNow)
        {
            self.delete(d.snapshot_id);
        }
        ran
    }
}
