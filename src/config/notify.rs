//! `[[notify]]`: the webhooks alerts go to, and the events each one hears about.

use std::collections::BTreeMap;
use std::path::Path;

use secrecy::SecretString;
use toml::Spanned;

use super::check::{checked_url, Checker};
use super::raw::RawNotify;
use super::token::{read_credential, read_secret_file};

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
    /// With `[ha]`: this host led but could not renew its lease in time, so it acts no more.
    LeadershipLost,
}

impl AlertEvent {
    pub const ALL: [Self; 6] = [
        Self::Failure,
        Self::Recovered,
        Self::CapBlocked,
        Self::ServerLeftStopped,
        Self::ConfigReloadFailed,
        Self::LeadershipLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Failure => "failure",
            Self::Recovered => "recovered",
            Self::CapBlocked => "cap_blocked",
            Self::ServerLeftStopped => "server_left_stopped",
            Self::ConfigReloadFailed => "config_reload_failed",
            Self::LeadershipLost => "leadership_lost",
        }
    }
}

pub(super) fn validate_notify(
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
                            "\"{}\" is not an event; allowed: {}",
                            e.get_ref(),
                            AlertEvent::ALL.map(AlertEvent::as_str).join(", ")
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
