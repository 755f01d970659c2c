//! The state two hosts share (`[ha]`): where the journal and the create ledger write when the
//! acting host may change. Every write is one transaction that holds only while this host
//! still leads (fenced), so a host that lost the lead can record no stop and no create, and so
//! sends none.

use std::future::Future;
use std::pin::Pin;

/// A boxed `Send` future (the trait is used as `dyn`).
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// This host does not lead (any more): nothing was written, and nothing may be sent.
    #[error("this host does not lead the cluster (any more); nothing is done")]
    NotLeading,
    /// The store did not answer: nothing is known to be written.
    #[error("the shared state cannot be reached: {0}")]
    Unavailable(String),
}

/// A shared store of keys (relative to the cluster's prefix) and JSON values.
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// Puts and deletes in one transaction, only while this host leads.
    fn write(
        &self,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Boxed<'_, Result<(), SharedError>>;
    /// Whether writes would be made under the lead (a write may still be refused: the store
    /// decides).
    fn leads(&self) -> bool;
    /// Every key under `section` (`journal/`, `creates/`), with its value.
    fn read<'a>(
        &'a self,
        section: &'a str,
    ) -> Boxed<'a, Result<Vec<(String, String)>, SharedError>>;
}
