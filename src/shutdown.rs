//! One shutdown for every acting command (`run` and `once`). The first SIGTERM or SIGINT
//! *begins* it: no new work is taken, no server is stopped, and one stopping gets no snapshot.
//! Then, at once for `once` and after `shutdown_grace` for the daemon, it *hurries*: every wait ends, every
//! server this process stopped is started again, post hooks run with `RESULT=failure`. A
//! second signal exits at once; the power journal on disk lets the next start settle the rest.
//!
//! How long the hurried part may take is [`drain_bound`], computed here once: the unit's
//! `TimeoutStopSec` must exceed it, or systemd kills a daemon that is still starting a server.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stopping: CancellationToken,
    hurry: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// No new work is taken.
    pub fn is_stopping(&self) -> bool {
        self.stopping.is_cancelled()
    }

    /// Resolves once the shutdown has begun.
    pub async fn stopping(&self) {
        self.stopping.cancelled().await;
    }

    /// Waits end now: servers are started again, snapshots are left to finish on their own.
    pub fn is_hurried(&self) -> bool {
        self.hurry.is_cancelled()
    }

    /// Resolves once waiting must end.
    pub async fn hurried(&self) {
        self.hurry.cancelled().await;
    }

    /// The token cancelled when the shutdown begins (for loops that select on it).
    pub fn stopping_token(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Takes no new work from now on.
    pub fn begin(&self) {
        self.stopping.cancel();
    }

    /// Ends every wait now (and begins the shutdown, if it had not begun).
    pub fn hurry(&self) {
        self.stopping.cancel();
        self.hurry.cancel();
    }

    /// What a SIGTERM or SIGINT does: the first begins the shutdown, a second exits now.
    pub fn signalled(&self, name: &str) {
        if self.is_stopping() {
            tracing::warn!(
                "second {name}: exiting now; the next start settles any server left stopped"
            );
            std::process::exit(1);
        }
        tracing::info!("{name}: finishing in-flight work, starting nothing new");
        self.begin();
    }

    /// For `once`: installs the SIGTERM and SIGINT handlers now (before the first stop could
    /// happen) and returns the task that hurries on the first signal and exits on the second.
    pub fn on_signals_hurry(&self) -> anyhow::Result<impl std::future::Future<Output = ()>> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        Ok(async move {
            loop {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                this.signalled(name);
                tracing::warn!(
                    "starting every server this run stopped now; snapshots in progress finish \
                     on their own"
                );
                this.hurry();
            }
        })
    }
}

/// The longest a hurried shutdown can take: one provider request with all its retries (a
/// create or delete in flight), then the start path (`power_timeout`, wait for `stopping`,
/// start, wait for `running` included), then a post hook, plus a margin for the journal and
/// the last alerts.
pub fn drain_bound(config: &Config) -> Duration {
    let api = &config.api;
    let attempts = api.max_retries.saturating_add(1);
    // Before each attempt, a pause: the client's back-off (at most 60 s) or a 429's
    // `Retry-After` (honoured up to the same bound).
    let pause = crate::provider::MAX_RETRY_AFTER;
    let request = api.timeout.saturating_add(pause).saturating_mul(attempts);
    // A pre hook under way when the signal came, then the post hook.
    let hook = config
        .policies
        .iter()
        .map(|p| {
            let pre = p
                .hooks
                .pre
                .as_ref()
                .map_or(Duration::ZERO, |_| p.hooks.timeout);
            let post = p
                .hooks
                .post
                .as_ref()
                .map_or(Duration::ZERO, |_| p.hooks.timeout);
            pre.saturating_add(post)
        })
        .max()
        .unwrap_or(Duration::ZERO);
    request
        .saturating_add(config.daemon.power_timeout)
        .saturating_add(hook)
        .saturating_add(Duration::from_secs(60))
}

/// The whole stop of the daemon: `shutdown_grace`, then the hurried drain.
pub fn stop_bound(config: &Config) -> Duration {
    config
        .daemon
        .shutdown_grace
        .saturating_add(drain_bound(config))
}

/// The shipped unit's `TimeoutStopSec`: what [`stop_bound`] must stay under, or a drop-in
/// must raise it.
pub const UNIT_TIMEOUT_STOP: Duration = Duration::from_secs(40 * 60);

/// `check`'s word on the stop bound: a warning when the shipped unit would kill the daemon
/// before it has started every server it stopped.
pub fn stop_bound_warning(config: &Config) -> Option<String> {
    let bound = stop_bound(config);
    (bound > UNIT_TIMEOUT_STOP).then(|| {
        let minutes = bound.as_secs().div_ceil(60) + 5;
        format!(
            "a shutdown can take up to {} with this config (shutdown_grace, one API request \
             with its retries, power_timeout, hooks); the shipped unit's TimeoutStopSec is {}, \
             after which systemd kills the daemon even while it starts a server: add a drop-in \
             (systemctl edit snapshot-scheduler) with [Service] TimeoutStopSec={minutes}min",
            humantime::format_duration(Duration::from_secs(bound.as_secs())),
            humantime::format_duration(UNIT_TIMEOUT_STOP),
        )
    })
}
