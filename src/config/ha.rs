//! `[ha]`: two ops hosts, one acting, elected through etcd. Without the section nothing
//! changes: one host, its state in `state_dir`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use toml::Spanned;

use super::check::{checked_url, Checker, LEASE_TTL};
use super::raw::RawHa;
use super::token::{read_credential, read_secret_file};

#[derive(Debug, Clone)]
pub struct HaConfig {
    /// etcd's client URLs, tried in order.
    pub endpoints: Vec<reqwest::Url>,
    /// Keys live under `/snapshot-scheduler/<cluster>/`: two clusters never interfere.
    pub cluster: String,
    pub lease_ttl: Duration,
    /// This host's name in logs, `status`, metrics and the provider's request log.
    pub node: String,
    pub auth: Option<EtcdAuth>,
    /// PEM certificates etcd's TLS certificate must chain to (beside the system's).
    pub ca_pem: Option<Vec<u8>>,
}

/// etcd's user and password, when its authentication is on.
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    pub username: String,
    pub password: SecretString,
}

impl HaConfig {
    /// The prefix of every key of this cluster.
    pub fn prefix(&self) -> String {
        format!("/snapshot-scheduler/{}/", self.cluster)
    }
}

/// Names that go into keys, logs and the `User-Agent`: nothing to escape.
fn is_plain_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// This host's name, as `node` defaults to it.
fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    Some(name.trim().to_owned()).filter(|n| !n.is_empty())
}

pub(super) fn validate_ha(
    check: &mut Checker<'_>,
    raw: &Spanned<RawHa>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<HaConfig> {
    let h = raw.get_ref();
    let endpoints: Vec<reqwest::Url> = h
        .etcd_endpoints
        .get_ref()
        .iter()
        .filter(|e| checked_url(check, e, "ha.etcd_endpoints"))
        .filter_map(|e| reqwest::Url::parse(e.get_ref()).ok())
        .collect();
    if h.etcd_endpoints.get_ref().is_empty() {
        check.at(
            h.etcd_endpoints.span(),
            "ha.etcd_endpoints",
            "is empty; allowed: one or more etcd client URLs, e.g. [\"http://127.0.0.1:2379\"]",
        );
    }
    let cluster = h.cluster.get_ref();
    if !is_plain_name(cluster) {
        check.at(
            h.cluster.span(),
            "ha.cluster",
            format!(
                "\"{cluster}\" is not a cluster name; allowed: 1 to 63 letters, digits, '-', '_' \
                 or '.'"
            ),
        );
    }
    let node = match &h.node {
        Some(n) if !is_plain_name(n.get_ref()) => {
            check.at(
                n.span(),
                "ha.node",
                format!(
                    "\"{}\" is not a node name; allowed: 1 to 63 letters, digits, '-', '_' or '.'",
                    n.get_ref()
                ),
            );
            String::new()
        }
        Some(n) => n.get_ref().clone(),
        None => match host_name().filter(|n| is_plain_name(n)) {
            Some(n) => n,
            None => {
                check.at(
                    raw.span(),
                    "ha.node",
                    "is not set and this host's name cannot serve as one; allowed: 1 to 63 \
                     letters, digits, '-', '_' or '.'",
                );
                String::new()
            }
        },
    };
    let lease_ttl = check.duration(
        &h.lease_ttl,
        "ha.lease_ttl",
        Duration::from_secs(15),
        LEASE_TTL,
    );
    let auth = validate_auth(check, raw, env, warnings);
    let ca_pem = h.ca_file.as_ref().and_then(|f| {
        let path = Path::new(f.get_ref());
        let pem = super::read_regular(path, super::MAX_CONFIG_BYTES)
            .map_err(|e| format!("cannot read {}: {e}", path.display()));
        let pem = pem.and_then(|pem| {
            reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{} holds no PEM certificate ({e})", path.display()))
                .map(|_| pem)
        });
        pem.map_err(|e| check.at(f.span(), "ha.ca_file", e)).ok()
    });
    Some(HaConfig {
        endpoints,
        cluster: cluster.clone(),
        lease_ttl,
        node,
        auth,
        ca_pem,
    })
}

fn validate_auth(
    check: &mut Checker<'_>,
    raw: &Spanned<RawHa>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<EtcdAuth> {
    let h = raw.get_ref();
    if let (Some(_), Some(c)) = (&h.password_file, &h.password_credential) {
        check.at(
            c.span(),
            "ha.password_credential",
            "password_file and password_credential are both set; allowed: one of them",
        );
        return None;
    }
    let password = match (&h.password_credential, &h.password_file) {
        (Some(name), _) => {
            read_credential(
                check,
                name.span(),
                "ha.password_credential",
                name.get_ref(),
                env,
            )
            .0
        }
        (None, Some(f)) => read_secret_file(
            check,
            f.span(),
            "ha.password_file",
            &PathBuf::from(f.get_ref()),
            "etcd-password",
            warnings,
        ),
        (None, None) => None,
    };
    match (&h.username, password) {
        (Some(user), Some(password)) => Some(EtcdAuth {
            username: user.get_ref().clone(),
            password,
        }),
        (Some(user), None) if h.password_file.is_none() && h.password_credential.is_none() => {
            check.at(
                user.span(),
                "ha.username",
                "is set without a password; allowed: username with password_file or \
                 password_credential",
            );
            None
        }
        (None, _) if h.password_file.is_some() || h.password_credential.is_some() => {
            check.at(
                raw.span(),
                "ha.username",
                "a password is set without a username; allowed: both, or neither",
            );
            None
        }
        _ => None,
    }
}
