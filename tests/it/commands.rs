//! The read-only and operator commands end to end with `--simulate`: `list`, `restore`.

use crate::common::{bin, run, stderr, stdout};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");

#[test]
fn list_with_simulate_shows_the_hand_made_snapshots_unmanaged() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "list"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ID"), "{text}");
    assert!(text.contains("pre-migration-snapshot"), "{text}");
    let row = text
        .lines()
        .find(|l| l.contains("pre-migration-snapshot"))
        .unwrap();
    assert!(
        row.trim_end().ends_with('-'),
        "hand-made snapshots have no policy: {row}"
    );

    let out = run(bin().args([
        "--simulate",
        "-c",
        EXAMPLE,
        "list",
        "--json",
        "--server",
        "12345",
    ]));
    let rows: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("valid JSON");
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty());
    assert!(rows
        .iter()
        .all(|r| r["server"]["id"] == 12345 && r["policy"].is_null()));
}

#[test]
fn restore_yes_wait_with_simulate_waits_until_the_server_runs() {
    let out = run(bin().args([
        "--simulate",
        "-c",
        EXAMPLE,
        "restore",
        "800",
        "--yes",
        "--wait",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("cannot be undone"), "{text}");
    assert!(text.contains("is running again"), "{text}");
}

#[test]
fn restore_without_a_terminal_and_without_yes_is_refused() {
    let out = run(bin()
        .args(["--simulate", "-c", EXAMPLE, "restore", "800"])
        .stdin(std::process::Stdio::null()));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pass --yes"), "{}", stderr(&out));
}

#[test]
fn restore_of_an_unknown_snapshot_names_it() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "restore", "4242", "--yes"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("snapshot 4242 does not exist"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_policy_is_a_usage_error_listing_the_allowed_ones() {
    let out = run(bin().args(["--simulate", "-c", EXAMPLE, "once", "--policy", "nightlyy"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("allowed: nightly, weekly-db"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_never_shows_a_token_from_the_environment() {
    for args in [vec!["--help"], vec!["simulate-provider", "--help"]] {
        let out = run(bin()
            .args(&args)
            .env("SIMULATOR_TOKEN", "s3cret-token-value")
            .env("VPS_API_TOKEN", "s3cret-token-value"));
        assert_eq!(out.status.code(), Some(0));
        assert!(!stdout(&out).contains("s3cret"), "{}", stdout(&out));
    }
}
