//! etcd v3, the store two hosts elect their one acting daemon through: a lease (grant, keep
//! alive, revoke), a key created only while absent (the election), reads, and the fenced write
//! (a transaction applied only while the leader key still has the caller's epoch).
//!
//! It speaks etcd's JSON gateway (`POST /v3/...`) with the reqwest already here, because the
//! gRPC crate needs `protoc` to build. On that gateway keys and values are base64, 64-bit
//! numbers are JSON strings, and a field at its default is left out (a failed transaction has
//! no `succeeded`, an empty value no `value`, a gone lease no `TTL`): such fields are read as
//! their default, and a field etcd always sends is an error naming it when missing. `/v3/` is
//! served by etcd 3.4 (which also keeps `/v3beta/`) and by 3.5 and later (which keep only it).
//!
//! The next endpoint is tried only when the connection could not be made (nothing was sent):
//! a transaction that timed out may have been applied, and sending it elsewhere could apply it
//! twice. Each call starts with the endpoint that answered last, so a dead first endpoint
//! costs one connect attempt, not one per call.
//!
//! [`Etcd::wait_for_change`] polls [`Etcd::get`] rather than holding a watch stream open: one
//! request shape, the same bounded reads and errors as every other call, and no stream to
//! resume after a compaction. A standby learns of a gone leader within [`POLL_INTERVAL`].
//!
//! With auth on, the password is a `SecretString` (never in Debug output, errors or logs, and
//! redacted wherever etcd's words quote it); the token goes out in a header marked sensitive.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;
use url::Url;

use crate::text;

mod wire;
use wire::*;

/// The largest answer read: a prefix of a few thousand run-log records is well below it.
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// How often [`Etcd::wait_for_change`] looks at the key.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// An etcd lease: keys put with it are deleted when it expires or is revoked. Shown in hex,
/// as `etcdctl` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// A key as read, with the revisions that tell one incarnation of it from the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    /// The revision that created this incarnation of the key; a leader key's is its epoch.
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// What [`Etcd::create_if_absent`] came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The key was absent and is now ours; `revision` is its `create_revision`.
    Created { revision: i64 },
    /// Someone holds the key: their value and its `create_revision`.
    Exists { value: String, create_revision: i64 },
}

/// What [`Etcd::wait_for_change`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// The key is gone (`None`) or was written after the revision waited from.
    Changed(Option<Kv>),
    /// Nothing changed within the time given.
    Unchanged,
}

/// A failed call: which one, at which endpoint (all of them when none could be reached), and
/// what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("etcd {op} at {endpoint}: {kind}")]
pub struct EtcdError {
    pub op: &'static str,
    pub endpoint: String,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("{0}")]
    Setup(String),
    #[error("no endpoint could be reached: {0}")]
    Unreachable(String),
    /// Sent, but no whole answer came (a timeout, a broken connection): it may have applied.
    #[error("{0}")]
    Transport(String),
    #[error("refused (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("the answer is not etcd's: {0}")]
    Malformed(String),
    #[error("lease {0} is gone (expired or revoked)")]
    LeaseGone(LeaseId),
}

impl EtcdError {
    fn new(op: &'static str, endpoint: &str, kind: ErrorKind) -> Self {
        Self {
            op,
            endpoint: endpoint.to_owned(),
            kind,
        }
    }

    /// An answer that a fresh token may cure: an expired or unknown token, or one issued
    /// before the auth store changed (etcd's own client re-authenticates on the same two).
    fn is_stale_token(&self) -> bool {
        matches!(&self.kind, ErrorKind::Refused { status, message }
            if *status == 401 || message.contains("auth store is old"))
    }

    /// etcd's "requested lease not found" as [`ErrorKind::LeaseGone`].
    fn lease_gone(mut self, lease: LeaseId) -> Self {
        if let ErrorKind::Refused { message, .. } = &self.kind {
            if message.contains("lease not found") {
                self.kind = ErrorKind::LeaseGone(lease);
            }
        }
        self
    }
}

/// A client for one etcd cluster; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<Url>,
    /// The index of the endpoint that answered last, where the next call starts.
    current: AtomicUsize,
    timeout: Duration,
    auth: Option<(String, SecretString)>,
    token: Mutex<Option<SecretString>>,
}

impl Etcd {
    /// A client that sends each request to the first of `endpoints` it can connect to, within
    /// `timeout` per request. `auth` is a user and password for an etcd with auth on.
    pub fn new(
        endpoints: Vec<Url>,
        timeout: Duration,
        auth: Option<(String, SecretString)>,
    ) -> Result<Self, EtcdError> {
        Self::with_roots(endpoints, timeout, auth, None)
    }

