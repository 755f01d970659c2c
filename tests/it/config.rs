//! check: every bad input is rejected with its file, line, key and what is allowed; `once`
//! and `run` reject it the same way before they touch anything.

use std::path::{Path, PathBuf};
use std::process::Output;

use chrono::{Datelike, NaiveDate, Weekday};

use crate::common::{bin, config_with_policy, run, serve_sim, stderr, stdout, Scratch};

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
        "allowed: 100ms..=1h, written like \"30s\", \"15m\"",
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
fn example_config_without_simulate_takes_the_token_from_the_units_credential() {
    // `check` builds what `run` builds: without --simulate the token must be there. The
    // example names no token source, so it is the credential the shipped unit loads.
    let out = check(&example());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let at = format!("config.example.toml:{}:", line_of(&example(), "[api]", 1));
    assert!(err.contains(&at), "{at} not in {err}");
    assert!(err.contains("api: no token source"), "{err}");
    assert!(err.contains("LoadCredential=api-token:"), "{err}");

    let scratch = Scratch::new();
    let creds = credentials(&scratch, &[("api-token", "from-systemd\n")]);
    let out = run(bin()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("-c")
        .arg(example())
        .arg("check"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
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

/// Where a line goes in [`config_with_policy`]'s file.
#[derive(Clone, Copy, Debug)]
enum Section {
    Api,
    Daemon,
    Policy,
}

/// The minimal config with `line` added to `section` (a daemon key replaces `poll_interval`
/// when it is that key).
fn config_with_line(section: Section, line: &str) -> String {
    let base = config_with_policy(NIGHTLY);
    match section {
        Section::Api => base.replace(
            "token_file = \"{token_file}\"\n",
            &format!("token_file = \"{{token_file}}\"\n{line}\n"),
        ),
        Section::Daemon if line.starts_with("poll_interval") => {
            base.replace("poll_interval = \"200ms\"", line)
        }
        Section::Daemon => base.replace(
            "poll_interval = \"200ms\"",
            &format!("poll_interval = \"200ms\"\n{line}"),
        ),
        Section::Policy => config_with_policy(&format!("{NIGHTLY}\n{line}")),
    }
}

#[test]
fn every_duration_and_rate_key_out_of_range_is_rejected_with_its_line_and_range() {
    // Before the fix "400000000000years" passed check and `once` panicked with the server
    // stopped; 1e-300 requests per second passed check and every command panicked.
    use Section::*;
    const HUGE: &str = "\"400000000000years\"";
    let cases = [
        (Api, "timeout", "\"0s\"", "1s..=10m"),
        (Api, "timeout", HUGE, "1s..=10m"),
        (Api, "requests_per_second", "1e-300", "0.01..=1000"),
        (Api, "requests_per_second", "1e300", "0.01..=1000"),
        (Api, "requests_per_second", "nan", "0.01..=1000"),
        (Api, "requests_per_second", "-1", "0.01..=1000"),
        (Api, "max_retries", "21", "0..=20"),
        (Api, "max_retries", "-1", "0..=20"),
        (Daemon, "max_concurrent", "0", "1..=1024"),
        (Daemon, "max_concurrent", "1025", "1..=1024"),
        (Daemon, "poll_interval", "\"2h\"", "100ms..=1h"),
        (Daemon, "poll_interval", "\"0s\"", "100ms..=1h"),
        (Daemon, "snapshot_timeout", HUGE, "100ms..=7d"),
        (Daemon, "snapshot_timeout", "\"8d\"", "100ms..=7d"),
        (Daemon, "power_timeout", "\"3h\"", "1s..=2h"),
        (Daemon, "power_timeout", "\"500ms\"", "1s..=2h"),
        (Daemon, "shutdown_grace", "\"2h\"", "0s..=1h"),
        (Policy, "jitter", "\"25h\"", "0s..=24h"),
        (Policy, "hook_timeout", "\"25h\"", "1s..=24h"),
        (Policy, "hook_timeout", "\"0s\"", "1s..=24h"),
        (Policy, "warn_age", "\"401d\"", "1m..=400d"),
        (Policy, "crit_age", "\"30s\"", "1m..=400d"),
        (Policy, "crit_age", HUGE, "1m..=400d"),
    ];
    for (section, name, value, allowed) in cases {
        let line = format!("{name} = {value}");
        let key = match section {
            Api => format!("api.{name}"),
            Daemon => format!("daemon.{name}"),
            Policy => format!("policy \"nightly\".{name}"),
        };
        let (_s, path, out) = check_body(&config_with_line(section, &line));
        let hit = assert_rejected(
            &out,
            line_of(&path, &line, 1),
            &key,
            &format!("allowed: {allowed}"),
        );
        assert!(
            hit.contains(value.trim_matches('"')),
            "{line}: no value in {hit:?}"
        );
    }
}

#[test]
fn every_duration_and_rate_key_accepts_both_ends_of_its_range() {
    use Section::*;
    let ends = [
        [
            (Api, "timeout = \"1s\""),
            (Api, "requests_per_second = 0.01"),
            (Api, "max_retries = 0"),
            (Daemon, "max_concurrent = 1"),
            (Daemon, "poll_interval = \"100ms\""),
            (Daemon, "snapshot_timeout = \"100ms\""),
            (Daemon, "power_timeout = \"1s\""),
            (Daemon, "shutdown_grace = \"0s\""),
            (Policy, "jitter = \"0s\""),
            (Policy, "hook_timeout = \"1s\""),
            (Policy, "warn_age = \"1m\""),
            (Policy, "crit_age = \"1m\""),
        ],
        [
            (Api, "timeout = \"10m\""),
            (Api, "requests_per_second = 1000"),
            (Api, "max_retries = 20"),
            (Daemon, "max_concurrent = 1024"),
            (Daemon, "poll_interval = \"1h\""),
            (Daemon, "snapshot_timeout = \"7d\""),
            (Daemon, "power_timeout = \"2h\""),
            (Daemon, "shutdown_grace = \"1h\""),
            (Policy, "jitter = \"24h\""),
            (Policy, "hook_timeout = \"24h\""),
            (Policy, "warn_age = \"400d\""),
            (Policy, "crit_age = \"400d\""),
        ],
    ];
    for lines in ends {
        let mut body = config_with_policy(NIGHTLY);
        for (section, line) in lines {
            let marker = match section {
                Api => "token_file = \"{token_file}\"",
                Daemon => "state_dir = \"{state_dir}\"",
                Policy => "servers = [12345]",
            };
            body = body.replace(marker, &format!("{marker}\n{line}"));
        }
        let body = body.replace("poll_interval = \"200ms\"\n", "");
        let (_s, _path, out) = check_body(&body);
        assert_accepted(&out);
    }
}

#[test]
fn crit_age_shorter_than_warn_age_is_rejected_with_its_line() {
    let (_s, path, out) = check_policy(&format!("{NIGHTLY}\nwarn_age = \"2d\"\ncrit_age = \"1d\""));
    assert_rejected(
        &out,
        line_of(&path, "warn_age =", 1),
        "policy \"nightly\".warn_age",
        "allowed: warn_age <= crit_age",
    );
}

/// Parts of a token that must never show in any output.
const SECRET_A: &str = "s3cr3tPartA";
const SECRET_B: &str = "s3cr3tPartB";

fn assert_no_secret(out: &Output) {
    for text in [stdout(out), stderr(out)] {
        assert!(
            !text.contains(SECRET_A) && !text.contains(SECRET_B),
            "the token shows in:\n{text}"
        );
    }
}

#[test]
fn token_file_with_a_line_break_inside_is_rejected_naming_the_file_not_the_token() {
    // Before the fix it passed check and every request then failed building its header.
    for (inside, what) in [
        ("\n", "a line break"),
        ("\r\n", "a line break"),
        (" ", "a space"),
        ("\t", "a tab"),
        ("\u{1b}", "a control character"),
        ("\u{a0}", "a non-ASCII character"),
    ] {
        let scratch = Scratch::new();
        scratch.write_token(&format!("{SECRET_A}{inside}{SECRET_B}\n"), 0o600);
        let path = scratch.config(&config_with_policy(NIGHTLY), BASE_URL);
        let out = check(&path);
        let hit = assert_rejected(
            &out,
            line_of(&path, "token_file =", 1),
            "api.token_file",
            "allowed: one line of printable ASCII without spaces",
        );
        assert!(
            hit.contains(&scratch.token_path().display().to_string()),
            "{hit}"
        );
        assert!(hit.contains(what), "{inside:?}: {what:?} not in {hit:?}");
        assert_no_secret(&out);
    }
}

#[test]
fn token_file_with_only_a_trailing_newline_is_accepted() {
    let scratch = Scratch::new();
    scratch.write_token(&format!("{SECRET_A}\r\n"), 0o600);
    let out = check(&scratch.config(&config_with_policy(NIGHTLY), BASE_URL));
    assert_accepted(&out);
    assert_no_secret(&out);
}

#[test]
fn token_with_a_control_character_is_rejected_from_every_source() {
    let bad = format!("{SECRET_A}\n{SECRET_B}");
    let var = "SNAPSHOT_SCHEDULER_TEST_TOKEN_WITH_A_LINE_BREAK";

    // token_env
    let body = config_with_policy(NIGHTLY).replace(
        "token_file = \"{token_file}\"",
        &format!("token_env = \"{var}\""),
    );
    let scratch = Scratch::new();
    let path = scratch.config(&body, BASE_URL);
    let out = run(bin().env(var, &bad).arg("-c").arg(&path).arg("check"));
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_env =", 1),
        "api.token_env",
        "allowed: one line of printable ASCII without spaces",
    );
    assert!(hit.contains(&format!("${var}")), "{hit}");
    assert_no_secret(&out);

    // the default credential, api-token
    let scratch = Scratch::new();
    let creds = credentials(&scratch, &[("api-token", &bad)]);
    let body = config_with_policy(NIGHTLY).replace("token_file = \"{token_file}\"\n", "");
    let path = scratch.config(&body, BASE_URL);
    let out = run(bin()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("-c")
        .arg(&path)
        .arg("check"));
    let hit = assert_rejected(
        &out,
        line_of(&path, "[api]", 1),
        "api",
        "allowed: one line of printable ASCII without spaces",
    );
    assert!(hit.contains("credential"), "{hit}");
    assert_no_secret(&out);

    // a webhook's token_file
    let scratch = Scratch::new();
    let webhook = scratch.path().join("webhook-token");
    std::fs::write(&webhook, &bad).expect("write");
    chmod(&webhook, 0o600);
    let path = scratch.config(
        &config_with_policy(&format!(
            "{NIGHTLY}\n\n[[notify]]\nurl = \"https://hooks.example/x\"\ntoken_file = \"{}\"",
            webhook.display()
        )),
        BASE_URL,
    );
    let out = check(&path);
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_file =", 2),
        "notify.token_file",
        "allowed: one line of printable ASCII without spaces",
    );
    assert!(hit.contains(&webhook.display().to_string()), "{hit}");
    assert_no_secret(&out);
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .expect("chmod");
}

/// A `$CREDENTIALS_DIRECTORY` as systemd makes it: each secret a file named by its credential,
/// mode 0400 (0440 where systemd grants the service user an ACL), directory 0500.
fn credentials(scratch: &Scratch, secrets: &[(&str, &str)]) -> PathBuf {
    let dir = scratch.path().join("credentials");
    std::fs::create_dir(&dir).expect("mkdir");
    for (name, secret) in secrets {
        std::fs::write(dir.join(name), secret).expect("write credential");
        chmod(&dir.join(name), 0o400);
    }
    chmod(&dir, 0o500);
    dir
}

const WEBHOOK: &str = "\n\n[[notify]]\nurl = \"https://hooks.example/x\"";

#[test]
fn webhook_token_credential_without_credentials_directory_names_the_line_to_add() {
    let (_s, path, out) = check_policy(&format!(
        "{NIGHTLY}{WEBHOOK}\ntoken_credential = \"webhook-token\""
    ));
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_credential =", 1),
        "notify.token_credential",
        "LoadCredential=webhook-token:",
    );
    assert!(hit.contains("CREDENTIALS_DIRECTORY is not set"), "{hit}");
    assert!(hit.contains("\"webhook-token\""), "{hit}");
}

