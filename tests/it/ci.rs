//! What `.ci/run` promises: every test runs there. A test that needs a tool this machine lacks
//! fails in CI, naming the tool and its Debian package, instead of passing without having
//! checked anything; elsewhere it says loudly that it was skipped.

use std::process::{Command, Output};

use crate::common::{stderr, stdout, REQUIRE_TOOLS, TOOLS};
use crate::package::CARGO_DEB_VERSION;

const CI_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run");

/// This test binary running the one test `name`, with a `PATH` in which no tool exists and
/// `REQUIRE_TOOLS` set to `require`.
fn run_alone_without_tools(name: &str, require: &str) -> Output {
    let empty = tempfile::tempdir().expect("temp dir");
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--test-threads=1"])
        .env("PATH", empty.path())
        .env(REQUIRE_TOOLS, require)
        .env_remove("CI")
        .output()
        .expect("the test binary runs")
}

#[test]
fn a_test_whose_tool_is_missing_fails_in_ci_naming_the_debian_package() {
    let out = run_alone_without_tools("systemd::unit_verifies_clean", "1");

    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("1 passed") || text.contains("1 failed"),
        "the test did not run:\n{text}"
    );
    assert!(
        !out.status.success(),
        "passed without systemd-analyze in CI:\n{text}"
    );
    assert!(
        text.contains("systemd-analyze") && text.contains("Debian package systemd"),
        "the failure does not name the tool and its package:\n{text}"
    );
}

#[test]
fn a_test_whose_tool_is_missing_says_so_loudly_outside_ci() {
    let out = run_alone_without_tools("systemd::unit_verifies_clean", "0");

    // Not through the test harness's captured output: a passing test's is never shown.
    let err = stderr(&out);
    assert!(out.status.success(), "{}{err}", stdout(&out));
    assert!(
        err.contains("SKIPPED") && err.contains("systemd-analyze") && err.contains(REQUIRE_TOOLS),
        "no loud line on stderr:\n{err}"
    );
}

#[test]
fn ci_requires_and_installs_every_tool_the_tests_need() {
    let script = std::fs::read_to_string(CI_SCRIPT).expect("read .ci/run");
    assert!(
        script.contains(&format!("export {REQUIRE_TOOLS}=1")),
        ".ci/run does not make missing tools fail the tests:\n{script}"
    );
    for (tool, package) in TOOLS {
        assert!(
            script.contains(&format!("{tool}:{package}")),
            ".ci/run does not install {package} when {tool} is missing:\n{script}"
        );
    }
}

/// cargo-deb is no Debian package, so it is not in `TOOLS`: `.ci/run` installs it with cargo
/// when `cargo deb` does not run, at the version the package test names.
#[test]
fn ci_installs_cargo_deb_for_the_package_test() {
    let script = std::fs::read_to_string(CI_SCRIPT).expect("read .ci/run");
    let install = format!("cargo install cargo-deb --locked --version {CARGO_DEB_VERSION}");
    assert!(
        script.contains("if ! cargo deb --version") && script.contains(&install),
        ".ci/run does not run `{install}` when `cargo deb` is missing:\n{script}"
    );
}
