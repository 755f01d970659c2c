//! The fuzz targets' ground, briefly, in every `cargo test`: random and mutated config files
//! and provider answers never panic (a config parses or names its error; an answer decodes or
//! is a decode error). The real fuzzers are in `fuzz/` (see the README). A config that parses
//! runs too: what `check`, `plan`, `once --dry-run`, `once` and `status` build from it, against
//! the in-memory simulated provider on tokio's paused clock, never panics.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};
use snapshot_scheduler::alerts::Alerts;
use snapshot_scheduler::cli::{check_report, select};
use snapshot_scheduler::client::decode_every_answer;
use snapshot_scheduler::clock::{Clock, TokioClock};
use snapshot_scheduler::config::{Config, ConfigError, LoadOptions};
use snapshot_scheduler::context::http_provider;
use snapshot_scheduler::execute::{Executor, Parts, Settings};
use snapshot_scheduler::journal::Journal;
use snapshot_scheduler::model::PowerState;
use snapshot_scheduler::plan::plan;
use snapshot_scheduler::policy::SERVER_CAP;
use snapshot_scheduler::retry::{RetryRules, Retrying};
use snapshot_scheduler::runlog::RunLog;
use snapshot_scheduler::simulator::{SimConfig, Simulator};

const EXAMPLE: &str = include_str!("../../config.example.toml");

fn parse(text: &str) -> Result<Config, ConfigError> {
    let env = BTreeMap::from([("VPS_API_TOKEN".to_owned(), "smoke-token".to_owned())]);
    let path = Path::new("smoke.toml");
    if !text.contains("token_file") {
        // Never panics either way; the token is only read from the environment map here.
        let _ = Config::parse(path, text, LoadOptions { simulate: false }, &env);
    }
    Config::parse(path, text, LoadOptions { simulate: true }, &env)
}

/// Whatever parses is what `run` may trust: the cap holds on every server, every error is
/// located in the file.
fn check_outcome(text: &str) -> Result<(), TestCaseError> {
    match parse(text) {
        Ok(config) => {
            for server in config.servers() {
                let kept: u32 = config
                    .policies
                    .iter()
                    .filter(|p| p.servers.contains(&server))
                    .map(|p| p.retention.total())
                    .sum();
                prop_assert!(kept as usize <= SERVER_CAP, "server {server} keeps {kept}");
            }
            for p in &config.policies {
                prop_assert!(!p.retention.is_empty(), "policy {} keeps nothing", p.name);
            }
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            prop_assert!(!problems.is_empty());
            let lines = text.lines().count().max(1);
            for p in &problems {
                prop_assert!(p.line >= 1 && p.line <= lines + 1, "{p:?} in {lines} lines");
            }
        }
        Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "parse read a file: {e}"),
    }
    Ok(())
}

/// One edit of a text: delete a range, insert a fragment, or duplicate a line.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut out = text.to_owned();
    for edit in edits {
        let at = |i: usize, s: &str| {
            let mut i = i % (s.len() + 1);
            while !s.is_char_boundary(i) {
                i -= 1;
            }
            i
        };
        match edit {
            Edit::Delete(from, len) => {
                let a = at(*from, &out);
                let b = at(a + len % 64, &out).max(a);
                out.replace_range(a..b, "");
            }
            Edit::Insert(i, fragment) => {
                let a = at(*i, &out);
                out.insert_str(a, fragment);
            }
            Edit::DuplicateLine(n) => {
                let lines: Vec<&str> = out.lines().collect();
                if !lines.is_empty() {
                    let line = lines[n % lines.len()].to_owned();
                    out = format!("{out}\n{line}\n");
                }
            }
        }
    }
    out
}

/// Fragments that make TOML and this config interesting.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"".to_owned()),
        Just("[[policy]]\n".to_owned()),
        Just("[daemon]\n".to_owned()),
        Just("keep = 9\n".to_owned()),
        Just("keep_daily = 5\n".to_owned()),
        Just("servers = [12345, 12345]\n".to_owned()),
        Just("schedule = \"61 25 * * *\"\n".to_owned()),
        Just("schedule = \"0 0 30 2 *\"\n".to_owned()),
        Just("timezone = \"Mars/Olympus\"\n".to_owned()),
        Just("jitter = \"-1s\"\n".to_owned()),
        Just("= = =".to_owned()),
        Just("\u{feff}".to_owned()),
        Just("é".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e308".to_owned()),
        Just("nan".to_owned()),
        "[ -~]{0,12}",
        any::<String>(),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Delete(a, b)),
            (any::<usize>(), fragment()).prop_map(|(a, f)| Edit::Insert(a, f)),
            any::<usize>().prop_map(Edit::DuplicateLine),
        ],
        1..6,
    )
}

