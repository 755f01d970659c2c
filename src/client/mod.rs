//! The provider over HTTP, one attempt per call: one shared request budget (a 429's
//! `Retry-After` pauses every caller), a listing read page by page, and answers mapped to
//! errors a person can act on. Retrying is [`crate::retry::Retrying`]'s job.
//! The token lives in a `SecretString` and goes out only in a header marked sensitive.
//!
//! An answer is checked before anything is done with it, because it chooses what is deleted:
//! redirects are refused (never followed, never from https to http), an answer is read up to
//! [`MAX_ANSWER_BYTES`], a create or power answer must be about the snapshot or server asked
//! for, a server's listing keeps only that server's records, and a listed record is read on its
//! own (one that does not fit is an error when it is of a server asked about, and otherwise
//! left out with a warning). Provider text is escaped as it is read ([`crate::text`]).
//!
//! All of that is shared with the simulator's in-process transport
//! ([`crate::simulator::InProcess`]): what each call asks (`calls`) and what is made of an
//! answer (`refuse_redirect`, `read_answer`, the decoders) are the same for both; only the
//! bytes' way (`Transport`) differs, so the soak reads every answer as production does.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::ApiConfig;
use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};
use crate::provider::{ApiError, ListedPage, Provider, Scope};
use crate::text;

mod answer;

pub use answer::decode_page;
use answer::{decode, provider_message};

pub const USER_AGENT: &str = concat!("snapshot-scheduler/", env!("CARGO_PKG_VERSION"));

/// The largest answer read: a listing of 10,000 servers at the cap is about 15 MiB.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;

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

/// Where the provider answers: the configured base URL, and the origin a `next` link must be
/// on to be followed.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrl {
    base_url: String,
    origin: String,
}

impl BaseUrl {
    pub(crate) fn parse(base_url: &str) -> Result<Self, url::ParseError> {
        let parsed = reqwest::Url::parse(base_url)?;
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            origin: parsed.origin().ascii_serialization(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// A `next` link as a URL to request: never off the configured host, because the token
    /// would go along. A proxy that ends TLS may write http:// links to the same host; those
    /// are followed over the configured scheme.
    fn follow(&self, next: &str, what: &str) -> Result<String, ApiError> {
        let on_our_host = reqwest::Url::parse(next).ok().and_then(|u| {
            let ours = reqwest::Url::parse(&self.origin).ok()?;
            (u.host_str() == ours.host_str()
                && (u.origin() == ours.origin()
                    || u.port_or_known_default() == Some(80)
                        && ours.port_or_known_default() == Some(443)))
            .then(|| format!("{}{}", self.origin, &u[url::Position::BeforePath..]))
        });
        on_our_host.ok_or_else(|| ApiError::Decode {
            what: what.to_owned(),
            message: format!(
                "field next: \"{}\" is not on {}; refusing to follow it",
                text::message(next),
                self.origin
            ),
        })
    }
}

/// One request, as every transport sends it.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) method: Method,
    /// Absolute: the base URL and a path, or a followed `next` link.
    pub(crate) url: String,
    pub(crate) body: Option<serde_json::Value>,
    /// The endpoint, as metrics and the simulator's counts name it.
    pub(crate) endpoint: &'static str,
    /// The operation, as errors name it ("list snapshots").
    pub(crate) what: &'a str,
}

/// How a request reaches the provider and its answer comes back: the one part that differs
/// between [`HttpClient`] (reqwest, over a socket) and the simulator's in-process transport
/// (its router, called in the same process). What is asked and what an answer means are
/// this module's, the same for both: [`calls`] builds each request and reads its answer's
/// body, and a transport hands an answer to [`refuse_redirect`] before reading its body and
/// to [`read_answer`] after.
pub(crate) trait Transport: Send + Sync {
    fn base_url(&self) -> &BaseUrl;

