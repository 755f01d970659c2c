//! The shipped unit: hardened (systemd-analyze exposure at most 2.0) and clean under
//! `systemd-analyze verify`. Where systemd-analyze is not installed, those two fail in CI and
//! are skipped loudly elsewhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use snapshot_scheduler::config::{Config, LoadOptions};
use snapshot_scheduler::shutdown::{stop_bound, stop_bound_warning, UNIT_TIMEOUT_STOP};

use crate::common::{bin, config_with_policy, policy, run, stderr, tool_available, Scratch};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/snapshot-scheduler.service"
);

/// Where the unit runs the binary from: where the package puts it, and the README's manual
/// install too (one path, so an older copy never shadows the one the unit runs).
pub const INSTALLED_BIN: &str = "/usr/bin/snapshot-scheduler";

/// The overall exposure level `systemd-analyze security --offline=true` gives `unit`.
pub fn exposure(unit: &Path) -> f64 {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(unit)
        .output()
        .expect("systemd-analyze runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    line.split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level from {line:?}"))
}

/// What `systemd-analyze verify` says against `unit`, if anything.
pub fn verify_complaints(unit: &Path, man_path: &Path) -> Option<String> {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        // verify reads the unit's Documentation= pages with man: they are looked up here.
        .env("MANPATH", man_path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    (!out.status.success() || stderr.contains("snapshot-scheduler.service"))
        .then(|| format!("exit {:?}\n{stderr}", out.status.code()))
}

#[test]
fn unit_exposure_is_at_most_2() {
    if !tool_available("systemd-analyze") {
        return;
    }
    let level = exposure(Path::new(UNIT));
    assert!(level <= 2.0, "exposure {level} > 2.0");
}

#[test]
fn unit_verifies_clean() {
    if !tool_available("systemd-analyze") {
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert!(
        unit.contains(INSTALLED_BIN),
        "the unit does not run {INSTALLED_BIN}"
    );
    let unit = unit.replace(INSTALLED_BIN, env!("CARGO_BIN_EXE_snapshot-scheduler"));
    let path = dir.path().join("snapshot-scheduler.service");
    std::fs::write(&path, unit).unwrap();
    // The pages as the package installs them: man1/ under a man path.
    let man1 = dir.path().join("man/man1");
    std::fs::create_dir_all(&man1).unwrap();
    for page in std::fs::read_dir("contrib/man").unwrap() {
        let page = page.unwrap().path();
        std::fs::copy(&page, man1.join(page.file_name().unwrap())).unwrap();
    }
    if let Some(complaints) = verify_complaints(&path, &dir.path().join("man")) {
        panic!("verify complained: {complaints}");
    }
}

/// The unit's `TimeoutStopSec`, as systemd reads `30min`.
fn unit_timeout_stop() -> Duration {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    humantime::parse_duration(value.trim()).expect("a duration")
}

fn parse(text: &str) -> Config {
    Config::parse(
        Path::new("config.toml"),
        text,
        LoadOptions { simulate: true },
        &BTreeMap::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_units_stop_timeout_outlasts_the_longest_shutdown_of_the_defaults_and_the_example() {
    let timeout = unit_timeout_stop();
    assert_eq!(
        timeout, UNIT_TIMEOUT_STOP,
        "check warns against the unit's real value"
    );
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
            .unwrap();
    let defaults_with_hooks = r#"
[api]
base_url = "https://admin.vps.org/api/v1"
token_env = "X"

[[policy]]
name = "db"
schedule = "0 3 * * *"
servers = [1]
stop_server = true
pre_hook = ["true"]
post_hook = ["true"]
"#;
    for (name, text) in [
        ("example", example.as_str()),
        ("defaults", defaults_with_hooks),
    ] {
        let config = parse(text);
        let bound = stop_bound(&config);
        assert!(
            bound < timeout,
            "{name}: a shutdown can take {bound:?}, the unit allows {timeout:?}"
        );
        assert!(stop_bound_warning(&config).is_none(), "{name}");
    }
}

#[test]
fn check_warns_when_power_timeout_needs_a_longer_stop_timeout_than_the_units() {
    let scratch = Scratch::new();
    let config = scratch.config(
        &config_with_policy(&policy("db", "0 3 * * *", &[1], "stop_server = true"))
            .replace("[daemon]\n", "[daemon]\npower_timeout = \"40m\"\n"),
        "https://admin.vps.org/api/v1",
    );

    let out = run(bin().arg("-c").arg(&config).arg("check"));

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("TimeoutStopSec=") && err.contains("systemctl edit snapshot-scheduler"),
        "{err}"
    );
}

/// A 429's Retry-After pauses every request for up to a minute, the start of a stopped server
/// included: a power_timeout not well above that can report a server left stopped (or leave
/// one down) that a longer one would have started. `check` says so.
#[test]
fn check_warns_when_power_timeout_is_shorter_than_a_retry_after_pause_can_hold_a_start() {
    let scratch = Scratch::new();
    let config = scratch.config(
        &config_with_policy(&policy("db", "0 3 * * *", &[1], "stop_server = true"))
            .replace("[daemon]\n", "[daemon]\npower_timeout = \"30s\"\n"),
        "https://admin.vps.org/api/v1",
    );

    let out = run(bin().arg("-c").arg(&config).arg("check"));

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("power_timeout 30s is shorter than 2m") && err.contains("at least 2m"),
        "{err}"
    );
}

#[test]
fn unit_allows_enough_open_files() {
    // systemd's default soft limit of 1024 is what a flood of connections or many concurrent
    // provider calls ran into; the daemon raises its soft limit to the unit's hard one.
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let value = unit
        .lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .unwrap_or_else(|| panic!("no LimitNOFILE= in the unit"));
    let hard = value.rsplit(':').next().unwrap_or(value);
    let hard: u64 = hard
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("cannot read LimitNOFILE={value}"));
    assert!(hard >= 4096, "LimitNOFILE={value}: hard limit below 4096");
}
