//! The provider over HTTP: one shared request budget, `Retry-After` honoured, GET and DELETE
//! retried with jittered exponential backoff, creates never blindly retried (a lost answer is
//! settled by looking for the name), and answers mapped to errors a person can act on.
//! The token lives in a `SecretString` and goes out only in a header marked sensitive.
//!
//! An answer is checked before anything is done with it, because it chooses what is deleted:
//! redirects are refused (never followed, never from https to http), an answer is read up to
//! [`MAX_ANSWER_BYTES`], a create or power answer must be about the snapshot or server asked
//! for, a server's listing keeps only that server's records, and a listed record is read on its
//! own (one that does not fit is an error when it is of a server asked about, and otherwise
//! left out with a warning). Provider text is escaped as it is read ([`crate::text`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::ApiConfig;
use crate::model::{CreateSnapshot, Page, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};
use crate::provider::{ApiError, Provider};
use crate::text;

pub const USER_AGENT: &str = concat!("snapshot-scheduler/", env!("CARGO_PKG_VERSION"));

/// The longest `Retry-After` honoured; longer ones are waited out in steps of this.
pub const MAX_RETRY_AFTER_SECS: u64 = 60;

/// A list that pages longer than this is a provider bug, not a fleet.
const MAX_PAGES: usize = 10_000;

/// The largest answer read: a listing of 10,000 servers at the cap is about 15 MiB.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

/// Records that could not be read, named one by one in a warning; the rest are counted.
const UNREADABLE_NAMED: usize = 5;

/// Pages of one list fetched at once when their numbers are known (DRF's `?page=N`): a fleet's
/// listing is hundreds of pages, and one after another they cost hundreds of round trips.
const PAGES_IN_FLIGHT: usize = 8;

/// The client-side request budget shared by every caller: requests are spaced evenly at
/// `requests_per_second`, and a 429's `Retry-After` pauses everyone, not just the caller that
/// got it. Runs on tokio's clock so paused-time tests see it.
#[derive(Debug)]
pub struct Budget {
    interval: Duration,
    next_free: Mutex<Instant>,
}

impl Budget {
    pub fn new(requests_per_second: f64) -> Self {
        Self {
            interval: Duration::from_secs_f64(1.0 / requests_per_second),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's turn.
    pub async fn acquire(&self) {
        let turn = {
            let mut next = self.next_free.lock().await;
            let turn = (*next).max(Instant::now());
            *next = turn + self.interval;
            turn
        };
        tokio::time::sleep_until(turn).await;
    }

    /// Nobody sends before `now + wait`.
    pub async fn pause(&self, wait: Duration) {
        let mut next = self.next_free.lock().await;
        *next = (*next).max(Instant::now() + wait);
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    origin: String,
    token: SecretString,
    token_source: String,
    budget: Budget,
    max_retries: u32,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base_url", &self.inner.base_url)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl HttpClient {
    pub fn new(api: &ApiConfig, token: SecretString) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(&api.base_url)?;
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(api.timeout)
            .connect_timeout(api.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(parsed.scheme() == "https")
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url: api.base_url.trim_end_matches('/').to_owned(),
                origin: parsed.origin().ascii_serialization(),
                token,
                token_source: api.token_source.to_string(),
                budget: Budget::new(api.requests_per_second),
                max_retries: api.max_retries,
                timeout: api.timeout,
            }),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.inner.base_url)
    }

    /// One request, no retry; the body of a 2xx answer. `what` names the operation in errors ("list snapshots").
    /// Boxed: every request is built on this, and inline its state made each operation in
    /// flight kilobytes, which thousands of servers waiting for their snapshots all carry.
    async fn attempt(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        endpoint: &'static str,
        what: &str,
    ) -> Result<bytes::Bytes, ApiError> {
        Box::pin(self.exchange(method, url, body, endpoint, what)).await
    }