#[test]
fn webhook_token_credential_missing_from_the_directory_names_the_line_to_add() {
    let scratch = Scratch::new();
    let creds = credentials(&scratch, &[("other", "x")]);
    let path = scratch.config(
        &config_with_policy(&format!(
            "{NIGHTLY}{WEBHOOK}\ntoken_credential = \"webhook-token\""
        )),
        BASE_URL,
    );
    let out = run(bin()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("-c")
        .arg(&path)
        .arg("check"));
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_credential =", 1),
        "notify.token_credential",
        "LoadCredential=webhook-token:",
    );
    assert!(hit.contains("is missing"), "{hit}");
}

#[test]
fn api_token_from_two_sources_is_rejected_at_the_second() {
    let body = config_with_policy(NIGHTLY).replace(
        "token_file = \"{token_file}\"",
        "token_file = \"{token_file}\"\ntoken_credential = \"vps-token\"",
    );
    let (_s, path, out) = check_body(&body);
    assert_rejected(
        &out,
        line_of(&path, "token_credential =", 1),
        "api.token_credential",
        "allowed: one of token_file, token_env, token_credential",
    );
}

#[test]
fn credential_name_with_a_slash_is_rejected_with_its_line() {
    let scratch = Scratch::new();
    let creds = credentials(&scratch, &[("api-token", "x")]);
    let path = scratch.config(
        &config_with_policy(&format!(
            "{NIGHTLY}{WEBHOOK}\ntoken_credential = \"../api-token\""
        )),
        BASE_URL,
    );
    let out = run(bin()
        .env("CREDENTIALS_DIRECTORY", &creds)
        .arg("-c")
        .arg(&path)
        .arg("check"));
    assert_rejected(
        &out,
        line_of(&path, "token_credential =", 1),
        "notify.token_credential",
        "is not a credential name; allowed:",
    );
}

