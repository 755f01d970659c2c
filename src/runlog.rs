//! The last run of each policy on each server, kept in `state_dir` for `status`: result,
//! error, when. Written in batches (after a fire or a `once`), not once per server, so a large
//! fleet does not rewrite the file thousands of times.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::execute::RunResult;
use crate::journal::write_atomic;
use crate::model::ServerId;

const FILE_NAME: &str = "last-runs.json";

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

#[derive(Debug)]
pub struct RunLog {
    path: PathBuf,
    state: Mutex<(BTreeMap<String, LastRun>, bool)>,
}

fn key(policy: &str, server: ServerId) -> String {
    format!("{policy}/{server}")
}

impl RunLog {
    /// Reads the file if there is one; a missing or unreadable file starts empty (it is a
    /// record for people, not a safety mechanism).
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(FILE_NAME);
        let runs = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            state: Mutex::new((runs, false)),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (BTreeMap<String, LastRun>, bool)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self, run: LastRun) {
        let mut state = self.state();
        state.0.insert(key(&run.policy, run.server), run);
        state.1 = true;
    }

    pub fn get(&self, policy: &str, server: ServerId) -> Option<LastRun> {
        self.state().0.get(&key(policy, server)).cloned()
    }

    /// Writes what changed since the last flush.
    pub fn flush(&self) {
        let mut state = self.state();
        if !state.1 {
            return;
        }
        let written = serde_json::to_vec_pretty(&state.0)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&self.path, &b));
        match written {
            Ok(()) => state.1 = false,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot record the last runs")
            }
        }
    }
}