    /// One attempt, no retry: the body of a 2xx answer, or the error the answer maps to.
    fn send(&self, call: Call<'_>) -> impl Future<Output = Result<bytes::Bytes, ApiError>> + Send;
}

/// A redirect is refused, never followed (the token would go along, and the answer from
/// there would choose what is deleted here); checked before the body is read.
pub(crate) fn refuse_redirect(
    status: StatusCode,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    if !status.is_redirection() {
        return Ok(());
    }
    let location = headers.get(reqwest::header::LOCATION).map_or_else(
        || "nowhere (no Location header)".to_owned(),
        |l| text::message(&String::from_utf8_lossy(l.as_bytes())),
    );
    Err(ApiError::Redirect {
        what: what.to_owned(),
        status: status.as_u16(),
        location,
    })
}

/// The answer's `Retry-After`: whole seconds, or an HTTP date (the wait until then; none for
/// a date already past).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let until = httpdate::parse_http_date(value).ok()?;
    Some(
        until
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The body of a 2xx answer; any other status is the error it maps to
/// ([`ApiError::from_status`]), worded with the provider's own message.
pub(crate) fn read_answer(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
    what: &str,
    token_source: &str,
) -> Result<bytes::Bytes, ApiError> {
    if status.is_success() {
        return Ok(body);
    }
    Err(ApiError::from_status(
        status.as_u16(),
        what.to_owned(),
        provider_message(&body),
        retry_after,
        token_source,
    ))
}

/// An answer larger than [`MAX_ANSWER_BYTES`], which is not read.
pub(crate) fn too_large(what: &str) -> ApiError {
    ApiError::Decode {
        what: what.to_owned(),
        message: format!(
            "the answer is larger than {} MiB; refusing to read it",
            MAX_ANSWER_BYTES >> 20
        ),
    }
}

/// What each [`Provider`] call asks for, and what is made of its answer, over any
/// [`Transport`]: the paths, the checks on an answer (a create answer is the snapshot asked
/// for, a server answer the server asked about), and the decoding of each.
pub(crate) mod calls {
    use super::{
        about_server, decode, decode_page, is_requested, Call, Method, PowerAnswer, Transport,
    };
    use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};
    use crate::provider::{ApiError, ListedPage, Scope};

    /// One page: the first of `scope`'s listing, or the one a `next` link points to (only
    /// on the configured origin).
    pub(crate) async fn list_page<T: Transport>(
        transport: &T,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        let what = scope.what();
        let base = transport.base_url();
        let url = match (link, scope) {
            (Some(link), _) => base.follow(link, &what)?,
            (None, Scope::Server(id)) => base.url(&format!("/snapshots/?server_id={id}")),
            (None, Scope::Servers(_) | Scope::Account) => base.url("/snapshots/"),
        };
        let answer = transport
            .send(Call {
                method: Method::GET,
                url: url.clone(),
                body: None,
                endpoint: "list",
                what: &what,
            })
            .await?;
        let mut page = decode_page(&answer, &what)?;
        // A relative `next` (`/api/v1/snapshots/?page=2`, `?page=2`) is relative to the page
        // it came on.
        if let Some(next) = &page.next {
            if let Ok(absolute) = reqwest::Url::parse(&url).and_then(|u| u.join(next)) {
                page.next = Some(absolute.into());
            }
        }
        Ok(page)
    }

    pub(crate) async fn create_snapshot<T: Transport>(
        transport: &T,
        request: &CreateSnapshot,
    ) -> Result<Snapshot, ApiError> {
        let what = format!(
            "create snapshot {} of server {}",
            request.name, request.server_id
        );
        let body = serde_json::to_value(request).map_err(|e| ApiError::Decode {
            what: what.clone(),
            message: e.to_string(),
        })?;
        let answer = transport
            .send(Call {
                method: Method::POST,
                url: transport.base_url().url("/snapshots/"),
                body: Some(body),
                endpoint: "create",
                what: &what,
            })
            .await?;
        is_requested(decode(&answer, &what)?, request, &what)
    }

    pub(crate) async fn delete_snapshot<T: Transport>(
        transport: &T,
        id: SnapshotId,
    ) -> Result<(), ApiError> {
        let what = format!("delete snapshot {id}");
        transport
            .send(Call {
                method: Method::DELETE,
                url: transport.base_url().url(&format!("/snapshots/{id}/")),
                body: None,
                endpoint: "delete",
                what: &what,
            })
            .await
            .map(drop)
    }

    pub(crate) async fn restore_snapshot<T: Transport>(
        transport: &T,
        id: SnapshotId,
    ) -> Result<RestoreStarted, ApiError> {
        let what = format!("restore snapshot {id}");
        let answer = transport
            .send(Call {
                method: Method::POST,
                url: transport
                    .base_url()
                    .url(&format!("/snapshots/{id}/restore/")),
                body: None,
                endpoint: "restore",
                what: &what,
            })
            .await?;
        decode(&answer, &what)
    }

    pub(crate) async fn get_server<T: Transport>(
        transport: &T,
        id: ServerId,
    ) -> Result<Server, ApiError> {
        let what = format!("get server {id}");
        let answer = transport
            .send(Call {
                method: Method::GET,
                url: transport.base_url().url(&format!("/servers/{id}/")),
                body: None,
                endpoint: "get_server",
                what: &what,
            })
            .await?;
        about_server(decode(&answer, &what)?, id, &what)
    }

    /// A stop (`stop` true) or a start.
    pub(crate) async fn power<T: Transport>(
        transport: &T,
        id: ServerId,
        stop: bool,
    ) -> Result<Server, ApiError> {
        let verb = if stop { "stop" } else { "start" };
        let what = format!("{verb} server {id}");
        let answer = transport
            .send(Call {
                method: Method::POST,
                url: transport.base_url().url(&format!("/servers/{id}/{verb}/")),
                body: None,
                endpoint: verb,
                what: &what,
            })
            .await?;
        let answer: PowerAnswer = decode(&answer, &what)?;
        about_server(answer.server, id, &what)
    }
}

#[derive(Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: BaseUrl,
    token: SecretString,
    token_source: String,
    budget: Budget,
    timeout: Duration,
    /// With `[ha]`, while this host leads: `USER_AGENT (<node>; epoch <n>)`, so the provider's
    /// logs tell which host, under which leadership, sent each request.
    agent: std::sync::RwLock<Option<reqwest::header::HeaderValue>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("base_url", &self.inner.base.base_url)
            .field("token", &"[redacted]")
            .finish()
    }
}

