//! Writing to standard output without panicking: a reader that went away ends the command
//! quietly.

use std::io::Write;

/// Standard output went away (`list | head -1`): the command ends quietly with exit 0, as
/// ripgrep does. `print!` would panic instead.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct OutputClosed;

/// Writes `text` to standard output; a reader that went away is [`OutputClosed`].
pub(super) fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => anyhow::Error::new(OutputClosed),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}

/// `println!` through [`out`]: an error to return, not a panic.
macro_rules! outln {
    () => {
        out("\n")
    };
    ($($arg:tt)*) => {
        out(&format!("{}\n", format_args!($($arg)*)))
    };
}

pub(super) use outln;
