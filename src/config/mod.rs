//! The operator's TOML file, in two stages: a serde mirror that rejects unknown keys, then a
//! validated [`Config`] in which every value is parsed (cron compiled, timezone resolved,
//! durations typed, token read). Whatever holds a `Config` can trust it; `check` builds exactly
//! what `run` builds. Every error names the file, line, column, key and what is allowed.
//!
//! Here: the whole file ([`Config`], `load`/`parse`, [`ConfigError`]). Stage 1 is `raw.rs`;
//! stage 2 is one file per section (`api.rs`, `daemon.rs`, `policies.rs`, `notify.rs`), over
//! `check.rs` (limits, positions) and `token.rs` (secrets).

use crate::provider::MAX_RETRY_AFTER;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use crate::model::ServerId;
use crate::policy::Policy;

mod api;
mod check;
mod daemon;
mod ha;
mod notify;
mod policies;
mod raw;
mod token;

pub use api::ApiConfig;
pub use check::Problem;
pub use daemon::{DaemonConfig, LogFormat};
pub use ha::{EtcdAuth, HaConfig};
pub use notify::{AlertEvent, NotifyTarget};
pub use token::{TokenSource, CREDENTIAL_NAME};

use api::validate_api;
use check::{key_of_toml_error, line_column, Checker};
use daemon::validate_daemon;
use ha::validate_ha;
use notify::validate_notify;
use policies::validate_policies;
use raw::RawConfig;

pub const DEFAULT_PATH: &str = "/etc/snapshot-scheduler/config.toml";

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub api: ApiConfig,
    pub daemon: DaemonConfig,
    pub policies: Vec<Policy>,
    /// Where alerts go (`[[notify]]`).
    pub notify: Vec<NotifyTarget>,
    /// Two hosts, one acting (`[ha]`); `None`: this host alone, its state in `state_dir`.
    pub ha: Option<HaConfig>,
    /// Things worth telling the operator that do not stop the program (group-readable token).
    pub warnings: Vec<String>,
}

/// How a config is loaded: `--simulate` needs no token (the simulated provider has its own).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub simulate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", render(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| {
            format!(
                "{}:{}:{}: {}: {}",
                path.display(),
                p.line,
                p.column,
                p.key,
                p.message
            )
        })
        .collect();
    let noun = if lines.len() == 1 { "error" } else { "errors" };
    format!(
        "invalid config ({} {noun}):\n  {}",
        lines.len(),
        lines.join("\n  ")
    )
}

/// A config is a few kilobytes; a path to a log, a disk image or `/dev/zero` by mistake must
/// not be read whole.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The text of a file the config names or is (the config, a token file, a credential, a CA
/// bundle): a regular file (a FIFO would wait for a writer forever, and block a reload on
/// SIGHUP with it; a device might never end) of at most `max` bytes.
pub(crate) fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    let bytes = read_regular(path, max)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// The bytes of a regular file of at most `max` bytes (see [`read_text`]).
pub(crate) fn read_regular(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    // Opened without waiting (a FIFO without a writer would block the open), then judged by
    // what was opened, not by the path: a path swapped between a look and the open is no way
    // round the check.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a directory, a FIFO or a device); allowed: a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        let limit = if max >= 1 << 20 {
            format!("{} MiB", max >> 20)
        } else {
            format!("{} KiB", max >> 10)
        };
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {limit}; allowed: at most that"),
        ));
    }
    Ok(bytes)
}

/// A secret (a token, a password) is a line; a file far larger is not one.
pub(crate) const MAX_SECRET_BYTES: u64 = 64 << 10;

impl Config {
    /// Reads, parses and validates the file; reads the token too (unless simulating).
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self, ConfigError> {
        let source = read_text(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &source, options, &std::env::vars().collect())
    }

    /// Validates `source` as if read from `path`; `env` stands in for the process environment.
    pub fn parse(
        path: &Path,
        source: &str,
        options: LoadOptions,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawConfig = toml::from_str(source).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let (line, column) = line_column(source, offset);
            invalid(vec![Problem {
                line,
                column,
                key: key_of_toml_error(e.message(), source, offset),
                message: e.message().trim().to_owned(),
            }])
        })?;
        let mut check = Checker {
            source,
            problems: Vec::new(),
        };
        let mut warnings = Vec::new();
        let api = validate_api(&mut check, &raw.api, options.simulate, env, &mut warnings);
        let daemon = validate_daemon(&mut check, &raw.daemon);
        let policies = validate_policies(&mut check, &raw.policy, raw.api.span());
        let notify = raw
            .notify
            .iter()
            .map(|n| validate_notify(&mut check, n, env, &mut warnings))
            .collect();
        let ha = raw
            .ha
            .as_ref()
            .and_then(|h| validate_ha(&mut check, h, env, &mut warnings));
        if !check.problems.is_empty() {
            return Err(invalid(check.problems));
        }
        if let Some(w) = short_power_timeout(&daemon, &policies) {
            warnings.push(w);
        }
        Ok(Self {
            path: path.to_owned(),
            api,
            daemon,
            policies,
            notify,
            ha,
            warnings,
        })
    }

    pub fn policy(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// Every server any policy names, once, in order.
    pub fn servers(&self) -> Vec<ServerId> {
        let mut seen = HashSet::new();
        self.policies
            .iter()
            .flat_map(|p| p.servers.iter().copied())
            .filter(|s| seen.insert(*s))
            .collect()
    }
}

/// A 429's `Retry-After` (honoured up to [`MAX_RETRY_AFTER`]) pauses every request, the start
/// of a server stopped for a snapshot among them: a `power_timeout` not well above it can run
/// out while the start waits, and a server that would start is reported left stopped.
fn short_power_timeout(daemon: &DaemonConfig, policies: &[Policy]) -> Option<String> {
    let least = MAX_RETRY_AFTER * 2;
    let stops = policies.iter().any(|p| p.stop_server);
    (stops && daemon.power_timeout < least).then(|| {
        format!(
            "daemon.power_timeout {} is shorter than {}: a provider's Retry-After (honoured up \
             to {}) pauses every request, the start of a server stopped for a snapshot \
             included, so the start could run out of power_timeout and the server be reported \
             left stopped; set power_timeout to at least {}",
            humantime::format_duration(daemon.power_timeout),
            humantime::format_duration(least),
            humantime::format_duration(MAX_RETRY_AFTER),
            humantime::format_duration(least),
        )
    })
}
