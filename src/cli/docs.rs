//! `completions` and `man`: shell completion scripts and man pages, generated from the same
//! clap definition as `--help`, so what a package ships cannot say other than the binary does.

use std::path::Path;

use anyhow::Context as _;
use clap::{CommandFactory, ValueEnum};
use clap_complete::Shell;

use super::output::{out, outln};
use super::Cli;

/// The name the scripts complete and the pages are named for.
const NAME: &str = "snapshot-scheduler";

/// `completions SHELL`: the completion script for `shell` on standard output.
pub(super) fn completions(shell: Shell) -> anyhow::Result<i32> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), NAME, &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        Shell::Bash => script = mend_bash(&script),
        // clap_complete's fish script offers no values of a positional argument.
        Shell::Fish => {
            let shells: Vec<String> = (Shell::value_variants().iter())
                .filter_map(|s| s.to_possible_value())
                .map(|v| v.get_name().to_owned())
                .collect();
            script.push_str(&format!(
                "complete -c {NAME} -n \"__fish_snapshot_scheduler_using_subcommand completions\" -f -a \"{}\"\n",
                shells.join(" ")
            ));
        }
        _ => {}
    }
    out(&script)?;
    Ok(0)
}

/// clap_complete's bash script for a name with a hyphen tracks the command as
/// `snapshot__scheduler__subcmd__once` but names its cases `snapshot__subcmd__scheduler__…`
/// (clap-rs/clap#6421): no case matches, and nothing after the first word completes.
fn mend_bash(script: &str) -> String {
    script.replace("snapshot__subcmd__scheduler", "snapshot__scheduler")
}

/// What `--help` ends with, and the program's man page has as sections of their own: each
/// section's name, then its entries (a term and what it means).
const SECTIONS: &[(&str, &[(&str, &str)])] = &[
    (
        "Files",
        &[
            (
                "/etc/snapshot-scheduler/config.toml",
                "the config (-c); `check` validates it",
            ),
            (
                "/etc/snapshot-scheduler/token",
                "the API token, root's (chmod 600); the unit loads it as the credential api-token",
            ),
            (
                "/etc/snapshot-scheduler/webhook-token",
                "a webhook's token, loaded the same way (LoadCredential= in a drop-in)",
            ),
            (
                "/var/lib/snapshot-scheduler/",
                "state_dir under the unit: the power journal (power-journal.json), the create \
                 ledger (creates.jsonl), the run log",
            ),
        ],
    ),
    (
        "Environment",
        &[
            (
                "SNAPSHOT_SCHEDULER_CONFIG",
                "the config file, unless -c is given",
            ),
            (
                "CREDENTIALS_DIRECTORY",
                "set by systemd: where the credentials (api-token) are read",
            ),
            ("RUST_LOG", "a log filter, over -v/-q"),
            ("NO_COLOR", "set and not empty: no colour in the text log"),
        ],
    ),
    (
        "Exit status",
        &[
            ("0", "ok"),
            ("1", "an operation failed"),
            ("2", "a config or usage error"),
            ("status --nagios", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN"),
        ],
    ),
    (
        "Signals",
        &[
            (
                "SIGTERM, SIGINT",
                "run: finishes the work in flight within shutdown_grace, then starts every \
                 server it stopped and exits; once: starts every server it stopped at once and \
                 exits 1; a second signal exits at once",
            ),
            (
                "SIGHUP",
                "run: reloads the policies (a broken config is refused)",
            ),
        ],
    ),
];

/// How wide the end of `--help` is set.
const HELP_COLUMNS: usize = 100;

/// The end of `--help`: [`SECTIONS`] as text.
pub(super) fn after_long_help() -> String {
    let width = SECTIONS
        .iter()
        .flat_map(|(_, entries)| entries.iter().map(|(term, _)| term.len()))
        .max()
        .unwrap_or(0);
    let sections: Vec<String> = SECTIONS
        .iter()
        .map(|(name, entries)| {
            let lines: Vec<String> = entries
                .iter()
                .map(|(term, text)| {
                    // Wrapped to 100 columns, the text's lines under each other.
                    let mut lines = vec![format!("  {term:width$} ")];
                    for word in text.split(' ') {
                        let last = lines.last_mut().expect("one line at least");
                        if last.len() + 1 + word.len() > HELP_COLUMNS && last.len() > width + 4 {
                            lines.push(format!("  {:width$}  {word}", ""));
                        } else {
                            last.push(' ');
                            last.push_str(word);
                        }
                    }
                    lines.join("\n")
                })
                .collect();
            format!("{name}:\n{}", lines.join("\n"))
        })
        .collect();
    sections.join("\n\n")
}

/// [`SECTIONS`] as man page sections (`FILES`, `ENVIRONMENT`, `EXIT STATUS`, `SIGNALS`).
fn man_sections() -> String {
    // Text set in roff: a backslash and a hyphen are escaped (`-` is a hyphen, `\-` the minus
    // of an option); no line starts with a control character.
    let roff = |text: &str| text.replace('\\', "\\e").replace('-', "\\-");
    let mut out = String::new();
    for (name, entries) in SECTIONS {
        out.push_str(&format!(".SH \"{}\"\n", name.to_uppercase()));
        for (term, text) in *entries {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(term), roff(text)));
        }
    }
    out
}

/// The program's page: clap_mangen's sections, with [`SECTIONS`] as sections of their own
/// where it would put `--help`'s ending under "EXTRA".
fn program_page(man: &clap_mangen::Man) -> std::io::Result<Vec<u8>> {
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    page.extend_from_slice(man_sections().as_bytes());
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// `man`: the program's page on standard output; with `dir`, one page per command written
/// there (`snapshot-scheduler.1`, `snapshot-scheduler-<command>.1`), their names printed.
pub(super) fn man(dir: Option<&Path>) -> anyhow::Result<i32> {
    // Built, so each subcommand carries the global options and its display name
    // (`snapshot-scheduler-check`); the help subcommand is not a page of its own.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    // Every page's footer names the program and its version, the subcommands' too.
    let source = format!("{NAME} {}", cmd.get_version().unwrap_or_default());
    let page = |cmd: &clap::Command| clap_mangen::Man::new(cmd.clone()).source(source.clone());
    let program = program_page(&page(&cmd))?;
    let Some(dir) = dir else {
        out(&String::from_utf8_lossy(&program))?;
        return Ok(0);
    };
    let written = dir.join(page(&cmd).get_filename());
    std::fs::write(&written, &program)
        .with_context(|| format!("cannot write the man page {}", written.display()))?;
    outln!("{}", written.display())?;
    for command in cmd.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let man = page(command);
        let path = dir.join(man.get_filename());
        man.generate_to(dir)
            .with_context(|| format!("cannot write the man page {}", path.display()))?;
        outln!("{}", path.display())?;
    }
    Ok(0)
}