    async fn exchange(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
        endpoint: &'static str,
        what: &str,
    ) -> Result<bytes::Bytes, ApiError> {
        let inner = &self.inner;
        inner.budget.acquire().await;
        let mut request = inner
            .http
            .request(method.clone(), url)
            .bearer_auth(inner.token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = Instant::now();
        let result = request.send().await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("snapshot_scheduler_api_requests_total", "endpoint" => endpoint, "status" => "error").increment(1);
                return Err(transport_error(e, what, inner.timeout));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            // A provider's word, bounded: an absurd value must not hold back starting a
            // server this program stopped (nor overflow a deadline).
            .map(|secs| secs.min(MAX_RETRY_AFTER_SECS))
            .map(Duration::from_secs);
        if status.is_redirection() {
            metrics::counter!("snapshot_scheduler_api_requests_total", "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .map_or_else(
                    || "nowhere (no Location header)".to_owned(),
                    |l| text::message(&String::from_utf8_lossy(l.as_bytes())),
                );
            return Err(ApiError::Redirect {
                what: what.to_owned(),
                status: status.as_u16(),
                location,
            });
        }
        let body = read_body(response, what, inner.timeout).await?;
        metrics::counter!("snapshot_scheduler_api_requests_total", "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
        tracing::debug!(%method, endpoint, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "api request");
        if status.is_success() {
            return Ok(body);
        }
        let message = provider_message(&body);
        let what = what.to_owned();
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ApiError::Unauthorized {
                token_source: inner.token_source.clone(),
            },
            StatusCode::BAD_REQUEST => ApiError::BadRequest { what, message },
            StatusCode::NOT_FOUND => ApiError::NotFound { what, message },
            StatusCode::TOO_MANY_REQUESTS => {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                inner.budget.pause(wait).await;
                ApiError::RateLimited { what, retry_after }
            }
            s if s.is_server_error() => ApiError::Server {
                what,
                status: s.as_u16(),
                message,
            },
            s => ApiError::Unexpected {
                what,
                status: s.as_u16(),
                message,
            },
        })
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(60))
            .with_max_times(self.inner.max_retries as usize)
            .with_jitter()
    }

    /// An idempotent request, retried on 429, 5xx, timeouts and resets.
    async fn idempotent(
        &self,
        method: Method,
        url: &str,
        endpoint: &'static str,
        what: &str,
    ) -> Result<bytes::Bytes, ApiError> {
        (|| self.attempt(method.clone(), url, None, endpoint, what))
            .retry(self.backoff())
            .when(ApiError::is_retryable)
            .adjust(|e, delay| match e {
                ApiError::RateLimited {
                    retry_after: Some(wait),
                    ..
                } => delay.map(|d| d.max(*wait)),
                _ => delay,
            })
            .notify(|e, delay| {
                tracing::warn!(error = %e, retry_in = ?delay, "api request failed; retrying");
            })
            .await
    }

    async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        endpoint: &'static str,
        what: &str,
    ) -> Result<T, ApiError> {
        let answer = self.idempotent(Method::GET, url, endpoint, what).await?;
        decode(&answer, what)
    }

    /// A non-idempotent POST (stop, start, restore) sent once: the caller decides what a
    /// failure means, because repeating it blindly could act twice.
    async fn post_once<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
        endpoint: &'static str,
        what: &str,
    ) -> Result<T, ApiError> {
        let answer = self
            .attempt(Method::POST, &self.url(path), body, endpoint, what)
            .await?;
        decode(&answer, what)
    }

    /// A `next` link as a URL to request: never off the configured host, because the token
    /// would go along. A proxy that ends TLS may write http:// links to the same host; those
    /// are followed over the configured scheme.
    fn follow(&self, next: &str, what: &str) -> Result<String, ApiError> {
        let on_our_host = reqwest::Url::parse(next).ok().and_then(|u| {
            let ours = reqwest::Url::parse(&self.inner.origin).ok()?;
            (u.host_str() == ours.host_str()
                && (u.origin() == ours.origin()
                    || u.port_or_known_default() == Some(80)
                        && ours.port_or_known_default() == Some(443)))
            .then(|| format!("{}{}", self.inner.origin, &u[url::Position::BeforePath..]))
        });
        on_our_host.ok_or_else(|| ApiError::Decode {
            what: what.to_owned(),
            message: format!(
                "field next: \"{}\" is not on {}; refusing to follow it",
                text::message(next),
                self.inner.origin
            ),
        })
    }

    /// A page of a listing, each record read on its own.
    async fn page(&self, url: &str, what: &str) -> Result<ListedPage, ApiError> {
        let answer = self.idempotent(Method::GET, url, "list", what).await?;
        decode_page(&answer, what)
    }

    /// These pages, [`PAGES_IN_FLIGHT`] at a time, in order; with the last one's `next` (the
    /// list grew meanwhile). A page that no longer exists (404: the list shrank) ends the list.
    async fn fetch_pages(
        &self,
        urls: Vec<String>,
        what: &str,
    ) -> Result<(Vec<ListedPage>, Option<String>), ApiError> {
        let mut pages: Vec<Option<ListedPage>> = Vec::new();
        pages.resize_with(urls.len(), || None);
        let mut gone = urls.len();
        let mut tasks = tokio::task::JoinSet::new();
        let mut queued = urls.into_iter().enumerate();
        loop {
            while tasks.len() < PAGES_IN_FLIGHT {
                let Some((index, url)) = queued.next() else {
                    break;
                };
                let (client, what) = (self.clone(), what.to_owned());
                tasks.spawn(async move {
                    let page = client.page(&url, &what).await;
                    (index, page)
                });
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
            let (index, page) = done.map_err(|e| ApiError::Connection {
                what: what.to_owned(),
                message: format!("page task ended abnormally: {e}"),
            })?;
            match page {
                Ok(page) => pages[index] = Some(page),
                Err(ApiError::NotFound { .. }) => gone = gone.min(index),
                Err(e) => return Err(e),
            }
        }
        // Only the very last page's `next` can lead further: the list grew meanwhile.
        let complete = gone == pages.len();
        let last_next = match pages.last_mut() {
            Some(Some(last)) if complete => last.next.take(),
            _ => None,
        };
        pages.truncate(gone);
        let last_next = last_next.map(|n| self.follow(&n, what)).transpose()?;
        Ok((pages.into_iter().flatten().collect(), last_next))
    }

    /// Every page of the listing for `scope`: the records of the servers it is about (each
    /// snapshot once), or an error naming a record of one of them that could not be read.
    /// After the first page, a DRF page-number list (`next` ends in `page=2`, `count` given)
    /// has its other pages fetched [`PAGES_IN_FLIGHT`] at a time; any other shape is followed
    /// link by link. Pages shift while snapshots are created and deleted, so one can show up
    /// on two pages: it is kept once (counted twice, a kept snapshot would look like one too
    /// many and be pruned).
    async fn list(&self, scope: Scope<'_>) -> Result<Vec<Snapshot>, ApiError> {
        let (what, url) = match scope {
            Scope::Server(id) => (
                format!("list snapshots of server {id}"),
                self.url(&format!("/snapshots/?server_id={id}")),
            ),
            Scope::Servers(_) | Scope::Account => {
                ("list snapshots".to_owned(), self.url("/snapshots/"))
            }
        };
        let first = self.page(&url, &what).await?;
        let per_page = first.records;
        let expected = first.count.and_then(|c| usize::try_from(c).ok());
        let mut next = first.next.map(|n| self.follow(&n, &what)).transpose()?;
        let mut all = first.snapshots;
        let mut unreadable = first.unreadable;
        // The provider's `count` only sizes the buffer, and only up to a sane bound.
        all.reserve_exact(
            expected
                .unwrap_or(0)
                .saturating_sub(all.len())
                .min(MAX_PAGES * 10),
        );
        let mut fetched = 1;
        let numbered = next
            .as_deref()
            .and_then(|n| numbered_pages(n, first.count, per_page));
        if let Some(urls) = numbered {
            fetched += urls.len();
            let (pages, last_next) = self.fetch_pages(urls, &what).await?;
            for page in pages {
                all.extend(page.snapshots);
                unreadable.extend(page.unreadable);
            }
            next = last_next;
        }
        while let Some(url) = next {
            if fetched >= MAX_PAGES {
                return Err(ApiError::Decode {
                    what,
                    message: format!("more than {MAX_PAGES} pages; the `next` links seem to loop"),
                });
            }
            let page = self.page(&url, &what).await?;
            fetched += 1;
            all.extend(page.snapshots);
            unreadable.extend(page.unreadable);
            next = page.next.map(|n| self.follow(&n, &what)).transpose()?;
        }
        check_unreadable(&unreadable, scope, &what)?;
        match scope {
            Scope::Server(id) => {
                // A listing asked for one server answers for that server only: a record of
                // another one (a filter the provider ignored, a `next` link without it) is
                // not this server's to count, keep or delete.
                let before = all.len();
                all.retain(|s| s.server.id == id);
                if all.len() < before {
                    tracing::warn!(
                        "{what}: left out {} record(s) of other servers (the answer was not filtered by server_id={id})",
                        before - all.len()
                    );
                }
            }
            Scope::Servers(wanted) => all.retain(|s| wanted.binary_search(&s.server.id).is_ok()),
            Scope::Account => {}
        }
        let mut seen = HashSet::with_capacity(all.len());
        all.retain(|s| seen.insert(s.id));
        Ok(all)
    }

    /// After a create whose answer was lost: the snapshot of that name, if it exists.
    async fn look_for(&self, request: &CreateSnapshot) -> Result<Option<Snapshot>, ApiError> {
        tracing::warn!(snapshot = %request.name, "create answer lost; looking for the snapshot by name");
        Box::pin(self.find_by_name(request.server_id, &request.name)).await
    }

    async fn find_by_name(
        &self,
        server: ServerId,
        name: &str,
    ) -> Result<Option<Snapshot>, ApiError> {
        Ok(self
            .list(Scope::Server(server))
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }
}

/// Whose records a listing is for: a record of one of these servers that cannot be read is an
/// error; any other is left out with a warning.
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    /// `?server_id=`: every record is taken to be this server's, unless it says otherwise.
    Server(ServerId),
    /// The account-wide listing, for these servers (sorted).
    Servers(&'a [ServerId]),
    /// The account-wide listing, for nobody in particular (`list`, `restore`).
    Account,
}

impl Scope<'_> {
    /// Whether a record of `server` (`None`: its server could not be read) is asked about.
    fn wants(self, server: Option<ServerId>) -> bool {
        match (self, server) {
            (Self::Server(id), Some(s)) => s == id,
            // The provider filtered by this server: a record that does not say whose it is
            // may well be its.
            (Self::Server(_), None) => true,
            (Self::Servers(wanted), Some(s)) => wanted.binary_search(&s).is_ok(),
            (Self::Servers(_), None) | (Self::Account, _) => false,
        }
    }
}

