//! snapshot-scheduler: takes VPS snapshots on a schedule, keeps each server under the
//! provider's cap of 5, and never deletes a snapshot it did not create.
//!
//! Architecture map (a pure core inside an imperative shell):
//! - [`model`]: the provider's data (snapshots, servers, states).
//! - [`provider`]: the one boundary to the provider (a trait, one attempt per call), its
//!   errors, and a listing put together from its pages.
//! - [`client`]: that boundary over HTTP: request budget, pages, readable errors; answers
//!   checked (no redirects, bounded size, records for what was asked, bad ones skipped).
//! - [`retry`]: every retry rule, for every provider: reads, deletes, creates looked up by
//!   name before a re-send, power requests looked at before a re-send.
//! - [`text`]: provider text made safe to log, print and send (controls, bidi, chat markup).
//! - [`simulator`]: the same boundary in memory, and served over HTTP, for tests and `--simulate`;
//!   `InProcess` speaks HTTP to it without a socket, read by the client's own code (the soak).
//! - [`config`]: the TOML file, validated into domain types with file:line:column errors.
//! - [`policy`]: a validated policy and the naming rule for its own snapshots.
//! - [`schedule`]: when a policy fires, in its timezone.
//! - [`daemon`]: `run`: signals, reload, systemd notifications, metrics, draining on shutdown.
//! - [`runlog`]: the last run of each policy on each server, for `status`, and the slot each
//!   policy handled last, so a restart catches up only a slot that was missed.
//! - [`scheduler`]: when policies fire: one loop, DST-correct, catch-up once and only for a
//!   missed slot, no double runs.
//! - [`plan`]: the pure planner: what the slot gets on one server (a typed outcome) and what
//!   is deleted, each with a reason.
//! - [`hooks`]: pre/post hooks: argv commands in their own process group, killed at the timeout.
//! - [`journal`]: the power journal that makes "a stopped server is started again" survive crashes.
//! - [`shared`]: the state two hosts share (`[ha]`): writes fenced by the leader's epoch.
//! - [`state_file`]: files in `state_dir` written and read so a crash loses nothing.
//! - [`ledger`]: every create sent and its answer, so a lost answer never makes a name twice.
//! - [`execute`]: the one place with effects: prepare (reads) → plan → apply (stop, create,
//!   wait, start, prune); a dry run and `plan` stop before apply.
//! - [`report`]: what one run came to on one server; written by `execute`, kept by `runlog`.
//! - [`shutdown`]: SIGTERM/SIGINT for `run` and `once`: stop taking work, hurry, the time it takes.
//! - [`status`]: freshness of each policy on each server; the Nagios line.
//! - [`series`]: every Prometheus series exported: names, help texts, buckets.
//! - [`clock`]: wall time as a parameter, so tests can move it.
//! - [`etcd`]: etcd v3 over its JSON gateway, for two hosts: leases, the election's create-if-absent,
//!   reads, and the write fenced by the leader's epoch.
//! - [`alerts`]: webhooks for events and dead-man pings, delivered in the background.
//! - [`ha`]: two hosts, one acting: the election on leases, epochs and self-fencing.
//! - [`context`]: what commands are built from: client, executor, journal, alerts, `--simulate`.
//! - [`format`](mod@format): sizes, ages and tables as the commands, the executor and `status` print them.
//! - [`cli`]: the command line and what each command does.
//! - [`logging`]: tracing set-up (text, JSON, journald).

pub mod alerts;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod context;
pub mod daemon;
pub mod etcd;
pub mod execute;
#[cfg(test)]
mod fixtures;
pub mod format;
pub mod ha;
pub mod hooks;
pub mod journal;
pub mod ledger;
pub mod listing;
pub mod logging;
pub mod model;
pub mod plan;
pub mod policy;
pub mod provider;
pub mod report;
pub mod retry;
pub mod runlog;
pub mod schedule;
pub mod scheduler;
pub mod series;
pub mod shared;
pub mod shutdown;
pub mod simulator;
pub mod state_file;
pub mod status;
pub mod text;
