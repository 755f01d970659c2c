//! The knobs of the simulated provider: durations, fault rates, limits, the seed and the token.

use std::time::Duration;

/// The knobs of the simulated provider. The default is a well-behaved provider that is fast
/// enough for tests (seconds, not minutes) and starts each server with foreign snapshots.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long a new snapshot stays `in_progress`.
    pub snapshot_duration: Duration,
    /// Probability that a new snapshot ends `failed` (drawn when it is created).
    pub failure_rate: f64,
    /// How long `stopping` and `starting` last.
    pub power_delay: Duration,
    /// How long a server stays `restoring`.
    pub restore_duration: Duration,
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// Probability that a request answers 500/502/503 without doing anything.
    pub error_rate: f64,
    /// Probability that a create is applied but its answer is lost (504 from the gateway).
    pub lost_create_rate: f64,
    /// Requests per second allowed (token bucket, burst of one second); `None` or <= 0: no limit.
    pub rate_limit: Option<f64>,
    /// Probability of a 429 with `Retry-After: burst_retry_after` whatever the rate.
    pub burst_429_rate: f64,
    /// The `Retry-After` (seconds) of those 429s.
    pub burst_retry_after: u64,
    /// Results per list page (DRF `PAGE_SIZE`).
    pub page_size: usize,
    /// Refuse a create while the server already has an `in_progress` snapshot (400).
    pub refuse_create_while_in_progress: bool,
    /// Lax mode: carry out what the provider refuses with 400 (a create while the server has an
    /// `in_progress` snapshot, whatever `refuse_create_while_in_progress` says; a sixth
    /// snapshot; a delete of an `in_progress` one), so a test that checks every request sees
    /// a wrong one as the request it was and the state it makes, not as a refusal the program
    /// may shrug off.
    pub lax: bool,
    /// Refuse every start with 400, as a provider does for a server it will not start (a
    /// billing hold, a host in maintenance).
    pub refuse_start: bool,
    /// Seed of the one RNG behind every fault and size, so a failing run can be replayed.
    pub seed: u64,
    /// Start each server with hand-made completed snapshots the scheduler does not own.
    pub example_snapshots: bool,
    /// The bearer token the HTTP layer accepts.
    pub token: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            snapshot_duration: Duration::from_secs(3),
            failure_rate: 0.0,
            power_delay: Duration::from_secs(2),
            restore_duration: Duration::from_secs(5),
            latency: Duration::ZERO,
            error_rate: 0.0,
            lost_create_rate: 0.0,
            rate_limit: None,
            burst_429_rate: 0.0,
            burst_retry_after: 1,
            page_size: 50,
            refuse_create_while_in_progress: true,
            lax: false,
            refuse_start: false,
            seed: 0x5eed,
            example_snapshots: true,
            token: "simulated-token".to_owned(),
        }
    }
}