impl HttpClient {
    pub fn new(api: &ApiConfig, token: SecretString) -> anyhow::Result<Self> {
        // Provider text that quotes the token back, however it encodes it, never shows it.
        text::keep_secret(token.expose_secret());
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
                base: BaseUrl::parse(&api.base_url)?,
                token,
                token_source: api.token_source.to_string(),
                budget: Budget::new(api.requests_per_second),
                timeout: api.timeout,
                agent: std::sync::RwLock::new(None),
            }),
        })
    }

    /// Names the host and its epoch in every request's `User-Agent` from now on (`None`: the
    /// plain one). `node` is a checked name (`[ha] node`), so the header is always valid.
    pub fn set_acting_as(&self, acting: Option<(&str, i64)>) {
        let agent = acting.and_then(|(node, epoch)| {
            reqwest::header::HeaderValue::from_str(&format!("{USER_AGENT} ({node}; epoch {epoch})"))
                .ok()
        });
        *self.inner.agent.write().unwrap_or_else(|e| e.into_inner()) = agent;
    }

    async fn exchange(&self, call: Call<'_>) -> Result<bytes::Bytes, ApiError> {
        let Call {
            method,
            url,
            body,
            endpoint,
            what,
        } = call;
        let inner = &self.inner;
        inner.budget.acquire().await;
        let mut request = inner
            .http
            .request(method.clone(), url)
            .bearer_auth(inner.token.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        let agent = inner
            .agent
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(agent) = agent {
            request = request.header(reqwest::header::USER_AGENT, agent);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let started = Instant::now();
        let result = request.send().await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(crate::series::API_REQUESTS, "endpoint" => endpoint, "status" => "error").increment(1);
                return Err(transport_error(e, what, inner.timeout));
            }
        };
        let status = response.status();
        let retry_after = retry_after(response.headers());
        if let Err(refused) = refuse_redirect(status, response.headers(), what) {
            metrics::counter!(crate::series::API_REQUESTS, "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
            // A `Location` that quotes the token back must not print it.
            return Err(match refused {
                ApiError::Redirect {
                    what,
                    status,
                    location,
                } => {
                    let token = inner.token.expose_secret();
                    let location = match redacted(location.as_bytes(), token) {
                        Some(clean) => String::from_utf8_lossy(&clean).into_owned(),
                        None => location,
                    };
                    ApiError::Redirect {
                        what,
                        status,
                        location,
                    }
                }
                other => other,
            });
        }
        let body = read_body(response, what, inner.timeout).await?;
        // Whatever the provider answers (an error detail that quotes the request, a name) is
        // printed, logged, sent in alerts and kept in the run log: never with the token in it.
        let body = match redacted(&body, inner.token.expose_secret()) {
            Some(clean) => bytes::Bytes::from(clean),
            None => body,
        };
        metrics::counter!(crate::series::API_REQUESTS, "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
        tracing::debug!(%method, endpoint, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "api request");
        let answer = read_answer(status, retry_after, body, what, &inner.token_source);
        if let Err(ApiError::RateLimited { retry_after, .. }) = &answer {
            inner
                .budget
                .pause(retry_after.unwrap_or(Duration::from_secs(1)))
                .await;
        }
        answer
    }
}

impl Transport for HttpClient {
    fn base_url(&self) -> &BaseUrl {
        &self.inner.base
    }

    /// Boxed: every request is built on this, and inline its state made each operation in
    /// flight kilobytes, which thousands of servers waiting for their snapshots all carry.
    async fn send(&self, call: Call<'_>) -> Result<bytes::Bytes, ApiError> {
        Box::pin(self.exchange(call)).await
    }
}

/// The body of an answer, read up to [`MAX_ANSWER_BYTES`]: a provider (or whatever answers
/// in its place) cannot make the client hold an unbounded answer in memory.
async fn read_body(
    mut response: reqwest::Response,
    what: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_ANSWER_BYTES as u64 {
        return Err(too_large(what));
    }
    // Capacity only from a length that fits the bound; the bound is checked as chunks arrive.
    let mut body = bytes::BytesMut::with_capacity(announced as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, what, timeout))?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large(what));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// `bytes` with every occurrence of the token replaced by `[redacted]`; `None` when there is
