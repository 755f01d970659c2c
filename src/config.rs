//! The operator's TOML file, in two stages: a serde mirror that rejects unknown keys, then a
//! validated [`Config`] in which every value is parsed (cron compiled, timezone resolved,
//! durations typed, token read). Whatever holds a `Config` can trust it; `check` builds exactly
//! what `run` builds. Every error names the file, line, column, key and what is allowed.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use toml::Spanned;

use crate::model::ServerId;
use crate::policy::{JournalFailure, Policy, Retention, MAX_POLICY_NAME, SERVER_CAP};
use crate::schedule::Schedule;

pub const DEFAULT_PATH: &str = "/etc/snapshot-scheduler/config.toml";
/// The file systemd's `LoadCredential=api-token:...` puts in `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "api-token";

// What each limit allows. The upper bounds keep every deadline computed from a value
// (`Instant::now() + snapshot_timeout`, `power_timeout * 2 + 30 s`, a journal deadline of
// `now + power_timeout + snapshot_timeout`, the request budget's `1 / requests_per_second`)
// far from overflow; the lower bounds keep loops from spinning. Sub-second minimums let a
// test against the simulated provider time out in a moment.
const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const API_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(10 * MINUTE);
const REQUESTS_PER_SECOND: RangeInclusive<f64> = 0.01..=1000.0;
const MAX_RETRIES: Range<i64> = 0..21;
const MAX_CONCURRENT: Range<i64> = 1..1025;
const POLL_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(HOUR);
const SNAPSHOT_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(7 * DAY);
const POWER_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(2 * HOUR);
const SHUTDOWN_GRACE: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(HOUR);
const JITTER: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(DAY);
const HOOK_TIMEOUT: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(DAY);
/// `warn_age` and `crit_age`.
const AGE: RangeInclusive<Duration> = Duration::from_secs(MINUTE)..=Duration::from_secs(400 * DAY);

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub api: ApiConfig,
    pub daemon: DaemonConfig,
    pub policies: Vec<Policy>,
    /// Where alerts go (`[[notify]]`).
    pub notify: Vec<NotifyTarget>,
    /// Things worth telling the operator that do not stop the program (group-readable token).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Without a trailing slash, e.g. `https://admin.vps.org/api/v1`.
    pub base_url: String,
    /// `None` only when loaded for `--simulate`, which brings its own token.
    pub token: Option<SecretString>,
    pub token_source: TokenSource,
    pub timeout: Duration,
    pub requests_per_second: f64,
    pub max_retries: u32,
}

/// Where the token came from, for error messages ("check token_file /etc/...").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    File(PathBuf),
    Env(String),
    Credential(PathBuf),
    Simulated,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "token_file {}", p.display()),
            Self::Env(v) => write!(f, "token_env ${v}"),
            Self::Credential(p) => write!(f, "the systemd credential {}", p.display()),
            Self::Simulated => f.write_str("the simulated provider's token"),
        }
    }
}

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

/// A webhook that hears about some events.
#[derive(Debug, Clone)]
pub struct NotifyTarget {
    pub url: String,
    pub token: Option<SecretString>,
    pub events: Vec<AlertEvent>,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    Failure,
    Recovered,
    CapBlocked,
    ServerLeftStopped,
    ConfigReloadFailed,
}

impl AlertEvent {
    pub const ALL: [Self; 5] = [
        Self::Failure,
        Self::Recovered,
        Self::CapBlocked,
        Self::ServerLeftStopped,
        Self::ConfigReloadFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Recovered => "recovered",
            Self::CapBlocked => "cap_blocked",
            Self::ServerLeftStopped => "server_left_stopped",
            Self::ConfigReloadFailed => "config_reload_failed",
        }
    }
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

/// How a config is loaded: `--simulate` needs no token (the simulated provider has its own).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub simulate: bool,
}

/// One problem in the file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
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