/// One page of a listing: the records that could be read, and those that could not.
struct ListedPage {
    count: Option<u64>,
    next: Option<String>,
    /// How many records the page had, readable or not (the page size).
    records: usize,
    snapshots: Vec<Snapshot>,
    unreadable: Vec<Unreadable>,
}

/// A listed record that did not fit, with what could be made out of it to tell whose it is.
#[derive(Debug)]
struct Unreadable {
    /// Its `id` as the provider wrote it (escaped), if it had one.
    id: Option<String>,
    server: Option<ServerId>,
    /// Which field and why, `results[3].created_at: ...` (escaped).
    error: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.id, self.server) {
            (Some(id), Some(server)) => write!(f, "snapshot {id} of server {server}")?,
            (Some(id), None) => write!(f, "snapshot {id} (its server unreadable)")?,
            (None, Some(server)) => write!(f, "a snapshot without an id of server {server}")?,
            (None, None) => f.write_str("a record without an id or server")?,
        }
        write!(f, ", field {}", self.error)
    }
}

/// A page of a listing, each record read on its own so that one that does not fit (a
/// hand-made snapshot with `created_at: null`) cannot make the whole listing unreadable.
fn decode_page(body: &[u8], what: &str) -> Result<ListedPage, ApiError> {
    let page: Page<Box<serde_json::value::RawValue>> = decode(body, what)?;
    let mut snapshots = Vec::with_capacity(page.results.len());
    let mut unreadable = Vec::new();
    for (index, raw) in page.results.iter().enumerate() {
        let de = &mut serde_json::Deserializer::from_str(raw.get());
        match serde_path_to_error::deserialize::<_, Snapshot>(de) {
            Ok(snapshot) => snapshots.push(snapshot),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." {
                    format!("results[{index}]")
                } else {
                    format!("results[{index}].{path}")
                };
                let loose: serde_json::Value =
                    serde_json::from_str(raw.get()).unwrap_or(serde_json::Value::Null);
                unreadable.push(Unreadable {
                    id: loose.get("id").map(|id| {
                        text::message(&id.as_str().map_or_else(|| id.to_string(), str::to_owned))
                    }),
                    server: loose
                        .get("server")
                        .and_then(|s| s.get("id"))
                        .and_then(serde_json::Value::as_u64),
                    error: text::message(&format!("{field}: {}", without_position(e.inner()))),
                });
            }
        }
    }
    Ok(ListedPage {
        count: page.count,
        next: page.next,
        records: page.results.len(),
        snapshots,
        unreadable,
    })
}

