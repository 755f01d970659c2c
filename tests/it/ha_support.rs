//! What the two-host tests are built from: a simulated provider that records who sent each
//! request and when (the `User-Agent` names the node and its epoch), a loopback TCP proxy that
//! can cut a host off from etcd without resetting anything, and a `run` process with `[ha]`
//! that the test drives with signals and watches through its log and metrics endpoint.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use snapshot_scheduler::model::{ServerId, SnapshotStatus};
use snapshot_scheduler::simulator::{self, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use url::Url;

use crate::common::{self, TOKEN};
use crate::etcd_support::free_port;

/// The environment variable the nodes read the API token from.
const TOKEN_VAR: &str = "SNAPSHOT_SCHEDULER_HA_TEST_TOKEN";

/// Who sent a request: the node and epoch of `snapshot-scheduler/<ver> (<node>; epoch <n>)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender {
    pub node: String,
    pub epoch: i64,
}

impl Sender {
    /// The sender a leader's `User-Agent` names; `None` for any other agent.
    pub fn from_user_agent(agent: &str) -> Option<Self> {
        let rest = agent.strip_prefix("snapshot-scheduler/")?;
        let (_version, rest) = rest.split_once(" (")?;
        let (node, rest) = rest.strip_suffix(')')?.split_once("; epoch ")?;
        let epoch = rest.parse().ok()?;
        Some(Self {
            node: node.to_owned(),
            epoch,
        })
    }
}

/// One request as the provider received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub user_agent: Option<String>,
    /// When it arrived, before the provider handled it.
    pub at: Instant,
    /// The answer's status (`None` while the provider is still handling it).
    pub status: Option<u16>,
    /// A create's body (its `server_id` and `name`); `None` for other requests.
    pub body: Option<serde_json::Value>,
    /// For a start or stop: the names of that server's snapshots in progress on arrival.
    pub in_progress: Vec<String>,
}

/// What a provider write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteKind {
    Stop(ServerId),
    Create { server: ServerId, name: String },
    Delete(u64),
}

/// A write (stop, create, delete) and who sent it.
#[derive(Debug, Clone)]
pub struct Write {
    pub kind: WriteKind,
    /// `None` when the `User-Agent` names no node and epoch (a write no leader vouched for).
    pub sender: Option<Sender>,
    pub at: Instant,
    pub status: Option<u16>,
}

impl Write {
    pub fn epoch(&self) -> Option<i64> {
        self.sender.as_ref().map(|s| s.epoch)
    }
}

/// A start and what the provider knew when it arrived.
#[derive(Debug, Clone)]
pub struct Start {
    pub server: ServerId,
    pub sender: Option<Sender>,
    pub at: Instant,
    /// That server's snapshots in progress when the start arrived.
    pub in_progress: Vec<String>,
}

impl Received {
    pub fn sender(&self) -> Option<Sender> {
        self.user_agent.as_deref().and_then(Sender::from_user_agent)
    }

    /// The number in `/api/v1/<what>/<id>/<tail>`.
    fn id_in(&self, what: &str, tail: &str) -> Option<u64> {
        let rest = self.path.strip_prefix(&format!("/api/v1/{what}/"))?;
        rest.strip_suffix(tail)?.parse().ok()
    }

    pub fn write(&self) -> Option<Write> {
        let kind = match self.method.as_str() {
            "POST" => {
                if let Some(id) = self.id_in("servers", "/stop/") {
                    WriteKind::Stop(id)
                } else if self.path == "/api/v1/snapshots/" {
                    let body = self.body.as_ref();
                    let field = |f: &str| body.and_then(|b| b.get(f)).cloned();
                    WriteKind::Create {
                        server: field("server_id").and_then(|v| v.as_u64()).unwrap_or(0),
                        name: field("name")
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                    }
                } else {
                    return None;
                }
            }
            "DELETE" => WriteKind::Delete(self.id_in("snapshots", "/")?),
            _ => return None,
        };
        Some(Write {
            kind,
            sender: self.sender(),
            at: self.at,
            status: self.status,
        })
    }

    pub fn start(&self) -> Option<Start> {
        if self.method != "POST" {
            return None;
        }
        Some(Start {
            server: self.id_in("servers", "/start/")?,
            sender: self.sender(),
            at: self.at,
            in_progress: self.in_progress.clone(),
        })
    }
}

#[derive(Clone)]
struct Recorder {
    sim: Simulator,
    log: Arc<Mutex<Vec<Received>>>,
}

