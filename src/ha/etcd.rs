//! The election on a real etcd: [`Coordination`] over [`crate::etcd::Etcd`].

use std::time::Duration;

use crate::etcd::{CreateOutcome, ErrorKind, Etcd, EtcdError, LeaseId as EtcdLease};

use super::{Claim, CoordError, Coordination, Holder, LeaseId, Tenure};

/// The cluster's shared state for a command that only reads it (`status`, `restore`): its
/// leadership never campaigns, so every write is refused.
pub fn reader(ha: &crate::config::HaConfig) -> Result<super::Fenced<Etcd>, EtcdError> {
    let store = std::sync::Arc::new(Etcd::for_cluster(ha, Duration::from_secs(5))?);
    let prefix = ha.prefix();
    let leadership = super::Leadership::new(store.clone(), &prefix, &ha.node, ha.lease_ttl);
    Ok(super::Fenced::new(store, leadership, &prefix))
}

impl From<EtcdError> for CoordError {
    fn from(e: EtcdError) -> Self {
        match e.kind {
            ErrorKind::LeaseGone(lease) => Self::LeaseGone(lease.0),
            ErrorKind::Malformed(_) | ErrorKind::Setup(_) => Self::Invalid(e.to_string()),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

impl Coordination for Etcd {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        Ok(Etcd::grant(self, ttl).await?.0)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        Etcd::keep_alive(self, EtcdLease(lease)).await?;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        match Etcd::revoke(self, EtcdLease(lease)).await {
            Err(e) if matches!(e.kind, ErrorKind::LeaseGone(_)) => Ok(()),
            done => Ok(done?),
        }
    }

    async fn claim(&self, key: &str, node: &str, lease: LeaseId) -> Result<Claim, CoordError> {
        Ok(
            match self.create_if_absent(key, node, EtcdLease(lease)).await? {
                // Revisions start at 1: an epoch below it would never be matched by a write.
                CreateOutcome::Created { revision } if revision < 1 => {
                    return Err(CoordError::Invalid(format!(
                        "etcd answered the claim with revision {revision}; revisions start at 1"
                    )))
                }
                CreateOutcome::Created { revision } => Claim::Won { epoch: revision },
                CreateOutcome::Exists {
                    value,
                    create_revision,
                } => Claim::Held(Holder {
                    node: value,
                    epoch: create_revision,
                }),
            },
        )
    }

    async fn holder(&self, key: &str) -> Result<Option<Holder>, CoordError> {
        Ok(self.get(key).await?.map(|kv| Holder {
            node: kv.value,
            epoch: kv.create_revision,
        }))
    }

    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, CoordError> {
        Ok(self
            .get_prefix(prefix)
            .await?
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect())
    }

    async fn write_if_leader(
        &self,
        key: &str,
        tenure: Tenure,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<bool, CoordError> {
        let puts: Vec<(&str, &str)> = puts.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let deletes: Vec<&str> = deletes.iter().map(String::as_str).collect();
        let (epoch, lease) = (tenure.epoch, EtcdLease(tenure.lease));
        Ok(self
            .txn_if_leader(key, epoch, lease, &puts, &deletes)
            .await?)
    }
}
