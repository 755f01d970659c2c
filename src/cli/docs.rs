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
    let Some(dir) = dir else {
        let mut roff = Vec::new();
        page(&cmd).render(&mut roff)?;
        out(&String::from_utf8_lossy(&roff))?;
        return Ok(0);
    };
    let commands =
        std::iter::once(&cmd).chain(cmd.get_subcommands().filter(|sub| !sub.is_hide_set()));
    for command in commands {
        let man = page(command);
        let path = dir.join(man.get_filename());
        man.generate_to(dir)
            .with_context(|| format!("cannot write the man page {}", path.display()))?;
        outln!("{}", path.display())?;
    }
    Ok(0)
}
