//! check: every bad input is rejected with its file, line, key and what is allowed.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{Datelike, NaiveDate, Weekday};

use crate::common::{bin, config_with_policy, run, stderr, stdout, Scratch};

/// Checks never contact the provider, so any https URL will do.
const BASE_URL: &str = "https://vps.example/api/v1";

const NIGHTLY: &str = r#"name = "nightly"
schedule = "30 2 * * *"
servers = [12345]"#;

fn check(config: &Path) -> Output {
    run(bin().arg("--config").arg(config).arg("check"))
}

/// Writes a config around one policy body and runs `check` on it.
fn check_policy(policy: &str) -> (Scratch, PathBuf, Output) {
    check_body(&config_with_policy(policy))
}

fn check_body(body: &str) -> (Scratch, PathBuf, Output) {
    let scratch = Scratch::new();
    let path = scratch.config(body, BASE_URL);
    let out = check(&path);
    (scratch, path, out)
}

/// The 1-based number of the line of `path` that contains `needle` (the `nth` such line, from 1).
fn line_of(path: &Path, needle: &str, nth: usize) -> usize {
    let text = std::fs::read_to_string(path).expect("read config");
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(nth - 1)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("no line {nth} with {needle:?} in\n{text}"))
}

/// Exit 2, nothing reported as ok, and one stderr line `config.toml:<line>:<col>: <key>: ...`
/// that also says what is allowed. Returns that line for further assertions.
fn assert_rejected(out: &Output, line: usize, key: &str, allowed: &str) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr:\n{err}");
    assert!(!stdout(out).contains(": ok ("), "stdout: {}", stdout(out));
    let at = format!("config.toml:{line}:");
    let hit = err
        .lines()
        .find(|l| l.contains(&at))
        .unwrap_or_else(|| panic!("no {at} in stderr:\n{err}"));
    let rest = &hit[hit.find(&at).unwrap() + at.len()..];
    let column = rest.split(':').next().unwrap();
    assert!(column.parse::<usize>().is_ok(), "no column in {hit:?}");
    assert!(
        rest.contains(&format!(": {key}: ")),
        "key {key:?} not named in {hit:?}"
    );
    assert!(hit.contains(allowed), "{allowed:?} not in {hit:?}");
    hit.to_owned()
}

fn assert_accepted(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
    assert!(stdout(out).contains("config.toml: ok ("), "{}", stdout(out));
}

#[test]
fn unknown_key_in_a_policy_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(&format!("{NIGHTLY}\nkep = 3"));
    let hit = assert_rejected(&out, line_of(&path, "kep = 3", 1), "kep", "expected one of");
    assert!(hit.contains("`keep`"), "{hit}");
}

#[test]
fn unknown_key_in_daemon_is_rejected_with_its_line() {
    let body = config_with_policy(NIGHTLY).replace(
        "poll_interval = \"200ms\"",
        "poll_interval = \"200ms\"\nmax_concurent = 4",
    );
    let (_s, path, out) = check_body(&body);
    let hit = assert_rejected(
        &out,
        line_of(&path, "max_concurent", 1),
        "max_concurent",
        "expected one of",
    );
    assert!(hit.contains("`max_concurrent`"), "{hit}");
}

#[test]
fn malformed_toml_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(
        r#"name = "nightly
schedule = "30 2 * * *"
servers = [12345]"#,
    );
    assert_rejected(
        &out,
        line_of(&path, "name = \"nightly", 1),
        "name",
        "expected `\"`",
    );
}

#[test]
fn bad_cron_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(
        r#"name = "nightly"
schedule = "61 2 * * *"
servers = [12345]"#,
    );
    let hit = assert_rejected(
        &out,
        line_of(&path, "schedule =", 1),
        "policy \"nightly\".schedule",
        "allowed: 5-field cron",
    );
    assert!(hit.contains("\"61 2 * * *\""), "{hit}");
}

#[test]
fn cron_with_three_fields_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(
        r#"name = "nightly"
schedule = "2 * *"
servers = [12345]"#,
    );
    assert_rejected(
        &out,
        line_of(&path, "schedule =", 1),
        "policy \"nightly\".schedule",
        "3 fields; allowed: 5-field cron",
    );
}