/// Records each request on arrival (and its status once answered), then hands it on.
async fn record(State(recorder): State<Recorder>, request: Request, next: Next) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.as_str().to_owned();
    let user_agent = parts
        .headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let body = (method == "POST" && path == "/api/v1/snapshots/")
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten();
    let power_of = ["/stop/", "/start/"].iter().find_map(|tail| {
        let rest = path.strip_prefix("/api/v1/servers/")?;
        rest.strip_suffix(tail)?.parse::<ServerId>().ok()
    });
    let in_progress = power_of.map_or_else(Vec::new, |server| {
        recorder
            .sim
            .snapshots(server)
            .into_iter()
            .filter(|s| s.status == SnapshotStatus::InProgress)
            .map(|s| s.name)
            .collect()
    });
    let index = {
        let mut log = recorder.log.lock().unwrap_or_else(|e| e.into_inner());
        log.push(Received {
            method,
            path,
            user_agent,
            at,
            status: None,
            body,
            in_progress,
        });
        log.len() - 1
    };
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let mut log = recorder.log.lock().unwrap_or_else(|e| e.into_inner());
    log[index].status = Some(response.status().as_u16());
    response
}

/// The simulated provider, served on 127.0.0.1:0, recording every request.
pub struct RecordingProvider {
    pub sim: Simulator,
    pub base_url: String,
    log: Arc<Mutex<Vec<Received>>>,
    _serving: DropGuard,
}

impl RecordingProvider {
    pub async fn serve(servers: &[ServerId], config: SimConfig) -> Self {
        let sim = common::test_sim(servers, config);
        let log = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder {
            sim: sim.clone(),
            log: log.clone(),
        };
        let app = simulator::router(sim.clone())
            .layer(axum::middleware::from_fn_with_state(recorder, record));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let serving =
                axum::serve(listener, app).with_graceful_shutdown(stopped.cancelled_owned());
            let _ = serving.await;
        });
        Self {
            sim,
            base_url: simulator::base_url(addr),
            log,
            _serving: stop.drop_guard(),
        }
    }

    /// Every request so far, in order of arrival.
    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every stop, create and delete so far, in order of arrival.
    pub fn writes(&self) -> Vec<Write> {
        self.requests().iter().filter_map(Received::write).collect()
    }

    /// Every start so far, in order of arrival.
    pub fn starts(&self) -> Vec<Start> {
        self.requests().iter().filter_map(Received::start).collect()
    }

    /// The first write with `epoch`, if any.
    pub fn first_write_of(&self, epoch: i64) -> Option<Write> {
        self.writes().into_iter().find(|w| w.epoch() == Some(epoch))
    }

    /// How many creates the provider accepted for each `(server, name)`, as its stats count them.
    pub fn creates_per_slot(&self) -> std::collections::BTreeMap<(ServerId, String), usize> {
        let mut counts = std::collections::BTreeMap::new();
        for created in self.sim.stats().created {
            *counts.entry((created.server, created.name)).or_insert(0) += 1;
        }
        counts
    }

    /// The requests so far, one a line, for failure messages.
    pub fn describe(&self) -> String {
        let first = self.requests().first().map(|r| r.at);
        self.requests()
            .iter()
            .map(|r| {
                let since = first.map_or(Duration::ZERO, |f| r.at.duration_since(f));
                let what = match r.write() {
                    Some(Write {
                        kind: WriteKind::Create { name, .. },
                        ..
                    }) => format!(" {name}"),
                    _ => String::new(),
                };
                format!(
                    "{:>8.3}s {} {}{what} -> {:?} [{}]\n",
                    since.as_secs_f64(),
                    r.method,
                    r.path,
                    r.status,
                    r.user_agent.as_deref().unwrap_or("-"),
                )
            })
            .collect()
    }
}

/// What an [`EtcdProxy`] does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Forwards bytes both ways.
    Pass,
    /// Keeps every connection (old and new) open and forwards nothing either way: the bytes
    /// wait, as on a network that drops packets (the client sees timeouts, not resets), and
    /// flow again when the link passes.
    BlackHole,
}

/// A loopback TCP proxy in front of etcd, for one host's link to it.
pub struct EtcdProxy {
    pub url: Url,
    link: watch::Sender<Link>,
    _serving: DropGuard,
}