/// The unprivileged user the tests run `check` as (`nobody`).
const NOBODY: u32 = 65534;

/// `check` as an unprivileged user, like the unit's DynamicUser: as root (CI) through
/// `setpriv` (util-linux), which must be there; as any other user, as that user.
fn check_unprivileged(config: &Path, credentials: Option<&Path>) -> Output {
    let mut cmd = if running_as_root() {
        let mut c = std::process::Command::new("setpriv");
        c.arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(env!("CARGO_BIN_EXE_snapshot-scheduler"));
        c
    } else {
        std::process::Command::new(env!("CARGO_BIN_EXE_snapshot-scheduler"))
    };
    let clean = bin();
    for (var, _) in clean.get_envs() {
        cmd.env_remove(var);
    }
    if let Some(dir) = credentials {
        cmd.env("CREDENTIALS_DIRECTORY", dir);
    }
    cmd.arg("-c").arg(config).arg("check");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (setpriv is in util-linux): {e}");
    });
    assert!(
        !stderr(&out).contains("setpriv:"),
        "setpriv failed:\n{}",
        stderr(&out)
    );
    out
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().expect("temp file");
    probe.as_file().metadata().expect("stat").uid() == 0
}

/// Makes `path` the unprivileged user's (when the tests run as root).
fn give_to_unprivileged(path: &Path) {
    if running_as_root() {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
}

/// A scratch directory the unprivileged user can walk into and read the config from.
fn unprivileged_scratch() -> Scratch {
    let scratch = Scratch::new();
    chmod(scratch.path(), 0o755);
    scratch
}

#[test]
fn check_as_an_unprivileged_user_reads_every_secret_from_systemd_credentials() {
    // Before the fix a webhook's token could only come from token_file, which the unit's
    // DynamicUser cannot read, so ExecStartPre's check failed and the service never started.
    let scratch = unprivileged_scratch();
    let creds = scratch.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    for (name, mode) in [
        ("api-token", 0o400),
        ("webhook-token", 0o440),
        ("vps", 0o400),
    ] {
        let file = creds.join(name);
        std::fs::write(&file, format!("{name}-{SECRET_A}\n")).expect("write credential");
        chmod(&file, mode);
        give_to_unprivileged(&file);
    }
    chmod(&creds, 0o500);
    give_to_unprivileged(&creds);

    for api in ["", "token_credential = \"vps\"\n"] {
        let body = config_with_policy(&format!(
            "{NIGHTLY}{WEBHOOK}\ntoken_credential = \"webhook-token\""
        ))
        .replace("token_file = \"{token_file}\"\n", api);
        let path = scratch.config(&body, BASE_URL);
        let out = check_unprivileged(&path, Some(&creds));
        assert_accepted(&out);
        // systemd's 0440 (an ACL for the service user) is not the operator's to fix.
        assert!(
            !stderr(&out).contains("readable by its group"),
            "{}",
            stderr(&out)
        );
        assert_no_secret(&out);
    }
}

#[test]
fn check_as_an_unprivileged_user_names_an_unreadable_webhook_token_file_and_the_credential_to_use()
{
    let scratch = unprivileged_scratch();
    let creds = scratch.path().join("credentials");
    std::fs::create_dir(&creds).expect("mkdir");
    std::fs::write(creds.join("api-token"), SECRET_A).expect("write credential");
    chmod(&creds.join("api-token"), 0o400);
    give_to_unprivileged(&creds.join("api-token"));
    give_to_unprivileged(&creds);
    // Root's (mode 600) when the tests run as root; as anyone else, a file its owner cannot read.
    let webhook = scratch.path().join("webhook-token");
    std::fs::write(&webhook, SECRET_B).expect("write");
    chmod(&webhook, if running_as_root() { 0o600 } else { 0o000 });

    let body = config_with_policy(&format!(
        "{NIGHTLY}{WEBHOOK}\ntoken_file = \"{}\"",
        webhook.display()
    ))
    .replace("token_file = \"{token_file}\"\n", "");
    let path = scratch.config(&body, BASE_URL);
    let out = check_unprivileged(&path, Some(&creds));
    let hit = assert_rejected(
        &out,
        line_of(&path, "token_file =", 1),
        "notify.token_file",
        "token_credential = ",
    );
    assert!(hit.contains("Permission denied"), "{hit}");
    assert!(hit.contains(&webhook.display().to_string()), "{hit}");
    assert!(hit.contains("LoadCredential="), "{hit}");
    assert_no_secret(&out);
}

/// Acting commands meet a bad config exactly as `check` does, before anything: exit 2 with
/// the file, line, key and what is allowed, not one request to the provider, no state_dir.
/// Each case: a line replaced (or added) in a config that would otherwise stop the server
/// and snapshot it at once, the key named and what is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_and_run_with_a_bad_config_exit_2_naming_the_key_and_touch_nothing() {
    const GOOD: &str = "name = \"nightly\"\nschedule = \"*/2 * * * * *\"\nservers = [12345]\n\
                        stop_server = true\nkeep = 2";
    let cases = [
        (
            "keep = 2",
            "keep = 0",
            "policy \"nightly\".keep",
            "allowed: 1..=5",
        ),
        ("keep = 2", "keep = 2\nkep = 3", "kep", "expected one of"),
        (
            "schedule = \"*/2 * * * * *\"",
            "schedule = \"61 2 * * *\"",
            "policy \"nightly\".schedule",
            "allowed: 5-field cron",
        ),
        (
            "keep = 2",
            "keep = 2\non_journal_failure = \"maybe\"",
            "policy \"nightly\".on_journal_failure",
            "allowed:",
        ),
        (
            "poll_interval = \"200ms\"",
            "poll_interval = \"soon\"",
            "daemon.poll_interval",
            "allowed: 100ms..=1h",
        ),
    ];
    for (good, bad, key, allowed) in cases {
        for command in ["once", "run"] {
            let (sim, base_url) = serve_sim(&[12345], Default::default()).await;
            let scratch = Scratch::new();
            let body = config_with_policy(GOOD).replacen(good, bad, 1);
            assert_ne!(body, config_with_policy(GOOD), "{bad}: nothing replaced");
            let path = scratch.config(&body, &base_url);

            let mut cmd = bin();
            cmd.arg("--config").arg(&path).arg(command);
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(true);
            let out = tokio::time::timeout(std::time::Duration::from_secs(15), cmd.output())
                .await
                .unwrap_or_else(|_| panic!("{command} with {bad:?} went on"))
                .expect("the binary runs");

            assert_eq!(
                sim.stats().total_requests,
                0,
                "{command} with {bad:?} talked to the provider:\n{}",
                stderr(&out)
            );
            assert!(
                !scratch.state_dir().exists(),
                "{command} with {bad:?} created the state_dir"
            );
            let needle = bad.lines().last().expect("a line");
            assert_rejected(&out, line_of(&path, needle, 1), key, allowed);
        }
    }
}

