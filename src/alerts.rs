//! Telling people: webhooks for events (`[[notify]]`) and dead-man pings (`ping_url`).
//! Delivery happens in the background with retries and never delays a rotation; a failure
//! that repeats is sent once, until the server recovers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::client::USER_AGENT;
use crate::config::{AlertEvent, NotifyTarget};
use crate::model::ServerId;

/// The JSON body of a webhook. `text` makes Slack and Mattermost incoming webhooks show it;
/// the message in it carries provider text (an error's detail), so chat markup in it is
/// neutralised there ([`crate::text::chat`]): no link, no mention, no formatting from outside.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub event: AlertEvent,
    pub policy: Option<String>,
    pub server: Option<ServerId>,
    pub message: String,
    pub time: DateTime<Utc>,
    pub text: String,
}

/// A dead-man ping at the start and end of a policy's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    Start,
    Success,
    Fail,
}

pub struct Alerts {
    targets: Vec<NotifyTarget>,
    http: reqwest::Client,
    /// (policy, server) pairs whose failure was sent and that have not recovered since.
    failing: Mutex<HashSet<(String, ServerId)>>,
    attempts: u32,
    /// Deliveries under way, so a short-lived command can wait for them before exiting.
    deliveries: TaskTracker,
    /// Dead-man pings are sent (not for a simulated provider: a simulated success would tell
    /// the ping service that the real snapshots are fine).
    pings: bool,
}

impl Alerts {
    /// Sends nothing at all: for `--simulate`, whose events are not the real account's.
    pub fn muted() -> Arc<Self> {
        let mut alerts = Self::build(Vec::new());
        alerts.pings = false;
        Arc::new(alerts)
    }

    pub fn new(targets: Vec<NotifyTarget>) -> Arc<Self> {
        Arc::new(Self::build(targets))
    }

    fn build(targets: Vec<NotifyTarget>) -> Self {
        Self {
            targets,
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            failing: Mutex::default(),
            attempts: 8,
            deliveries: TaskTracker::new(),
            pings: true,
        }
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashSet<(String, ServerId)>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A run failed. Sent once per failure streak of this policy on this server.
    pub fn failure(&self, event: AlertEvent, policy: &str, server: ServerId, message: &str) {
        if self.failing().insert((policy.to_owned(), server)) {
            self.send(event, Some(policy), Some(server), message);
        } else {
            tracing::debug!(
                policy,
                server,
                "failure already reported; not alerting again"
            );
        }
    }

    /// The last recorded run of this policy on this server failed (perhaps in an earlier
    /// process): its failure counts as reported, so a repeat stays quiet and a success
    /// sends `recovered`.
    pub fn already_failing(&self, policy: &str, server: ServerId) {
        self.failing().insert((policy.to_owned(), server));
    }

    /// A run succeeded: `recovered` if the last one had failed.
    pub fn success(&self, policy: &str, server: ServerId) {
        if self.failing().remove(&(policy.to_owned(), server)) {
            self.send(
                AlertEvent::Recovered,
                Some(policy),
                Some(server),
                &format!("policy {policy} on server {server} succeeded again"),
            );
        }
    }

    /// An event that is not about a run (config reload failed, server left stopped).
    pub fn send(
        &self,
        event: AlertEvent,
        policy: Option<&str>,
        server: Option<ServerId>,
        message: &str,
    ) {
        let subscribed: Vec<NotifyTarget> = self
            .targets
            .iter()
            .filter(|t| t.events.contains(&event))
            .cloned()
            .collect();
        if subscribed.is_empty() {
            return;
        }
        let mut text = format!("snapshot-scheduler {}", event.as_str());
        if let Some(p) = policy {
            text += &format!(", policy {p}");
        }
        if let Some(s) = server {
            text += &format!(", server {s}");
        }
        text += &format!(": {}", crate::text::chat(message));
        let alert = Alert {
            event,
            policy: policy.map(str::to_owned),
            server,
            message: message.to_owned(),
            time: Utc::now(),
            text,
        };
        for target in subscribed {
            let http = self.http.clone();
            let alert = alert.clone();
            let attempts = self.attempts;
            self.deliveries.spawn(async move {
                deliver(&http, &target, &alert, attempts).await;
            });
        }
    }

    /// `<url>/start`, `<url>`, `<url>/fail` (healthchecks.io convention), in the background.
    pub fn ping(&self, url: Option<&str>, ping: Ping) {
        let Some(url) = url.filter(|_| self.pings) else {
            return;
        };
        let url = match ping {
            Ping::Start => format!("{url}/start"),
            Ping::Success => url.to_owned(),
            Ping::Fail => format!("{url}/fail"),
        };
        let http = self.http.clone();
        self.deliveries.spawn(async move {
            let shown = loggable(&url);
            let mut delay = Duration::from_secs(1);
            for _ in 0..3 {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(url = %shown, status = r.status().as_u16(), "ping refused")
                    }
                    Err(e) => {
                        tracing::warn!(url = %shown, error = %without_url(e), "ping failed")
                    }
                }
                tokio::time::sleep(delay).await;
                delay *= 4;
            }
        });
    }
}

impl Alerts {
    /// Waits (at most `bound`) for deliveries under way: for commands that exit right after.
    pub async fn drain(&self, bound: Duration) {
        self.deliveries.close();
        if tokio::time::timeout(bound, self.deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!("some alerts or pings were not delivered before exit");
        }
        self.deliveries.reopen();
    }
}

async fn deliver(http: &reqwest::Client, target: &NotifyTarget, alert: &Alert, attempts: u32) {
    let shown = loggable(&target.url);
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=attempts {
        let mut request = http.post(&target.url).json(alert);
        if let Some(token) = &target.token {
            request = request.bearer_auth(token.expose_secret());
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(url = %shown, event = alert.event.as_str(), "alert delivered");
                return;
            }
            Ok(r) => {
                tracing::warn!(url = %shown, status = r.status().as_u16(), attempt, "alert refused; retrying")
            }
            Err(e) => {
                tracing::warn!(url = %shown, error = %without_url(e), attempt, "alert not delivered; retrying")
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 3).min(Duration::from_secs(300));
    }
    tracing::error!(url = %shown, event = alert.event.as_str(), "alert dropped after {attempts} attempts");
}

/// What of a webhook or ping URL may be logged: its scheme, host and port. The rest (path,
/// query, user and password) is as good as a password: whoever has it can post to the
/// channel or silence the check.
pub fn loggable(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/...", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "(not a URL)".into(),
    }
}

/// A request error with its causes, without the URL reqwest puts in it.
fn without_url(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_host_and_port_of_a_url_are_loggable() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T000/B000/XXXX",
                "https://hooks.slack.com/...",
            ),
            (
                "https://hc-ping.com/0b6a1f7e-5f3c-4e8e-9d2a-6c1d2f3a4b5c/start",
                "https://hc-ping.com/...",
            ),
            (
                "http://user:pw@127.0.0.1:8080/hook?token=abc#frag",
                "http://127.0.0.1:8080/...",
            ),
            ("https://[::1]:9/x", "https://[::1]:9/..."),
            ("hooks.example.com/secret", "(not a URL)"),
        ] {
            assert_eq!(loggable(url), shown, "{url}");
        }
    }
}
