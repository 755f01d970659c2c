//! `[daemon]`: how the service runs: state directory, concurrency, timeouts, logs, metrics.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::check::{
    Checker, MAX_CONCURRENT, POLL_INTERVAL, POWER_TIMEOUT, SHUTDOWN_GRACE, SNAPSHOT_TIMEOUT,
};
use super::raw::RawDaemon;

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub max_concurrent: usize,
    pub poll_interval: Duration,
    pub snapshot_timeout: Duration,
    pub power_timeout: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            "journald" => Ok(Self::Journald),
            other => Err(format!(
                "\"{other}\" is not a log format; allowed: auto, text, json, journald"
            )),
        }
    }
}

pub(super) fn validate_daemon(check: &mut Checker<'_>, raw: &RawDaemon) -> DaemonConfig {
    let state_dir = raw.state_dir.as_ref().map_or_else(
        || PathBuf::from("/var/lib/snapshot-scheduler"),
        |s| PathBuf::from(s.get_ref()),
    );
    let max_concurrent = match &raw.max_concurrent {
        None => 8,
        Some(_) => {
            check.count(&raw.max_concurrent, "daemon.max_concurrent", MAX_CONCURRENT) as usize
        }
    };
    let log_format = match &raw.log_format {
        None => LogFormat::Auto,
        Some(v) => v.get_ref().parse().unwrap_or_else(|e: String| {
            check.at(v.span(), "daemon.log_format", e);
            LogFormat::Auto
        }),
    };
    let metrics_listen = raw.metrics_listen.as_ref().and_then(|v| {
        v.get_ref()
            .parse()
            .map_err(|_| {
                check.at(
                    v.span(),
                    "daemon.metrics_listen",
                    format!(
                        "\"{}\" is not an address; allowed: IP:PORT, e.g. \"127.0.0.1:9187\"",
                        v.get_ref()
                    ),
                )
            })
            .ok()
    });
    DaemonConfig {
        state_dir,
        max_concurrent,
        poll_interval: check.duration(
            &raw.poll_interval,
            "daemon.poll_interval",
            Duration::from_secs(15),
            POLL_INTERVAL,
        ),
        snapshot_timeout: check.duration(
            &raw.snapshot_timeout,
            "daemon.snapshot_timeout",
            Duration::from_secs(30 * 60),
            SNAPSHOT_TIMEOUT,
        ),
        power_timeout: check.duration(
            &raw.power_timeout,
            "daemon.power_timeout",
            Duration::from_secs(600),
            POWER_TIMEOUT,
        ),
        shutdown_grace: check.duration(
            &raw.shutdown_grace,
            "daemon.shutdown_grace",
            Duration::from_secs(60),
            SHUTDOWN_GRACE,
        ),
        log_format,
        metrics_listen,
    }
}
