//! The composition root: what every command that talks to the provider is built from (the
//! client, the clock, alerts, the executor with its journal and run log) and, with
//! `--simulate`, the simulated provider and its own state directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use secrecy::SecretString;

use crate::client::HttpClient;
use crate::clock::{Clock, SystemClock};
use crate::config::ApiConfig;
use crate::config::{Config, TokenSource};
use crate::execute::{Executor, Parts, Settings};
use crate::journal::Journal;
use crate::model::ServerId;
use crate::retry::{RetryRules, Retrying};
use crate::shutdown::Shutdown;
use crate::simulator::{self, SimConfig, Simulator};

/// What every command that talks to the provider needs.
pub struct Context {
    pub config: Config,
    /// The provider over HTTP, with the retry rules.
    pub client: Retrying<HttpClient>,
    pub clock: Arc<dyn Clock>,
    /// Present with `--simulate`: the provider the client talks to.
    pub simulator: Option<Simulator>,
    /// Webhooks and pings of every executor this context makes.
    pub alerts: Arc<crate::alerts::Alerts>,
    /// Present with `--simulate`: the state directory, removed with the context.
    simulated_state: Option<SimulatedStateDir>,
}

/// The state directory of a `--simulate` run: fresh, private (mode 700, a name nobody could
/// have made first), and removed when dropped, so runs leave nothing behind.
struct SimulatedStateDir(PathBuf);

impl SimulatedStateDir {
    fn create() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let parent = std::env::temp_dir();
        for _ in 0..16 {
            let path = parent.join(format!(
                "snapshot-scheduler-sim-{}-{}",
                std::process::id(),
                &random_token()[..8]
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot create a state directory for --simulate in {} (TMPDIR)",
                            parent.display()
                        )
                    })
                }
            }
        }
        bail!(
            "cannot create a state directory for --simulate in {}: every name tried exists",
            parent.display()
        )
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for SimulatedStateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Context {
    pub async fn connect(mut config: Config, simulate: bool) -> anyhow::Result<Self> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        if !simulate {
            let token = config
                .api
                .token
                .clone()
                .context("no API token was loaded")?;
            let client = http_provider(&config.api, token)?;
            return Ok(Self {
                alerts: crate::alerts::Alerts::new(config.notify.clone()),
                config,
                client,
                clock,
                simulator: None,
                simulated_state: None,
            });
        }
        let token = random_token();
        let servers: Vec<(ServerId, String)> = config
            .servers()
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, format!("web-server-{:02}", i + 1)))
            .collect();
        let sim = Simulator::new(
            SimConfig {
                token: token.clone(),
                ..SimConfig::default()
            },
            &servers,
            clock.clone(),
        );
        let (addr, _task) = simulator::serve(sim.clone(), "127.0.0.1:0".parse()?)
            .await
            .context("cannot start the simulated provider")?;
        config.api.base_url = simulator::base_url(addr);
        config.api.token_source = TokenSource::Simulated;
        // A fresh provider deserves a fresh state directory, and a demo should not wait 15 s.
        let state = SimulatedStateDir::create()?;
        config.daemon.state_dir = state.path().to_owned();
        config.daemon.poll_interval = config.daemon.poll_interval.min(Duration::from_secs(1));
        tracing::info!(base_url = %config.api.base_url, "using the simulated provider");
        let client = http_provider(&config.api, SecretString::from(token))?;
        if !config.notify.is_empty()
            || config
                .policies
                .iter()
                .any(|p| p.monitoring.ping_url.is_some())
        {
            tracing::info!(
                "--simulate: webhooks and pings are not sent (they are about the real account)"
            );
        }
        Ok(Self {
            alerts: crate::alerts::Alerts::muted(),
            config,
            client,
            clock,
            simulator: Some(sim),
            simulated_state: Some(state),
        })
    }

    /// Waits (bounded) for alerts and pings still being delivered: every command that can
    /// send one calls this on every way out, errors included.
    pub async fn drain_alerts(&self) {
        self.alerts.drain(Duration::from_secs(30)).await;
    }

    /// The executor for acting commands, with the journal in `state_dir`.
    pub async fn executor(&self, dry_run: bool) -> anyhow::Result<Arc<Executor<HttpClient>>> {
        self.executor_with(dry_run, Shutdown::new()).await
    }

    /// The executor, ending its waits early when `shutdown` is hurried. A dry run only
    /// reads: it neither needs nor creates `state_dir`; with `[ha]` it reads the cluster's
    /// journal and create ledger from etcd, so it decides as the leader would.
    pub async fn executor_with(
        &self,
        dry_run: bool,
        shutdown: Shutdown,
    ) -> anyhow::Result<Arc<Executor<HttpClient>>> {
        let state_dir = &self.config.daemon.state_dir;
        let journal = match (&self.config.ha, dry_run) {
            (Some(ha), true) => {
                let journal = Journal::shared(state_dir, Arc::new(crate::ha::reader(ha)?));
                if let Err(e) = journal.load_shared().await {
                    tracing::warn!(error = %e, "cannot read the cluster's journal and create ledger from etcd; this dry run may create where the leader would not (a create whose answer was lost)");
                }
                journal
            }
            (None, true) => Journal::detached(state_dir)?,
            (_, false) => Journal::open(state_dir)?,
        };
        Ok(Executor::new(Parts {
            provider: Arc::new(self.client.clone()),
            clock: self.clock.clone(),
            journal: Arc::new(journal),
            runlog: Arc::new(crate::runlog::RunLog::open(&self.config.daemon.state_dir)),
            alerts: self.alerts.clone(),
            settings: Settings::from_config(&self.config.daemon, dry_run),
            shutdown,
        }))
    }

    /// The state directory `--simulate` made for this run, removed when the context is.
    pub fn simulated_state_dir(&self) -> Option<&std::path::Path> {
        self.simulated_state.as_ref().map(SimulatedStateDir::path)
    }

    /// The policy that owns a snapshot name, if any.
    pub fn manager_of(&self, name: &str) -> Option<&str> {
        self.config
            .policies
            .iter()
            .find(|p| p.owns(name).is_some())
            .map(|p| p.name.as_str())
    }
}

/// The provider as production talks to it: the HTTP transport with the retry rules.
pub fn http_provider(api: &ApiConfig, token: SecretString) -> anyhow::Result<Retrying<HttpClient>> {
    let transport = HttpClient::new(api, token)?;
    Ok(Retrying::new(transport, RetryRules::new(api.max_retries)))
}

/// 32 random lower-case letters and digits: a simulated provider's token, a state directory's name.
pub fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}