// ---- [ha] ----

/// A config with `ha` as its `[ha]` table (after the policy).
fn check_ha(ha: &str) -> (Scratch, PathBuf, Output) {
    check_body(&format!("{}\n[ha]\n{ha}\n", config_with_policy(NIGHTLY)))
}

#[test]
fn an_ha_section_on_loopback_etcd_is_accepted() {
    let (_s, _path, out) = check_ha(
        "etcd_endpoints = [\"http://127.0.0.1:2379\", \"https://etcd.internal:2379\"]\n\
         cluster = \"prod\"\nlease_ttl = \"15s\"\nnode = \"ops-1\"",
    );
    assert_accepted(&out);
}

#[test]
fn ha_keys_out_of_their_range_are_rejected_with_their_line() {
    let cases = [
        (
            "etcd_endpoints = [\"http://10.0.0.5:2379\"]\ncluster = \"prod\"",
            "etcd_endpoints",
            "ha.etcd_endpoints",
            "allowed: https://, or http:// to a loopback host",
        ),
        (
            "etcd_endpoints = []\ncluster = \"prod\"",
            "etcd_endpoints",
            "ha.etcd_endpoints",
            "allowed: one or more etcd client URLs",
        ),
        (
            "etcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod/other\"",
            "cluster =",
            "ha.cluster",
            "allowed: 1 to 63 letters, digits",
        ),
        (
            "etcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\nlease_ttl = \"2s\"",
            "lease_ttl",
            "ha.lease_ttl",
            "allowed: 5s..=5m",
        ),
        (
            "etcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\nnode = \"ops 1\"",
            "node =",
            "ha.node",
            "allowed: 1 to 63 letters, digits",
        ),
        (
            "etcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\nusername = \"sched\"",
            "username",
            "ha.username",
            "allowed: username with password_file or password_credential",
        ),
    ];
    for (ha, line, key, allowed) in cases {
        let (_s, path, out) = check_ha(ha);
        assert_rejected(&out, line_of(&path, line, 1), key, allowed);
    }
}

