//! The shared status poll: one listing answers every snapshot in flight, or, while only a
//! few servers call for an answer, each of their own listings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::listing::ServerSnapshots;
use crate::model::{ServerId, Snapshot};
use crate::provider::{ApiError, Provider, Scope};
use crate::retry::Retrying;
use crate::shutdown::Shutdown;

pub use crate::listing::Listing;

use super::{deadline_after, Detached, Executor};

/// Servers listed one by one at a time, when each is listed on its own.
const SERVERS_IN_FLIGHT: usize = 8;

/// How long a waiter that can wait is left unanswered while creates keep coming in, at least;
/// and in rounds: at least this many times as long as the last account-wide round took, so
/// polling takes a small share of the request budget however large the account.
const PATIENCE: Duration = Duration::from_secs(60);
const PATIENCE_ROUNDS: u32 = 20;

/// How waiting for one snapshot ended.
#[derive(Debug)]
pub(super) enum Waited {
    /// Left `in_progress`; with that server's listing at that moment.
    Settled(Snapshot, ServerSnapshots),
    TimedOut(Unsettled),
    Cancelled,
}

/// A snapshot not seen settled within `snapshot_timeout`, worded by what the listings showed:
/// one never listed (the listings failed or ran out of time) is not said to be in progress.
#[derive(Debug)]
pub(super) struct Unsettled {
    name: String,
    timeout: Duration,
    seen: Seen,
}

/// What the status listings showed of a snapshot waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Never,
    /// In progress in the latest listing.
    InProgress,
    /// In progress once, not in the listings since (they failed, ran out of time, or did
    /// not show it).
    Earlier,
}

impl std::fmt::Display for Unsettled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, timeout) = (&self.name, humantime::format_duration(self.timeout));
        match self.seen {
            Seen::InProgress => {
                write!(
                    f,
                    "snapshot {name} still in progress after snapshot_timeout {timeout}"
                )
            }
            Seen::Earlier => write!(
                f,
                "snapshot {name} not seen settled within snapshot_timeout {timeout}: in progress \
                 when last listed, not seen in a listing since (they failed or ran out of time)"
            ),
            Seen::Never => write!(
                f,
                "snapshot {name} not seen in any listing within snapshot_timeout {timeout} (they \
                 failed or ran out of time); whether it finished is unknown"
            ),
        }
    }
}

/// Where a waiter's answer goes.
pub(super) enum Reply {
    /// A run suspended in [`Executor::wait_for`].
    Task(oneshot::Sender<Waited>),
    /// A detached run, handed back with its answer to whoever drives it
    /// ([`Executor::run_all`]).
    Detached(
        Box<Detached>,
        mpsc::UnboundedSender<(Box<Detached>, Waited)>,
    ),
}

