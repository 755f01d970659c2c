//! What an operator monitors with: the alert rules in `contrib/prometheus` (checked and unit
//! tested by promtool), the Grafana dashboard in `contrib/grafana`, and the `/metrics` of the
//! real daemon after a run, which must export, describe and type every series they use.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use snapshot_scheduler::model::ServerId;
use snapshot_scheduler::simulator::SimConfig;
use tokio::time::Instant;

use crate::common::{policy, stderr, stdout, tool_available, Daemon, Setup};

const WEB: ServerId = 12345;
/// A server the provider does not know: every run of a policy on it fails.
const GONE: ServerId = 99999;

/// Names the rules and the dashboard use that Prometheus makes, not the daemon.
const PROMETHEUS_BUILTINS: &[&str] = &["up"];

/// Exported only with `[ha]`, which this daemon runs without: declared in
/// `snapshot_scheduler::series::ALL` is what is checked for these.
const HA_ONLY: &[&str] = &["snapshot_scheduler_leader"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn the_alert_rules_are_valid_and_pass_their_unit_tests() {
    if !tool_available("promtool") {
        return;
    }
    promtool(&["check", "rules", "contrib/prometheus/alerts.yml"]);
    promtool(&["test", "rules", "contrib/prometheus/alerts.test.yml"]);
}

/// The names after `- alert:` in alerts.yml.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn every_alert_rule_has_a_case_where_it_fires_and_one_where_it_must_not() {
    let rules = read("contrib/prometheus/alerts.yml");
    let tests = read("contrib/prometheus/alerts.test.yml");
    let names = alert_names(&rules);
    assert!(names.len() >= 9, "{names:?}");
    // Each `alertname:` line and what its `exp_alerts:` line says: `[]` (must not fire) or a list.
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases: BTreeMap<&str, (bool, bool)> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let expected = lines[i + 1..]
            .iter()
            .find_map(|l| l.strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("no exp_alerts after alertname {name}"));
        let case = cases.entry(name.trim()).or_default();
        if expected.trim() == "[]" {
            case.1 = true;
        } else {
            case.0 = true;
        }
    }
    for name in &names {
        assert_eq!(
            cases.get(name.as_str()),
            Some(&(true, true)),
            "alert {name}: (a case where it fires, a case where it must not) in alerts.test.yml"
        );
    }
    for name in cases.keys() {
        assert!(
            names.iter().any(|n| n == name),
            "alerts.test.yml tests {name}, which alerts.yml lacks"
        );
    }
}

/// The PromQL expressions of alerts.yml: `expr: ...` on one line, or `expr: |` and the lines
/// indented below it.
fn rule_exprs(rules: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        if expr.trim() != "|" {
            exprs.push(expr.trim().to_owned());
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        while let Some(next) = lines.peek() {
            if next.len() - next.trim_start().len() <= indent {
                break;
            }
            block.push_str(next);
            block.push('\n');
            lines.next();
        }
        exprs.push(block);
    }
    exprs
}

/// Every `expr` of the dashboard's panels, and the metric of each `label_values(...)` query.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        ("query" | "definition", serde_json::Value::String(q)) => {
                            if let Some(args) = q.strip_prefix("label_values(") {
                                let metric = args.rsplit_once(',').map_or(args, |(m, _)| m);
                                out.push(metric.to_owned());
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The metric names a PromQL expression reads: identifiers outside strings, label matchers,
/// ranges and label lists, that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset"];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Followed by `by (...)` rather than `(`, so not told by their call.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Skips from an opening bracket to its closing one (strings inside included).
    let skip = |mut i: usize, open: char, close: char| -> usize {
        let mut depth = 0;
        while i < chars.len() {
            match chars[i] {
                '"' => {
                    i += 1;
                    while i < chars.len() && chars[i] != '"' {
                        i += if chars[i] == '\\' { 2 } else { 1 };
                    }
                }
                c if c == open => depth += 1,
                c if c == close => {
                    depth -= 1;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i = skip(i, '{', '}');
        } else if c == '[' {
            i = skip(i, '[', ']');
        } else if c == '"' {
            i = skip(i, '"', '"');
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':' | '$'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let called = chars.get(next) == Some(&'(');
            if LABEL_LISTS.contains(&word.as_str()) && called {
                i = skip(next, '(', ')');
            } else if !called
                && !KEYWORDS.contains(&word.as_str())
                && !LABEL_LISTS.contains(&word.as_str())
                && !AGGREGATIONS.contains(&word.as_str())
                && !word.starts_with('$')
            {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_and_nothing_else() {
    let expr = r#"time() - max by (policy, server) (a_seconds{job=~"x{1}"})
        > on (policy) group_left () b * 1e3 unless rate(c_total[$__rate_interval] offset 5m) or vector(0)
        / histogram_quantile(0.95, sum by (le) (d_bucket))"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_seconds", "b", "c_total", "d_bucket"]);
}

/// What a scrape says: each metric family's `# TYPE`, `# HELP`, and its sample lines.
struct Scrape {
    text: String,
    types: BTreeMap<String, String>,
    helps: BTreeSet<String>,
    samples: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let (mut types, mut helps, mut samples) =
            (BTreeMap::new(), BTreeSet::new(), BTreeSet::new());
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next()) {
                (Some("#"), Some("TYPE"), Some(name)) => {
                    types.insert(name.to_owned(), words.next().unwrap_or("").to_owned());
                }
                (Some("#"), Some("HELP"), Some(name)) if words.next().is_some() => {
                    helps.insert(name.to_owned());
                }
                (Some(sample), ..) if !sample.starts_with('#') => {
                    let name = sample.split('{').next().unwrap_or(sample);
                    samples.insert(name.to_owned());
                }
                _ => {}
            }
        }
        Self {
            text,
            types,
            helps,
            samples,
        }
    }

    /// The family a sample or series name belongs to: itself, or the histogram it is the
    /// `_bucket`, `_sum` or `_count` of.
    fn family<'a>(&self, name: &'a str) -> Option<&'a str> {
        if self.types.contains_key(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| self.types.get(*base).is_some_and(|t| t == "histogram"))
    }
}