impl EtcdProxy {
    pub async fn start(upstream: &Url) -> Self {
        let host = upstream.host_str().expect("upstream host");
        let port = upstream.port_or_known_default().expect("upstream port");
        let upstream: SocketAddr = format!("{host}:{port}")
            .parse()
            .expect("a loopback address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = Url::parse(&format!("http://{}", listener.local_addr().expect("addr")))
            .expect("proxy url");
        let (link, _) = watch::channel(Link::Pass);
        let stop = CancellationToken::new();
        let (links, stopped) = (link.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    () = stopped.cancelled() => return,
                };
                let (link, stopped) = (links.subscribe(), stopped.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = relay(client, upstream, link) => {}
                        () = stopped.cancelled() => {}
                    }
                });
            }
        });
        Self {
            url,
            link,
            _serving: stop.drop_guard(),
        }
    }

    pub fn pass(&self) {
        self.link.send_replace(Link::Pass);
    }

    pub fn black_hole(&self) {
        self.link.send_replace(Link::BlackHole);
    }
}

/// Waits until the link passes; `false` when the proxy is gone.
async fn passing(link: &mut watch::Receiver<Link>) -> bool {
    link.wait_for(|l| *l == Link::Pass).await.is_ok()
}

/// One client connection: connected upstream once the link passes, then copied both ways.
async fn relay(client: TcpStream, upstream: SocketAddr, mut link: watch::Receiver<Link>) {
    if !passing(&mut link).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        copy(client_read, server_write, link.clone()),
        copy(server_read, client_write, link),
    );
}

/// Copies `from` to `to`; what was read while the link is a black hole waits for it to pass.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !passing(&mut link).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if passing(&mut link).await {
        let _ = to.shutdown().await;
    }
}

/// How a node's config is made.
pub struct NodeSpec<'a> {
    pub node: &'a str,
    /// The etcd client URL this node uses (etcd's own, or an [`EtcdProxy`]'s).
    pub etcd: &'a Url,
    pub cluster: &'a str,
    pub lease_ttl: &'a str,
    pub base_url: &'a str,
    /// `[[policy]]` bodies, joined with `[[policy]]` headers.
    pub policies: &'a [String],
    /// Extra `[daemon]` lines.
    pub daemon: &'a str,
}

/// The binary running `run` with `[ha]`: its config and state in a temporary directory, its
/// stderr in a file there. Dropping it kills the process.
pub struct Node {
    pub name: String,
    child: tokio::process::Child,
    pid: i32,
    dir: tempfile::TempDir,
    pub metrics: SocketAddr,
}

