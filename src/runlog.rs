//! What happened per policy and server, kept in `state_dir`: the last run (result, error,
//! when) for `status` and alerts, and the newest slot each policy handled, which the daemon
//! reads at start-up to tell a missed slot from one that was already dealt with.
//!
//! Last runs are written in batches (after a fire or a `once`), not once per server, so a
//! large fleet does not rewrite the file thousands of times. A handled slot is written at
//! once, before the fire's work begins, so a crash mid-run does not make the next start run
//! the slot again.
//!
//! With `[ha]` both live in the cluster's shared state instead (`handled/<policy>` and
//! `runs/<policy>/<server>`, written fenced), so `status` reads the same on either host and a
//! new leader catches up only the slots nobody handled.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::ServerId;
use crate::policy::Policy;
use crate::report::RunResult;
use crate::scheduler::Recorded;
use crate::shared::{SharedError, SharedState};
use crate::state_file::write_atomic;

const FILE_NAME: &str = "last-runs.json";
const HANDLED_FILE_NAME: &str = "handled-slots.json";
const RUNS_SECTION: &str = "runs/";
const HANDLED_SECTION: &str = "handled/";
/// Last runs per shared transaction: etcd takes at most 128 operations in one.
const PUTS_PER_WRITE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum RunLogError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("run log (shared): {0}")]
    Shared(#[from] SharedError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    pub policy: String,
    pub server: ServerId,
    pub slot: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub result: RunResult,
    pub message: String,
    pub created: Option<String>,
}

/// The newest slot a policy handled on each of its servers (fired, whatever the outcome, or
/// passed over on purpose), and the schedule it had then: a slot of a schedule that has
/// changed since was never due, so it is not missed either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    pub schedule: String,
    pub timezone: String,
    pub servers: BTreeMap<ServerId, DateTime<Utc>>,
    /// The newest slot that fired; its servers are those whose handled slot it is. A server
    /// without a last run of it had its run cut short (a crash).
    #[serde(default)]
    pub fired: Option<DateTime<Utc>>,
}

#[derive(Debug, Default)]
struct State {
    runs: BTreeMap<String, LastRun>,
    /// The keys of the runs recorded since the last flush.
    dirty: BTreeSet<String>,
    handled: BTreeMap<String, Handled>,
}

#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    handled_path: PathBuf,
    state: Mutex<State>,
    /// With `[ha]`: where the records live (written fenced), instead of `state_dir`.
    shared: Option<Arc<dyn SharedState>>,
}

fn key(policy: &str, server: ServerId) -> String {
    format!("{policy}/{server}")
}

/// A file's JSON, or the default when it is missing or unreadable (said in the log: without
/// its handled slots a policy waits for its next fire instead of catching up).
fn read_or_default<T: serde::de::DeserializeOwned + Default>(path: &Path) -> T {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return T::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read this record; going on without it");
            return T::default();
        }
    };
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "cannot read this record; going on without it");
        T::default()
    })
}