/// A config built from random values for every policy key.
fn random_policy_config() -> impl Strategy<Value = String> {
    let policy = (
        "[a-z_-]{0,6}",
        prop_oneof![
            Just("30 2 * * *"),
            Just("@hourly"),
            Just("*/5 * * * * *"),
            Just("0 4 * * SUN"),
            Just("0 0 31 2 *"),
            Just("* * *"),
            Just("@reboot"),
        ],
        prop_oneof![Just("UTC"), Just("Europe/Berlin"), Just("Nowhere/Else")],
        prop::collection::vec(-2i64..4, 0..4),
        (-2i64..8, -1i64..4, -1i64..4),
        any::<bool>(),
        prop_oneof![Just("skip"), Just("snapshot_running"), Just("maybe")],
        prop_oneof![Just("0s"), Just("2m"), Just("forever")],
    )
        .prop_map(
            |(name, schedule, tz, servers, (keep, daily, weekly), stop, journal, jitter)| {
                let ids: Vec<String> = servers.iter().map(|s| (12345 + s).to_string()).collect();
                format!(
                    "[[policy]]\nname = \"{name}\"\nschedule = \"{schedule}\"\ntimezone = \"{tz}\"\n\
                     servers = [{}]\nkeep = {keep}\nkeep_daily = {daily}\nkeep_weekly = {weekly}\n\
                     stop_server = {stop}\non_journal_failure = \"{journal}\"\njitter = \"{jitter}\"\n",
                    ids.join(", ")
                )
            },
        );
    (
        prop::collection::vec(policy, 0..4),
        prop_oneof![
            Just("https://admin.vps.org/api/v1"),
            Just("http://127.0.0.1:8080/api/v1"),
            Just("http://example.com/api"),
            Just("ftp://x"),
            Just("not a url"),
        ],
        prop_oneof![Just("30m"), Just("0s"), Just("soon")],
    )
        .prop_map(|(policies, url, timeout)| {
            format!(
                "[api]\nbase_url = \"{url}\"\ntoken_env = \"VPS_API_TOKEN\"\n\n[daemon]\n\
                 snapshot_timeout = \"{timeout}\"\n\n{}",
                policies.join("\n")
            )
        })
}

/// Any value a duration key could be given: huge, negative, zero, tiny, nonsense.
fn wild_duration() -> impl Strategy<Value = String> {
    let unit = prop_oneof![
        Just("ns"),
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("w"),
        Just("months"),
        Just("years"),
    ];
    prop_oneof![
        Just("400000000000years".to_owned()),
        Just("584942417355years".to_owned()),
        Just("18446744073709551615s".to_owned()),
        Just("0s".to_owned()),
        Just("-1s".to_owned()),
        Just("nan".to_owned()),
        (any::<u64>(), unit.clone()).prop_map(|(n, u)| format!("{n}{u}")),
        (0u64..2000, unit).prop_map(|(n, u)| format!("{n}{u}")),
    ]
}

/// A float as TOML spells it.
fn toml_float(f: f64) -> String {
    match f {
        f if f.is_nan() => "nan".to_owned(),
        f if f == f64::INFINITY => "inf".to_owned(),
        f if f == f64::NEG_INFINITY => "-inf".to_owned(),
        f => format!("{f:?}"),
    }
}

/// Any value `requests_per_second` could be given.
fn wild_rate() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1e-300".to_owned()),
        Just("1e300".to_owned()),
        Just("-1".to_owned()),
        Just("0".to_owned()),
        Just("nan".to_owned()),
        Just("inf".to_owned()),
        any::<f64>().prop_map(toml_float),
        (-5i64..2000).prop_map(|n| n.to_string()),
    ]
}

/// What a key holds, with the range the README documents for it.
#[derive(Clone, Copy)]
enum Limit {
    /// Milliseconds.
    Duration(u64, u64),
    Rate(f64, f64),
    Count(i64, i64),
}

const S: u64 = 1000;
const API_LIMITS: &[(&str, Limit)] = &[
    ("timeout", Limit::Duration(S, 600 * S)),
    ("requests_per_second", Limit::Rate(0.01, 1000.0)),
    ("max_retries", Limit::Count(0, 20)),
];
const DAEMON_LIMITS: &[(&str, Limit)] = &[
    ("poll_interval", Limit::Duration(100, 3600 * S)),
    ("snapshot_timeout", Limit::Duration(100, 7 * 86_400 * S)),
    ("power_timeout", Limit::Duration(S, 2 * 3600 * S)),
    ("shutdown_grace", Limit::Duration(0, 3600 * S)),
    ("max_concurrent", Limit::Count(1, 1024)),
];
const POLICY_LIMITS: &[(&str, Limit)] = &[
    ("jitter", Limit::Duration(0, 86_400 * S)),
    ("hook_timeout", Limit::Duration(S, 86_400 * S)),
    ("warn_age", Limit::Duration(60 * S, 400 * 86_400 * S)),
    ("crit_age", Limit::Duration(60 * S, 400 * 86_400 * S)),
];

