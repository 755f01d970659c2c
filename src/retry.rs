//! Every retry rule, in one place, for every provider: production runs
//! `Retrying<HttpClient>`, the soak `Retrying<` the simulator `>`, both built by
//! [`Retrying::new`]. Providers make one attempt per call; this layer decides what is sent
//! again, and when:
//!
//! - reads (each page of a listing on its own, a server) and deletes are sent again after a
//!   429, a 5xx, a timeout or a reset; a delete that finds its snapshot gone after an answer
//!   was lost has succeeded;
//! - a create whose outcome is unknown (5xx, timeout, a reset connection) is never sent
//!   again: a provider may show a snapshot only a while after making it, so it is looked for
//!   by name, with the back-off between looks, and the run fails if it never shows up (the
//!   next fire takes a new slot). A create is sent again only after an answer that says it
//!   was not carried out (429) or a connection that was never made;
//! - a stop or start whose outcome is unknown is sent again only after a look at the server
//!   shows it did not happen (a stop only while the server still runs, a start only while it
//!   is stopped);
//! - a restore goes out once (the operator asked for it and reads the answer).
//!
//! The wait before each re-send doubles from [`MIN_DELAY`] to [`MAX_DELAY`] with jitter, and
//! is at least the provider's `Retry-After` (bounded by
//! [`crate::provider::MAX_RETRY_AFTER`]). The jitter is seeded in a simulated run, so it
//! replays exactly.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::model::{
    CreateSnapshot, PowerState, RestoreStarted, Server, ServerId, Snapshot, SnapshotId,
};
use crate::provider::{ApiError, ListedPage, Provider, Scope};

/// The first wait between attempts; it doubles up to [`MAX_DELAY`].
pub const MIN_DELAY: Duration = Duration::from_millis(500);
/// The longest wait between attempts, jitter included (unless `Retry-After` asks for more).
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// How many times a request is sent again, and how the waits between are drawn.
#[derive(Debug, Clone)]
pub struct RetryRules {
    max_retries: u32,
    jitter_seed: Option<u64>,
    look_up_lost_creates: bool,
}

impl RetryRules {
    /// Up to `max_retries` re-sends, with random jitter.
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            jitter_seed: None,
            look_up_lost_creates: true,
        }
    }

    /// The same waits on every run: the jitter is drawn from `seed`.
    pub fn seeded(self, seed: u64) -> Self {
        Self {
            jitter_seed: Some(seed),
            ..self
        }
    }

    /// Sends a create again after a lost answer, blind. Never used by the program: it exists so
    /// a test can show that the soak catches the duplicates this makes.
    #[doc(hidden)]
    pub fn without_lost_create_look_up(self) -> Self {
        Self {
            look_up_lost_creates: false,
            ..self
        }
    }

    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }

    fn backoff(&self) -> Backoff {
        let builder = ExponentialBuilder::default()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_max_times(self.max_retries as usize)
            .with_jitter();
        let builder = match self.jitter_seed {
            Some(seed) => builder.with_jitter_seed(seed),
            None => builder,
        };
        Backoff(builder.build())
    }
}

/// The waits of one request's re-sends.
struct Backoff(ExponentialBackoff);

impl Backoff {
    /// The wait before sending again after `error`, or `None` when the tries are spent.
    fn after(&mut self, error: &ApiError) -> Option<Duration> {
        let backoff = self.0.next()?.min(MAX_DELAY);
        Some(match error {
            ApiError::RateLimited {
                retry_after: Some(wait),
                ..
            } => backoff.max(*wait),
            _ => backoff,
        })
    }
}

/// Whether this host may still send a write (`[ha]`: it leads with the epoch of its term).
pub type MayWrite = Arc<dyn Fn() -> bool + Send + Sync>;

/// A provider with the retry rules around it.
#[derive(Clone)]
pub struct Retrying<P> {
    inner: P,
    rules: RetryRules,
    /// With `[ha]`: asked before every attempt of a stop, a create or a delete, retries
    /// included (a retry waits out a back-off, long enough for the lead to pass to another
    /// host).
    may_write: Option<MayWrite>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for Retrying<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrying")
            .field("inner", &self.inner)
            .field("rules", &self.rules)
            .field("fenced", &self.may_write.is_some())
            .finish()
    }
}

