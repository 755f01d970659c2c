//! `[api]`: where the provider is, how hard to use it, and which token to send.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use toml::Spanned;

use super::check::{is_loopback_host, Checker, API_TIMEOUT, MAX_RETRIES, REQUESTS_PER_SECOND};
use super::raw::RawApi;
use super::token::{read_token, TokenSource};

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

pub(super) fn validate_api(
    check: &mut Checker<'_>,
    api: &Spanned<RawApi>,
    simulate: bool,
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

    let (token, token_source) = if simulate {
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