impl Reply {
    fn send(self, waited: Waited) {
        match self {
            Self::Task(tx) => {
                let _ = tx.send(waited);
            }
            Self::Detached(run, tx) => {
                let _ = tx.send((run, waited));
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Self::Task(tx) => tx.is_closed(),
            Self::Detached(_, tx) => tx.is_closed(),
        }
    }
}

/// One snapshot waited for: a small record, whatever waits for it.
struct Waiter {
    server: ServerId,
    name: Arc<str>,
    /// It cannot wait for others: its server is stopped for it, or a post hook waits.
    urgent: bool,
    since: Instant,
    deadline: Instant,
    seen: Seen,
    /// When this waiter next wants an answer: `poll_interval` after it joined, then later and
    /// later (x1.5 up to 60 s) while its snapshot stays in progress.
    due: Instant,
    delay: Duration,
    reply: Reply,
}

impl Waiter {
    /// Answers: `snapshot_timeout` passed, worded by what the listings showed.
    fn timed_out(self, timeout: Duration) {
        let unsettled = Unsettled {
            name: self.name.to_string(),
            timeout,
            seen: self.seen,
        };
        self.reply.send(Waited::TimedOut(unsettled));
    }
}

#[derive(Default)]
struct WatchState {
    waiters: Vec<Waiter>,
    polling: bool,
    /// When the newest waiter joined: while waiters keep joining (a fleet's creates are
    /// still going out), those that can wait are not polled for.
    last_joined: Option<Instant>,
}

/// What the status poll does next: sleep, or hold a round now over these servers (each on
/// its own, or all in one account-wide listing), which must end by the earliest waiter's
/// deadline.
enum Next {
    Wait(Duration),
    Round {
        servers: Vec<ServerId>,
        each: bool,
        deadline: Instant,
    },
}

/// The shared status poll: one task lists the servers with a snapshot in flight, answers the
/// waiters whose snapshot settled, and ends when nobody is waiting.
///
/// A waiter calls for a round once it is due (`poll_interval` after it joined, then backing
/// off while its snapshot stays in progress). While creates keep coming in (a waiter joined
/// within the last `poll_interval`), only the waiters that cannot wait call: a server stopped
/// for its snapshot, a post hook to run, a deadline near, or one unanswered for longer than
/// [`PATIENCE`] (and [`PATIENCE_ROUNDS`] account-wide rounds). So a rotation of thousands
/// of servers costs one account-wide listing once its creates are out, not one a second.
///
/// A round asks the calling waiters' servers each on its own when there are fewer of them
/// than the account-wide listing has pages, else lists the account once, which answers every
/// waiter. Rounds are at least half a `poll_interval` apart.
pub(super) struct Watch<P: Provider> {
    provider: Arc<Retrying<P>>,
    poll_interval: Duration,
    snapshot_timeout: Duration,
    shutdown: Shutdown,
    /// Pages of the latest account-wide listing (0: none read yet).
    account_pages: AtomicUsize,
    state: Mutex<WatchState>,
}

impl<P: Provider> Watch<P> {
    pub(super) fn new(
        provider: Arc<Retrying<P>>,
        settings: &super::Settings,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            provider,
            poll_interval: settings.poll_interval,
            snapshot_timeout: settings.snapshot_timeout,
            shutdown,
            account_pages: AtomicUsize::new(0),
            state: Mutex::new(WatchState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `servers` cost fewer requests listed each on its own than in one account-wide
    /// listing (whose size is known once one was read; before, only one server is).
    fn each_is_cheaper(&self, servers: usize) -> bool {
        match self.account_pages.load(Ordering::Relaxed) {
            0 => servers <= 1,
            pages => servers < pages,
        }
    }

    /// One listing for these servers (see [`list`]), and the size of the account learnt.
    pub(super) async fn list(&self, servers: &[ServerId]) -> Result<Listing, ApiError> {
        if self.each_is_cheaper(servers.len()) {
            return list_each(&*self.provider, servers, false).await;
        }
        let (listing, pages) = list_account(&*self.provider, servers).await?;
        self.account_pages.store(pages, Ordering::Relaxed);
        Ok(listing)
    }

    /// Adds a waiter; starts the poll if it is not running.
    fn join(self: &Arc<Self>, server: ServerId, name: Arc<str>, urgent: bool, reply: Reply) {
        let start_poller = {
            let mut w = self.state();
            let now = Instant::now();
            w.waiters.push(Waiter {
                server,
                name,
                urgent,
                since: now,
                deadline: deadline_after(self.snapshot_timeout),
                seen: Seen::Never,
                due: deadline_after(self.poll_interval),
                delay: self.poll_interval,
                reply,
            });
            w.last_joined = Some(now);
            !std::mem::replace(&mut w.polling, true)
        };
        if start_poller {
            tokio::spawn(
                self.clone()
                    .poll_loop()
                    .instrument(tracing::info_span!("status_poll")),
            );
        }
    }

    /// What to do next, as of `now`.
    fn next(
        &self,
        w: &mut WatchState,
        now: Instant,
        last_round: Option<Instant>,
        took: Duration,
    ) -> Option<Next> {
        w.waiters.retain(|x| !x.reply.is_closed());
        // A waiter past its deadline is answered now, not at the next round: rounds can be
        // further apart than snapshot_timeout, and its server may be stopped.
        // In place: a fleet's waiters are not copied at every decision.
        let mut i = 0;
        while i < w.waiters.len() {
            if w.waiters[i].deadline <= now {
                w.waiters.swap_remove(i).timed_out(self.snapshot_timeout);
            } else {
                i += 1;
            }
        }
        if w.waiters.is_empty() {
            w.polling = false;
            return None;
        }
        let joining = w.last_joined.is_some_and(|t| now < t + self.poll_interval);
        let patience = PATIENCE.max(took * PATIENCE_ROUNDS);
        // A waiter near its deadline calls whatever else goes on: a round must end before it.
        let margin = self.poll_interval + took;
        let calls_at = |x: &Waiter| {
            if x.urgent || !joining {
                x.due
            } else {
                x.due
                    .max((x.since + patience).min(x.deadline.checked_sub(margin).unwrap_or(now)))
            }
        };
        let earliest = w.waiters.iter().map(calls_at).min().unwrap_or(now);
        let gap = (self.poll_interval / 2).max(Duration::from_millis(10));
        let at = last_round.map_or(earliest, |r| earliest.max(r + gap));
        let deadline = w.waiters.iter().map(|x| x.deadline).min().unwrap_or(now);
        if now < at {
            // Decided again at least every half interval: the joining may stop meanwhile.
            return Some(Next::Wait((at - now).min(gap).min(deadline - now)));
        }
        let mut calling: Vec<ServerId> = w
            .waiters
            .iter()
            .filter(|x| calls_at(x) <= now)
            .map(|x| x.server)
            .collect();
        calling.sort_unstable();
        calling.dedup();
        if self.each_is_cheaper(calling.len()) {
            return Some(Next::Round {
                servers: calling,
                each: true,
                deadline,
            });
        }
        let mut all: Vec<ServerId> = w.waiters.iter().map(|x| x.server).collect();
        all.sort_unstable();
        all.dedup();
        Some(Next::Round {
            servers: all,
            each: false,
            deadline,
        })
    }

    async fn poll_loop(self: Arc<Self>) {
        let longest = self.poll_interval.max(Duration::from_secs(60));
        let mut last_round: Option<Instant> = None;
        // How long the latest account-wide round took.
        let mut took = Duration::ZERO;
        loop {
            if self.shutdown.is_hurried() {
                let mut w = self.state();
                for waiter in std::mem::take(&mut w.waiters) {
                    waiter.reply.send(Waited::Cancelled);
                }
                w.polling = false;
                return;
            }
            let next = {
                let mut w = self.state();
                self.next(&mut w, Instant::now(), last_round, took)
            };
            let (servers, each, deadline) = match next {
                None => return,
                Some(Next::Round {
                    servers,
                    each,
                    deadline,
                }) => (servers, each, deadline),
                Some(Next::Wait(wait)) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.shutdown.hurried() => {}
                    }
                    continue;
                }
            };
            let round = Instant::now();
            last_round = Some(round);
            // A listing that pages on and on, or is rate limited, must not hold a stopped
            // server past its waiter's deadline: the round answers nobody then, and the
            // waiters past their deadline are answered at once.
            let mut listing = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.round(&servers, each)) => match r {
                    Ok(listing) => listing,
                    Err(_) => {
                        tracing::warn!(
                            "could not poll snapshot status before the earliest waiter's snapshot_timeout ran out"
                        );
                        None
                    }
                },
                () = self.shutdown.hurried() => continue,
            };
            if !each {
                took = round.elapsed();
            }
            let now = Instant::now();
            let mut w = self.state();
            let mut waiters = std::mem::take(&mut w.waiters);
            // By server, so a server's part of the listing is taken out (not copied) for its
            // last waiter.
            waiters.sort_by_key(|x| x.server);
            let mut waiters = waiters.into_iter().peekable();
            while let Some(mut waiter) = waiters.next() {
                let asked = servers.binary_search(&waiter.server).is_ok();
                let more = waiters.peek().is_some_and(|n| n.server == waiter.server);
                let part = listing.as_mut().filter(|_| asked).map(|l| {
                    if more {
                        l.part(waiter.server)
                    } else {
                        l.take(waiter.server)
                    }
                });
                let found = part.as_ref().and_then(|p| p.named(&waiter.name));
                if asked {
                    waiter.seen = match (&found, waiter.seen) {
                        (Some(_), _) => Seen::InProgress,
                        (None, Seen::Never) => Seen::Never,
                        (None, _) => Seen::Earlier,
                    };
                }
                match (found, part) {
                    (Some(s), Some(part)) if s.status.is_settled() => {
                        waiter.reply.send(Waited::Settled(s, part));
                    }
                    _ if now >= waiter.deadline => waiter.timed_out(self.snapshot_timeout),
                    _ => {
                        if asked && waiter.due <= round {
                            waiter.delay = (waiter.delay * 3 / 2).min(longest);
                            waiter.due = now + waiter.delay;
                        }
                        w.waiters.push(waiter);
                    }
                }
            }
            if w.waiters.is_empty() {
                w.polling = false;
                return;
            }
        }
    }
}