/// A decode error without serde_json's "at line 1 column 18", which would point into the
/// record rather than into the answer.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) if e.line() > 0 => text[..at].to_owned(),
        _ => text,
    }
}

/// An error naming the first unreadable record of a server `scope` asks about; else one
/// warning naming the others (a few by name, the rest counted).
fn check_unreadable(
    unreadable: &[Unreadable],
    scope: Scope<'_>,
    what: &str,
) -> Result<(), ApiError> {
    if let Some(first) = unreadable.iter().find(|u| scope.wants(u.server)) {
        let others = unreadable.iter().filter(|u| scope.wants(u.server)).count() - 1;
        return Err(ApiError::Decode {
            what: what.to_owned(),
            message: format!(
                "{first}{}",
                match others {
                    0 => String::new(),
                    n => format!(" (and {n} more unreadable records of the servers asked about)"),
                }
            ),
        });
    }
    if !unreadable.is_empty() {
        let mut named: Vec<String> = unreadable
            .iter()
            .take(UNREADABLE_NAMED)
            .map(ToString::to_string)
            .collect();
        if unreadable.len() > UNREADABLE_NAMED {
            named.push(format!("and {} more", unreadable.len() - UNREADABLE_NAMED));
        }
        tracing::warn!(
            "{what}: left out {} unreadable record(s), none of a server asked about: {}",
            unreadable.len(),
            named.join("; ")
        );
    }
    Ok(())
}