impl RunLog {
    /// Reads the files if there are any; a missing or unreadable file starts empty (the last
    /// runs are a record for people; without handled slots a policy starts like a new one,
    /// which waits for its next fire). Never creates anything.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE_NAME);
        let handled_path = state_dir.join(HANDLED_FILE_NAME);
        let state = State {
            runs: read_or_default(&path),
            dirty: BTreeSet::new(),
            handled: read_or_default(&handled_path),
        };
        Self {
            path,
            handled_path,
            state: Mutex::new(state),
            shared: None,
        }
    }

    /// The run log of a cluster (`[ha]`), empty until [`RunLog::load_shared`] reads it.
    /// `state_dir` appears in messages only.
    pub fn shared(state_dir: &Path, shared: Arc<dyn SharedState>) -> Self {
        Self {
            path: state_dir.join(FILE_NAME),
            handled_path: state_dir.join(HANDLED_FILE_NAME),
            state: Mutex::new(State::default()),
            shared: Some(shared),
        }
    }

    /// With `[ha]`: reads the cluster's last runs and handled slots (when this host takes the
    /// lead, and for `status`). A record that does not read is skipped, and said: a last run
    /// is for people, and a policy without its handled slot waits for its next fire.
    pub async fn load_shared(&self) -> Result<(), SharedError> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let handled = shared.read(HANDLED_SECTION).await?;
        let runs = shared.read(RUNS_SECTION).await?;
        let mut state = State::default();
        for (key, value) in handled {
            let Some(policy) = key.strip_prefix(HANDLED_SECTION) else {
                continue;
            };
            match serde_json::from_str::<Handled>(&value) {
                Ok(h) => {
                    state.handled.insert(policy.to_owned(), h);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot read this record; going on without it")
                }
            }
        }
        for (key, value) in runs {
            match serde_json::from_str::<LastRun>(&value) {
                Ok(run) => {
                    state.runs.insert(self::key(&run.policy, run.server), run);
                }
                Err(e) => {
                    tracing::warn!(%key, error = %e, "cannot read this record; going on without it")
                }
            }
        }
        *self.state() = state;
        Ok(())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, run: LastRun) {
        let mut state = self.state();
        let key = key(&run.policy, run.server);
        state.runs.insert(key.clone(), run);
        state.dirty.insert(key);
    }

    pub fn get(&self, policy: &str, server: ServerId) -> Option<LastRun> {
        self.state().runs.get(&key(policy, server)).cloned()
    }

    /// Writes what changed since the last flush.
    pub async fn flush(&self) {
        if let Some(shared) = &self.shared {
            return self.flush_shared(&**shared).await;
        }
        let mut state = self.state();
        if state.dirty.is_empty() {
            return;
        }
        let written = serde_json::to_vec_pretty(&state.runs)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&self.path, &b));
        match written {
            Ok(()) => state.dirty.clear(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot record the last runs")
            }
        }
    }

    /// The runs recorded since the last flush, a hundred to a fenced write; what is not
    /// written stays for the next flush.
    async fn flush_shared(&self, shared: &dyn SharedState) {
        let puts: Vec<(String, String)> = {
            let state = self.state();
            state
                .dirty
                .iter()
                .filter_map(|k| state.runs.get(k).map(|r| (k, r)))
                .filter_map(|(k, r)| {
                    Some((format!("{RUNS_SECTION}{k}"), serde_json::to_string(r).ok()?))
                })
                .collect()
        };
        for chunk in puts.chunks(PUTS_PER_WRITE) {
            if let Err(e) = shared.write(chunk.to_vec(), Vec::new()).await {
                tracing::warn!(error = %e, "cannot record the last runs in the shared state");
                return;
            }
            let mut state = self.state();
            for (k, _) in chunk {
                state.dirty.remove(&k[RUNS_SECTION.len()..]);
            }
        }
    }

    /// What this policy handled before: the newest slot on any of its servers, from the
    /// handled slots (with the last runs under them). `None` for a policy without handled
    /// slots, which is what a new or renamed one is, and also one that only `once` ran, or
    /// whose handled slots were lost: last runs alone do not say which schedule they ran
    /// under, and taken for the current one they made a first start stop a server.
    pub fn recorded(&self, policy: &str) -> Option<Recorded> {
        let state = self.state();
        let last_run = state
            .runs
            .values()
            .filter(|r| r.policy == policy)
            .map(|r| r.slot)
            .max();
        match state.handled.get(policy) {
            Some(h) => Some(Recorded {
                slot: h.servers.values().copied().chain(last_run).max()?,
                schedule: Some((h.schedule.clone(), h.timezone.clone())),
            }),
            None => None,
        }
    }

    /// Durably records that a fire of `slot` is about to start on each of the policy's servers.
    pub async fn mark_fired(
        &self,
        policy: &Policy,
        slot: DateTime<Utc>,
    ) -> Result<(), RunLogError> {
        self.mark(policy, slot, true).await
    }

    /// Durably records `policy` as handled up to `at` without a fire (its first start, a
    /// changed schedule).
    pub async fn mark_handled(
        &self,
        policy: &Policy,
        at: DateTime<Utc>,
    ) -> Result<(), RunLogError> {
        self.mark(policy, at, false).await
    }

    /// Records `at` as the newest slot `policy` handled on each of its servers. Servers no
    /// longer in the policy are forgotten, and so is everything recorded under another
    /// schedule.
    async fn mark(
        &self,
        policy: &Policy,
        at: DateTime<Utc>,
        fired: bool,
    ) -> Result<(), RunLogError> {
        let handled = self.handled_at(policy, at, fired);
        match &self.shared {
            Some(shared) => {
                let value = serde_json::to_string(&handled)
                    .map_err(|e| SharedError::Unavailable(e.to_string()))?;
                let key = format!("{HANDLED_SECTION}{}", policy.name);
                shared.write(vec![(key, value)], Vec::new()).await?;
                self.state().handled.insert(policy.name.clone(), handled);
            }
            None => {
                let mut state = self.state();
                let mut next = state.handled.clone();
                next.insert(policy.name.clone(), handled);
                serde_json::to_vec_pretty(&next)
                    .map_err(std::io::Error::other)
                    .and_then(|b| write_atomic(&self.handled_path, &b))
                    .map_err(|source| RunLogError::Write {
                        path: self.handled_path.clone(),
                        source,
                    })?;
                state.handled = next;
            }
        }
        Ok(())
    }

    /// What `policy`'s record becomes when it has handled `at`.
    fn handled_at(&self, policy: &Policy, at: DateTime<Utc>, fired: bool) -> Handled {
        let state = self.state();
        let schedule = policy.schedule.expr().to_owned();
        let timezone = policy.schedule.timezone().name().to_owned();
        let previous = state
            .handled
            .get(&policy.name)
            .filter(|h| h.schedule == schedule && h.timezone == timezone);
        // Overwritten, not kept at the later of the two: a slot recorded by a clock that was
        // ahead must not stay in the future for good (the scheduler guards against running a
        // slot twice).
        let servers = policy.servers.iter().map(|s| (*s, at)).collect();
        let fired = if fired {
            Some(at)
        } else {
            previous.and_then(|h| h.fired)
        };
        Handled {
            schedule,
            timezone,
            servers,
            fired,
        }
    }

    /// The newest slot `policy` fired under its current schedule, and the servers whose run of
    /// it has no result (cut short by a crash, or still going).
    pub fn interrupted(&self, policy: &Policy) -> Option<(DateTime<Utc>, Vec<ServerId>)> {
        let state = self.state();
        let h = state.handled.get(&policy.name)?;
        if h.schedule != policy.schedule.expr() || h.timezone != policy.schedule.timezone().name() {
            return None;
        }
        let slot = h.fired?;
        let servers: Vec<ServerId> = h
            .servers
            .iter()
            .filter(|(s, at)| **at == slot && policy.servers.contains(s))
            .filter(|(s, _)| {
                state
                    .runs
                    .get(&key(&policy.name, **s))
                    .is_none_or(|r| r.slot < slot)
            })
            .map(|(s, _)| *s)
            .collect();
        (!servers.is_empty()).then_some((slot, servers))
    }

    /// Policy names this run log has records of that `configured` does not have (renamed or
    /// removed), sorted.
    pub fn retired(&self, configured: &[Policy]) -> Vec<String> {
        let state = self.state();
        let names: BTreeSet<&str> = state
            .runs
            .values()
            .map(|r| r.policy.as_str())
            .chain(state.handled.keys().map(String::as_str))
            .collect();
        names
            .into_iter()
            .filter(|n| !configured.iter().any(|p| p.name == *n))
            .map(str::to_owned)
            .collect()
    }

    /// One warning per retired policy name: what happens to its snapshots, what to do.
    pub fn retired_warnings(&self, configured: &[Policy]) -> Vec<String> {
        let state_dir = self.path.parent().unwrap_or(Path::new("."));
        self.retired(configured)
            .into_iter()
            .map(|name| retired_warning(&name, state_dir))
            .collect()
    }
}

/// Why a policy name that has runs in `state_dir` but is no longer configured matters.
pub fn retired_warning(name: &str, state_dir: &Path) -> String {
    format!(
        "policy \"{name}\" has runs recorded in {} but is not in the config any more (renamed \
         or removed): its snapshots ({name}-<YYYYMMDDTHHMMSSZ>) are now managed by no policy, \
         are never deleted (prune_unmanaged does not touch them either: they are named like a \
         policy's) and count toward the cap of 5 per server; to adopt them, name the policy \
         \"{name}\" again, or delete them by hand once they are no longer needed",
        state_dir.display()
    )
}