impl<P: Provider> Retrying<P> {
    pub fn new(inner: P, rules: RetryRules) -> Self {
        Self {
            inner,
            rules,
            may_write: None,
        }
    }

    /// The same provider, sending a stop, a create or a delete (each attempt) only while
    /// `may_write` says so; otherwise the request fails with [`ApiError::NotLeading`], unsent.
    /// Starts are never held back: a server stopped is started whoever leads.
    pub fn fenced(self, may_write: MayWrite) -> Self {
        Self {
            may_write: Some(may_write),
            ..self
        }
    }

    /// `Err` (unsent) when this host may no longer write.
    fn may_write(&self, what: impl FnOnce() -> String) -> Result<(), ApiError> {
        match &self.may_write {
            Some(may) if !may() => Err(ApiError::NotLeading { what: what() }),
            _ => Ok(()),
        }
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn rules(&self) -> &RetryRules {
        &self.rules
    }

    /// An idempotent request, sent again while it fails in a retryable way.
    async fn idempotent<T, F, Fut>(&self, what: &str, mut send: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut backoff = self.rules.backoff();
        loop {
            let error = match send().await {
                Err(e) if e.is_retryable() => e,
                answer => return answer,
            };
            let Some(wait) = backoff.after(&error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, retry_in = ?wait, "{what} failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// A create whose answer was lost may have happened, and a provider may show it only
    /// later: it is looked for by name, with the back-off between looks, and never sent again
    /// (a look that finds nothing proves nothing, and a second create could make a duplicate).
    /// Once `give_up` completes, the looks end: the create stays unconfirmed.
    async fn find_lost_create(
        &self,
        request: &CreateSnapshot,
        error: ApiError,
        mut backoff: Backoff,
        give_up: impl Future<Output = ()>,
    ) -> Result<Snapshot, ApiError> {
        let mut give_up = std::pin::pin!(give_up);
        let unconfirmed = |cause: String| ApiError::Unconfirmed {
            what: format!(
                "create snapshot {} of server {}",
                request.name, request.server_id
            ),
            cause,
        };
        loop {
            // A look that fails says nothing about the create: the error is still the
            // create's (unconfirmed), never the look's (a 429 or a 404 would read as "the
            // create was refused", and a later run would send it again).
            let found = tokio::select! {
                found = self.look_for(request) => found.map_err(|look| {
                    unconfirmed(format!("{error}; looking for it then failed: {look}"))
                })?,
                () = &mut give_up => return Err(unconfirmed(error.to_string())),
            };
            if let Some(found) = found {
                return Ok(found);
            }
            let Some(wait) = backoff.after(&error) else {
                return Err(unconfirmed(error.to_string()));
            };
            tracing::warn!(error = %error, look_again_in = ?wait, snapshot = %request.name, "the created snapshot is not listed yet; looking again");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut give_up => return Err(unconfirmed(error.to_string())),
            }
        }
    }

    /// After a create whose answer was lost: the snapshot of that name, if it exists.
    async fn look_for(&self, request: &CreateSnapshot) -> Result<Option<Snapshot>, ApiError> {
        tracing::warn!(snapshot = %request.name, "create answer lost; looking for the snapshot by name");
        let listed = Box::pin(self.list_snapshots(Some(request.server_id))).await?;
        Ok(listed.into_iter().find(|s| s.name == request.name))
    }

    /// Sends the create; after an answer that says it was not carried out (429, no
    /// connection), sends it again; after one that was lost, looks for it by name and never
    /// sends it again. Once `give_up` completes, nothing is sent or looked for again (the
    /// request in flight is never dropped).
    pub async fn create_snapshot_unless(
        &self,
        request: &CreateSnapshot,
        give_up: impl Future<Output = ()>,
    ) -> Result<Snapshot, ApiError> {
        let mut give_up = std::pin::pin!(give_up);
        let mut backoff = self.rules.backoff();
        loop {
            self.may_write(|| format!("create snapshot {}", request.name))?;
            let error = match self.inner.create_snapshot(request).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            };
            if error.outcome_unknown() && self.rules.look_up_lost_creates {
                return self
                    .find_lost_create(request, error, backoff, give_up)
                    .await;
            }
            if !error.is_retryable() {
                return Err(error);
            }
            let Some(wait) = backoff.after(&error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, retry_in = ?wait, "create failed; trying again");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut give_up => return Err(error),
            }
        }
    }

    /// Sends the stop; after a failure whose outcome is unknown, looks at the server and
    /// sends it again only while the server still runs, so a lost answer never makes it act
    /// twice. Once `give_up` completes, no stop is sent again (the one in flight is never
    /// dropped: it may have reached the provider, and whoever starts the server again must
    /// know whether it did).
    pub async fn stop_server_unless(
        &self,
        id: ServerId,
        give_up: impl Future<Output = ()>,
    ) -> Result<Server, ApiError> {
        let happened = |state: &PowerState| Some(*state != PowerState::Running);
        let send = || async move {
            self.may_write(|| format!("stop server {id}"))?;
            self.inner.stop_server(id).await
        };
        self.power("stop", id, send, happened, give_up).await
    }

    /// A power request, sent again after a retryable failure only when a look at the server
    /// says it did not happen: `happened` reads the state as `Some(true)` (it went through,
    /// only the answer was lost), `Some(false)` (send again) or `None` (in another transition:
    /// the caller waits it out and decides). No re-send once `give_up` completes.
    async fn power<F, Fut>(
        &self,
        verb: &str,
        id: ServerId,
        mut send: F,
        happened: impl Fn(&PowerState) -> Option<bool>,
        give_up: impl Future<Output = ()>,
    ) -> Result<Server, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Server, ApiError>>,
    {
        let mut give_up = std::pin::pin!(give_up);
        let mut backoff = self.rules.backoff();
        loop {
            let error = match send().await {
                Ok(server) => return Ok(server),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            let Some(wait) = backoff.after(&error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, retry_in = ?wait, "{verb} request failed; looking at the server before sending it again");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut give_up => return Err(error),
            }
            let server = self.get_server(id).await?;
            match happened(&server.status) {
                Some(true) => return Ok(server),
                Some(false) => {}
                None => return Err(error),
            }
        }
    }
}

impl<P: Provider> Provider for Retrying<P> {
    async fn list_page(
        &self,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        self.idempotent("listing snapshots", || self.inner.list_page(scope, link))
            .await
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        self.create_snapshot_unless(request, std::future::pending())
            .await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        let mut backoff = self.rules.backoff();
        let mut unsure = false;
        loop {
            self.may_write(|| format!("delete snapshot {id}"))?;
            let error = match self.inner.delete_snapshot(id).await {
                Ok(()) => return Ok(()),
                // A retry after a lost answer finds it gone: the first attempt deleted it.
                Err(ApiError::NotFound { .. }) if unsure => return Ok(()),
                Err(e) if e.is_retryable() => e,
                Err(e) => return Err(e),
            };
            unsure |= error.outcome_unknown();
            let Some(wait) = backoff.after(&error) else {
                return Err(error);
            };
            tracing::warn!(error = %error, retry_in = ?wait, "delete failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.inner.restore_snapshot(id).await
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.idempotent("reading a server", || self.inner.get_server(id))
            .await
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.stop_server_unless(id, std::future::pending()).await
    }

    /// Sends the start; after a failure whose outcome is unknown, looks at the server and
    /// sends it again only while it is still stopped (starting or running: it went through).
    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        let happened = |state: &PowerState| match state {
            PowerState::Stopped => Some(false),
            PowerState::Starting | PowerState::Running => Some(true),
            _ => None,
        };
        let never = std::future::pending();
        self.power("start", id, || self.inner.start_server(id), happened, never)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::LostAnswer;
    use crate::simulator::{SimConfig, Simulator};

    const WEB: ServerId = 12345;

    fn sim(config: SimConfig) -> Simulator {
        crate::fixtures::simulator(config, &[WEB], "2025-01-15T02:30:00Z").0
    }

    fn request(name: &str) -> CreateSnapshot {
        CreateSnapshot {
            server_id: WEB,
            name: name.to_owned(),
            description: None,
        }
    }

    fn server_error() -> ApiError {
        ApiError::Server {
            what: "x".into(),
            status: 503,
            message: String::new(),
        }
    }

    #[test]
    fn waits_double_to_a_minute_with_jitter_and_respect_retry_after() {
        let rules = RetryRules::new(9).seeded(7);
        let mut backoff = rules.backoff();
        let waits: Vec<Duration> = (0..10)
            .map_while(|_| backoff.after(&server_error()))
            .collect();
        assert_eq!(waits.len(), 9, "{waits:?}");
        let floors = [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000];
        for (wait, floor) in waits.iter().zip(floors) {
            let floor = Duration::from_millis(floor);
            assert!(
                *wait >= floor && *wait <= (floor * 2).min(MAX_DELAY),
                "{waits:?}"
            );
        }
        // Seeded: the same waits again.
        let mut again = rules.backoff();
        let replay: Vec<Duration> = (0..9).map_while(|_| again.after(&server_error())).collect();
        assert_eq!(waits, replay);
        let throttled = ApiError::RateLimited {
            what: "x".into(),
            retry_after: Some(Duration::from_secs(7)),
        };
        assert!(RetryRules::new(1).backoff().after(&throttled) >= Some(Duration::from_secs(7)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_create_is_found_by_name_not_sent_again() {
        let sim = sim(SimConfig {
            lost_create_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), RetryRules::new(5));
        let made = retrying.create_snapshot(&request("a")).await.unwrap();
        assert_eq!(made.name, "a");
        let stats = sim.stats();
        assert_eq!(
            (stats.request_count("create"), stats.duplicate_names),
            (1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reads_are_retried_until_the_budget_is_spent_and_400_is_not() {
        let sim = sim(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), RetryRules::new(3));
        let err = retrying.get_server(WEB).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert_eq!(sim.stats().request_count("get_server"), 4);
        sim.set_config(|c| c.error_rate = 0.0);
        let refused = retrying.delete_snapshot(1).await.unwrap_err();
        assert!(matches!(refused, ApiError::NotFound { .. }));
        assert_eq!(sim.stats().request_count("delete"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_is_sent_again_only_after_a_look_shows_the_server_still_running() {
        let sim = sim(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), RetryRules::new(2));
        assert!(retrying.stop_server(WEB).await.is_err());
        let stats = sim.stats();
        // Three stops, each after the look that showed it running (the looks fail too, and
        // are retried; a failed look ends the stop).
        assert_eq!(stats.request_count("stop"), 1);
        assert_eq!(stats.request_count("get_server"), 3);
    }

    /// A delete waits out `Retry-After` like every other request, and an absurd
    /// `Retry-After` from any provider (here the simulator's 300 s) is honoured up to 60 s.
    #[tokio::test(start_paused = true)]
    async fn a_deletes_retry_waits_out_retry_after_up_to_a_minute() {
        let sim = sim(SimConfig {
            burst_429_rate: 1.0,
            burst_retry_after: 300,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), RetryRules::new(1));
        let started = tokio::time::Instant::now();
        let refused = retrying.delete_snapshot(1).await.unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { .. }), "{refused}");
        assert_eq!(sim.stats().request_count("delete"), 2);
        assert_eq!(started.elapsed(), crate::provider::MAX_RETRY_AFTER);
    }

    /// A provider that makes the snapshot but loses the answer (504), and lists it only
    /// `hidden` later, as an eventually consistent provider does.
    fn slow_to_show(hidden: Duration, really_made: bool) -> (Simulator, Retrying<LostAnswer>) {
        let sim = sim(SimConfig::default());
        let mut provider = LostAnswer::new(&sim, hidden);
        provider.makes = really_made;
        (sim, Retrying::new(provider, RetryRules::new(5).seeded(1)))
    }

    /// A lost create that the provider lists only seconds later is found by looking again:
    /// it is never sent a second time (a look that finds nothing proves nothing).
    #[tokio::test(start_paused = true)]
    async fn a_lost_create_listed_only_later_is_found_not_sent_again() {
        let (sim, retrying) = slow_to_show(Duration::from_secs(10), true);
        let made = retrying.create_snapshot(&request("a")).await.unwrap();
        assert_eq!(made.name, "a");
        let stats = sim.stats();
        assert_eq!(stats.request_count("create"), 1);
        assert_eq!(sim.snapshots(WEB).len(), 1);
    }

    /// A create whose answer was lost and that never shows up fails the run, saying why it
    /// was not sent again; it is still sent once only.
    #[tokio::test(start_paused = true)]
    async fn a_lost_create_that_never_shows_up_fails_without_a_second_create() {
        let (sim, retrying) = slow_to_show(Duration::from_secs(10), false);
        let err = retrying.create_snapshot(&request("a")).await.unwrap_err();
        assert!(matches!(err, ApiError::Unconfirmed { .. }), "{err}");
        assert!(err.to_string().contains("not sent again"), "{err}");
        assert_eq!(sim.stats().request_count("create"), 0);
        assert!(sim.snapshots(WEB).is_empty());
    }

    /// A 429 says the create was not carried out: it is sent again after Retry-After.
    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_create_is_sent_again() {
        let sim = sim(SimConfig {
            burst_429_rate: 1.0,
            ..SimConfig::default()
        });
        let retrying = Retrying::new(sim.clone(), RetryRules::new(2).seeded(1));
        let refused = retrying.create_snapshot(&request("a")).await.unwrap_err();
        assert!(matches!(refused, ApiError::RateLimited { .. }), "{refused}");
        assert_eq!(sim.stats().request_count("create"), 3);
    }

    /// With `[ha]`, a write waiting out its back-off when the lead passes to another host is
    /// not sent again: no stop, create or delete leaves a host that no longer leads, retries
    /// included. A start still goes out (a server stopped is started whoever leads).
    #[tokio::test(start_paused = true)]
    async fn a_retry_after_the_lead_is_lost_sends_no_write_but_still_starts() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sim = sim(SimConfig {
            burst_429_rate: 1.0,
            ..SimConfig::default()
        });
        sim.set_server_status(WEB, PowerState::Stopped);
        let leads = Arc::new(AtomicBool::new(true));
        let retrying = Retrying::new(sim.clone(), RetryRules::new(3).seeded(1)).fenced({
            let leads = leads.clone();
            Arc::new(move || leads.load(Ordering::SeqCst))
        });
        let lose_the_lead = || {
            let leads = leads.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                leads.store(false, Ordering::SeqCst);
            })
        };
        let requests = |sim: &Simulator| {
            let s = sim.stats();
            ["create", "stop", "delete", "start"].map(|e| s.request_count(e))
        };

        lose_the_lead();
        let create = retrying.create_snapshot(&request("a")).await.unwrap_err();
        assert!(matches!(create, ApiError::NotLeading { .. }), "{create}");
        assert!(create.not_carried_out());
        leads.store(true, Ordering::SeqCst);
        lose_the_lead();
        let delete = retrying.delete_snapshot(1).await.unwrap_err();
        assert!(matches!(delete, ApiError::NotLeading { .. }), "{delete}");
        // Each sent once, before the lead was lost; the start is sent until it is let through.
        assert_eq!(requests(&sim), [1, 0, 1, 0]);
        sim.set_config(|c| c.burst_429_rate = 0.0);
        assert!(
            retrying.stop_server(WEB).await.is_err(),
            "not leading: no stop"
        );
        retrying.start_server(WEB).await.unwrap();
        assert_eq!(requests(&sim), [1, 0, 1, 1]);
    }
}