impl Node {
    pub fn start(spec: &NodeSpec<'_>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let policies = spec.policies.join("\n[[policy]]\n");
        let config = format!(
            r#"[api]
base_url = "{base_url}"
token_env = "{TOKEN_VAR}"
requests_per_second = 1000

[daemon]
state_dir = "{state_dir}"
poll_interval = "200ms"
metrics_listen = "{metrics}"
{daemon}

[ha]
etcd_endpoints = ["{etcd}"]
cluster = "{cluster}"
lease_ttl = "{lease_ttl}"
node = "{node}"

[[policy]]
{policies}
"#,
            base_url = spec.base_url,
            state_dir = dir.path().join("state").display(),
            daemon = spec.daemon,
            etcd = spec.etcd.as_str().trim_end_matches('/'),
            cluster = spec.cluster,
            lease_ttl = spec.lease_ttl,
            node = spec.node,
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log file");
        let mut cmd = common::bin();
        cmd.arg("--config")
            .arg(&config_path)
            .args(["--log-format", "text", "run"])
            .env(TOKEN_VAR, TOKEN)
            .env("RUST_LOG", "info")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .expect("the binary starts");
        let pid = child.id().expect("a running child has a pid") as i32;
        Self {
            name: spec.node.to_owned(),
            child,
            pid,
            dir,
            metrics,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// Sends `signal` (`libc::SIGSTOP`, `SIGCONT`, `SIGKILL`, `SIGTERM`) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped (the
        // handle keeps it until dropped), so the pid is not another process's.
        let sent = unsafe { libc::kill(self.pid, signal) };
        assert_eq!(
            sent, 0,
            "signal {signal} to {} could not be sent",
            self.name
        );
    }

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Polls the log until it holds `needle` and returns when it was seen; fails if the
    /// process exits first or after `within`, showing the log.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> Instant {
        let what = format!("{} logs {needle:?}", self.name);
        self.until(&what, within, |log| log.contains(needle)).await
    }

    /// Polls until `done` (given the log so far) holds and returns when it was seen; fails if
    /// the process exits first or after `within`, showing the log.
    pub async fn until(
        &mut self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&str) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if done(&log) {
                return Instant::now();
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) while waiting until {what}\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!(
                "{} did not exit within {within:?}\n{}",
                self.name,
                self.log()
            ),
        }
    }

    /// GETs `path` from the metrics endpoint: the status and body, `None` when it does not
    /// answer within a second (not listening yet, or the process is stopped).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("client");
        let answer = http
            .get(format!("http://{}{path}", self.metrics))
            .send()
            .await
            .ok()?;
        let status = answer.status().as_u16();
        Some((status, answer.text().await.ok()?))
    }

    /// The value of the first sample of `name` (whatever its labels) on `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = match rest.strip_prefix('{') {
                    Some(labelled) => labelled.split_once('}')?.1,
                    None => rest,
                };
                rest.strip_prefix(' ')
            })
            .find_map(|v| v.trim().parse().ok())
    }

    pub async fn healthz(&self) -> Option<u16> {
        self.get("/healthz").await.map(|(status, _)| status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::etcd_support::EtcdServer;
    use snapshot_scheduler::etcd::{ErrorKind, Etcd};

    #[test]
    fn a_leaders_user_agent_names_its_node_and_epoch() {
        let cases = [
            (
                "snapshot-scheduler/0.1.0 (ops-1; epoch 42)",
                Some(("ops-1", 42)),
            ),
            (
                "snapshot-scheduler/0.1.0 (a.b_c-2; epoch 7)",
                Some(("a.b_c-2", 7)),
            ),
            ("snapshot-scheduler/0.1.0", None),
            ("snapshot-scheduler/0.1.0 (ops-1)", None),
            ("snapshot-scheduler/0.1.0 (ops-1; epoch x)", None),
            ("curl/8.0 (ops-1; epoch 3)", None),
        ];
        for (agent, expected) in cases {
            let sender = Sender::from_user_agent(agent);
            let expected = expected.map(|(node, epoch)| Sender {
                node: node.to_owned(),
                epoch,
            });
            assert_eq!(sender, expected, "{agent}");
        }
    }

    #[tokio::test]
    async fn the_recording_provider_tells_writes_and_starts_by_sender() {
        let provider = RecordingProvider::serve(
            &[7],
            SimConfig {
                snapshot_duration: Duration::from_secs(60),
                power_delay: Duration::from_millis(10),
                example_snapshots: false,
                ..SimConfig::default()
            },
        )
        .await;
        let http = reqwest::Client::new();
        let url = |p: &str| format!("{}{p}", provider.base_url);
        let send = |request: reqwest::RequestBuilder, agent: &str| {
            request
                .bearer_auth(TOKEN)
                .header("User-Agent", agent)
                .send()
        };
        let leader = "snapshot-scheduler/0.1.0 (ops-1; epoch 42)";
        let stopped = send(http.post(url("/servers/7/stop/")), leader)
            .await
            .unwrap();
        assert_eq!(stopped.status(), 200);
        let create = http
            .post(url("/snapshots/"))
            .json(&serde_json::json!({"server_id": 7, "name": "nightly-20260101T000000Z"}));
        let created: serde_json::Value = send(create, leader).await.unwrap().json().await.unwrap();
        let id = created["id"].as_u64().expect("an id");
        send(http.get(url("/snapshots/")), leader).await.unwrap();
        send(
            http.post(url("/servers/7/start/")),
            "snapshot-scheduler/0.1.0",
        )
        .await
        .unwrap();
        let deleted = send(http.delete(url(&format!("/snapshots/{id}/"))), leader)
            .await
            .unwrap();
        assert_eq!(
            deleted.status(),
            400,
            "an in-progress snapshot is not deleted"
        );

        let writes = provider.writes();
        let kinds: Vec<_> = writes.iter().map(|w| w.kind.clone()).collect();
        assert_eq!(
            kinds,
            [
                WriteKind::Stop(7),
                WriteKind::Create {
                    server: 7,
                    name: "nightly-20260101T000000Z".into()
                },
                WriteKind::Delete(id),
            ],
            "{}",
            provider.describe()
        );
        assert!(writes.iter().all(|w| w.epoch() == Some(42)));
        assert_eq!(writes[2].status, Some(400));
        assert!(writes.windows(2).all(|w| w[0].at <= w[1].at));
        let starts = provider.starts();
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].sender, None, "a User-Agent without an epoch");
        assert_eq!(starts[0].in_progress, ["nightly-20260101T000000Z"]);
        assert_eq!(
            provider.first_write_of(42).map(|w| w.kind),
            Some(WriteKind::Stop(7))
        );
        assert_eq!(
            provider.creates_per_slot().into_iter().collect::<Vec<_>>(),
            [((7, "nightly-20260101T000000Z".to_owned()), 1)]
        );
        assert_eq!(provider.requests().len(), 5);
    }

    /// An echo server on 127.0.0.1:0.
    async fn echo() -> Url {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        url
    }

    /// Reads what is there within `within`: `Ok(bytes)`, `Err("timeout")`, `Err("closed")`
    /// or the error.
    async fn read_within(stream: &mut TcpStream, within: Duration) -> Result<Vec<u8>, String> {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => Err("timeout".into()),
            Ok(Ok(0)) => Err("closed".into()),
            Ok(Ok(n)) => Ok(buf[..n].to_vec()),
            Ok(Err(e)) => Err(e.to_string()),
        }
    }

    async fn connect(url: &Url) -> TcpStream {
        TcpStream::connect(format!("127.0.0.1:{}", url.port().unwrap()))
            .await
            .expect("the proxy accepts")
    }

    #[tokio::test]
    async fn a_black_holed_proxy_holds_old_and_new_connections_silent_until_it_passes() {
        let proxy = EtcdProxy::start(&echo().await).await;
        let long = Duration::from_secs(5);
        let short = Duration::from_millis(300);

        let mut old = connect(&proxy.url).await;
        old.write_all(b"one").await.unwrap();
        assert_eq!(read_within(&mut old, long).await, Ok(b"one".to_vec()));

        proxy.black_hole();
        old.write_all(b"two").await.unwrap();
        assert_eq!(read_within(&mut old, short).await, Err("timeout".into()));
        let mut new = connect(&proxy.url).await;
        new.write_all(b"three").await.unwrap();
        assert_eq!(read_within(&mut new, short).await, Err("timeout".into()));
        // Still open, still silent: no reset, no close.
        assert_eq!(read_within(&mut old, short).await, Err("timeout".into()));

        proxy.pass();
        assert_eq!(read_within(&mut old, long).await, Ok(b"two".to_vec()));
        assert_eq!(read_within(&mut new, long).await, Ok(b"three".to_vec()));
        old.write_all(b"four").await.unwrap();
        assert_eq!(read_within(&mut old, long).await, Ok(b"four".to_vec()));
    }

    #[tokio::test]
    async fn etcd_behind_a_black_holed_proxy_times_out_and_answers_again_once_it_passes() {
        let Some(etcd) = EtcdServer::start(&[]).await else {
            return;
        };
        let proxy = EtcdProxy::start(&etcd.url).await;
        let client = Etcd::new(vec![proxy.url.clone()], Duration::from_secs(1), None).unwrap();
        assert_eq!(client.get("/x").await.expect("through the proxy"), None);

        proxy.black_hole();
        let started = Instant::now();
        let err = client.get("/x").await.expect_err("cut off");
        assert!(
            matches!(err.kind, ErrorKind::Transport(_)),
            "a timeout, not a reset: {err}"
        );
        assert!(started.elapsed() >= Duration::from_secs(1), "{err}");

        proxy.pass();
        assert_eq!(client.get("/x").await.expect("passes again"), None);
    }

    #[tokio::test]
    async fn a_killed_etcd_comes_back_on_its_port_with_its_keys() {
        let Some(mut etcd) = EtcdServer::start(&[]).await else {
            return;
        };
        let client = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2), None).unwrap();
        let lease = client.grant(Duration::from_secs(60)).await.expect("grant");
        client
            .create_if_absent("/k", "v", lease)
            .await
            .expect("create");

        etcd.kill();
        // The first request may go out on the pooled connection etcd's death closed.
        let _ = client.get("/k").await.expect_err("etcd is down");
        let err = client.get("/k").await.expect_err("etcd is down");
        assert!(matches!(err.kind, ErrorKind::Unreachable(_)), "{err}");

        etcd.restart().await;
        let kv = client.get("/k").await.expect("back").expect("the key kept");
        assert_eq!(kv.value, "v");
    }
}