/// The URLs of pages 2..=n when `next` is DRF's page-number link (`page=2`) and the first
/// page's size and `count` give n; `None` for any other shape, or when there is only page 2.
fn numbered_pages(next: &str, count: Option<u64>, per_page: usize) -> Option<Vec<String>> {
    let count = usize::try_from(count?).ok()?;
    let pages = count.div_ceil(per_page.max(1));
    let url = reqwest::Url::parse(next).ok()?;
    let is_page_two = url.query_pairs().any(|(k, v)| k == "page" && v == "2");
    if per_page == 0 || !is_page_two || pages <= 2 || pages > MAX_PAGES {
        return None;
    }
    let with_page = |n: usize| {
        let others: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let mut u = url.clone();
        u.query_pairs_mut()
            .clear()
            .append_pair("page", &n.to_string())
            .extend_pairs(others);
        u.to_string()
    };
    Some((2..=pages).map(with_page).collect())
}

/// The body of an answer, read up to [`MAX_ANSWER_BYTES`]: a provider (or whatever answers
/// in its place) cannot make the client hold an unbounded answer in memory.
async fn read_body(
    mut response: reqwest::Response,
    what: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    let too_large = || ApiError::Decode {
        what: what.to_owned(),
        message: format!(
            "the answer is larger than {} MiB; refusing to read it",
            MAX_ANSWER_BYTES >> 20
        ),
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_ANSWER_BYTES as u64 {
        return Err(too_large());
    }
    // Capacity only from a length that fits the bound; the bound is checked as chunks arrive.
    let mut body = bytes::BytesMut::with_capacity(announced as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, what, timeout))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn transport_error(e: reqwest::Error, what: &str, timeout: Duration) -> ApiError {
    if e.is_timeout() {
        ApiError::Timeout {
            what: what.to_owned(),
            timeout,
        }
    } else {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message = format!("{message}: {s}");
            source = s.source();
        }
        ApiError::Connection {
            what: what.to_owned(),
            message: text::message(&message),
        }
    }
}

