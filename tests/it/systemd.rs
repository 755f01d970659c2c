//! The shipped unit: hardened (systemd-analyze exposure at most 2.0) and clean under
//! `systemd-analyze verify`. Skipped, saying so, where systemd-analyze is not installed.

use std::process::Command;

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/systemd/snapshot-scheduler.service"
);

fn analyze_available() -> bool {
    Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn unit_exposure_is_at_most_2() {
    if !analyze_available() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", UNIT])
        .output()
        .expect("systemd-analyze runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{text}"));
    let level: f64 = line
        .split(':')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the level from {line:?}"));
    assert!(level <= 2.0, "exposure {level} > 2.0: {line}");
}

#[test]
fn unit_verifies_clean() {
    if !analyze_available() {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(UNIT).unwrap().replace(
        "/usr/local/bin/snapshot-scheduler",
        env!("CARGO_BIN_EXE_snapshot-scheduler"),
    );
    let path = dir.path().join("snapshot-scheduler.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("snapshot-scheduler.service"),
        "verify complained:\n{stderr}"
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
