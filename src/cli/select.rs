//! What a command works on: `--policy` and `--server` turned into (policy, server, slot)
//! triples, and [`UsageError`], a call that asks for what is not there (exit 2).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::execute::Work;
use crate::model::ServerId;

/// An error in how the program was called (exit 2), as opposed to an operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The (policy, server, slot) triples a command works on, after `--policy`/`--server`.
/// The triples of a policy share one copy of it: a copy per server would cost servers² ids
/// (800 MB for a policy over 10,000 servers).
pub fn select(
    config: &Config,
    policy: Option<&str>,
    server: Option<ServerId>,
    now: DateTime<Utc>,
) -> Result<Vec<Work>, UsageError> {
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
        let shared = Arc::new(p.clone());
        for s in &p.servers {
            if server.is_none_or(|want| want == *s) {
                work.push((shared.clone(), *s, slot));
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
