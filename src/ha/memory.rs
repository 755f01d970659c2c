//! A lease store in memory, on tokio's clock: leases expire as etcd's do, so the election is
//! tested (and soaked) on paused time. Each node talks to it through its own [`Link`], which a
//! test can cut to stand for a partition.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, CoordError, Coordination, Holder, LeaseId, Tenure};

#[derive(Debug, Default)]
struct State {
    revision: i64,
    next_lease: LeaseId,
    /// Lease → when it expires.
    leases: BTreeMap<LeaseId, (Instant, Duration)>,
    /// Key → value, create revision, lease.
    keys: BTreeMap<String, (String, i64, Option<LeaseId>)>,
}

impl State {
    /// Drops what expired by now, with the keys bound to it.
    fn expire(&mut self) {
        let now = Instant::now();
        let gone: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, (until, _))| *until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_lease(id);
        }
    }

    /// Every key under `prefix`, with its value.
    fn under(&self, prefix: &str) -> Vec<(String, String)> {
        self.keys
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, _, _))| (k.clone(), v.clone()))
            .collect()
    }

    fn drop_lease(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        self.keys.retain(|_, (_, _, lease)| *lease != Some(id));
        self.revision += 1;
    }
}

/// The store the nodes share.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    state: Arc<Mutex<State>>,
}

impl Memory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A node's way to the store.
    pub fn link(&self) -> Link {
        Link {
            store: self.clone(),
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The value of `key`, as a test reads it.
    pub fn get(&self, key: &str) -> Option<String> {
        let mut state = self.state.lock().unwrap();
        state.expire();
        state.keys.get(key).map(|(v, _, _)| v.clone())
    }

    /// Every key under `prefix`, with its value.
    pub fn under(&self, prefix: &str) -> Vec<(String, String)> {
        let mut state = self.state.lock().unwrap();
        state.expire();
        state.under(prefix)
    }
}

/// One node's connection to [`Memory`]; [`Link::cut`] stands for a partition.
#[derive(Debug, Clone)]
pub struct Link {
    store: Memory,
    up: Arc<AtomicBool>,
}

impl Link {
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
    }

    pub fn mend(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, CoordError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(CoordError::Unavailable("the lease store is cut off".into()));
        }
        let mut state = self.store.state.lock().unwrap_or_else(|e| e.into_inner());
        state.expire();
        Ok(state)
    }
}

impl Coordination for Link {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let mut state = self.state()?;
        state.next_lease += 1;
        let id = state.next_lease;
        state.leases.insert(id, (Instant::now() + ttl, ttl));
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut state = self.state()?;
        match state.leases.get_mut(&lease) {
            Some((until, ttl)) => {
                *until = Instant::now() + *ttl;
                Ok(())
            }
            None => Err(CoordError::LeaseGone(lease)),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        let mut state = self.state()?;
        if state.leases.contains_key(&lease) {
            state.drop_lease(lease);
        }
        Ok(())
    }

    async fn claim(&self, key: &str, node: &str, lease: LeaseId) -> Result<Claim, CoordError> {
        let mut state = self.state()?;
        if let Some((value, epoch, _)) = state.keys.get(key) {
            return Ok(Claim::Held(Holder {
                node: value.clone(),
                epoch: *epoch,
            }));
        }
        if !state.leases.contains_key(&lease) {
            return Err(CoordError::LeaseGone(lease));
        }
        state.revision += 1;
        let epoch = state.revision;
        state
            .keys
            .insert(key.to_owned(), (node.to_owned(), epoch, Some(lease)));
        Ok(Claim::Won { epoch })
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>, CoordError> {
        let state = self.state()?;
        Ok(state.keys.get(key).map(|(value, epoch, _)| Holder {
            node: value.clone(),
            epoch: *epoch,
        }))
    }

    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, CoordError> {
        Ok(self.state()?.under(prefix))
    }

    async fn write_if_leader(
        &self,
        key: &str,
        tenure: Tenure,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<bool, CoordError> {
        let mut state = self.state()?;
        let held = state
            .keys
            .get(key)
            .map(|(_, epoch, lease)| (*epoch, *lease));
        if held != Some((tenure.epoch, Some(tenure.lease))) {
            return Ok(false);
        }
        state.revision += 1;
        let revision = state.revision;
        for (k, v) in puts {
            let created = state.keys.get(&k).map_or(revision, |(_, c, _)| *c);
            state.keys.insert(k, (v, created, None));
        }
        for k in deletes {
            state.keys.remove(&k);
        }
        Ok(true)
    }
}
