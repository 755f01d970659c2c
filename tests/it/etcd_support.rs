//! A real single-node etcd for a test: its own data directory and free loopback ports, ready
//! when it says it is healthy, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use url::Url;

use crate::common;

/// How long etcd may take to become healthy (it elects itself leader first).
const READY_WAIT: Duration = Duration::from_secs(20);

pub struct EtcdServer {
    child: Child,
    dir: tempfile::TempDir,
    pub url: Url,
    peer: String,
    extra: Vec<String>,
}

impl EtcdServer {
    /// A fresh etcd, with `extra` flags; `None` where etcd is not installed (the test then
    /// returns: [`common::tool_available`] has failed it where every test must run).
    pub async fn start(extra: &[&str]) -> Option<Self> {
        if !common::tool_available("etcd") {
            return None;
        }
        // A port released by one test may be taken by another before etcd binds it: etcd then
        // exits, and another pair of ports is tried.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let client = format!("http://127.0.0.1:{}", free_port());
            let peer = format!("http://127.0.0.1:{}", free_port());
            let mut server = Self::spawn(dir, &client, &peer, extra);
            if server.ready().await {
                return Some(server);
            }
        }
        panic!("etcd did not become healthy in three attempts");
    }

    fn spawn(dir: tempfile::TempDir, client: &str, peer: &str, extra: &[&str]) -> Self {
        let child = Self::command(&dir, client, peer, extra);
        let url = Url::parse(client).expect("client url");
        Self {
            child,
            dir,
            url,
            peer: peer.to_owned(),
            extra: extra.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    /// etcd on `client` and `peer` with its data in `dir` (kept from a run before, if any),
    /// appending to `dir`'s log.
    fn command(dir: &tempfile::TempDir, client: &str, peer: &str, extra: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("etcd.log"))
            .expect("log file");
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", client])
            .args(["--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("etcd starts")
    }

    /// Kills etcd (its data stays): every client now meets a closed port.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the killed etcd again on the same ports with the same data (its keys and
    /// leases), and waits until it is healthy.
    pub async fn restart(&mut self) {
        let client = self.url.as_str().trim_end_matches('/').to_owned();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.child = Self::command(&self.dir, &client, &self.peer, &extra);
        assert!(
            self.ready().await,
            "etcd did not come back:\n{}",
            self.log()
        );
    }

    /// Waits until `/health` says so; `false` when etcd exited first (a port was taken).
    async fn ready(&mut self) -> bool {
        let http = reqwest::Client::new();
        let health = self.url.join("health").expect("health url");
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                eprintln!("etcd exited ({status}):\n{}", self.log());
                return false;
            }
            let answer = http.get(health.clone()).send().await;
            if let Ok(answer) = answer {
                if answer
                    .text()
                    .await
                    .is_ok_and(|t| t.contains(r#""health":"true""#))
                {
                    return true;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "etcd not healthy within {READY_WAIT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}
