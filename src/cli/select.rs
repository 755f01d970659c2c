//! What a command works on: `--policy` and `--server` turned into (policy, server, slot)
//! triples, and [`UsageError`], a call that asks for what is not there (exit 2).

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::model::ServerId;
use crate::policy::Policy;

/// An error in how the program was called (exit 2), as opposed to an operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The (policy, server, slot) triples a command works on, after `--policy`/`--server`.
/// Each triple's policy names only its own server: a whole copy per server would cost
/// servers² ids (800 MB for a policy over 10,000 servers).
pub fn select(
    config: &Config,
    policy: Option<&str>,
    server: Option<ServerId>,
    now: DateTime<Utc>,
) -> Result<Vec<(Policy, ServerId, DateTime<Utc>)>, UsageError> {
    if let Some(name) = policy {
        if config.policy(name).is_none() {
            let names: Vec<&str> = config.policies.iter().map(|p| p.name.as_str()).collect();
            return Err(UsageError(format!(
                "--policy {name}: no such policy; allowed: {}",
                names.join(", ")
            )));
        }
    }
    let mut work = Vec::new();
    for p in &config.policies {
        if policy.is_some_and(|n| n != p.name) {
            continue;
        }
        let Some(slot) = p.schedule.slot_at(now) else {
            continue;
        };
        let bare = Policy {
            servers: Vec::new(),
            ..Policy::clone(p)
        };
        for s in &p.servers {
            if server.is_none_or(|want| want == *s) {
                let one = Policy {
                    servers: vec![*s],
                    ..bare.clone()
                };
                work.push((one, *s, slot));
            }
        }
    }
    if let (Some(id), true) = (server, work.is_empty()) {
        return Err(UsageError(format!(
            "--server {id}: no selected policy names this server; allowed: {}",
            config
                .servers()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(work)
}
