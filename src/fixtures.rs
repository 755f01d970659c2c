//! What the unit tests build their cases from, made the same way everywhere: a policy as a
//! fresh config gives it, and a simulated provider on tokio's clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono_tz::Tz;
use tokio::time::Instant;

use crate::clock::TokioClock;
use crate::model::{CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId};
use crate::policy::{Policy, Retention};
use crate::provider::{ApiError, ListedPage, Provider, Scope};
use crate::schedule::Schedule;
use crate::simulator::{SimConfig, Simulator};

/// Runs `f` to completion, for a synchronous test of an `async` call.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a test runtime")
        .block_on(f)
}

/// `name` at 02:30 UTC daily on server 1, keeping 2, with every other key at its default.
pub fn policy(name: &str) -> Policy {
    policy_at(name, "30 2 * * *", Tz::UTC)
}

/// [`policy`] on this schedule.
pub fn policy_at(name: &str, schedule: &str, tz: Tz) -> Policy {
    Policy {
        name: name.to_owned(),
        schedule: Schedule::parse(schedule, tz).expect("a test schedule parses"),
        servers: vec![1],
        retention: Retention {
            keep: 2,
            ..Default::default()
        },
        stop_server: false,
        description: format!("{name} snapshot"),
        catch_up: true,
        prune_unmanaged: false,
        jitter: None,
        hooks: Default::default(),
        monitoring: Default::default(),
        on_journal_failure: Default::default(),
    }
}

/// A simulated provider of these servers without its example snapshots, on tokio's clock
/// (tests run it paused) with the wall clock starting at `at`.
pub fn simulator(
    config: SimConfig,
    servers: &[ServerId],
    at: &str,
) -> (Simulator, Arc<TokioClock>) {
    let clock = TokioClock::starting_at(at.parse().expect("a test time parses"));
    let config = SimConfig {
        example_snapshots: false,
        ..config
    };
    (
        Simulator::with_server_ids(config, servers, clock.clone()),
        clock,
    )
}

/// A provider whose create answers are lost (a 504 after the snapshot was made, or, with
/// `makes` off, without making it), and which lists a snapshot it made only `hidden` after the
/// create; with `hidden_from_account`, account listings never show it (records that shifted
/// across a page boundary while they were read).
#[derive(Clone)]
pub struct LostAnswer {
    pub sim: Simulator,
    pub hidden: Duration,
    pub makes: bool,
    /// Answers a create with a 400, making nothing.
    pub refuses: bool,
    pub lose_answer: bool,
    pub hidden_from_account: bool,
    /// Once a snapshot is made, listings answer 429 (the looks for a lost create fail).
    pub looks_refused: bool,
    made: Arc<Mutex<Option<(String, Instant)>>>,
}

impl LostAnswer {
    pub fn new(sim: &Simulator, hidden: Duration) -> Self {
        Self {
            sim: sim.clone(),
            hidden,
            makes: true,
            refuses: false,
            lose_answer: true,
            hidden_from_account: false,
            looks_refused: false,
            made: Arc::default(),
        }
    }

    /// The name of the snapshot made, while listings must not show it to this `scope`.
    fn hiding(&self, scope: Scope<'_>) -> Option<String> {
        let made = self.made.lock().unwrap();
        let (name, at) = made.as_ref()?;
        let account = !matches!(scope, Scope::Server(_));
        (at.elapsed() < self.hidden || account && self.hidden_from_account).then(|| name.clone())
    }
}

impl Provider for LostAnswer {
    async fn list_page(
        &self,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        if self.looks_refused && self.made.lock().unwrap().is_some() {
            return Err(ApiError::RateLimited {
                what: "list snapshots".into(),
                retry_after: Some(Duration::from_secs(1)),
            });
        }
        let mut page = self.sim.list_page(scope, link).await?;
        if let Some(name) = self.hiding(scope) {
            page.snapshots.retain(|s| s.name != name);
        }
        Ok(page)
    }
    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        if self.refuses {
            return Err(ApiError::BadRequest {
                what: "create snapshot".into(),
                message: "Snapshot limit reached".into(),
            });
        }
        if !self.makes {
            return Err(lost());
        }
        let made = self.sim.create_snapshot(request).await?;
        *self.made.lock().unwrap() = Some((request.name.clone(), Instant::now()));
        if self.lose_answer {
            return Err(lost());
        }
        Ok(made)
    }
    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        self.sim.delete_snapshot(id).await
    }
    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.sim.restore_snapshot(id).await
    }
    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.sim.get_server(id).await
    }
    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.sim.stop_server(id).await
    }
    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.sim.start_server(id).await
    }
}

fn lost() -> ApiError {
    ApiError::Server {
        what: "create snapshot".into(),
        status: 504,
        message: "Gateway Time-out".into(),
    }
}