/// A value for a key: mostly within its range (its ends included), sometimes anything.
fn value_for(limit: Limit) -> BoxedStrategy<String> {
    match limit {
        Limit::Duration(lo, hi) => prop_oneof![
            6 => prop_oneof![Just(lo), Just(hi), lo..=hi].prop_map(|ms| format!("\"{ms}ms\"")),
            1 => wild_duration().prop_map(|d| format!("\"{d}\"")),
        ]
        .boxed(),
        Limit::Rate(lo, hi) => prop_oneof![
            6 => prop_oneof![Just(lo), Just(hi), lo..=hi].prop_map(toml_float),
            1 => wild_rate(),
        ]
        .boxed(),
        Limit::Count(lo, hi) => prop_oneof![
            6 => prop_oneof![Just(lo), Just(hi), lo..=hi],
            1 => any::<i64>(),
        ]
        .prop_map(|n| n.to_string())
        .boxed(),
    }
}

/// `key = value` lines for some of `keys`.
fn lines(keys: &'static [(&'static str, Limit)]) -> impl Strategy<Value = String> {
    let each: Vec<_> = keys
        .iter()
        .map(|(key, limit)| {
            prop::option::of(value_for(*limit))
                .prop_map(move |v| v.map_or_else(String::new, |v| format!("{key} = {v}\n")))
        })
        .collect();
    each.prop_map(|lines| lines.concat())
}

/// A config whose every duration, rate and count key may hold any value.
fn config_with_any_limits() -> impl Strategy<Value = String> {
    (
        lines(API_LIMITS),
        lines(DAEMON_LIMITS),
        lines(POLICY_LIMITS),
        any::<bool>(),
    )
        .prop_map(|(api, daemon, policy, stop)| {
            format!(
                "[api]\nbase_url = \"https://admin.vps.org/api/v1\"\ntoken_env = \"VPS_API_TOKEN\"\n\
                 {api}\n[daemon]\n{daemon}\n[[policy]]\nname = \"limits\"\n\
                 schedule = \"* * * * *\"\nservers = [1, 2]\nkeep = 2\nstop_server = {stop}\n\
                 {policy}"
            )
        })
}

/// Builds from an accepted config what `check`, `plan`, `once --dry-run`, `once` and `status`
/// build, and runs them against the in-memory simulated provider on tokio's paused clock.
fn run_what_the_commands_build(config: &Config) -> Result<(), TestCaseError> {
    let now: DateTime<Utc> = "2025-01-15T02:30:05Z".parse().expect("a time");
    check_report(config, now);
    let token = config.api.token.clone().expect("token_env was set");
    http_provider(&config.api, token).expect("the HTTP client builds");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let clock = TokioClock::starting_at(now);
        let sim = Simulator::with_server_ids(
            SimConfig {
                snapshot_duration: Duration::from_secs(2),
                // Within the shortest power_timeout, so every stopped server starts again.
                power_delay: Duration::from_millis(500),
                ..SimConfig::default()
            },
            &config.servers(),
            clock.clone(),
        );
        let work = select(config, None, None, now).expect("every policy is selected");
        prop_assert!(!work.is_empty());
        for (policy, server, slot) in &work {
            plan(
                policy,
                &(*server).into(),
                &sim.snapshots(*server),
                *slot,
                now,
            );
            snapshot_scheduler::status::row(policy, *server, &sim.snapshots(*server), None, now);
        }
        for dry_run in [true, false] {
            let dir = tempfile::tempdir().expect("temp dir");
            let journal = Arc::new(Journal::open(dir.path()).expect("the journal opens"));
            let executor = Executor::new(Parts {
                provider: Arc::new(Retrying::new(sim.clone(), RetryRules::new(5).seeded(1))),
                clock: clock.clone() as Arc<dyn Clock>,
                journal: journal.clone(),
                runlog: Arc::new(RunLog::open(dir.path())),
                alerts: Alerts::muted(),
                settings: Settings::from_config(&config.daemon, dry_run),
                shutdown: snapshot_scheduler::shutdown::Shutdown::new(),
            });
            for report in executor.run_all(work.clone()).await {
                prop_assert!(
                    !report.message.contains("ended abnormally"),
                    "dry_run {dry_run}: {}",
                    report.message
                );
            }
            for server in config.servers() {
                let status = sim.server(server).expect("a simulated server").status;
                prop_assert_eq!(status, PowerState::Running, "server {} after once", server);
            }
            prop_assert!(journal.entries().is_empty(), "{:?}", journal.entries());
        }
        Ok(())
    })
}

