//! The shared status poll: one listing answers every snapshot in flight.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use crate::model::{ServerId, Snapshot};
use crate::provider::{ApiError, Provider};
use crate::retry::Retrying;

use super::{deadline_after, Executor};

/// Snapshots on the servers, listed once at `taken_at` (monotonic).
#[derive(Debug, Clone)]
pub struct Listing {
    pub taken_at: Instant,
    pub by_server: BTreeMap<ServerId, Vec<Snapshot>>,
}

impl Listing {
    pub fn new(snapshots: Vec<Snapshot>) -> Self {
        let mut by_server: BTreeMap<ServerId, Vec<Snapshot>> = BTreeMap::new();
        for s in snapshots {
            by_server.entry(s.server.id).or_default().push(s);
        }
        for list in by_server.values_mut() {
            list.shrink_to_fit();
        }
        Self {
            taken_at: Instant::now(),
            by_server,
        }
    }

    pub fn server(&self, id: ServerId) -> Vec<Snapshot> {
        self.by_server.get(&id).cloned().unwrap_or_default()
    }
}

/// How waiting for one snapshot ended.
#[derive(Debug)]
pub(super) enum Waited {
    /// Left `in_progress`; with that server's listing at that moment.
    Settled(Snapshot, Vec<Snapshot>),
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

struct Waiter {
    server: ServerId,
    name: String,
    deadline: Instant,
    /// `snapshot_timeout`, for the words of a timeout.
    timeout: Duration,
    seen: Seen,
    /// When this waiter next wants an answer: `poll_interval` after it joined, then later and
    /// later (x1.5 up to 60 s) while its snapshot stays in progress.
    due: Instant,
    delay: Duration,
    tx: oneshot::Sender<Waited>,
}

impl Waiter {
    /// Answers: `snapshot_timeout` passed, worded by what the listings showed.
    fn timed_out(self) {
        let _ = self.tx.send(Waited::TimedOut(Unsettled {
            name: self.name,
            timeout: self.timeout,
            seen: self.seen,
        }));
    }
}

#[derive(Default)]
struct WatchState {
    waiters: Vec<Waiter>,
    polling: bool,
    /// When the newest waiter joined: while waiters keep joining, rounds are spaced further
    /// and further apart, because each round may cost a whole account-wide listing.
    last_joined: Option<Instant>,
}

/// What the status poll does next: sleep, or hold a round now over these servers, which must
/// end by the earliest waiter's deadline.
enum Next {
    Wait(Duration),
    Round {
        at: Instant,
        servers: Vec<ServerId>,
        deadline: Instant,
    },
}

/// The shared status poll: one task lists every server with a snapshot in flight, answers the
/// waiters whose snapshot settled, and ends when nobody is waiting.
///
/// A round is held when the earliest waiter is due. While a fleet's creates are still coming
/// in, rounds back off (1, 1.5, 2.25, ... times `poll_interval`), so a rotation of thousands
/// of servers costs a handful of listings rather than one a second; once no waiter has joined
/// for half a `poll_interval`, rounds follow the waiters' own due times again (at most one per
/// half interval), so the last snapshots of a batch are answered soon after they finish.
pub(super) struct Watch<P: Provider> {
    provider: Arc<Retrying<P>>,
    poll_interval: Duration,
    state: Mutex<WatchState>,
}

impl<P: Provider> Watch<P> {
    pub(super) fn new(provider: Arc<Retrying<P>>, poll_interval: Duration) -> Self {
        Self {
            provider,
            poll_interval,
            state: Mutex::new(WatchState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn poll_loop(self: Arc<Self>) {
        let longest = self.poll_interval.max(Duration::from_secs(60));
        let quiet = (self.poll_interval / 2).max(Duration::from_millis(10));
        let mut spacing = self.poll_interval;
        let mut last_round: Option<Instant> = None;
        loop {
            let next = {
                let mut w = self.state();
                w.waiters.retain(|x| !x.tx.is_closed());
                let now = Instant::now();
                // A waiter past its deadline is answered now, not at the next round: rounds
                // can be further apart than snapshot_timeout, and its server may be stopped.
                let (expired, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut w.waiters)
                    .into_iter()
                    .partition(|x| x.deadline <= now);
                w.waiters = waiting;
                for waiter in expired {
                    waiter.timed_out();
                }
                if w.waiters.is_empty() {
                    w.polling = false;
                    return;
                }
                let due = w.waiters.iter().map(|x| x.due).min().unwrap_or(now);
                let deadline = w.waiters.iter().map(|x| x.deadline).min().unwrap_or(now);
                let joining = w.last_joined.is_some_and(|t| now < t + quiet);
                let gap = if joining { spacing } else { quiet };
                let at = last_round.map_or(due, |r| due.max(r + gap));
                if now < at {
                    // Decided again at least every `quiet`: the joining may stop meanwhile.
                    Next::Wait((at - now).min(quiet).min(deadline - now))
                } else {
                    spacing = if joining {
                        (spacing * 3 / 2).min(longest)
                    } else {
                        self.poll_interval
                    };
                    let mut s: Vec<ServerId> = w.waiters.iter().map(|x| x.server).collect();
                    s.sort_unstable();
                    s.dedup();
                    Next::Round {
                        at: now,
                        servers: s,
                        deadline,
                    }
                }
            };
            let (round, servers, deadline) = match next {
                Next::Round {
                    at,
                    servers,
                    deadline,
                } => (at, servers, deadline),
                Next::Wait(wait) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            last_round = Some(round);
            // A listing that pages on and on, or is rate limited, must not hold a stopped
            // server past its waiter's deadline: the round answers nobody then, and the
            // waiters past their deadline are answered at once.
            let listing = match tokio::time::timeout_at(deadline, self.round(&servers)).await {
                Ok(listing) => listing,
                Err(_) => {
                    tracing::warn!(
                        "could not poll snapshot status before the earliest waiter's snapshot_timeout ran out"
                    );
                    None
                }
            };
            let now = Instant::now();
            let mut w = self.state();
            for mut waiter in std::mem::take(&mut w.waiters) {
                let found = listing.as_ref().and_then(|l| {
                    l.by_server
                        .get(&waiter.server)
                        .and_then(|snaps| snaps.iter().find(|s| s.name == waiter.name))
                });
                waiter.seen = match (found, waiter.seen) {
                    (Some(_), _) => Seen::InProgress,
                    (None, Seen::Never) => Seen::Never,
                    (None, _) => Seen::Earlier,
                };
                match found {
                    Some(s) if s.status.is_settled() => {
                        let all = listing
                            .as_ref()
                            .map(|l| l.server(waiter.server))
                            .unwrap_or_default();
                        let _ = waiter.tx.send(Waited::Settled(s.clone(), all));
                    }
                    _ if now >= waiter.deadline => waiter.timed_out(),
                    _ => {
                        if waiter.due <= round {
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
    /// One round's listing of these servers: all at once, else each on its own; `None` when
    /// nothing could be listed.
    async fn round(&self, servers: &[ServerId]) -> Option<Listing> {
        match list(&*self.provider, servers).await {
            Ok(l) => Some(l),
            Err(e) if servers.len() > 1 => {
                // One server's unreadable record (or a listing the provider cannot give, or
                // one that changed while it was read) must not keep every other waiting
                // server stopped: ask per server.
                tracing::warn!(error = %e, "could not poll snapshot status of all waiting servers at once; asking each");
                Some(self.list_each(servers).await)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not poll snapshot status; trying again");
                None
            }
        }
    }

    /// Each server's own listing, merged; a server whose listing fails is left out (its
    /// waiters wait for the next round or their deadline).
    async fn list_each(&self, servers: &[ServerId]) -> Listing {
        let mut snapshots = Vec::new();
        for server in servers {
            match self.provider.list_snapshots(Some(*server)).await {
                Ok(list) => snapshots.extend(list.into_iter().filter(|s| s.server.id == *server)),
                Err(e) => {
                    tracing::warn!(server, error = %e, "could not poll this server's snapshot status; trying again")
                }
            }
        }
        Listing::new(snapshots)
    }
}

/// One listing for these servers: the server's own list when there is one, else the
/// account-wide list (one paginated call instead of one per server).
pub async fn list<P: Provider>(provider: &P, servers: &[ServerId]) -> Result<Listing, ApiError> {
    let mut snapshots = match servers {
        [one] => provider.list_snapshots(Some(*one)).await?,
        _ => provider.list_snapshots_of(servers).await?,
    };
    // Kept before grouping: a poll for a few servers need not group a fleet's snapshots.
    let mut wanted = servers.to_vec();
    wanted.sort_unstable();
    snapshots.retain(|s| wanted.binary_search(&s.server.id).is_ok());
    Ok(Listing::new(snapshots))
}

impl<P: Provider> Executor<P> {
    /// Waits for a snapshot to leave `in_progress`, sharing one poll loop with every other
    /// waiter. Bounded by `snapshot_timeout`; ends early when hurried.
    pub(super) async fn wait_for(&self, server: ServerId, name: &str) -> Waited {
        let (tx, rx) = oneshot::channel();
        let start_poller = {
            let mut w = self.watch.state();
            let now = Instant::now();
            w.waiters.push(Waiter {
                server,
                name: name.to_owned(),
                deadline: deadline_after(self.settings.snapshot_timeout),
                timeout: self.settings.snapshot_timeout,
                seen: Seen::Never,
                due: deadline_after(self.settings.poll_interval),
                delay: self.settings.poll_interval,
                tx,
            });
            w.last_joined = Some(now);
            !std::mem::replace(&mut w.polling, true)
        };
        if start_poller {
            tokio::spawn(
                self.watch
                    .clone()
                    .poll_loop()
                    .instrument(tracing::info_span!("status_poll")),
            );
        }
        tokio::select! {
            r = rx => r.unwrap_or(Waited::Cancelled),
            () = self.shutdown.hurried() => Waited::Cancelled,
        }
    }
}
