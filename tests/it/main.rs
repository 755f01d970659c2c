//! The integration tests: one binary, a module per capability, each driving the real binary or
//! library against the built-in simulated provider (or wiremock for scripted answers).

mod alerts;
mod catch_up;
mod ci;
mod client;
mod commands;
mod common;
mod config;
mod daemon;
mod etcd;
mod etcd_support;
mod faults;
mod fuzz_smoke;
mod ha;
mod ha_support;
mod hostile;
mod layout;
mod monitoring;
mod once;
mod package;
mod requests;
mod restarts;
mod soak;
mod systemd;
