//! What the unit tests build their cases from, made the same way everywhere: a policy as a
//! fresh config gives it, and a simulated provider on tokio's clock.

use std::sync::Arc;

use chrono_tz::Tz;

use crate::clock::TokioClock;
use crate::model::ServerId;
use crate::policy::{Policy, Retention};
use crate::schedule::Schedule;
use crate::simulator::{SimConfig, Simulator};

/// `name` at 02:30 UTC daily on server 1, keeping 2, with every other key at its default.
pub fn policy(name: &str) -> Policy {
    policy_at(name, "30 2 * * *", Tz::UTC)
}

/// [`policy`] on this schedule.
pub fn policy_at(name: &str, schedule: &str, tz: Tz) -> Policy {
    Policy {
        name: name.to_owned(),
        schedule: Schedule::parse(schedule, tz).expect("a test schedule parses"),
        servers: vec![1],
        retention: Retention {
            keep: 2,
            ..Default::default()
        },
        stop_server: false,
        description: format!("{name} snapshot"),
        catch_up: true,
        prune_unmanaged: false,
        jitter: None,
        hooks: Default::default(),
        monitoring: Default::default(),
        on_journal_failure: Default::default(),
    }
}

/// A simulated provider of these servers without its example snapshots, on tokio's clock
/// (tests run it paused) with the wall clock starting at `at`.
pub fn simulator(
    config: SimConfig,
    servers: &[ServerId],
    at: &str,
) -> (Simulator, Arc<TokioClock>) {
    let clock = TokioClock::starting_at(at.parse().expect("a test time parses"));
    let config = SimConfig {
        example_snapshots: false,
        ..config
    };
    (
        Simulator::with_server_ids(config, servers, clock.clone()),
        clock,
    )
}