/// The provider's own words from an error body: DRF's `detail`, or `message`/`error`, or the
/// text itself; escaped and shortened ([`text::message`]), as they end up in logs, the run
/// log, the `once` summary and alerts.
fn provider_message(body: &[u8]) -> String {
    text::message(&provider_words(body))
}

fn provider_words(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["detail", "message", "error", "non_field_errors"] {
            match value.get(key) {
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(serde_json::Value::Array(items)) if !items.is_empty() => {
                    return items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                        .collect::<Vec<_>>()
                        .join("; ")
                }
                _ => {}
            }
        }
        if let Some(map) = value.as_object() {
            // DRF field errors: {"name": ["This field is required."]}
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}: {}", v.to_string().trim_matches(['[', ']', '"'])))
                .collect();
            if !fields.is_empty() {
                return fields.join("; ");
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "no message".into()
    } else {
        text.chars().take(text::MAX_MESSAGE_CHARS + 1).collect()
    }
}

/// Decodes an answer, naming the field that did not fit (`results[0].created_at: ...`).
fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Decode {
            what: what.to_owned(),
            message: text::message(&if path == "." {
                e.inner().to_string()
            } else {
                format!("field {path}: {}", e.inner())
            }),
        }
    })
}

#[derive(serde::Deserialize)]
struct PowerAnswer {
    server: Server,
}

/// A server answer must be about the server asked about: its state decides whether a server
/// is taken to be stopped or running.
fn about_server(server: Server, id: ServerId, what: &str) -> Result<Server, ApiError> {
    if server.id == id {
        return Ok(server);
    }
    Err(ApiError::Decode {
        what: what.to_owned(),
        message: format!(
            "the answer is about server {} (\"{}\"), not server {id}; not acting on it",
            server.id, server.name
        ),
    })
}

/// A create answer must be the snapshot asked for: its id is what is acted on.
fn is_requested(
    created: Snapshot,
    request: &CreateSnapshot,
    what: &str,
) -> Result<Snapshot, ApiError> {
    if created.server.id == request.server_id && created.name == request.name {
        return Ok(created);
    }
    Err(ApiError::Decode {
        what: what.to_owned(),
        message: format!(
            "the answer is about snapshot {} \"{}\" of server {}, not {} of server {}; not \
             acting on it",
            created.id, created.name, created.server.id, request.name, request.server_id
        ),
    })
}

/// Reads one page of a listing as [`HttpClient`] does (record by record: an unreadable record
/// of a server not asked about is left out with a warning; one of the server asked about is an
/// error naming it). For a provider that
/// speaks in memory but should be read like one over HTTP (the soak).
pub fn read_listing_page(body: &[u8], server: Option<ServerId>) -> Result<Vec<Snapshot>, ApiError> {
    let what = match server {
        Some(id) => format!("list snapshots of server {id}"),
        None => "list snapshots".to_owned(),
    };
    let page = decode_page(body, &what)?;
    let scope = server.map_or(Scope::Account, Scope::Server);
    check_unreadable(&page.unreadable, scope, &what)?;
    Ok(page.snapshots)
}

