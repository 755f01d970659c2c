//! Stage 1: the serde mirror of the TOML file. Unknown keys are refused, and every value keeps
//! its span so stage 2 can say where a problem is.

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) api: Spanned<RawApi>,
    #[serde(default)]
    pub(super) daemon: RawDaemon,
    #[serde(default)]
    pub(super) policy: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    pub(super) notify: Vec<Spanned<RawNotify>>,
    pub(super) ha: Option<Spanned<RawHa>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHa {
    pub(super) etcd_endpoints: Spanned<Vec<Spanned<String>>>,
    pub(super) cluster: Spanned<String>,
    pub(super) lease_ttl: Option<Spanned<String>>,
    pub(super) node: Option<Spanned<String>>,
    pub(super) username: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) password_credential: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) url: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) token_credential: Option<Spanned<String>>,
    pub(super) events: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApi {
    pub(super) base_url: Spanned<String>,
    pub(super) token_file: Option<Spanned<String>>,
    pub(super) token_env: Option<Spanned<String>>,
    pub(super) token_credential: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) requests_per_second: Option<Spanned<f64>>,
    pub(super) max_retries: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) state_dir: Option<Spanned<String>>,
    pub(super) max_concurrent: Option<Spanned<i64>>,
    pub(super) poll_interval: Option<Spanned<String>>,
    pub(super) snapshot_timeout: Option<Spanned<String>>,
    pub(super) power_timeout: Option<Spanned<String>>,
    pub(super) shutdown_grace: Option<Spanned<String>>,
    pub(super) log_format: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) name: Spanned<String>,
    pub(super) schedule: Spanned<String>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) servers: Spanned<Vec<Spanned<i64>>>,
    pub(super) keep: Option<Spanned<i64>>,
    pub(super) keep_hourly: Option<Spanned<i64>>,
    pub(super) keep_daily: Option<Spanned<i64>>,
    pub(super) keep_weekly: Option<Spanned<i64>>,
    pub(super) keep_monthly: Option<Spanned<i64>>,
    pub(super) stop_server: Option<bool>,
    pub(super) description: Option<String>,
    pub(super) catch_up: Option<bool>,
    pub(super) prune_unmanaged: Option<bool>,
    pub(super) jitter: Option<Spanned<String>>,
    pub(super) pre_hook: Option<Spanned<Vec<String>>>,
    pub(super) post_hook: Option<Spanned<Vec<String>>>,
    pub(super) hook_timeout: Option<Spanned<String>>,
    pub(super) on_pre_hook_failure: Option<Spanned<String>>,
    pub(super) on_journal_failure: Option<Spanned<String>>,
    pub(super) ping_url: Option<Spanned<String>>,
    pub(super) warn_age: Option<Spanned<String>>,
    pub(super) crit_age: Option<Spanned<String>>,
}
