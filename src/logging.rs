//! Where log lines go: journald under systemd (`JOURNAL_STREAM` set), text on stderr at a
//! terminal, JSON for log shippers. `-v`/`-q` move the level; `RUST_LOG` overrides it.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// `verbosity`: 0 is info, +1 debug, +2 trace, -1 warn, -2 error.
pub fn init(format: LogFormat, verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Our own crate at the chosen level; chatty HTTP internals only from trace on.
        let deps = if verbosity >= 2 { "trace" } else { "warn" };
        EnvFilter::new(format!("{deps},snapshot_scheduler={level}"))
    });
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry.with(layer).try_init(),
            Err(_) => registry
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .try_init(),
        },
        LogFormat::Text | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    // NO_COLOR (https://no-color.org): set and not empty, no colour.
                    .with_ansi(
                        std::io::stderr().is_terminal()
                            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                    )
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}