#[test]
fn an_ha_section_without_a_cluster_is_rejected_naming_it() {
    let (_s, _path, out) = check_ha("etcd_endpoints = [\"http://127.0.0.1:2379\"]");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cluster"), "{}", stderr(&out));
}

/// With `[ha]` only the elected leader acts: `once` would act beside it, outside its fencing,
/// and a demo run would campaign in the real cluster.
#[test]
fn once_and_a_simulated_run_refuse_an_ha_config() {
    let scratch = Scratch::new();
    let path = scratch.config(
        &format!(
            "{}\n[ha]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\ncluster = \"prod\"\n",
            config_with_policy(NIGHTLY)
        ),
        BASE_URL,
    );
    for command in [&["once"][..], &["--simulate", "run"]] {
        let out = run(bin().arg("--config").arg(&path).args(command));
        assert_eq!(out.status.code(), Some(2), "{command:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("[ha]"), "{}", stderr(&out));
    }
}

/// A config path (or its token file) that names a device, a FIFO or a huge file by mistake is
/// refused at once, naming the path and what is allowed (before: `/dev/zero` ate memory until
/// killed, a FIFO without a writer hung for ever, and blocked a reload on SIGHUP with it).
#[test]
fn a_config_or_token_file_that_is_a_device_a_fifo_or_huge_is_refused_not_read_forever() {
    let scratch = Scratch::new();
    let fifo = scratch.path().join("config.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let huge = scratch.path().join("huge.toml");
    std::fs::write(&huge, "# padding\n".repeat(500_000)).expect("write");
    // A config whose token file is a FIFO (and so would block a reload on SIGHUP too).
    let tokened = scratch.config(&config_with_policy(NIGHTLY), "http://127.0.0.1:9/api/v1");
    let token = scratch.token_path();
    std::fs::remove_file(&token).expect("remove the token file");
    let made = std::process::Command::new("mkfifo")
        .arg("-m600")
        .arg(&token)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    for (config, path, says) in [
        (
            Path::new("/dev/zero"),
            Path::new("/dev/zero"),
            "not a regular file",
        ),
        (fifo.as_path(), fifo.as_path(), "not a regular file"),
        (huge.as_path(), huge.as_path(), "larger than 4 MiB"),
        (tokened.as_path(), token.as_path(), "not a regular file"),
    ] {
        let mut child = bin()
            .arg("-c")
            .arg(config)
            .arg("check")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // A hang or an endless read fails the test instead of hanging it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while child.try_wait().expect("try_wait").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("check -c {} did not end", config.display());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}: {text}", path.display());
        assert!(
            text.contains(&path.display().to_string()) && text.contains(says),
            "{}: {text}",
            path.display()
        );
    }
}