    /// The client for a cluster's `[ha]`: its endpoints, its auth, and its CA certificates
    /// (PEM, beside the system's) for https endpoints.
    pub fn for_cluster(ha: &crate::config::HaConfig, timeout: Duration) -> Result<Self, EtcdError> {
        let auth = ha
            .auth
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone()));
        Self::with_roots(ha.endpoints.clone(), timeout, auth, ha.ca_pem.as_deref())
    }

    fn with_roots(
        endpoints: Vec<Url>,
        timeout: Duration,
        auth: Option<(String, SecretString)>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Self, EtcdError> {
        let setup = |message: String| {
            let all = endpoints.iter().map(shown).collect::<Vec<_>>().join(", ");
            EtcdError::new("setup", &all, ErrorKind::Setup(message))
        };
        if endpoints.is_empty() {
            return Err(setup("no endpoint given".to_owned()));
        }
        if let Some((_, password)) = &auth {
            text::keep_secret(password.expose_secret());
        }
        let mut builder = reqwest::Client::builder()
            .user_agent(crate::client::USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            let roots = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| setup(format!("ca_file holds no PEM certificate: {e}")))?;
            for root in roots {
                builder = builder.add_root_certificate(root);
            }
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("the HTTP client cannot be built: {e}")))?;
        let token = Mutex::new(None);
        let current = AtomicUsize::new(0);
        Ok(Self {
            http,
            endpoints,
            current,
            timeout,
            auth,
            token,
        })
    }

    /// A lease of `ttl` (whole seconds, rounded up; etcd may grant a longer one).
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId, EtcdError> {
        #[derive(Deserialize)]
        struct Grant {
            #[serde(rename = "ID", deserialize_with = "number")]
            id: i64,
        }
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let body = json!({ "TTL": seconds.max(1).to_string() });
        let (at, grant): (_, Grant) = self.call("grant", "lease/grant", &body).await?;
        match grant.id {
            0 => Err(at.malformed("`ID` is 0, which is no lease")),
            id => Ok(LeaseId(id)),
        }
    }

    /// Renews `lease` once; its remaining time to live. [`ErrorKind::LeaseGone`] when etcd no
    /// longer has it (it answers with no `TTL`, or 0).
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, EtcdError> {
        // The gateway streams: one line `{"result": ...}` per request sent; an error after
        // the stream began comes as `{"error": ...}` instead.
        #[derive(Deserialize)]
        struct Line {
            result: Option<Renewed>,
            #[serde(default)]
            error: Value,
        }
        #[derive(Deserialize)]
        struct Renewed {
            #[serde(rename = "TTL", default, deserialize_with = "number")]
            ttl: i64,
        }
        let body = json!({ "ID": lease.0.to_string() });
        let (at, line): (_, Line) = self
            .call("keep_alive", "lease/keepalive", &body)
            .await
            .map_err(|e| e.lease_gone(lease))?;
        match line.result {
            Some(renewed) if renewed.ttl > 0 => Ok(Duration::from_secs(renewed.ttl as u64)),
            Some(_) => Err(at.fail(ErrorKind::LeaseGone(lease))),
            None => match etcd_words(&line.error) {
                Some(words) => {
                    let message = text::message(words);
                    let refused = ErrorKind::Refused {
                        status: 200,
                        message,
                    };
                    Err(at.fail(refused).lease_gone(lease))
                }
                None => Err(at.malformed("missing field `result`")),
            },
        }
    }

    /// Ends `lease` now: every key put with it is deleted at once.
    pub async fn revoke(&self, lease: LeaseId) -> Result<(), EtcdError> {
        let body = json!({ "ID": lease.0.to_string() });
        let answer: Result<(_, Value), _> = self.call("revoke", "lease/revoke", &body).await;
        answer.map(|_| ()).map_err(|e| e.lease_gone(lease))
    }

    /// Puts `key` = `value` with `lease` only if the key does not exist; otherwise reads who
    /// holds it. One transaction, so two callers can never both create it.
    pub async fn create_if_absent(
        &self,
        key: &str,
        value: &str,
        lease: LeaseId,
    ) -> Result<CreateOutcome, EtcdError> {
        let body = json!({
            "compare": [{ "key": b64(key), "target": "CREATE", "result": "EQUAL",
                          "create_revision": "0" }],
            "success": [{ "request_put": { "key": b64(key), "value": b64(value),
                                           "lease": lease.0.to_string() } }],
            "failure": [{ "request_range": { "key": b64(key) } }],
        });
        let (at, txn): (_, Txn) = self
            .call("create_if_absent", "kv/txn", &body)
            .await
            .map_err(|e| e.lease_gone(lease))?;
        if txn.succeeded {
            let revision = txn.header.revision;
            return Ok(CreateOutcome::Created { revision });
        }
        let range = txn
            .responses
            .into_iter()
            .next()
            .and_then(|r| r.response_range);
        let Some(holder) = range.and_then(|r| r.kvs.into_iter().next()) else {
            return Err(at.malformed("the compare failed, yet `responses[0]` holds no key"));
        };
        let holder = holder.decode().map_err(|d| at.malformed(&d))?;
        let (value, create_revision) = (holder.value, holder.create_revision);
        Ok(CreateOutcome::Exists {
            value,
            create_revision,
        })
    }

    /// `key` as it is now, or `None` when it does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let body = json!({ "key": b64(key) });
        Ok(self.range("get", &body).await?.into_iter().next())
    }

    /// Every key starting with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let body = json!({ "key": b64(prefix), "range_end": BASE64.encode(range_end(prefix)) });
        self.range("get_prefix", &body).await
    }

    /// The fenced write: applies `puts` and `deletes` in one transaction only while
    /// `leader_key`'s `create_revision` is `epoch` and it is bound to `lease`, i.e. while the
    /// caller is still the leader it was elected as (the lease tells it from a key of the same
    /// revision in an etcd wiped since). `false` (nothing written) when it is not. etcd limits
    /// a transaction to 128 operations by default.
    pub async fn txn_if_leader(
        &self,
        leader_key: &str,
        epoch: i64,
        lease: LeaseId,
        puts: &[(&str, &str)],
        deletes: &[&str],
    ) -> Result<bool, EtcdError> {
        // An absent key's create_revision is 0: epoch 0 would "lead" when nobody does.
        if epoch < 1 {
            return Ok(false);
        }
        let puts = puts
            .iter()
            .map(|(k, v)| json!({ "request_put": { "key": b64(k), "value": b64(v) } }));
        let deletes = deletes
            .iter()
            .map(|k| json!({ "request_delete_range": { "key": b64(k) } }));
        let body = json!({
            "compare": [
                { "key": b64(leader_key), "target": "CREATE", "result": "EQUAL",
                  "create_revision": epoch.to_string() },
                { "key": b64(leader_key), "target": "LEASE", "result": "EQUAL",
                  "lease": lease.0.to_string() },
            ],
            "success": puts.chain(deletes).collect::<Vec<_>>(),
        });
        let (_, txn): (_, Txn) = self.call("txn_if_leader", "kv/txn", &body).await?;
        Ok(txn.succeeded)
    }

    /// Waits until `key` is gone or was written after `after_revision` (pass the
    /// `mod_revision` last seen), looking every [`POLL_INTERVAL`], for at most `timeout`.
    pub async fn wait_for_change(
        &self,
        key: &str,
        after_revision: i64,
        timeout: Duration,
    ) -> Result<KeyChange, EtcdError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.get(key).await? {
                Some(kv) if kv.mod_revision <= after_revision => {}
                changed => return Ok(KeyChange::Changed(changed)),
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(KeyChange::Unchanged);
            }
            tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
        }
    }

    async fn range(&self, op: &'static str, body: &Value) -> Result<Vec<Kv>, EtcdError> {
        let (at, range): (_, Range) = self.call(op, "kv/range", body).await?;
        let decoded = range.kvs.into_iter().map(RawKv::decode);
        decoded
            .collect::<Result<_, _>>()
            .map_err(|d| at.malformed(&d))
    }

    /// One request, authenticated when auth is on: a stale token is replaced once.
    async fn call<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
    ) -> Result<(At, T), EtcdError> {
        if self.auth.is_none() {
            return self.send(op, path, body, None).await;
        }
        let cached = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let token = match cached {
            Some(token) => token,
            None => self.authenticate().await?,
        };
        match self.send(op, path, body, Some(&token)).await {
            Err(e) if e.is_stale_token() => {
                let token = self.authenticate().await?;
                self.send(op, path, body, Some(&token)).await
            }
            answer => answer,
        }
    }

    async fn authenticate(&self) -> Result<SecretString, EtcdError> {
        #[derive(Deserialize)]
        struct Authenticated {
            token: String,
        }
        let (user, password) = self
            .auth
            .as_ref()
            .map_or(("", ""), |(u, p)| (u, p.expose_secret()));
        let body = json!({ "name": user, "password": password });
        let (_, answer): (_, Authenticated) = self
            .send("authenticate", "auth/authenticate", &body, None)
            .await?;
        let token = SecretString::from(answer.token);
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        Ok(token)
    }

    /// One request to the first endpoint that takes the connection, starting with the one
    /// that answered last; where it was answered, and the answer decoded.
    async fn send<T: DeserializeOwned>(
        &self,
        op: &'static str,
        path: &str,
        body: &Value,
        token: Option<&SecretString>,
    ) -> Result<(At, T), EtcdError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut unreachable = Vec::new();
        for i in (0..self.endpoints.len()).map(|n| (start + n) % self.endpoints.len()) {
            let at = At {
                op,
                endpoint: shown(&self.endpoints[i]),
            };
            let url = self.endpoints[i]
                .join(&format!("v3/{path}"))
                .map_err(|e| at.fail(ErrorKind::Setup(e.to_string())))?;
            let mut request = self.http.post(url).json(body);
            if let Some(token) = token {
                let mut value = HeaderValue::from_str(token.expose_secret())
                    .map_err(|_| at.malformed("the auth token is not header text"))?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            let response = match request.send().await {
                Err(e) if e.is_connect() => {
                    // reqwest's own words repeat the URL; what failed is in the causes.
                    let cause = std::error::Error::source(&e).map_or(e.to_string(), error_chain);
                    unreachable.push(format!("{}: {cause}", at.endpoint));
                    continue;
                }
                Err(e) => {
                    // Not sent elsewhere (a transaction that timed out may have been
                    // applied), but the next request goes to the next member: one that
                    // takes connections and never answers (frozen, its disk stalled) must
                    // not hold a cluster whose other members have quorum.
                    self.pass_over(i);
                    return Err(at.fail(self.transport(&e)));
                }
                Ok(response) => response,
            };
            self.current.store(i, Ordering::Relaxed);
            let status = response.status();
            let bytes = match self.read_body(response, &at).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.pass_over(i);
                    return Err(e);
                }
            };
            if !status.is_success() {
                // A member cut off from the others answers 5xx ("no leader"): ask another.
                if status.is_server_error() {
                    self.pass_over(i);
                }
                let message = etcd_message(&bytes);
                return Err(at.fail(ErrorKind::Refused {
                    status: status.as_u16(),
                    message,
                }));
            }
            let de = &mut serde_json::Deserializer::from_slice(&bytes);
            return match serde_path_to_error::deserialize(de) {
                Ok(answer) => Ok((at, answer)),
                Err(e) => Err(at.malformed(&field_error(&e))),
            };
        }
        let all = self
            .endpoints
            .iter()
            .map(shown)
            .collect::<Vec<_>>()
            .join(", ");
        let message = text::message(&unreachable.join("; "));
        Err(EtcdError::new(op, &all, ErrorKind::Unreachable(message)))
    }

    /// The next request starts with the member after `failed` (unless another request has
    /// moved on already).
    fn pass_over(&self, failed: usize) {
        let next = (failed + 1) % self.endpoints.len();
        let _ = self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The body of an answer, read up to [`MAX_ANSWER_BYTES`].
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        at: &At,
    ) -> Result<Vec<u8>, EtcdError> {
        let too_large = format!("the answer is larger than {} MiB", MAX_ANSWER_BYTES >> 20);
        if response.content_length().unwrap_or(0) > MAX_ANSWER_BYTES as u64 {
            return Err(at.malformed(&too_large));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_ANSWER_BYTES => {
                    return Err(at.malformed(&too_large))
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(e) => return Err(at.fail(self.transport(&e))),
            }
        }
    }

    fn transport(&self, e: &reqwest::Error) -> ErrorKind {
        ErrorKind::Transport(if e.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        } else {
            text::message(&error_chain(e))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_covers_exactly_the_prefix() {
        assert_eq!(range_end("/a/"), b"/a0");
        assert_eq!(range_end(""), b"\0");
    }

    #[test]
    fn numbers_arrive_as_strings_or_numbers() {
        let h: Header = serde_json::from_str(r#"{"revision":"42"}"#).expect("string");
        assert_eq!(h.revision, 42);
        let h: Header = serde_json::from_str(r#"{"revision":7}"#).expect("number");
        assert_eq!(h.revision, 7);
        assert!(serde_json::from_str::<Header>(r#"{"revision":"x"}"#).is_err());
    }

    #[test]
    fn etcd_words_are_found_in_each_shape_of_error() {
        let cases = [
            (
                json!({"error": "e", "message": "etcdserver: m", "code": 5}),
                Some("etcdserver: m"),
            ),
            (
                json!({"error": {"http_code": 503, "message": "no leader"}}),
                Some("no leader"),
            ),
            (json!({"error": "only this"}), Some("only this")),
            (json!({"result": {}}), None),
            (json!("text"), None),
        ];
        for (answer, words) in cases {
            assert_eq!(etcd_words(&answer), words, "{answer}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let url = Url::parse("http://127.0.0.1:2379").expect("url");
        let auth = Some(("root".to_owned(), SecretString::from("hunter2-pw")));
        let etcd = Etcd::new(vec![url], Duration::from_secs(1), auth).expect("client");
        let debug = format!("{etcd:?}");
        assert!(!debug.contains("hunter2-pw"), "{debug}");
    }
}