impl<P: Provider> Watch<P> {
    /// One round's listing of these servers: each on its own, or all at once (else each on
    /// its own); `None` when nothing could be listed.
    async fn round(&self, servers: &[ServerId], each: bool) -> Option<Listing> {
        if each {
            return list_each(&*self.provider, servers, true).await.ok();
        }
        match list_account(&*self.provider, servers).await {
            Ok((listing, pages)) => {
                self.account_pages.store(pages, Ordering::Relaxed);
                Some(listing)
            }
            Err(e) if servers.len() > 1 => {
                // One server's unreadable record (or a listing the provider cannot give, or
                // one that changed while it was read) must not keep every other waiting
                // server stopped: ask per server.
                tracing::warn!(error = %e, "could not poll snapshot status of all waiting servers at once; asking each");
                list_each(&*self.provider, servers, true).await.ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not poll snapshot status; trying again");
                None
            }
        }
    }
}

/// Each server's own listing, merged (8 at a time). `lenient`: a server whose listing fails
/// is left out (its waiters wait for the next round or their deadline); else it is an error.
async fn list_each<P: Provider>(
    provider: &P,
    servers: &[ServerId],
    lenient: bool,
) -> Result<Listing, ApiError> {
    let mut builder = Listing::builder();
    let mut lists = futures_util::stream::iter(servers.iter().copied())
        .map(|server| async move { (server, provider.list_snapshots(Some(server)).await) })
        .buffered(SERVERS_IN_FLIGHT);
    while let Some((server, listed)) = lists.next().await {
        match listed {
            Ok(list) => {
                for s in list {
                    builder.push(s);
                }
            }
            Err(e) if lenient => {
                tracing::warn!(server, error = %e, "could not poll this server's snapshot status; trying again")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(builder.finish())
}

/// The account-wide listing, its pages kept only for `servers` as they arrive; and how many
/// pages it had.
async fn list_account<P: Provider>(
    provider: &P,
    servers: &[ServerId],
) -> Result<(Listing, usize), ApiError> {
    let mut wanted = servers.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    let mut builder = Listing::builder();
    let pages =
        crate::provider::stream_pages(provider, Scope::Servers(&wanted), |s| builder.push(s))
            .await?;
    Ok((builder.finish(), pages))
}

/// One listing for these servers: the server's own list when there is one, else the
/// account-wide list (one paginated call instead of one per server), its pages kept only for
/// these servers as they arrive.
pub async fn list<P: Provider>(provider: &P, servers: &[ServerId]) -> Result<Listing, ApiError> {
    match servers {
        [one] => list_each(provider, &[*one], false).await,
        _ => Ok(list_account(provider, servers).await?.0),
    }
}

impl<P: Provider> Executor<P> {
    /// Waits for a snapshot to leave `in_progress`, sharing one poll loop with every other
    /// waiter. Bounded by `snapshot_timeout`; ends early when hurried. `urgent`: its server is
    /// stopped for it, or a post hook waits.
    pub(super) async fn wait_for(&self, server: ServerId, name: &str, urgent: bool) -> Waited {
        let (tx, rx) = oneshot::channel();
        self.watch
            .join(server, name.into(), urgent, Reply::Task(tx));
        tokio::select! {
            r = rx => r.unwrap_or(Waited::Cancelled),
            () = self.shutdown.hurried() => Waited::Cancelled,
        }
    }

    /// Hands `run` to the shared poll: its answer comes back on `tx` with it.
    pub(super) fn wait_detached(
        &self,
        run: Box<Detached>,
        tx: mpsc::UnboundedSender<(Box<Detached>, Waited)>,
    ) {
        let (server, name, urgent) = (run.server, run.name.clone(), run.urgent());
        self.watch
            .join(server, name, urgent, Reply::Detached(run, tx));
    }
}
