//! `[[policy]]`: each policy's name, schedule, servers, retention, hooks and monitoring, and
//! the cap of 5 snapshots per server checked across all policies.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::check::{checked_url, Checker, AGE, HOOK_TIMEOUT, JITTER};
use super::raw::RawPolicy;
use crate::model::ServerId;
use crate::policy::{JournalFailure, Policy, Retention, MAX_POLICY_NAME, SERVER_CAP};
use crate::schedule::Schedule;

fn valid_policy_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_POLICY_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(super) fn validate_policies(
    check: &mut Checker<'_>,
    raw: &[Spanned<RawPolicy>],
    api_span: Range<usize>,
) -> Vec<Policy> {
    if raw.is_empty() {
        check.at(
            api_span,
            "policy",
            "no [[policy]] section; allowed: one or more [[policy]] with name, schedule, servers",
        );
    }
    let mut policies = Vec::new();
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    // server -> [(policy index, policy name, rules total)].
    let mut per_server: BTreeMap<ServerId, Vec<(usize, String, u32)>> = BTreeMap::new();

    for (index, spanned) in raw.iter().enumerate() {
        let p = spanned.get_ref();
        let name = p.name.get_ref().clone();
        let label = if valid_policy_name(&name) {
            format!("policy \"{name}\"")
        } else {
            format!("policy #{}", index + 1)
        };
        if !valid_policy_name(&name) {
            check.at(
                p.name.span(),
                format!("{label}.name"),
                format!(
                    "\"{name}\" is not a policy name; allowed: 1 to {MAX_POLICY_NAME} letters, \
                     digits, '-' or '_' (it prefixes the policy's snapshot names)"
                ),
            );
        } else if let Some(first) = names.insert(name.clone(), index) {
            check.at(
                p.name.span(),
                format!("{label}.name"),
                format!(
                    "policy \"{name}\" is defined twice (also policy #{}); allowed: unique names",
                    first + 1
                ),
            );
        }

        let tz = match &p.timezone {
            None => chrono_tz::UTC,
            Some(t) => t.get_ref().parse().unwrap_or_else(|_| {
                check.at(
                    t.span(),
                    format!("{label}.timezone"),
                    format!(
                        "\"{}\" is not a known timezone; allowed: an IANA name such as \
                         \"Europe/Berlin\" or \"UTC\"",
                        t.get_ref()
                    ),
                );
                chrono_tz::UTC
            }),
        };
        let schedule = Schedule::parse(p.schedule.get_ref(), tz)
            .map_err(|e| {
                check.at(
                    p.schedule.span(),
                    format!("{label}.schedule"),
                    format!("\"{}\": {e}", p.schedule.get_ref()),
                )
            })
            .ok();

        let mut servers = Vec::new();
        if p.servers.get_ref().is_empty() {
            check.at(
                p.servers.span(),
                format!("{label}.servers"),
                "is empty; allowed: a list of one or more server ids, e.g. [12345, 12346]",
            );
        }
        for s in p.servers.get_ref() {
            let id = *s.get_ref();
            if id <= 0 {
                check.at(
                    s.span(),
                    format!("{label}.servers"),
                    format!("{id} is not a server id; allowed: positive integers"),
                );
            } else if servers.contains(&(id as u64)) {
                check.at(
                    s.span(),
                    format!("{label}.servers"),
                    format!("server {id} is listed twice"),
                );
            } else {
                servers.push(id as u64);
            }
        }

        let retention = validate_retention(check, p, &label);
        let jitter = p.jitter.as_ref().map(|_| {
            check.duration(
                &p.jitter,
                &format!("{label}.jitter"),
                Duration::ZERO,
                JITTER,
            )
        });
        for s in &servers {
            per_server
                .entry(*s)
                .or_default()
                .push((index, name.clone(), retention.total()));
        }
        let hooks = validate_hooks(check, p, &label);
        // An invalid age falls back to the end of the range that adds no warn/crit error.
        let monitoring = crate::policy::Monitoring {
            ping_url: p.ping_url.as_ref().and_then(|u| {
                checked_url(check, u, &format!("{label}.ping_url"))
                    .then(|| u.get_ref().trim_end_matches('/').to_owned())
            }),
            warn_age: p.warn_age.as_ref().map(|_| {
                check.duration(&p.warn_age, &format!("{label}.warn_age"), *AGE.start(), AGE)
            }),
            crit_age: p.crit_age.as_ref().map(|_| {
                check.duration(&p.crit_age, &format!("{label}.crit_age"), *AGE.end(), AGE)
            }),
        };
        if let (Some(w), Some(c)) = (monitoring.warn_age, monitoring.crit_age) {
            if w > c {
                if let Some(span) = p.warn_age.as_ref().map(Spanned::span) {
                    check.at(
                        span,
                        format!("{label}.warn_age"),
                        "is longer than crit_age; allowed: warn_age <= crit_age",
                    );
                }
            }
        }
        let on_journal_failure = match &p.on_journal_failure {
            None => JournalFailure::Skip,
            Some(v) => match v.get_ref().as_str() {
                "skip" => JournalFailure::Skip,
                "snapshot_running" => JournalFailure::SnapshotRunning,
                other => {
                    check.at(
                        v.span(),
                        format!("{label}.on_journal_failure"),
                        format!(
                            "\"{other}\" is not allowed; allowed: \"skip\" or \"snapshot_running\""
                        ),
                    );
                    JournalFailure::Skip
                }
            },
        };
        if let Some(schedule) = schedule {
            policies.push(Policy {
                name: name.clone(),
                schedule,
                servers,
                retention,
                stop_server: p.stop_server.unwrap_or(false),
                description: p
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("{name} snapshot by snapshot-scheduler")),
                catch_up: p.catch_up.unwrap_or(true),
                prune_unmanaged: p.prune_unmanaged.unwrap_or(false),
                jitter,
                hooks,
                monitoring,
                on_journal_failure,
            });
        }
    }

    // The cap: the provider refuses a 6th snapshot, so the rules on one server must fit in 5.
    for (server, users) in &per_server {
        let total: u32 = users.iter().map(|(_, _, n)| n).sum();
        if total as usize > SERVER_CAP {
            let (index, last, _) = users.last().expect("at least one policy per listed server");
            let list: Vec<String> = users
                .iter()
                .map(|(_, name, n)| format!("{name} keeps {n}"))
                .collect();
            check.at(
                raw[*index].get_ref().servers.span(),
                format!("policy \"{last}\".servers"),
                format!(
                    "server {server}: policies together keep {total} snapshots ({}); allowed: at \
                     most {SERVER_CAP} per server, the provider refuses the 6th",
                    list.join(", ")
                ),
            );
        }
    }
    policies
}