#[test]
fn unknown_timezone_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(&format!("{NIGHTLY}\ntimezone = \"Europe/Atlantis\""));
    let hit = assert_rejected(
        &out,
        line_of(&path, "timezone =", 1),
        "policy \"nightly\".timezone",
        "allowed: an IANA name",
    );
    assert!(hit.contains("Europe/Atlantis"), "{hit}");
}

#[test]
fn keep_zero_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(&format!("{NIGHTLY}\nkeep = 0"));
    assert_rejected(
        &out,
        line_of(&path, "keep = 0", 1),
        "policy \"nightly\".keep",
        "0 is out of range; allowed: 1..=5",
    );
}

#[test]
fn keep_six_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(&format!("{NIGHTLY}\nkeep = 6"));
    assert_rejected(
        &out,
        line_of(&path, "keep = 6", 1),
        "policy \"nightly\".keep",
        "6 is out of range; allowed: 1..=5",
    );
}

#[test]
fn policy_name_with_a_space_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(
        r#"name = "night ly"
schedule = "30 2 * * *"
servers = [12345]"#,
    );
    let hit = assert_rejected(
        &out,
        line_of(&path, "name = \"night ly\"", 1),
        "policy #1.name",
        "allowed: 1 to 40 letters, digits, '-' or '_'",
    );
    assert!(hit.contains("\"night ly\""), "{hit}");
}

#[test]
fn policy_name_longer_than_40_is_rejected_with_its_line() {
    let policy =
        |name: &str| format!("name = \"{name}\"\nschedule = \"@daily\"\nservers = [12345]");
    let (_s, _path, out) = check_policy(&policy(&"a".repeat(40)));
    assert_accepted(&out);

    let (_s, path, out) = check_policy(&policy(&"a".repeat(41)));
    assert_rejected(
        &out,
        line_of(&path, "name = ", 1),
        "policy #1.name",
        "allowed: 1 to 40 letters",
    );
}

#[test]
fn duplicate_policy_names_are_rejected_at_the_second() {
    let (_s, path, out) = check_policy(&format!(
        "{NIGHTLY}\n\n[[policy]]\nname = \"nightly\"\nschedule = \"@daily\"\nservers = [12346]"
    ));
    assert_rejected(
        &out,
        line_of(&path, "name = \"nightly\"", 2),
        "policy \"nightly\".name",
        "defined twice (also policy #1); allowed: unique names",
    );
}

#[test]
fn empty_servers_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(
        r#"name = "nightly"
schedule = "30 2 * * *"
servers = []"#,
    );
    assert_rejected(
        &out,
        line_of(&path, "servers = []", 1),
        "policy \"nightly\".servers",
        "is empty; allowed: a list of one or more server ids",
    );
}

#[test]
fn http_to_a_non_loopback_host_is_rejected_with_its_line() {
    let scratch = Scratch::new();
    let path = scratch.config(&config_with_policy(NIGHTLY), "http://vps.example/api/v1");
    let out = check(&path);
    let hit = assert_rejected(
        &out,
        line_of(&path, "base_url =", 1),
        "api.base_url",
        "allowed: https://, or http:// to a loopback host",
    );
    assert!(hit.contains("vps.example"), "{hit}");
}

#[test]
fn http_to_a_loopback_host_is_accepted() {
    for url in [
        "http://127.0.0.1:8080/api/v1",
        "http://localhost:8080/api/v1",
        "http://[::1]:8080/api/v1",
    ] {
        let scratch = Scratch::new();
        let out = check(&scratch.config(&config_with_policy(NIGHTLY), url));
        assert_accepted(&out);
    }
}