// ---- stage 1: the serde mirror -------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    api: Spanned<RawApi>,
    #[serde(default)]
    daemon: RawDaemon,
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    notify: Vec<Spanned<RawNotify>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    url: Spanned<String>,
    token_file: Option<Spanned<String>>,
    token_credential: Option<Spanned<String>>,
    events: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    base_url: Spanned<String>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_credential: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    requests_per_second: Option<Spanned<f64>>,
    max_retries: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<Spanned<String>>,
    max_concurrent: Option<Spanned<i64>>,
    poll_interval: Option<Spanned<String>>,
    snapshot_timeout: Option<Spanned<String>>,
    power_timeout: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
    log_format: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    schedule: Spanned<String>,
    timezone: Option<Spanned<String>>,
    servers: Spanned<Vec<Spanned<i64>>>,
    keep: Option<Spanned<i64>>,
    keep_hourly: Option<Spanned<i64>>,
    keep_daily: Option<Spanned<i64>>,
    keep_weekly: Option<Spanned<i64>>,
    keep_monthly: Option<Spanned<i64>>,
    stop_server: Option<bool>,
    description: Option<String>,
    catch_up: Option<bool>,
    prune_unmanaged: Option<bool>,
    jitter: Option<Spanned<String>>,
    pre_hook: Option<Spanned<Vec<String>>>,
    post_hook: Option<Spanned<Vec<String>>>,
    hook_timeout: Option<Spanned<String>>,
    on_pre_hook_failure: Option<Spanned<String>>,
    on_journal_failure: Option<Spanned<String>>,
    ping_url: Option<Spanned<String>>,
    warn_age: Option<Spanned<String>>,
    crit_age: Option<Spanned<String>>,
}

// ---- stage 2: validation ---------------------------------------------------------------------

