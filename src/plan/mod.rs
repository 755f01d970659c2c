//! The pure planner: from one policy, the server it decides about (with its power state when
//! the policy stops it), that server's full snapshot listing and the slot being served, decide
//! what the slot gets (a typed [`SlotOutcome`]) and what to delete, every decision with the
//! reason the `plan` command prints. The outcome's variant is the decision; its reason only
//! explains it. No clock, network, file or environment in here.
//!
//! The safety rules, each pinned by a test in `tests.rs`:
//! - Only `<policy>-<YYYYMMDDTHHMMSSZ>` is the policy's own; everything else is ignored, except
//!   that `prune_unmanaged` may delete the oldest hand-made completed snapshot when nothing of
//!   the policy's own can free a slot under the cap. Another policy's snapshots are never touched.
//! - A snapshot in progress (or in a state we do not know) anywhere on the server freezes it:
//!   no create and no delete until it settles. So does a server in transition (restoring,
//!   starting, ...) for a policy that stops it. Past `snapshot_timeout` it is stuck: the
//!   executor's plan step (which knows the timeout) marks it so, and the run fails naming it.
//! - A slot whose own snapshot failed has no good snapshot: the run fails, the failed one is
//!   deleted and not retried in this slot, and no good snapshot goes for it.
//! - A listing holding another server's snapshots is blocked: nothing in it is trusted.
//! - Retention is the union of its rules over the policy's own completed snapshots; a policy
//!   without any rule deletes nothing (zero rules never mean "delete all").
//! - A good snapshot beyond retention is deleted only once a newer one has completed: with a
//!   create planned it is deferred, and the executor's second plan deletes it.
//! - The server never holds more than the cap: at the cap one slot is freed before the create;
//!   if nothing may be freed the plan is blocked and touches nothing.
//!
//! Where each part lives:
//! - `decision`: what a plan says: the slot's outcome and one decision per snapshot.
//! - `planner`: [`plan`] itself: freeze, block, the cap, then a decision for every snapshot.
//! - `ownership`: whose a snapshot is, from its name, and what its status allows.
//! - `order`: how snapshots are ordered by time when a clock may have been wrong.
//! - `retention`: the keep rules, a union with a reason for each kept snapshot.

mod decision;
mod order;
mod ownership;
mod planner;
mod retention;

pub use decision::{Action, Blocked, Create, Decision, Plan, SlotOutcome};
pub use order::STAMP_SKEW;
pub use planner::{plan, rough_age, Target};

#[cfg(test)]
mod tests;
