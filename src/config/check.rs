//! What stage 2 checks with: the allowed range of each limit, a [`Checker`] that collects
//! each [`Problem`] with its line and column, and the wording of "what is allowed".

use std::ops::{Range, RangeInclusive};
use std::time::Duration;

use toml::Spanned;

// What each limit allows. The upper bounds keep every deadline computed from a value
// (`Instant::now() + snapshot_timeout`, `power_timeout * 2 + 30 s`, a journal deadline of
// `now + power_timeout + snapshot_timeout`, the request budget's `1 / requests_per_second`)
// far from overflow; the lower bounds keep loops from spinning. Sub-second minimums let a
// test against the simulated provider time out in a moment.
const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
pub(super) const API_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(10 * MINUTE);
pub(super) const REQUESTS_PER_SECOND: RangeInclusive<f64> = 0.01..=1000.0;
pub(super) const MAX_RETRIES: Range<i64> = 0..21;
pub(super) const MAX_CONCURRENT: Range<i64> = 1..1025;
pub(super) const POLL_INTERVAL: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(HOUR);
pub(super) const SNAPSHOT_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(7 * DAY);
pub(super) const POWER_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(2 * HOUR);
pub(super) const SHUTDOWN_GRACE: RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(HOUR);
pub(super) const JITTER: RangeInclusive<Duration> = Duration::ZERO..=Duration::from_secs(DAY);
pub(super) const HOOK_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(DAY);
/// `warn_age` and `crit_age`.
pub(super) const LEASE_TTL: RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(5 * MINUTE);
pub(super) const AGE: RangeInclusive<Duration> =
    Duration::from_secs(MINUTE)..=Duration::from_secs(400 * DAY);

/// One problem in the file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

/// Collects problems with their positions while stage 2 walks the mirror.
pub(super) struct Checker<'a> {
    pub(super) source: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl Checker<'_> {
    pub(super) fn at(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = line_column(self.source, span.start);
        self.problems.push(Problem {
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
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

    pub(super) fn count(
        &mut self,
        value: &Option<Spanned<i64>>,
        key: &str,
        allowed: Range<i64>,
    ) -> u32 {
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

pub(super) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset.min(source.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// serde names the key in its message ("unknown field `kep`", "missing field `name`"); a
/// syntax error in a value (`keep = three`) is on the line that assigns the key.
pub(super) fn key_of_toml_error(message: &str, source: &str, offset: usize) -> String {
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

pub(super) fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// `https://`, or `http://` to a loopback host, like `base_url`. Returns whether it is fine.
/// Webhook and ping URLs are secrets: errors show only their scheme and host.
pub(super) fn checked_url(check: &mut Checker<'_>, url: &Spanned<String>, key: &str) -> bool {
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
            (LEASE_TTL, "5s", "5m"),
        ];
        for (range, start, end) in cases {
            for (bound, text) in [(*range.start(), start), (*range.end(), end)] {
                assert_eq!(written(bound), text);
                assert_eq!(humantime::parse_duration(text).ok(), Some(bound), "{text}");
            }
        }
    }
}
