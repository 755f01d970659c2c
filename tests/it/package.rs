//! The Debian package, checked from outside as `cargo deb` builds it: unpacked, its binary
//! runs, its unit verifies and stays hardened, its man pages render, its completions parse, its
//! config is a conffile, nothing lands outside /usr, /lib and /etc, and nothing starts the
//! service on install. And the man pages and completions it ships are what the binary
//! generates now.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{bin, run, stderr, stdout, tool_available, unavailable};
use crate::systemd::{exposure, verify_complaints, INSTALLED_BIN};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The cargo-deb `.ci/run` installs (`cargo install cargo-deb --locked --version ...`).
pub const CARGO_DEB_VERSION: &str = "3.8.0";

/// The one command that rewrites the generated files the package ships.
const REGENERATE: &str = "scripts/generate-docs";

/// The config the package installs, and the unit reads.
const CONFFILE: &str = "/etc/snapshot-scheduler/config.toml";

/// The shell completions: where the repository keeps each, where the package puts it, and the
/// shell that parses it.
const COMPLETIONS: &[(&str, &str, &str)] = &[
    (
        "bash",
        "contrib/completions/snapshot-scheduler.bash",
        "usr/share/bash-completion/completions/snapshot-scheduler",
    ),
    (
        "zsh",
        "contrib/completions/_snapshot-scheduler",
        "usr/share/zsh/vendor-completions/_snapshot-scheduler",
    ),
    (
        "fish",
        "contrib/completions/snapshot-scheduler.fish",
        "usr/share/fish/vendor_completions.d/snapshot-scheduler.fish",
    ),
];

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Files in `dir` (not below), by name.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The commands `--help` lists (but `help`): each has a man page.
fn subcommands() -> Vec<String> {
    let help = stdout(&run(bin().arg("--help")));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn completions_and_the_man_page_need_no_config() {
    let missing = "/nonexistent/snapshot-scheduler/config.toml";
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(bin().args(["-c", missing, "completions", shell]));
        assert_eq!(
            out.status.code(),
            Some(0),
            "completions {shell}: {}",
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("simulate-provider"),
            "completions {shell} does not complete the commands:\n{}",
            stdout(&out)
        );
    }
    let out = run(bin().args(["-c", missing, "man"]));
    assert_eq!(out.status.code(), Some(0), "man: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with(".ie"),
        "not roff:\n{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("snapshot\\-scheduler\\-check(1)"),
        "the page does not name the commands' pages:\n{}",
        stdout(&out)
    );
    // What a man page is read for beyond the options: the files, the environment, the exit
    // codes, the signals, as sections of their own.
    for needed in [
        ".SH \"FILES\"",
        "/etc/snapshot\\-scheduler/token",
        ".SH \"ENVIRONMENT\"",
        "SNAPSHOT_SCHEDULER_CONFIG",
        "NO_COLOR",
        ".SH \"EXIT STATUS\"",
        ".SH \"SIGNALS\"",
        "SIGHUP",
    ] {
        assert!(
            stdout(&out).contains(needed),
            "the page does not say {needed}"
        );
    }
    assert!(!stdout(&out).contains(".SH EXTRA"), "{}", stdout(&out));

    let out = run(bin().args(["completions", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("possible values: bash, elvish, fish, powershell, zsh"),
        "{}",
        stderr(&out)
    );
}

/// What bash offers for the words typed so far (the last one being completed), from the
/// script `completions bash` prints, as bash's programmable completion calls it.
fn bash_completes(script: &Path, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\nCOMPREPLY=()\n\
         _snapshot__scheduler snapshot-scheduler \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display(),
        quoted.join(" ")
    );
    let out = run(Command::new("bash").arg("-c").arg(program));
    assert!(out.status.success(), "bash: {}", stderr(&out));
    stdout(&out).lines().map(str::to_owned).collect()
}

/// The scripts complete commands and then each command's options and values, in the shells
/// themselves (a script that parses can still complete nothing after the first word).
#[test]
fn completions_offer_each_commands_options_in_bash_and_fish() {
    if !tool_available("fish") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let script = dir.path().join("snapshot-scheduler.bash");
    std::fs::write(&script, stdout(&run(bin().args(["completions", "bash"])))).expect("write");
    let offered = |words: &[&str]| bash_completes(&script, words);
    assert!(offered(&["snapshot-scheduler", "on"]).contains(&"once".to_owned()));
    for (words, expected) in [
        (&["snapshot-scheduler", "once", "--"][..], "--dry-run"),
        (&["snapshot-scheduler", "status", "--n"], "--nagios"),
        (&["snapshot-scheduler", "completions", ""], "zsh"),
        (&["snapshot-scheduler", "--log-format", ""], "journald"),
    ] {
        let got = offered(words);
        assert!(
            got.iter().any(|w| w == expected),
            "bash after {words:?} offers {got:?}, not {expected}"
        );
    }
    let fish = dir.path().join("snapshot-scheduler.fish");
    std::fs::write(&fish, stdout(&run(bin().args(["completions", "fish"])))).expect("write");
    for (line, expected) in [
        ("snapshot-scheduler once --", "--dry-run"),
        ("snapshot-scheduler completions ", "zsh"),
    ] {
        let program = format!("source '{}'; complete -C '{line}'", fish.display());
        let out = run(Command::new("fish").arg("-c").arg(program));
        assert!(
            stdout(&out)
                .lines()
                .any(|l| l.split('\t').next() == Some(expected)),
            "fish after {line:?} offers:\n{}{}",
            stdout(&out),
            stderr(&out)
        );
    }
}

#[test]
fn the_shipped_man_pages_and_completions_are_what_the_binary_generates() {
    let fresh = tempfile::tempdir().expect("temp dir");
    let out = run(bin().arg("man").arg("--dir").arg(fresh.path()));
    assert!(out.status.success(), "man --dir failed: {}", stderr(&out));

    let mut stale = Vec::new();
    let committed_dir = Path::new(ROOT).join("contrib/man");
    let generated = files_in(fresh.path());
    for name in &generated {
        let now = std::fs::read(fresh.path().join(name)).expect("read a generated page");
        match std::fs::read(committed_dir.join(name)) {
            Ok(committed) if committed == now => {}
            Ok(_) => stale.push(format!("contrib/man/{name} differs")),
            Err(_) => stale.push(format!("contrib/man/{name} is missing")),
        }
    }
    for name in files_in(&committed_dir) {
        if !generated.contains(&name) {
            stale.push(format!("contrib/man/{name} is no command's page any more"));
        }
    }
    for (shell, committed, _) in COMPLETIONS {
        let out = run(bin().args(["completions", shell]));
        assert!(
            out.status.success(),
            "completions {shell}: {}",
            stderr(&out)
        );
        match std::fs::read(Path::new(ROOT).join(committed)) {
            Ok(text) if text == out.stdout => {}
            Ok(_) => stale.push(format!("{committed} differs")),
            Err(_) => stale.push(format!("{committed} is missing")),
        }
    }

    assert!(
        stale.is_empty(),
        "the man pages and completions the package ships are not what the binary generates \
         now ({}): run {REGENERATE} and commit contrib/",
        stale.join("; ")
    );
}

/// Whether `cargo deb` runs here; where it does not, the test fails where every test must run
/// and is skipped loudly elsewhere ([`unavailable`]).
fn cargo_deb_available() -> bool {
    let runs = cargo()
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    runs || unavailable(&format!(
        "`cargo deb` is not installed (cargo install cargo-deb --locked --version \
         {CARGO_DEB_VERSION}, as .ci/run does)"
    ))
}

/// Builds the .deb into `dir` from the binary the tests run, in seconds: cargo-deb packages
/// `target/release/snapshot-scheduler` of the target directory it is given, and that is made
/// the test binary (stripped on the way, as a release build is); nothing is compiled.
fn build_deb(dir: &Path) -> PathBuf {
    let target = dir.join("target");
    let release = target.join("release");
    std::fs::create_dir_all(&release).expect("create the target dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_snapshot-scheduler"),
        release.join("snapshot-scheduler"),
    )
    .expect("link the binary");
    let output = dir.join("out");
    let out = cargo()
        .args(["deb", "--no-build", "--strip", "--fast", "--manifest-path"])
        .arg(Path::new(ROOT).join("Cargo.toml"))
        .arg("--output")
        .arg(&output)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo deb runs");
    assert!(out.status.success(), "cargo deb failed:\n{}", stderr(&out));
    let debs: Vec<String> = files_in(&output)
        .into_iter()
        .filter(|n| n.ends_with(".deb"))
        .collect();
    assert!(debs.len() == 1, "cargo deb made {debs:?}");
    let name = &debs[0];
    assert!(
        name.starts_with(&format!("snapshot-scheduler_{VERSION}_")),
        "the package is named {name}, not snapshot-scheduler_{VERSION}_<arch>.deb"
    );
    output.join(name)
}