/// Runs `body` through every decoder the client applies to a provider's answer (a page of
/// snapshots, a snapshot, a server, a stop/start answer, a restore answer, and the message of
/// an error body), as the fuzz targets and the fuzz smoke tests do. Returns how many decoded;
/// whatever the bytes, it returns (no panic, no hang).
pub fn decode_every_answer(body: &[u8]) -> usize {
    let what = "fuzzing";
    let decoded = [
        decode_page(body, what).is_ok(),
        decode::<Snapshot>(body, what).is_ok(),
        decode::<Server>(body, what).is_ok(),
        decode::<PowerAnswer>(body, what).is_ok(),
        decode::<RestoreStarted>(body, what).is_ok(),
    ];
    let _ = provider_message(body);
    decoded.iter().filter(|ok| **ok).count()
}

impl Provider for HttpClient {
    async fn list_snapshots(&self, server: Option<ServerId>) -> Result<Vec<Snapshot>, ApiError> {
        self.list(server.map_or(Scope::Account, Scope::Server))
            .await
    }

    async fn list_snapshots_of(&self, servers: &[ServerId]) -> Result<Vec<Snapshot>, ApiError> {
        let mut wanted = servers.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        self.list(Scope::Servers(&wanted)).await
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        let what = format!(
            "create snapshot {} of server {}",
            request.name, request.server_id
        );
        let body = serde_json::to_value(request).map_err(|e| ApiError::Decode {
            what: what.clone(),
            message: e.to_string(),
        })?;
        let mut backoff = self.backoff().build();
        loop {
            let result = self
                .attempt(
                    Method::POST,
                    &self.url("/snapshots/"),
                    Some(&body),
                    "create",
                    &what,
                )
                .await;
            let error = match result {
                Ok(answer) => return is_requested(decode(&answer, &what)?, request, &what),
                Err(e) => e,
            };
            let unsure = error.outcome_unknown();
            let wait = match (&error, backoff.next()) {
                (_, None) if unsure => {
                    // Out of tries: one last look, the create may have happened.
                    return match self.look_for(request).await? {
                        Some(found) => Ok(found),
                        None => Err(error),
                    };
                }
                (_, None) => return Err(error),
                (_, Some(d)) if unsure => d,
                (ApiError::RateLimited { retry_after, .. }, Some(d)) => {
                    retry_after.map_or(d, |r| r.max(d))
                }
                _ => return Err(error),
            };
            tracing::warn!(error = %error, retry_in = ?wait, "create failed; trying again");
            tokio::time::sleep(wait).await;
            // The create may have happened, and a slow provider may only show it now: look
            // right before sending it again.
            if unsure {
                if let Some(found) = self.look_for(request).await? {
                    return Ok(found);
                }
            }
        }
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        let what = format!("delete snapshot {id}");
        let url = self.url(&format!("/snapshots/{id}/"));
        let unsure = AtomicBool::new(false);
        (|| async {
            let r = self
                .attempt(Method::DELETE, &url, None, "delete", &what)
                .await;
            match r {
                // A retry after a lost answer finds it gone: the first attempt deleted it.
                Err(ApiError::NotFound { .. }) if unsure.load(Ordering::Relaxed) => Ok(()),
                Err(e) => Err(e),
                Ok(_) => Ok(()),
            }
        })
        .retry(self.backoff())
        .when(ApiError::is_retryable)
        .notify(|e, delay| {
            tracing::warn!(error = %e, retry_in = ?delay, "delete failed; retrying");
            if e.outcome_unknown() {
                unsure.store(true, Ordering::Relaxed);
            }
        })
        .await
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.post_once(
            &format!("/snapshots/{id}/restore/"),
            None,
            "restore",
            &format!("restore snapshot {id}"),
        )
        .await
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = format!("get server {id}");
        let server = self
            .get(&self.url(&format!("/servers/{id}/")), "get_server", &what)
            .await?;
        about_server(server, id, &what)
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = format!("stop server {id}");
        let a: PowerAnswer = self
            .post_once(&format!("/servers/{id}/stop/"), None, "stop", &what)
            .await?;
        about_server(a.server, id, &what)
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let what = format!("start server {id}");
        let a: PowerAnswer = self
            .post_once(&format!("/servers/{id}/start/"), None, "start", &what)
            .await?;
        about_server(a.server, id, &what)
    }
}
