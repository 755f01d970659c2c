//! Turns and locks: one operation per server at a time, and at most `max_concurrent`
//! servers worked on at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::model::ServerId;

/// One operation per server at a time, across all policies. Also remembers when a server was
/// last changed, so a listing taken before that is not trusted.
#[derive(Debug, Default)]
pub struct ServerLocks {
    locks: Mutex<HashMap<ServerId, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl ServerLocks {
    pub(super) fn entry(&self, server: ServerId) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(server)
            .or_default()
            .clone()
    }

    /// Whether an operation on `server` is under way now.
    pub fn is_busy(&self, server: ServerId) -> bool {
        self.entry(server).try_lock().is_err()
    }
}

/// The `max_concurrent` turns: a server's operation holds one until its snapshot is requested
/// (to the end if the server is stopped for it), not while it only waits for the snapshot to
/// finish, so thousands of snapshots can be in progress at once while `max_concurrent`
/// servers are worked on.
#[derive(Debug)]
pub(super) struct Turns {
    permits: Arc<Semaphore>,
}

impl Turns {
    pub(super) fn new(max_concurrent: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// Waits for a turn (the caller holds its server's lock).
    pub(super) async fn take(&self) -> Turn {
        Turn(self.permits.clone().acquire_owned().await.ok())
    }
}

/// One server's turn, passed down its run: given back early once only waiting is left, and
/// on drop however the run ends (a dropped run included).
#[derive(Debug)]
pub(super) struct Turn(Option<OwnedSemaphorePermit>);

impl Turn {
    /// The next server may start now.
    pub(super) fn give_back(&mut self) {
        self.0 = None;
    }
}