/// The daemon with `metrics_listen`, over a simulated provider of [`WEB`].
struct Monitored {
    setup: Setup,
    metrics: std::net::SocketAddr,
}

impl Monitored {
    async fn new(policies: &str, sim: SimConfig) -> Self {
        let metrics = {
            let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
            free.local_addr().expect("local addr")
        };
        let daemon = format!("metrics_listen = \"{metrics}\"");
        let setup = Setup::new(&[WEB], sim, policies, &daemon).await;
        Self { setup, metrics }
    }

    /// Starts the daemon and scrapes `/metrics` until `done` holds for its text.
    async fn scrape_until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let daemon = Daemon::start(&[], &self.setup.config);
        let url = format!("http://{}/metrics", self.metrics);
        let deadline = Instant::now() + crate::common::DAEMON_WAIT;
        loop {
            let body = match reqwest::get(&url).await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "never {what} in /metrics:\n{body}\n{}",
                daemon.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Runs the daemon against the simulated provider until a policy with `stop_server` has
/// created a snapshot and a policy on an unknown server has failed, then scrapes `/metrics`.
async fn scrape_after_a_run() -> Scrape {
    let policies = format!(
        "{}\n[[policy]]\n{}",
        policy("nightly", "*/2 * * * * *", &[WEB], "stop_server = true"),
        policy("broken", "*/2 * * * * *", &[GONE], "")
    );
    let sim = SimConfig {
        snapshot_duration: Duration::from_secs(1),
        power_delay: Duration::from_millis(300),
        example_snapshots: true,
        ..SimConfig::default()
    };
    let wanted = [
        "snapshot_scheduler_snapshots_created_total{policy=\"nightly\"} ",
        "snapshot_scheduler_runs_failed_total{policy=\"broken\"} ",
        "snapshot_scheduler_run_duration_seconds_count{policy=\"nightly\"} ",
    ];
    let monitored = Monitored::new(&policies, sim).await;
    let body = monitored
        .scrape_until(
            "a created snapshot, a failed run and a run's duration",
            |body| {
                wanted.iter().all(|w| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(w))
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v >= 1.0)
                })
            },
        )
        .await;
    Scrape::parse(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_the_alerts_and_the_dashboard_use_is_exported_by_the_daemon() {
    let scrape = scrape_after_a_run().await;
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("contrib/grafana/snapshot-scheduler.json")).expect("JSON");
    let uses = [
        (
            "alerts.yml",
            rule_exprs(&read("contrib/prometheus/alerts.yml")),
        ),
        ("snapshot-scheduler.json", dashboard_exprs(&dashboard)),
    ];
    let declared = |name: &str| {
        snapshot_scheduler::series::ALL
            .iter()
            .any(|(n, ..)| *n == name)
    };
    let mut missing = Vec::new();
    for (file, exprs) in &uses {
        assert!(
            exprs.len() >= 9,
            "{file}: only {} expressions found",
            exprs.len()
        );
        for expr in exprs {
            for name in metric_names(expr) {
                let known = scrape.family(&name).is_some()
                    || PROMETHEUS_BUILTINS.contains(&name.as_str())
                    || (HA_ONLY.contains(&name.as_str()) && declared(&name));
                if !known {
                    missing.push(format!("{file}: {name} (in {})", expr.trim()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported:\n{}\n\n{}",
        missing.join("\n"),
        scrape.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_series_has_help_and_type_and_durations_are_histograms() {
    let scrape = scrape_after_a_run().await;
    let text = &scrape.text;
    for sample in &scrape.samples {
        let family = scrape
            .family(sample)
            .unwrap_or_else(|| panic!("{sample} has no # TYPE\n{text}"));
        assert!(
            scrape.helps.contains(family),
            "{family} has no # HELP\n{text}"
        );
    }
    assert_eq!(
        scrape
            .types
            .get("snapshot_scheduler_run_duration_seconds")
            .map(String::as_str),
        Some("histogram"),
        "{text}"
    );
    // Buckets for runs of seconds to hours.
    for le in ["1", "300", "7200", "+Inf"] {
        let bucket = format!(
            "snapshot_scheduler_run_duration_seconds_bucket{{policy=\"nightly\",le=\"{le}\"}} "
        );
        assert!(
            text.lines().any(|l| l.starts_with(&bucket)),
            "no {bucket}\n{text}"
        );
    }
    let version = format!(
        "snapshot_scheduler_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == version), "no {version}\n{text}");
    // The simulator's example snapshots are hand-made: foreign, and counted by state.
    for prefix in [
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"completed\"}} "),
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"in_progress\"}} "),
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"failed\"}} "),
        format!("snapshot_scheduler_foreign_snapshots{{server=\"{WEB}\"}} "),
        format!("snapshot_scheduler_newest_snapshot_timestamp_seconds{{policy=\"nightly\",server=\"{WEB}\"}} "),
        "snapshot_scheduler_policy_warn_age_seconds{policy=\"nightly\"} 4".to_owned(),
        "snapshot_scheduler_policy_crit_age_seconds{policy=\"nightly\"} 6".to_owned(),
        "snapshot_scheduler_servers_stopped ".to_owned(),
        "snapshot_scheduler_runs_in_flight ".to_owned(),
    ] {
        assert!(text.lines().any(|l| l.starts_with(&prefix)), "no {prefix}\n{text}");
    }
}

#[test]
fn the_dashboard_is_a_grafana_10_dashboard_on_a_chosen_prometheus() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("contrib/grafana/snapshot-scheduler.json")).expect("JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 38));
    assert_eq!(dashboard["uid"], "snapshot-scheduler");
    assert!(dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(variables.iter().any(|v| v["name"] == "datasource"
        && v["type"] == "datasource"
        && v["query"] == "prometheus"));
    let panels = dashboard["panels"].as_array().expect("panels");
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    assert_eq!(
        rows,
        [
            "Fleet freshness",
            "Per-policy results",
            "Provider API",
            "Daemon"
        ]
    );
    let mut ids = BTreeSet::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert!(ids.insert(p["id"].as_u64()), "panel id {} twice", p["id"]);
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        let targets = p["targets"].as_array().expect("targets");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
        // A table of several queries shows one of them unless each is a table frame and the
        // frames are merged into one.
        if p["type"] == "table" {
            for t in targets {
                assert_eq!(t["format"], "table", "{}: {}", p["title"], t["refId"]);
            }
            let merged = p["transformations"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|t| t["id"] == "merge"));
            assert!(
                targets.len() < 2 || merged,
                "{}: frames not merged",
                p["title"]
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_exports_the_freshness_of_earlier_snapshots_before_its_next_fire() {
    let sim = SimConfig {
        example_snapshots: false,
        ..SimConfig::default()
    };
    // January 1st, 03:00: no fire during the test.
    let monitored = Monitored::new(&policy("yearly", "0 0 3 1 1 *", &[WEB], ""), sim).await;
    // What an earlier process left: its newest own snapshot three days old, an older failed
    // one, and one made by hand that is still in progress.
    let newest = chrono::Utc::now() - chrono::Duration::days(3);
    let older = newest - chrono::Duration::days(1);
    let sim = &monitored.setup.sim;
    use snapshot_scheduler::model::SnapshotStatus::{Completed, Failed, InProgress};
    use snapshot_scheduler::policy::snapshot_name;
    sim.add_snapshot(WEB, &snapshot_name("yearly", newest), Completed, newest);
    sim.add_snapshot(WEB, &snapshot_name("yearly", older), Failed, older);
    sim.add_snapshot(WEB, "before-upgrade", InProgress, older);

    let expected = [
        format!(
            "snapshot_scheduler_newest_snapshot_timestamp_seconds{{policy=\"yearly\",server=\"{WEB}\"}} {}",
            newest.timestamp()
        ),
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"completed\"}} 1"),
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"failed\"}} 1"),
        format!("snapshot_scheduler_snapshots{{server=\"{WEB}\",state=\"in_progress\"}} 1"),
        format!("snapshot_scheduler_foreign_snapshots{{server=\"{WEB}\"}} 1"),
    ];
    monitored
        .scrape_until(&format!("all of {expected:#?}"), |body| {
            expected.iter().all(|e| body.lines().any(|l| l == e))
        })
        .await;
    assert!(
        sim.stats().created.is_empty(),
        "the policy fired during the test"
    );
}

/// A provider out of reach when the daemon starts does not leave the freshness series missing
/// until the next fire (a week, for a weekly policy, with nothing for the alerts to judge):
/// the listing is tried again with back-off, and they appear once the provider answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_is_listed_again_when_the_provider_was_down_at_start() {
    let metrics = crate::etcd_support::free_port();
    let provider = crate::etcd_support::free_port();
    let scratch = crate::common::Scratch::new();
    let body = crate::common::fast_config(
        &policy("yearly", "0 0 3 1 1 *", &[WEB], ""),
        &format!("metrics_listen = \"127.0.0.1:{metrics}\""),
    );
    let base_url = snapshot_scheduler::simulator::base_url(
        format!("127.0.0.1:{provider}").parse().expect("an address"),
    );
    // No retries of a request: the start-up listing fails at once.
    let body = body.replace("[api]\n", "[api]\nmax_retries = 0\n");
    let config = scratch.config(&body, &base_url);
    let daemon = Daemon::start(&[], &config);
    let newest = format!("snapshot_scheduler_newest_snapshot_timestamp_seconds{{policy=\"yearly\",server=\"{WEB}\"}} 0");
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let scrape = || async {
        match reqwest::get(&url).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !daemon
        .log()
        .contains("cannot list the servers for the freshness metrics")
    {
        assert!(
            Instant::now() < deadline,
            "no failed listing:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!scrape().await.contains(&newest));
    let sim = crate::common::test_sim(
        &[WEB],
        SimConfig {
            example_snapshots: false,
            ..SimConfig::default()
        },
    );
    let _served = snapshot_scheduler::simulator::serve(
        sim,
        format!("127.0.0.1:{provider}").parse().expect("an address"),
    )
    .await
    .expect("serve the simulator");
    // The first retry comes 30 s after the failure.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let body = scrape().await;
        if body.lines().any(|l| l == newest) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never {newest}:\n{body}\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A server a previous process left stopped shows in `servers_stopped` and
/// `oldest_stop_age_seconds` from the start, while it is being settled (before: neither series
/// existed until this process wrote the journal, so the alert had nothing to judge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_left_stopped_by_a_previous_process_shows_while_it_is_settled() {
    let sim = SimConfig {
        example_snapshots: false,
        ..SimConfig::default()
    };
    let monitored = Monitored::new(
        &policy("yearly", "0 0 3 1 1 *", &[WEB], "stop_server = true"),
        sim,
    )
    .await;
    // Stopped ten minutes ago for a snapshot that is still in progress: the start waits for it.
    let now = chrono::Utc::now();
    let stopped_at = now - chrono::Duration::minutes(10);
    let name = snapshot_scheduler::policy::snapshot_name("yearly", stopped_at);
    use snapshot_scheduler::model::SnapshotStatus::InProgress;
    monitored
        .setup
        .sim
        .add_snapshot(WEB, &name, InProgress, stopped_at);
    let journal = serde_json::json!([{
        "server": WEB, "policy": "yearly", "snapshot": name,
        "stopped_at": stopped_at, "deadline": now + chrono::Duration::hours(1),
    }]);
    let state = monitored.setup.scratch.state_dir();
    std::fs::create_dir_all(&state).expect("state_dir");
    std::fs::write(state.join("power-journal.json"), journal.to_string()).expect("journal");
    // The age also grows by itself while the stop is being settled (no wake of the loop yet):
    // seen at least 600 s, then 2 s more at least 2.5 s later.
    let first: std::cell::Cell<Option<(std::time::Instant, f64)>> = std::cell::Cell::new(None);
    monitored
        .scrape_until(
            "the stop left by a previous process, its age growing",
            |body| {
                let value = |name: &str| {
                    body.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
                };
                let age = value("snapshot_scheduler_oldest_stop_age_seconds");
                let (Some(1.0), Some(age)) = (value("snapshot_scheduler_servers_stopped"), age)
                else {
                    return false;
                };
                match first.get() {
                    None if age >= 600.0 => {
                        first.set(Some((std::time::Instant::now(), age)));
                        false
                    }
                    None => false,
                    Some((at, seen)) => {
                        at.elapsed() >= Duration::from_millis(2500) && age >= seen + 2.0
                    }
                }
            },
        )
        .await;
}
