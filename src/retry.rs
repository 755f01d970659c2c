//! Retries for a provider that does not retry by itself (the in-memory simulator, or any other
//! [`Provider`] a caller brings), by the HTTP client's rules: reads and deletes are retried on
//! 429, 5xx, timeouts and resets, waiting at least `Retry-After`; a create whose outcome is
//! unknown is looked up by name before it is sent again, so it is never made twice; stop,
//! start and restore go out once (the executor decides what a failed power request means).
//! The executor relies on its provider retrying: [`crate::client::HttpClient`] does it inside,
//! a bare provider gets it from [`Retrying`].

use std::future::Future;
use std::time::Duration;

use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};
use crate::provider::{ApiError, Provider};

/// The first wait between attempts; it doubles up to [`MAX_DELAY`].
pub const MIN_DELAY: Duration = Duration::from_millis(500);
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The wait before attempt `attempt + 1` (0-based), at least the provider's `Retry-After`.
/// No jitter: a simulated run must replay from its seed.
pub fn delay(attempt: u32, error: &ApiError) -> Duration {
    let backoff = MIN_DELAY
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(MAX_DELAY);
    match error {
        ApiError::RateLimited {
            retry_after: Some(wait),
            ..
        } => backoff.max(*wait),
        _ => backoff,
    }
}

#[derive(Debug, Clone)]
pub struct Retrying<P> {
    inner: P,
    max_retries: u32,
}

impl<P: Provider> Retrying<P> {
    pub fn new(inner: P, max_retries: u32) -> Self {
        Self { inner, max_retries }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// An idempotent request, sent again while it fails in a retryable way.
    async fn idempotent<T, F, Fut>(&self, mut send: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 0;
        loop {
            match send().await {
                Err(e) if e.is_retryable() && attempt < self.max_retries => {
                    let wait = delay(attempt, &e);
                    tracing::warn!(error = %e, retry_in = ?wait, "api request failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    }
}

impl<P: Provider> Provider for Retrying<P> {
    async fn list_snapshots(&self, server: Option<ServerId>) -> Result<Vec<Snapshot>, ApiError> {
        self.idempotent(|| self.inner.list_snapshots(server)).await
    }

    async fn list_snapshots_of(&self, servers: &[ServerId]) -> Result<Vec<Snapshot>, ApiError> {
        self.idempotent(|| self.inner.list_snapshots_of(servers))
            .await
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        let mut attempt = 0;
        loop {
            let error = match self.inner.create_snapshot(request).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            if error.outcome_unknown() {
                tracing::warn!(error = %error, snapshot = %request.name, "create answer lost; looking for the snapshot by name");
                let listed = self.list_snapshots(Some(request.server_id)).await?;
                if let Some(found) = listed.into_iter().find(|s| s.name == request.name) {
                    return Ok(found);
                }
            }
            let again = error.outcome_unknown() || matches!(error, ApiError::RateLimited { .. });
            if !again || attempt >= self.max_retries {
                return Err(error);
            }
            let wait = delay(attempt, &error);
            tracing::warn!(error = %error, retry_in = ?wait, "create failed; trying again");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        let mut unsure = false;
        let mut attempt = 0;
        loop {
            match self.inner.delete_snapshot(id).await {
                Ok(()) => return Ok(()),
                // A retry after a lost answer finds it gone: the first attempt deleted it.
                Err(ApiError::NotFound { .. }) if unsure => return Ok(()),
                Err(e) if e.is_retryable() && attempt < self.max_retries => {
                    unsure |= e.outcome_unknown();
                    let wait = delay(attempt, &e);
                    tracing::warn!(error = %e, retry_in = ?wait, "delete failed; retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.inner.restore_snapshot(id).await
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.idempotent(|| self.inner.get_server(id)).await
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.inner.stop_server(id).await
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.inner.start_server(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::simulator::{SimConfig, Simulator};

    const WEB: ServerId = 12345;

    fn sim(config: SimConfig) -> Simulator {
        let clock = TokioClock::starting_at("2025-01-15T02:30:00Z".parse().unwrap());
        let config = SimConfig {
            example_snapshots: false,
            ..config
        };
        Simulator::with_server_ids(config, &[WEB], clock)
    }

    fn request(name: &str) -> CreateSnapshot {
        CreateSnapshot {
            server_id: WEB,
            name: name.to_owned(),
            description: None,
        }
    }

    #[test]
    fn delays_double_to_a_minute_and_respect_retry_after() {
        let server = ApiError::Server {
            what: "x".into(),
            status: 503,
            message: String::new(),
        };
        let waits: Vec<u64> = (0..9)
            .map(|n| delay(n, &server).as_millis() as u64)
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        let throttled = ApiError::RateLimited {
            what: "x".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(delay(0, &throttled), Duration::from_secs(7));
        assert_eq!(delay(20, &throttled), MAX_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_create_is_found_by_name_not_sent_again() {
        let sim = sim(SimConfig {
            lost_create_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), 5);
        let made = retrying.create_snapshot(&request("a")).await.unwrap();
        assert_eq!(made.name, "a");
        let stats = sim.stats();
        assert_eq!(
            (stats.request_count("create"), stats.duplicate_names),
            (1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_until_the_budget_is_spent_and_400_is_not() {
        let sim = sim(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), 3);
        let err = retrying.get_server(WEB).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(sim.stats().request_count("get_server"), 4);
        sim.set_config(|c| c.error_rate = 0.0);
        let refused = retrying.delete_snapshot(1).await.unwrap_err();
        assert!(matches!(refused, ApiError::NotFound { .. }));
        assert_eq!(sim.stats().request_count("delete"), 1);
        // Power requests go out once: the executor decides what a failure means.
        sim.set_config(|c| c.error_rate = 1.0);
        assert!(retrying.stop_server(WEB).await.is_err());
        assert_eq!(sim.stats().request_count("stop"), 1);
    }
}