fn dpkg_deb(args: &[&str], deb: &Path, dir: &Path) -> Output {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .arg(dir)
        .output()
        .expect("dpkg-deb runs");
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", stderr(&out));
    out
}

/// Every path below `dir`, relative to it.
fn tree(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the unpacked tree") {
        let path = entry.expect("entry").path();
        out.push(path.strip_prefix(base).expect("below the root").to_owned());
        if path.is_dir() && !path.is_symlink() {
            tree(&path, base, out);
        }
    }
}

/// The package unpacked: its files under `root`, its control files under `control`.
struct Unpacked {
    dir: tempfile::TempDir,
    root: PathBuf,
    control: PathBuf,
}

impl Unpacked {
    fn build() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let deb = build_deb(dir.path());
        let root = dir.path().join("root");
        let control = dir.path().join("DEBIAN");
        dpkg_deb(&["-x"], &deb, &root);
        dpkg_deb(&["-e"], &deb, &control);
        Self { dir, root, control }
    }

    fn file(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.file(path))
            .unwrap_or_else(|e| panic!("the package has no readable {path}: {e}"))
    }
}

/// Every check of the unpacked package, each with what it found wrong.
#[test]
fn the_deb_ships_a_working_binary_unit_man_pages_completions_and_a_conffile() {
    let tools = ["dpkg-deb", "systemd-analyze", "man", "zsh", "fish"];
    if !cargo_deb_available() || !tools.iter().all(|t| tool_available(t)) {
        return;
    }
    let pkg = Unpacked::build();

    // Nothing outside /usr, /lib, /etc; and each thing where its tools look for it.
    let mut paths = Vec::new();
    tree(&pkg.root, &pkg.root, &mut paths);
    let outside: Vec<_> = paths
        .iter()
        .filter(|p| !["usr", "lib", "etc"].iter().any(|top| p.starts_with(top)))
        .collect();
    assert!(
        outside.is_empty(),
        "files outside /usr, /lib, /etc: {outside:?}"
    );
    let expected = [
        INSTALLED_BIN,
        "/lib/systemd/system/snapshot-scheduler.service",
        CONFFILE,
        "/usr/share/doc/snapshot-scheduler/README.md",
        "/usr/share/doc/snapshot-scheduler/examples/config.example.toml",
        "/usr/share/doc/snapshot-scheduler/examples/config.demo.toml",
        "/usr/share/doc/snapshot-scheduler/contrib/prometheus/alerts.yml",
        "/usr/share/doc/snapshot-scheduler/contrib/prometheus/alerts.test.yml",
        "/usr/share/doc/snapshot-scheduler/contrib/grafana/snapshot-scheduler.json",
    ];
    for path in expected
        .iter()
        .copied()
        .chain(COMPLETIONS.iter().map(|(_, _, path)| *path))
    {
        assert!(pkg.file(path).is_file(), "the package has no {path}");
    }

    // The binary runs and is this version.
    let out = run(Command::new(pkg.file(INSTALLED_BIN)).arg("--version"));
    assert_eq!(
        stdout(&out).trim(),
        format!("snapshot-scheduler {VERSION}"),
        "{}",
        stderr(&out)
    );

    // The control file: this version, dependencies of a rustls binary.
    let control = std::fs::read_to_string(pkg.control.join("control")).expect("DEBIAN/control");
    assert!(
        control.lines().any(|l| l == format!("Version: {VERSION}")),
        "{control}"
    );
    let depends = control
        .lines()
        .find(|l| l.starts_with("Depends:"))
        .unwrap_or_else(|| panic!("no Depends: in\n{control}"));
    // procps: `systemctl reload` runs /bin/kill, which minimal images may lack.
    assert!(
        depends.contains("libc6") && depends.contains("procps") && !depends.contains("ssl"),
        "{depends}"
    );
    // dpkg -l shows the first line whole: a summary longer than a line is cut there.
    let summary = control
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .unwrap_or_else(|| panic!("no Description: in\n{control}"));
    assert!(
        summary.len() <= 80,
        "a summary of {} characters: {summary}",
        summary.len()
    );

    // The config is a conffile (an upgrade keeps the operator's edits), from the example.
    let conffiles = std::fs::read_to_string(pkg.control.join("conffiles")).unwrap_or_default();
    assert!(
        conffiles.lines().any(|l| l.trim() == CONFFILE),
        "{CONFFILE} is not in DEBIAN/conffiles:\n{conffiles}"
    );
    let example = std::fs::read_to_string(Path::new(ROOT).join("config.example.toml"))
        .expect("read config.example.toml");
    assert!(
        pkg.read(CONFFILE) == example,
        "{CONFFILE} is not config.example.toml"
    );

    // Installing starts and enables nothing: an unconfigured service would start and fail.
    for script in ["preinst", "postinst", "prerm", "postrm"] {
        let Ok(text) = std::fs::read_to_string(pkg.control.join(script)) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let acts = words.iter().any(|w| {
                [
                    "enable",
                    "start",
                    "restart",
                    "try-restart",
                    "reload-or-restart",
                ]
                .contains(w)
                    || w.contains("deb-systemd-invoke")
            });
            assert!(
                !acts,
                "DEBIAN/{script} starts or enables the service: {line}"
            );
        }
    }
    assert!(
        !pkg.file("/etc/systemd").exists(),
        "the package enables the unit through a link in /etc/systemd"
    );

    // The unit runs the packaged binary with the packaged config, verifies clean with its paths
    // in the unpacked tree, and stays hardened.
    let unit_path = pkg.file("/lib/systemd/system/snapshot-scheduler.service");
    let unit = pkg.read("/lib/systemd/system/snapshot-scheduler.service");
    for key in ["ExecStartPre=", "ExecStart="] {
        let line = unit
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        assert!(
            line.starts_with(&format!("{key}{INSTALLED_BIN} -c {CONFFILE} ")),
            "the unit does not run the packaged {INSTALLED_BIN} with {CONFFILE}: {line}"
        );
    }
    let rooted = |path: &str| pkg.file(path).display().to_string();
    let rewritten = unit.replace(INSTALLED_BIN, &rooted(INSTALLED_BIN)).replace(
        "/etc/snapshot-scheduler/",
        &rooted("/etc/snapshot-scheduler/"),
    );
    let verified = pkg.dir.path().join("snapshot-scheduler.service");
    std::fs::write(&verified, rewritten).expect("write the rewritten unit");
    if let Some(complaints) = verify_complaints(&verified, &pkg.file("/usr/share/man")) {
        panic!("systemd-analyze verify complained about the packaged unit: {complaints}");
    }
    let level = exposure(&unit_path);
    assert!(
        level <= 1.5,
        "the packaged unit's exposure is {level} > 1.5"
    );

    // A man page for each command, each rendering without a warning; the program's page
    // names every command's page.
    let subcommands = subcommands();
    let man1 = pkg.file("/usr/share/man/man1");
    let mut pages = vec!["snapshot-scheduler".to_owned()];
    pages.extend(
        subcommands
            .iter()
            .map(|sub| format!("snapshot-scheduler-{sub}")),
    );
    for page in &pages {
        let path = man1.join(format!("{page}.1.gz"));
        assert!(path.is_file(), "the package has no man page {page}.1.gz");
        let out = run(Command::new("man")
            .args(["-l", "--warnings"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env_remove("MANPAGER")
            .env("PAGER", "cat"));
        assert!(
            out.status.success() && stderr(&out).trim().is_empty(),
            "man -l {page}.1.gz: exit {:?}\n{}",
            out.status.code(),
            stderr(&out)
        );
        let text = stdout(&out);
        assert!(text.contains("SYNOPSIS"), "{page}.1.gz renders as:\n{text}");
        if page == "snapshot-scheduler" {
            for sub in &pages[1..] {
                assert!(
                    text.contains(&format!("{sub}(1)")),
                    "the program's man page does not name {sub}(1):\n{text}"
                );
            }
        }
    }

    // Each completion parses in its shell and completes the commands.
    for (shell, _, path) in COMPLETIONS {
        let file = pkg.file(path);
        let out = run(Command::new(shell).arg("-n").arg(&file));
        assert!(
            out.status.success() && stderr(&out).trim().is_empty(),
            "{shell} -n {path}: exit {:?}\n{}",
            out.status.code(),
            stderr(&out)
        );
        let script = pkg.read(path);
        for sub in &subcommands {
            assert!(
                script.contains(sub.as_str()),
                "{path} does not complete {sub}"
            );
        }
    }
}