/// The answers the client decodes, as the provider sends them.
fn sample_answers() -> Vec<Value> {
    let snapshot = json!({
        "id": 801, "server": {"id": 12345, "name": "web-server-01"},
        "name": "pre-migration-snapshot", "status": "completed", "size_mb": 5120,
        "created_at": "2025-01-15T18:30:00Z", "description": "Before major migration"});
    let server = json!({"id": 12345, "name": "web-server-01", "status": "running"});
    vec![
        json!({"count": 1, "next": null, "previous": null, "results": [snapshot.clone()]}),
        snapshot,
        server.clone(),
        json!({"status": "success", "server": server}),
        json!({"status": "success", "message": "being restored",
               "snapshot": {"id": 801, "name": "x", "created_at": "2025-01-15T18:30:00Z"},
               "server": {"id": 12345, "name": "web-server-01", "status": "restoring"}}),
        json!({"detail": "snapshot limit reached (5 per server)"}),
    ]
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".*".prop_map(Value::String),
        Just(json!("2025-01-15T18:30:00Z")),
        Just(json!("in_progress")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("server".to_owned()),
                    Just("results".to_owned()),
                    Just("status".to_owned()),
                    Just("next".to_owned()),
                    Just("created_at".to_owned()),
                    Just("size_mb".to_owned()),
                    ".{0,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at one path of `value` (chosen by `pick`) with `with`.
fn graft(value: &mut Value, pick: usize, with: Value) {
    if pick % 3 != 0 {
        let child = match value {
            Value::Object(map) if !map.is_empty() => {
                let n = map.len();
                map.values_mut().nth(pick % n)
            }
            Value::Array(items) if !items.is_empty() => {
                let n = items.len();
                items.get_mut(pick % n)
            }
            _ => None,
        };
        if let Some(child) = child {
            return graft(child, pick / 3, with);
        }
    }
    *value = with;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_text_as_config_parses_or_names_its_error(text in ".{0,400}") {
        check_outcome(&text)?;
    }

    #[test]
    fn the_example_config_mutated_parses_or_names_its_error(edits in edits()) {
        check_outcome(&apply(EXAMPLE, &edits))?;
    }

    #[test]
    fn random_policy_values_parse_or_name_their_error(text in random_policy_config()) {
        check_outcome(&text)?;
    }

    #[test]
    fn any_limits_are_refused_by_check_or_never_panic_in_plan_or_once(
        text in config_with_any_limits()
    ) {
        // Before the fix "400000000000years" passed check and `once` panicked with the
        // server stopped; 1e-300 requests per second passed check and every command panicked.
        check_outcome(&text)?;
        let env = BTreeMap::from([("VPS_API_TOKEN".to_owned(), "smoke-token".to_owned())]);
        if let Ok(config) = Config::parse(
            Path::new("limits.toml"),
            &text,
            LoadOptions { simulate: false },
            &env,
        ) {
            run_what_the_commands_build(&config)?;
        }
    }

    #[test]
    fn any_bytes_as_a_provider_answer_decode_or_fail_cleanly(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        decode_every_answer(&body);
    }

    #[test]
    fn real_answers_truncated_or_mutated_decode_or_fail_cleanly(
        which in 0usize..6,
        cut in any::<usize>(),
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        let mut body = serde_json::to_vec(&sample_answers()[which]).expect("serializes");
        for (at, byte) in flips {
            let n = body.len();
            body[at % n] = byte;
        }
        body.truncate(cut % (body.len() + 1));
        decode_every_answer(&body);
    }

    #[test]
    fn real_answers_with_any_value_grafted_in_decode_or_fail_cleanly(
        which in 0usize..6,
        pick in any::<usize>(),
        with in any_json(),
    ) {
        let mut answer = sample_answers()[which].clone();
        graft(&mut answer, pick, with);
        decode_every_answer(&serde_json::to_vec(&answer).expect("serializes"));
    }
}

#[test]
fn the_real_answers_decode() {
    // The generators start from answers that decode, so a mutation is what breaks them.
    let decoded: Vec<usize> = sample_answers()
        .iter()
        .map(|a| decode_every_answer(&serde_json::to_vec(a).expect("serializes")))
        .collect();
    assert!(decoded[..5].iter().all(|n| *n >= 1), "{decoded:?}");
}