fn validate_retention(check: &mut Checker<'_>, p: &RawPolicy, label: &str) -> Retention {
    let mut r = Retention {
        keep: 0,
        hourly: check.count(&p.keep_hourly, &format!("{label}.keep_hourly"), 0..6),
        daily: check.count(&p.keep_daily, &format!("{label}.keep_daily"), 0..6),
        weekly: check.count(&p.keep_weekly, &format!("{label}.keep_weekly"), 0..6),
        monthly: check.count(&p.keep_monthly, &format!("{label}.keep_monthly"), 0..6),
    };
    match &p.keep {
        Some(_) => r.keep = check.count(&p.keep, &format!("{label}.keep"), 1..6),
        // Without any rule the default is keep = 3; calendar rules alone are fine too.
        None if r.is_empty() => r.keep = 3,
        None => {}
    }
    r
}

fn validate_hooks(check: &mut Checker<'_>, p: &RawPolicy, label: &str) -> crate::policy::Hooks {
    let mut argv = |hook: &Option<Spanned<Vec<String>>>, key: &str| {
        let h = hook.as_ref()?;
        if h.get_ref().is_empty() || h.get_ref()[0].trim().is_empty() {
            check.at(
                h.span(),
                format!("{label}.{key}"),
                "is empty; allowed: a command as an argv array, e.g. [\"/usr/local/bin/db-freeze\", \"--wait\"] \
                 (no shell unless you write [\"sh\", \"-c\", \"...\"])",
            );
            return None;
        }
        Some(h.get_ref().clone())
    };
    let pre = argv(&p.pre_hook, "pre_hook");
    let post = argv(&p.post_hook, "post_hook");
    let continue_on_pre_failure = match &p.on_pre_hook_failure {
        None => false,
        Some(v) if v.get_ref() == "skip" => false,
        Some(v) if v.get_ref() == "continue" => true,
        Some(v) => {
            check.at(
                v.span(),
                format!("{label}.on_pre_hook_failure"),
                format!(
                    "\"{}\" is not allowed; allowed: \"skip\" or \"continue\"",
                    v.get_ref()
                ),
            );
            false
        }
    };
    crate::policy::Hooks {
        pre,
        post,
        timeout: check.duration(
            &p.hook_timeout,
            &format!("{label}.hook_timeout"),
            Duration::from_secs(300),
            HOOK_TIMEOUT,
        ),
        continue_on_pre_failure,
    }
}