/// none (the usual case: no copy).
fn redacted(bytes: &[u8], token: &str) -> Option<Vec<u8>> {
    let token = token.as_bytes();
    let found = !token.is_empty() && bytes.windows(token.len()).any(|w| w == token);
    if !found {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some(at) = rest.windows(token.len()).position(|w| w == token) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"[redacted]");
        rest = &rest[at + token.len()..];
    }
    out.extend_from_slice(rest);
    Some(out)
}

fn transport_error(e: reqwest::Error, what: &str, timeout: Duration) -> ApiError {
    // Before the connection is made nothing is sent: the one case a create may be sent again.
    let unreachable = e.is_connect();
    if e.is_timeout() && !unreachable {
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
        let (what, message) = (what.to_owned(), text::message(&message));
        if unreachable {
            ApiError::Unreachable { what, message }
        } else {
            ApiError::Connection { what, message }
        }
    }
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

/// Every transport is a provider: the calls and what they make of the answers are the same;
/// only how the bytes travel differs.
impl<T: Transport + 'static> Provider for T {
    async fn list_page(
        &self,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        calls::list_page(self, scope, link).await
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        calls::create_snapshot(self, request).await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        calls::delete_snapshot(self, id).await
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        calls::restore_snapshot(self, id).await
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        calls::get_server(self, id).await
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        calls::power(self, id, true).await
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        calls::power(self, id, false).await
    }
}