#[test]
fn no_token_source_is_rejected_at_the_api_table() {
    let body = config_with_policy(NIGHTLY).replace("token_file = \"{token_file}\"\n", "");
    let (_s, path, out) = check_body(&body);
    assert_rejected(
        &out,
        line_of(&path, "[api]", 1),
        "api",
        "no token source; allowed: token_file",
    );
    assert!(
        stderr(&out).contains("CREDENTIALS_DIRECTORY"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn token_file_readable_by_others_is_rejected_with_its_line() {
    let scratch = Scratch::new();
    scratch.write_token(crate::common::TOKEN, 0o644);
    let path = scratch.config(&config_with_policy(NIGHTLY), BASE_URL);
    let out = check(&path);
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_file =", 1),
        "api.token_file",
        "allowed: readable by its owner only",
    );
    assert!(hit.contains("mode 644"), "{hit}");
    assert!(hit.contains("chmod 600"), "{hit}");
}

#[test]
fn group_readable_token_file_is_accepted_with_a_warning() {
    let scratch = Scratch::new();
    scratch.write_token(crate::common::TOKEN, 0o640);
    let out = check(&scratch.config(&config_with_policy(NIGHTLY), BASE_URL));
    assert_accepted(&out);
    let err = stderr(&out);
    assert!(err.contains("WARN"), "{err}");
    assert!(err.contains("readable by its group (mode 640)"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn missing_token_env_variable_is_rejected_with_its_line() {
    let var = "SNAPSHOT_SCHEDULER_TEST_NO_SUCH_TOKEN";
    let body = config_with_policy(NIGHTLY).replace(
        "token_file = \"{token_file}\"",
        &format!("token_env = \"{var}\""),
    );
    let scratch = Scratch::new();
    let path = scratch.config(&body, BASE_URL);
    let out = run(bin().env_remove(var).arg("-c").arg(&path).arg("check"));
    assert_rejected(
        &out,
        line_of(&path, "token_env =", 1),
        "api.token_env",
        &format!("the environment variable {var} is not set or empty"),
    );

    // The same config is fine once the variable is there.
    let out = run(bin().env(var, "t0ken").arg("-c").arg(&path).arg("check"));
    assert_accepted(&out);
}

#[test]
fn two_policies_over_the_server_cap_are_rejected_naming_the_server_and_both() {
    let (_s, path, out) = check_policy(
        r#"name = "nightly"
schedule = "30 2 * * *"
servers = [12345, 12346]
keep = 3

[[policy]]
name = "hourly"
schedule = "@hourly"
servers = [12346]
keep = 3"#,
    );
    let hit = assert_rejected(
        &out,
        line_of(&path, "servers = [12346]", 1),
        "policy \"hourly\".servers",
        "allowed: at most 5 per server",
    );
    assert!(hit.contains("server 12346"), "{hit}");
    assert!(hit.contains("nightly keeps 3"), "{hit}");
    assert!(hit.contains("hourly keeps 3"), "{hit}");
    assert!(!hit.contains("12345"), "{hit}");
}

#[test]
fn server_cap_error_points_at_the_right_policy_when_a_name_repeats() {
    // Before the fix the cap error was located by name, so it pointed at the third policy.
    let (_s, path, out) = check_policy(
        r#"name = "nightly"
schedule = "30 2 * * *"
servers = [12345]
keep = 3

[[policy]]
name = "hourly"
schedule = "@hourly"
servers = [12345]
keep = 3

[[policy]]
name = "hourly"
schedule = "@daily"
servers = [12399]
keep = 1"#,
    );
    assert_rejected(
        &out,
        line_of(&path, "servers = [12345]", 2),
        "policy \"hourly\".servers",
        "server 12345: policies together keep 6 snapshots",
    );
}

#[test]
fn bad_duration_is_rejected_with_its_line() {
    let body = config_with_policy(NIGHTLY).replace("\"200ms\"", "\"soon\"");
    let (_s, path, out) = check_body(&body);
    let hit = assert_rejected(
        &out,
        line_of(&path, "poll_interval =", 1),
        "daemon.poll_interval",
        "allowed: e.g. \"30s\", \"15m\"",
    );
    assert!(hit.contains("\"soon\" is not a duration"), "{hit}");
}

#[test]
fn bad_log_format_is_rejected_with_its_line() {
    let body = config_with_policy(NIGHTLY).replace(
        "poll_interval = \"200ms\"",
        "poll_interval = \"200ms\"\nlog_format = \"xml\"",
    );
    let (_s, path, out) = check_body(&body);
    assert_rejected(
        &out,
        line_of(&path, "log_format =", 1),
        "daemon.log_format",
        "allowed: auto, text, json, journald",
    );
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

/// The `next` lines of one policy's block in the `check` report.
fn fires_of<'a>(report: &'a str, policy: &str) -> Vec<&'a str> {
    let block = report
        .split("\npolicy ")
        .find(|b| b.starts_with(&format!("{policy}\n")))
        .unwrap_or_else(|| panic!("no policy {policy} in\n{report}"));
    block
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("next"))
        .map(|l| l.trim_start().trim_start_matches("next").trim())
        .collect()
}

#[test]
fn example_config_is_accepted_with_simulate_and_shows_the_next_three_fires() {
    let out = run(bin()
        .arg("-c")
        .arg(example())
        .arg("--simulate")
        .arg("check"));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("config.example.toml: ok (2 policies)"),
        "{report}"
    );
    assert!(report.contains("30 2 * * * (Europe/Berlin)"), "{report}");

    for (policy, time, weekday) in [
        ("nightly", "02:30:00", None),
        ("weekly-db", "04:00:00", Some(Weekday::Sun)),
    ] {
        let fires = fires_of(&report, policy);
        assert_eq!(fires.len(), 3, "{policy}: {fires:?}");
        let mut days = Vec::new();
        for fire in &fires {
            // "2025-01-16 02:30:00 CET": the local wall time in the policy's own zone.
            let parts: Vec<&str> = fire.split(' ').collect();
            assert_eq!(parts.len(), 3, "{fire}");
            assert_eq!(parts[1], time, "{policy}: {fire}");
            assert!(["CET", "CEST"].contains(&parts[2]), "{policy}: {fire}");
            let day = NaiveDate::parse_from_str(parts[0], "%Y-%m-%d").expect("a date");
            if let Some(w) = weekday {
                assert_eq!(day.weekday(), w, "{policy}: {fire}");
            }
            days.push(day);
        }
        assert!(days.windows(2).all(|w| w[0] < w[1]), "{policy}: {fires:?}");
    }
}

#[test]
fn example_config_without_simulate_names_its_missing_token_file() {
    // `check` builds what `run` builds: without --simulate the token must be readable.
    let out = check(&example());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let at = format!(
        "config.example.toml:{}:",
        line_of(&example(), "token_file =", 1)
    );
    assert!(err.contains(&at), "{at} not in {err}");
    assert!(
        err.contains("api.token_file: cannot read /etc/snapshot-scheduler/token"),
        "{err}"
    );
}

#[test]
fn token_from_credentials_directory_is_accepted() {
    let scratch = Scratch::new();
    let creds = scratch.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("api-token"), "from-systemd").expect("write credential");
    std::fs::set_permissions(
        creds.join("api-token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o400),
    )
    .expect("chmod");
    let body = config_with_policy(NIGHTLY).replace("token_file = \"{token_file}\"\n", "");
    let path = scratch.config(&body, BASE_URL);
    let out = run(bin()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("-c")
        .arg(&path)
        .arg("check"));
    assert_accepted(&out);
}

#[test]
fn config_path_comes_from_the_environment() {
    let scratch = Scratch::new();
    let path = scratch.config(&config_with_policy(NIGHTLY), BASE_URL);
    let out = run(bin().env("SNAPSHOT_SCHEDULER_CONFIG", &path).arg("check"));
    assert_accepted(&out);
    assert!(
        stdout(&out).starts_with(&format!("{}: ok (1 policy)", path.display())),
        "{}",
        stdout(&out)
    );
}

#[test]
fn missing_config_file_is_rejected_naming_the_path() {
    let scratch = Scratch::new();
    let path = scratch.path().join("nowhere.toml");
    let out = check(&path);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("cannot read config file {}", path.display())),
        "{err}"
    );
    // The cause once, not repeated by the message and again by the error chain.
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}
