//! The simulated provider: API.md's snapshot and server endpoints, in memory and over HTTP, with
//! the faults a real provider has (latency, 5xx, lost answers, 429s, the cap of 5).
//!
//! One state machine serves both paths, so an engine test on tokio's paused clock (through
//! [`Provider`](crate::provider::Provider)) and a client test over a real socket (through
//! [`router`]) meet the same rules and the same seeded faults. Transitions are lazy: each
//! snapshot and server stores a tokio `Instant` deadline and is settled when next looked at, so
//! `tokio::time::advance` drives them.
//!
//! Here: the knobs in `config.rs`, what tests read back in `stats.rs`, the state machine and
//! each endpoint's rules in `state.rs`, refused requests in `refusal.rs`, the [`Simulator`]
//! handle and the in-memory `Provider` path in `provider.rs`, the HTTP server in `http.rs`, and
//! in `inproc.rs` a `Provider` that sends HTTP requests to that server's router in process and
//! reads the answers with the HTTP client's own code.

mod config;
mod http;
mod inproc;
mod provider;
mod refusal;
mod state;
mod stats;

pub use config::SimConfig;
pub use http::{base_url, router, serve};
pub use inproc::{InProcess, IN_PROCESS_BASE_URL};
pub use provider::Simulator;
pub use stats::{CreatedSnapshot, DeletedSnapshot, Downtime, PowerEvent, SimStats};

#[cfg(test)]
mod tests;