/// Collects problems with their positions while stage 2 walks the mirror.
struct Checker<'a> {
    source: &'a str,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn at(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, column) = line_column(self.source, span.start);
        self.problems.push(Problem {
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(
        &mut self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        allowed: RangeInclusive<Duration>,
    ) -> Duration {
        let Some(v) = value else { return default };
        let range = format!(
            "{}..={}",
            written(*allowed.start()),
            written(*allowed.end())
        );
        match humantime::parse_duration(v.get_ref()) {
            Ok(d) if allowed.contains(&d) => d,
            Ok(_) => {
                self.at(
                    v.span(),
                    key,
                    format!("\"{}\" is out of range; allowed: {range}", v.get_ref()),
                );
                default
            }
            Err(e) => {
                self.at(
                    v.span(),
                    key,
                    format!(
                        "\"{}\" is not a duration ({e}); allowed: {range}, written like \"30s\", \
                         \"15m\" or \"1h 30m\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn count(&mut self, value: &Option<Spanned<i64>>, key: &str, allowed: Range<i64>) -> u32 {
        let Some(v) = value else { return 0 };
        let n = *v.get_ref();
        if allowed.contains(&n) {
            n as u32
        } else {
            self.at(
                v.span(),
                key,
                format!(
                    "{n} is out of range; allowed: {}..={}",
                    allowed.start,
                    allowed.end - 1
                ),
            );
            0
        }
    }
}

/// A limit as an operator writes it ("100ms", "10m", "24h", "7d"); `humantime` reads it back.
fn written(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        _ if d.subsec_nanos() != 0 => format!("{}ms", d.as_millis()),
        0 => "0s".to_owned(),
        s if s % DAY == 0 && s >= 2 * DAY => format!("{}d", s / DAY),
        s if s % HOUR == 0 => format!("{}h", s / HOUR),
        s if s % MINUTE == 0 => format!("{}m", s / MINUTE),
        s => format!("{s}s"),
    }
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

impl Config {
    /// Reads, parses and validates the file; reads the token too (unless simulating).
    pub fn load(path: &Path, options: LoadOptions) -> Result<Self, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
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
        let api = validate_api(&mut check, &raw.api, options, env, &mut warnings);
        let daemon = validate_daemon(&mut check, &raw.daemon);
        let policies = validate_policies(&mut check, &raw.policy, raw.api.span());
        let notify = raw
            .notify
            .iter()
            .map(|n| validate_notify(&mut check, n, env, &mut warnings))
            .collect();
        if !check.problems.is_empty() {
            return Err(invalid(check.problems));
        }
        Ok(Self {
            path: path.to_owned(),
            api,
            daemon,
            policies,
            notify,
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

/// serde names the key in its message ("unknown field `kep`", "missing field `name`"); a
/// syntax error in a value (`keep = three`) is on the line that assigns the key.
fn key_of_toml_error(message: &str, source: &str, offset: usize) -> String {
    if let Some(field) = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("field"))
    {
        return field.to_owned();
    }
    let before = source.get(..offset).unwrap_or_default();
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    match line.split_once('=').map(|(key, _)| key.trim()) {
        Some(key)
            if !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) =>
        {
            key.to_owned()
        }
        _ => "toml".to_owned(),
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn validate_api(
    check: &mut Checker<'_>,
    api: &Spanned<RawApi>,
    options: LoadOptions,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> ApiConfig {
    let raw = api.get_ref();
    let url_text = raw.base_url.get_ref().trim_end_matches('/');
    match reqwest::Url::parse(url_text) {
        Ok(url) if url.scheme() == "https" => {}
        Ok(url) if url.scheme() == "http" && is_loopback_host(&url) => {}
        Ok(url) if url.scheme() == "http" => check.at(
            raw.base_url.span(),
            "api.base_url",
            format!(
                "http:// to {} would send the token in clear text; allowed: https://, or \
                 http:// to a loopback host (127.0.0.1, ::1, localhost)",
                url.host_str().unwrap_or("?")
            ),
        ),
        Ok(url) => check.at(
            raw.base_url.span(),
            "api.base_url",
            format!(
                "scheme \"{}\" is not allowed; allowed: https://",
                url.scheme()
            ),
        ),
        Err(e) => check.at(
            raw.base_url.span(),
            "api.base_url",
            format!(
                "\"{url_text}\" is not a URL ({e}); allowed: e.g. \"https://admin.vps.org/api/v1\""
            ),
        ),
    }

    let (token, token_source) = if options.simulate {
        (None, TokenSource::Simulated)
    } else {
        read_token(check, api, env, warnings)
    };

    let timeout = check.duration(
        &raw.timeout,
        "api.timeout",
        Duration::from_secs(30),
        API_TIMEOUT,
    );
    let requests_per_second = match &raw.requests_per_second {
        None => 10.0,
        Some(v) if REQUESTS_PER_SECOND.contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            // As written: Display would spell 1e-300 with 300 zeros.
            let written = check.source.get(v.span()).unwrap_or_default().to_owned();
            check.at(
                v.span(),
                "api.requests_per_second",
                format!(
                    "{written} is out of range; allowed: {}..={}",
                    REQUESTS_PER_SECOND.start(),
                    REQUESTS_PER_SECOND.end()
                ),
            );
            10.0
        }
    };
    let max_retries = match &raw.max_retries {
        None => 5,
        Some(_) => check.count(&raw.max_retries, "api.max_retries", MAX_RETRIES),
    };
    ApiConfig {
        base_url: url_text.to_owned(),
        token,
        token_source,
        timeout,
        requests_per_second,
        max_retries,
    }
}

fn read_token(
    check: &mut Checker<'_>,
    api: &Spanned<RawApi>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> (Option<SecretString>, TokenSource) {
    let raw = api.get_ref();
    let sources = [
        ("token_file", &raw.token_file),
        ("token_env", &raw.token_env),
        ("token_credential", &raw.token_credential),
    ];
    let set: Vec<(&str, &Spanned<String>)> = sources
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (*key, v)))
        .collect();
    if let [(first, _), (second, value), ..] = set[..] {
        check.at(
            value.span(),
            format!("api.{second}"),
            format!(
                "{first} and {second} are both set; allowed: one of token_file, token_env, \
                 token_credential"
            ),
        );
    }
    if let Some(var) = &raw.token_env {
        let source = TokenSource::Env(var.get_ref().clone());
        let token = match env.get(var.get_ref()) {
            Some(t) if !t.trim().is_empty() => {
                secret(t).map_err(|e| format!("${} {e}", var.get_ref()))
            }
            _ => Err(format!(
                "the environment variable {} is not set or empty",
                var.get_ref()
            )),
        };
        return match token {
            Ok(t) => (Some(t), source),
            Err(e) => {
                check.at(var.span(), "api.token_env", e);
                (None, source)
            }
        };
    }
    if let Some(name) = &raw.token_credential {
        return read_credential(
            check,
            name.span(),
            "api.token_credential",
            name.get_ref(),
            env,
        );
    }
    if let Some(f) = &raw.token_file {
        let path = PathBuf::from(f.get_ref());
        let token = read_secret_file(
            check,
            f.span(),
            "api.token_file",
            &path,
            CREDENTIAL_NAME,
            warnings,
        );
        return (token, TokenSource::File(path));
    }
    if env.contains_key(CREDENTIALS_DIRECTORY) {
        return read_credential(check, api.span(), "api", CREDENTIAL_NAME, env);
    }
    check.at(
        api.span(),
        "api",
        "no token source; allowed: token_file = \"/etc/snapshot-scheduler/token\", \
         token_env = \"VPS_API_TOKEN\", token_credential = \"NAME\", or none of them under \
         systemd with LoadCredential=api-token:... ($CREDENTIALS_DIRECTORY/api-token)",
    );
    (None, TokenSource::Simulated)
}

/// Where systemd puts a unit's credentials (`LoadCredential=NAME:PATH` makes `NAME` there).
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// A secret from a systemd credential, `$CREDENTIALS_DIRECTORY/<name>`. This is how a unit
/// whose user cannot read root's files (`DynamicUser=yes`) gets its secrets: systemd reads
/// the file as root and hands the service a private copy. That copy's mode is systemd's
/// (0400, or 0440 with an ACL for the service user) in a directory only the service can
/// enter, so the token-file mode rule does not apply to it.
fn read_credential(
    check: &mut Checker<'_>,
    span: Range<usize>,
    key: &str,
    name: &str,
    env: &BTreeMap<String, String>,
) -> (Option<SecretString>, TokenSource) {
    if !valid_credential_name(name) {
        check.at(
            span,
            key,
            format!(
                "\"{name}\" is not a credential name; allowed: 1 to 255 letters, digits, '-', \
                 '_', '.' or '@', not starting with '.' (the NAME of LoadCredential=NAME:PATH)"
            ),
        );
        return (None, TokenSource::Credential(PathBuf::from(name)));
    }
    let path = if name == CREDENTIAL_NAME {
        // The file the shipped unit loads.
        "/etc/snapshot-scheduler/token".to_owned()
    } else {
        format!("/etc/snapshot-scheduler/{name}")
    };
    let load = format!("LoadCredential={name}:{path}");
    let Some(dir) = env.get(CREDENTIALS_DIRECTORY) else {
        check.at(
            span,
            key,
            format!(
                "the systemd credential \"{name}\" is not available: ${CREDENTIALS_DIRECTORY} \
                 is not set (systemd sets it for a unit that loads credentials); allowed: add \
                 {load} to the unit (systemctl edit snapshot-scheduler), or token_file outside \
                 systemd"
            ),
        );
        return (None, TokenSource::Credential(PathBuf::from(name)));
    };
    let file = Path::new(dir).join(name);
    let source = TokenSource::Credential(file.clone());
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check.at(
                span,
                key,
                format!(
                    "the systemd credential \"{name}\" is missing ({}: {e}); allowed: a \
                     credential the unit loads: add {load} to the unit (systemctl edit \
                     snapshot-scheduler)",
                    file.display()
                ),
            );
            return (None, source);
        }
        Err(e) => {
            check.at(
                span,
                key,
                format!(
                    "cannot read the systemd credential \"{name}\" ({}): {e}",
                    file.display()
                ),
            );
            return (None, source);
        }
    };
    match secret(&text) {
        Ok(token) => (Some(token), source),
        Err(e) => {
            check.at(span, key, format!("the systemd credential \"{name}\" {e}"));
            (None, source)
        }
    }
}

/// systemd takes any file name; this is the safe part of that (no path, no `:` that would
/// end the NAME in `LoadCredential=NAME:PATH`).
fn valid_credential_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// A secret as it goes into an `Authorization: Bearer` header: surrounding whitespace (a
/// file's trailing newline) removed, and nothing left inside that a token does not hold or a
/// header cannot carry: a line break inside would pass `check` and then fail every request.
/// The error says what was found and where, never the secret; the caller names the source.
fn secret(text: &str) -> Result<SecretString, String> {
    let token = text.trim();
    if token.is_empty() {
        return Err("is empty".to_owned());
    }
    if let Some((at, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    {
        let what = match c {
            '\n' | '\r' => "a line break",
            ' ' => "a space",
            '\t' => "a tab",
            c if c.is_control() => "a control character",
            _ => "a non-ASCII character",
        };
        return Err(format!(
            "holds {what} at character {}; allowed: one line of printable ASCII without \
             spaces (a trailing newline is fine)",
            at + 1
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// Reads a token file, refusing one readable by others and warning on group-readable (ssh's
/// rule for private keys). `credential` is the credential name to suggest when this user
/// cannot read the file (the unit's dynamic user cannot read root's files).
fn read_secret_file(
    check: &mut Checker<'_>,
    span: Range<usize>,
    key: &str,
    path: &Path,
    credential: &str,
    warnings: &mut Vec<String>,
) -> Option<SecretString> {
    match token_file_mode(path) {
        Err(e) => {
            check.at(span, key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
        Ok(mode) if mode & 0o007 != 0 => {
            check.at(
                span,
                key,
                format!(
                    "{} is readable by others (mode {:o}); allowed: readable by its owner only \
                     (chmod 600 {})",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ),
            );
            return None;
        }
        Ok(mode) if mode & 0o070 != 0 => warnings.push(format!(
            "{} is readable by its group (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )),
        Ok(_) => {}
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            check.at(
                span,
                key,
                format!(
                    "cannot read {path}: {e}; allowed: a file this user can read, or (under the \
                     systemd unit, whose dynamic user cannot read root's files) \
                     token_credential = \"{credential}\" with \
                     LoadCredential={credential}:{path} in the unit",
                    path = path.display()
                ),
            );
            return None;
        }
        Err(e) => {
            check.at(span, key, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    secret(&text)
        .map_err(|e| check.at(span, key, format!("{} {e}", path.display())))
        .ok()
}

#[cfg(unix)]
fn token_file_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode())
}

#[cfg(not(unix))]
fn token_file_mode(path: &Path) -> std::io::Result<u32> {
    std::fs::metadata(path).map(|_| 0o600)
}

fn validate_daemon(check: &mut Checker<'_>, raw: &RawDaemon) -> DaemonConfig {
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

fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn validate_policies(
    check: &mut Checker<'_>,
    raw: &[Spanned<RawPolicy>],
    api_span: Range<usize>,
) -> Vec<Policy> {
    if raw.is_empty() {
        check.at(
            api_span,
            "policy",
            "no [[policy]] section; allowed: one or more [[policy]] with name, schedule, servers",
        );
    }
    let mut policies = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    // server -> [(policy index, policy name, rules total)].
    let mut per_server: BTreeMap<ServerId, Vec<(usize, String, u32)>> = BTreeMap::new();

    for (index, spanned) in raw.iter().enumerate() {
        let p = spanned.get_ref();
        let name = p.name.get_ref().clone();
        let label = if valid_policy_name(&name) {
            format!("policy \"{name}\"")
        } else {
            format!("policy #{}", index + 1)
        };
        if !valid_policy_name(&name) {
            check.at(
                p.name.span(),
                format!("{label}.name"),
                format!(
                    "\"{name}\" is not a policy name; allowed: 1 to {MAX_POLICY_NAME} letters, \
                     digits, '-' or '_' (it prefixes the policy's snapshot names)"
                ),
            );
        } else if let Some(first) = names.insert(name.clone(), index) {
            check.at(
                p.name.span(),
                format!("{label}.name"),
                format!(
                    "policy \"{name}\" is defined twice (also policy #{}); allowed: unique names",
                    first + 1
                ),
            );
        }

        let tz = match &p.timezone {
            None => chrono_tz::UTC,
            Some(t) => t.get_ref().parse().unwrap_or_else(|_| {
                check.at(
                    t.span(),
                    format!("{label}.timezone"),
                    format!(
                        "\"{}\" is not a known timezone; allowed: an IANA name such as \
                         \"Europe/Berlin\" or \"UTC\"",
                        t.get_ref()
                    ),
                );
                chrono_tz::UTC
            }),
        };
        let schedule = Schedule::parse(p.schedule.get_ref(), tz)
            .map_err(|e| {
                check.at(
                    p.schedule.span(),
                    format!("{label}.schedule"),
                    format!("\"{}\": {e}", p.schedule.get_ref()),
                )
            })
            .ok();

        let mut servers = Vec::new();
        if p.servers.get_ref().is_empty() {
            check.at(
                p.servers.span(),
                format!("{label}.servers"),
                "is empty; allowed: a list of one or more server ids, e.g. [12345, 12346]",
            );
        }
        for s in p.servers.get_ref() {
            let id = *s.get_ref();
            if id <= 0 {
                check.at(
                    s.span(),
                    format!("{label}.servers"),
                    format!("{id} is not a server id; allowed: positive integers"),
                );
            } else if servers.contains(&(id as u64)) {
                check.at(
                    s.span(),
                    format!("{label}.servers"),
                    format!("server {id} is listed twice"),
                );
            } else {
                servers.push(id as u64);
            }
        }

        let retention = validate_retention(check, p, &label);
        let jitter = p.jitter.as_ref().map(|_| {
            check.duration(
                &p.jitter,
                &format!("{label}.jitter"),
                Duration::ZERO,
                JITTER,
            )
        });
        for s in &servers {
            per_server
                .entry(*s)
                .or_default()
                .push((index, name.clone(), retention.total()));
        }
        let hooks = validate_hooks(check, p, &label);
        // An invalid age falls back to the end of the range that adds no warn/crit error.
        let monitoring = crate::policy::Monitoring {
            ping_url: p.ping_url.as_ref().and_then(|u| {
                checked_url(check, u, &format!("{label}.ping_url"))
                    .then(|| u.get_ref().trim_end_matches('/').to_owned())
            }),
            warn_age: p.warn_age.as_ref().map(|_| {
                check.duration(&p.warn_age, &format!("{label}.warn_age"), *AGE.start(), AGE)
            }),
            crit_age: p.crit_age.as_ref().map(|_| {
                check.duration(&p.crit_age, &format!("{label}.crit_age"), *AGE.end(), AGE)
            }),
        };
        if let (Some(w), Some(c)) = (monitoring.warn_age, monitoring.crit_age) {
            if w > c {
                if let Some(span) = p.warn_age.as_ref().map(Spanned::span) {
                    check.at(
                        span,
                        format!("{label}.warn_age"),
                        "is longer than crit_age; allowed: warn_age <= crit_age",
                    );
                }
            }
        }
        let on_journal_failure = match &p.on_journal_failure {
            None => JournalFailure::Skip,
            Some(v) => match v.get_ref().as_str() {
                "skip" => JournalFailure::Skip,
                "snapshot_running" => JournalFailure::SnapshotRunning,
                other => {
                    check.at(
                        v.span(),
                        format!("{label}.on_journal_failure"),
                        format!(
                            "\"{other}\" is not allowed; allowed: \"skip\" or \"snapshot_running\""
                        ),
                    );
                    JournalFailure::Skip
                }
            },
        };
        if let Some(schedule) = schedule {
            policies.push(Policy {
                name: name.clone(),
                schedule,
                servers,
                retention,
                stop_server: p.stop_server.unwrap_or(false),
                description: p
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("{name} snapshot by snapshot-scheduler")),
                catch_up: p.catch_up.unwrap_or(true),
                prune_unmanaged: p.prune_unmanaged.unwrap_or(false),
                jitter,
                hooks,
                monitoring,
                on_journal_failure,
            });
        }
    }

    // The cap: the provider refuses a 6th snapshot, so the rules on one server must fit in 5.
    for (server, users) in &per_server {
        let total: u32 = users.iter().map(|(_, _, n)| n).sum();
        if total as usize > SERVER_CAP {
            let (index, last, _) = users.last().expect("at least one policy per listed server");
            let list: Vec<String> = users
                .iter()
                .map(|(_, name, n)| format!("{name} keeps {n}"))
                .collect();
            check.at(
                raw[*index].get_ref().servers.span(),
                format!("policy \"{last}\".servers"),
                format!(
                    "server {server}: policies together keep {total} snapshots ({}); allowed: at \
                     most {SERVER_CAP} per server, the provider refuses the 6th",
                    list.join(", ")
                ),
            );
        }
    }
    policies
}

fn validate_retention(check: &mut Checker<'_>, p: &RawPolicy, label: &str) -> Retention {
    let mut r = Retention {
        keep: 0,
        hourly: check.count(&p.keep_hourly, &format!("{label}.keep_hourly"), 0..6),
        daily: check.count(&p.keep_daily, &format!("{label}.keep_daily"), 0..6),
        weekly: check.count(&p.keep_weekly, &format!("{label}.keep_weekly"), 0..6),
        monthly: check.count(&p.keep_monthly, &format!("{label}.keep_monthly"), 0..6),
    };
    match &p.keep {
        Some(_) => r.keep = check.count(&p.keep, &format!("{label}.keep"), 1..6),
        // Without any rule the default is keep = 3; calendar rules alone are fine too.
        None if r.is_empty() => r.keep = 3,
        None => {}
    }
    r
}

/// `https://`, or `http://` to a loopback host, like `base_url`. Returns whether it is fine.
/// Webhook and ping URLs are secrets: errors show only their scheme and host.
fn checked_url(check: &mut Checker<'_>, url: &Spanned<String>, key: &str) -> bool {
    match reqwest::Url::parse(url.get_ref()) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" && is_loopback_host(&u) => true,
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            check.at(
                url.span(),
                key,
                format!(
                    "\"{}://{}{port}/...\" is not allowed; allowed: https://, or http:// to a \
                     loopback host",
                    u.scheme(),
                    u.host_str().unwrap_or("")
                ),
            );
            false
        }
        Err(e) => {
            check.at(
                url.span(),
                key,
                format!("is not a URL ({e}); allowed: https://..."),
            );
            false
        }
    }
}

fn validate_hooks(check: &mut Checker<'_>, p: &RawPolicy, label: &str) -> crate::policy::Hooks {
    let mut argv = |hook: &Option<Spanned<Vec<String>>>, key: &str| {
        let h = hook.as_ref()?;
        if h.get_ref().is_empty() || h.get_ref()[0].trim().is_empty() {
            check.at(
                h.span(),
                format!("{label}.{key}"),
                "is empty; allowed: a command as an argv array, e.g. [\"/usr/local/bin/db-freeze\", \"--wait\"] \
                 (no shell unless you write [\"sh\", \"-c\", \"...\"])",
            );
            return None;
        }
        Some(h.get_ref().clone())
    };
    let pre = argv(&p.pre_hook, "pre_hook");
    let post = argv(&p.post_hook, "post_hook");
    let continue_on_pre_failure = match &p.on_pre_hook_failure {
        None => false,
        Some(v) if v.get_ref() == "skip" => false,
        Some(v) if v.get_ref() == "continue" => true,
        Some(v) => {
            check.at(
                v.span(),
                format!("{label}.on_pre_hook_failure"),
                format!(
                    "\"{}\" is not allowed; allowed: \"skip\" or \"continue\"",
                    v.get_ref()
                ),
            );
            false
        }
    };
    crate::policy::Hooks {
        pre,
        post,
        timeout: check.duration(
            &p.hook_timeout,
            &format!("{label}.hook_timeout"),
            Duration::from_secs(300),
            HOOK_TIMEOUT,
        ),
        continue_on_pre_failure,
    }
}

fn validate_notify(
    check: &mut Checker<'_>,
    raw: &Spanned<RawNotify>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> NotifyTarget {
    let n = raw.get_ref();
    checked_url(check, &n.url, "notify.url");
    if let (Some(_), Some(c)) = (&n.token_file, &n.token_credential) {
        check.at(
            c.span(),
            "notify.token_credential",
            "token_file and token_credential are both set; allowed: one of them",
        );
    }
    let token = match (&n.token_credential, &n.token_file) {
        (Some(name), _) => {
            read_credential(
                check,
                name.span(),
                "notify.token_credential",
                name.get_ref(),
                env,
            )
            .0
        }
        (None, Some(f)) => read_secret_file(
            check,
            f.span(),
            "notify.token_file",
            Path::new(f.get_ref()),
            "webhook-token",
            warnings,
        ),
        (None, None) => None,
    };
    let events = match &n.events {
        None => AlertEvent::ALL.to_vec(),
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|e| {
                let found = AlertEvent::ALL
                    .into_iter()
                    .find(|a| a.as_str() == e.get_ref());
                if found.is_none() {
                    check.at(
                        e.span(),
                        "notify.events",
                        format!(
                            "\"{}\" is not an event; allowed: failure, recovered, cap_blocked, \
                             server_left_stopped, config_reload_failed",
                            e.get_ref()
                        ),
                    );
                }
                found
            })
            .collect(),
    };
    NotifyTarget {
        url: n.url.get_ref().clone(),
        token,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_limit_is_printed_as_an_operator_can_write_it() {
        let cases = [
            (API_TIMEOUT, "1s", "10m"),
            (POLL_INTERVAL, "100ms", "1h"),
            (SNAPSHOT_TIMEOUT, "100ms", "7d"),
            (POWER_TIMEOUT, "1s", "2h"),
            (SHUTDOWN_GRACE, "0s", "1h"),
            (JITTER, "0s", "24h"),
            (HOOK_TIMEOUT, "1s", "24h"),
            (AGE, "1m", "400d"),
        ];
        for (range, start, end) in cases {
            for (bound, text) in [(*range.start(), start), (*range.end(), end)] {
                assert_eq!(written(bound), text);
                assert_eq!(humantime::parse_duration(text).ok(), Some(bound), "{text}");
            }
        }
    }
}
