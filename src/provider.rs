//! The boundary to the provider: one trait, implemented over HTTP (`client`) and in memory
//! (`simulator`), and the errors a caller must be able to tell apart.

use std::future::Future;
use std::time::Duration;

use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};

/// Everything the scheduler asks of a provider. Futures are `Send` so the daemon can spawn them.
pub trait Provider: Send + Sync + 'static {
    /// All snapshots of one server, or of every server when `server` is `None` (all pages).
    fn list_snapshots(
        &self,
        server: Option<ServerId>,
    ) -> impl Future<Output = Result<Vec<Snapshot>, ApiError>> + Send;

    /// The snapshots of these servers, from one account-wide listing (one paginated call,
    /// however many servers). A listed record that cannot be read is an error naming it when
    /// it belongs to one of these servers (left out, it could be the snapshot being waited for,
    /// or one that counts toward the cap); any other is left out with a warning, so one odd
    /// hand-made snapshot elsewhere in the account does not stop the work on these.
    fn list_snapshots_of(
        &self,
        servers: &[ServerId],
    ) -> impl Future<Output = Result<Vec<Snapshot>, ApiError>> + Send {
        async move {
            let mut wanted = servers.to_vec();
            wanted.sort_unstable();
            let mut all = self.list_snapshots(None).await?;
            all.retain(|s| wanted.binary_search(&s.server.id).is_ok());
            Ok(all)
        }
    }

    /// Creates a snapshot. Implementations never create a second snapshot of the same name
    /// because of a retry: after a lost answer they look for the name first.
    fn create_snapshot(
        &self,
        request: &CreateSnapshot,
    ) -> impl Future<Output = Result<Snapshot, ApiError>> + Send;

    fn delete_snapshot(&self, id: SnapshotId) -> impl Future<Output = Result<(), ApiError>> + Send;

    fn restore_snapshot(
        &self,
        id: SnapshotId,
    ) -> impl Future<Output = Result<RestoreStarted, ApiError>> + Send;

    fn get_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;

    fn stop_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;

    fn start_server(&self, id: ServerId) -> impl Future<Output = Result<Server, ApiError>> + Send;
}

/// An API failure, worded for the operator who reads it in the journal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("the API rejected the token (check {token_source}); answer 401")]
    Unauthorized { token_source: String },
    #[error("the API refused {what}: {message} (400)")]
    BadRequest { what: String, message: String },
    #[error("the API answered 404 (not found) to {what}: {message}")]
    NotFound { what: String, message: String },
    #[error("the API is rate limiting {what} (429){}", retry_hint(.retry_after))]
    RateLimited {
        what: String,
        retry_after: Option<Duration>,
    },
    #[error("the API failed {what} with {status}: {message}")]
    Server {
        what: String,
        status: u16,
        message: String,
    },
    #[error("{what} got no answer within {}", humantime::format_duration(*.timeout))]
    Timeout { what: String, timeout: Duration },
    #[error("could not reach the API for {what}: {message}")]
    Connection { what: String, message: String },
    #[error("the API's answer to {what} could not be read: {message}")]
    Decode { what: String, message: String },
    /// Never followed: the token would go along, and the answer from there would choose what
    /// is deleted here.
    #[error(
        "the API answered {what} with a redirect ({status}) to {location}; redirects are refused \
         (set base_url to the address that answers)"
    )]
    Redirect {
        what: String,
        status: u16,
        location: String,
    },
    #[error("the API answered {what} with unexpected status {status}: {message}")]
    Unexpected {
        what: String,
        status: u16,
        message: String,
    },
}

fn retry_hint(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(", retry after {}", humantime::format_duration(*d)),
        None => String::new(),
    }
}

impl ApiError {
    /// Whether the same request may succeed if sent again (for idempotent requests only).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Timeout { .. }
                | Self::Connection { .. }
        )
    }

    /// Whether a create that failed this way may have happened anyway (answer lost or 5xx).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            Self::Server { .. } | Self::Timeout { .. } | Self::Connection { .. }
        )
    }
}
