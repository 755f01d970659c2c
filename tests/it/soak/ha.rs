//! The soak with two hosts: what `run` with `[ha]` runs, on the single host's simulated
//! provider, paused clock, fault timeline (5xx, lost create answers, 429 bursts, slow power,
//! long snapshots, the outage) and checks. Two nodes, "ops-1" and "ops-2", each a [`Cluster`]
//! (its [`Leadership`] with a TTL of 15 s, on its own [`Link`] to one in-memory lease store)
//! serving with [`Cluster::serve`], each term a `Service::open_shared` over the fenced shared
//! state. At moments drawn from the seed, most aimed at whoever leads then: crashes (the node's
//! future dropped and its link dead, so a leader's lease expires on its own; started again
//! after a while), partitions (its link cut for seconds to minutes, some longer than the TTL,
//! some shorter), lease losses (cut just long enough for the lease to expire) and clean
//! hand-overs (SIGTERM: the shutdown begun; started again after a while).
//!
//! Checked on top of the single host's checks:
//! - every stop, create and delete is sent by the node the store names as leader at that
//!   instant, acting with the epoch the leader key was created at; work of a node's earlier
//!   term sent after the other node led is reported too ([`FromNode`]);
//! - on every request: no node may act unless the store names it with that epoch
//!   (self-fencing: it stops before its lease can expire);
//! - each stop names its slot in the shared journal (`journal/<server>`) before it is sent;
//! - the windows when neither node could act (neither in a term with its link up) count as the
//!   single host's crash windows: a slot in one was missed and may be caught up, a run one
//!   interrupted may be lost, and freshness allows no more (no slot lost for more than one
//!   period by a failover);
//! - at the end both nodes shut down cleanly, the shared journal is empty, every server runs.
//!
//! 30 simulated days by default ([`DAYS`]). Figures:
//! `cargo test --test it soak::ha::a_simulated -- --nocapture` (`SOAK_SEED`, `SOAK_DAYS`);
//! `soak::ha::sweep` runs more seeds.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use snapshot_scheduler::alerts::Alerts;
use snapshot_scheduler::clock::{Clock, TokioClock};
use snapshot_scheduler::daemon::{Cluster, OnWake, Service, TermEvents, TermParts};
use snapshot_scheduler::ha::memory::{Link, Memory};
use snapshot_scheduler::ha::{Coordination, Holder, Leadership, Role};
use snapshot_scheduler::model::{
    CreateSnapshot, RestoreStarted, Server, ServerId, Snapshot, SnapshotId,
};
use snapshot_scheduler::policy::Policy;
use snapshot_scheduler::provider::{ApiError, ListedPage, Provider, Scope};
use snapshot_scheduler::retry::{RetryRules, Retrying};
use snapshot_scheduler::scheduler::MAX_SLEEP;
use snapshot_scheduler::shared::{Boxed, SharedError, SharedState};
use snapshot_scheduler::shutdown::Shutdown;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{env_u64, retry_rules, Checked, Figures, Findings, JournalAt, World};

/// `/snapshot-scheduler/<cluster>/`, as `[ha]` makes it.
const PREFIX: &str = "/snapshot-scheduler/soak/";
const TTL: Duration = Duration::from_secs(15);
const NODES: [&str; 2] = ["ops-1", "ops-2"];
/// No failure is planned this close to the end: both nodes are up when it comes.
const QUIET_END: Duration = Duration::from_secs(2 * 3600);
/// The run's length unless `SOAK_DAYS` says otherwise: a third of the single host's 90 days,
/// because the election runs on the paused clock too (the standby looks for the leader every
/// second, the leader renews every 5 s), which doubles what a simulated day costs. 30 days
/// take about half as long as the single host's 90.
const DAYS: u64 = 30;

fn leader_key() -> String {
    format!("{PREFIX}leader")
}

/// A failure of one node.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The process dies (its lease expires on its own); started again after this.
    Crash(Duration),
    /// SIGTERM: it drains and gives its lease up; started again after this.
    Sigterm(Duration),
    /// Its link to the store is cut for this long.
    Partition(Duration),
    /// Its link is cut just long enough for a lease it holds to expire.
    LeaseLoss(Duration),
}

/// A failure at a moment of the run, of whoever leads then (`leader`) or of the other node;
/// of `fallback` when nobody leads.
#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Instant,
    failure: Failure,
    leader: bool,
    fallback: usize,
}

/// `per_day` failures a day on average, at moments drawn like the single host's crashes: a third
/// while the daily policy has servers stopped, a sixth just before an hourly slot, a sixth
/// while the hourly snapshots complete, the rest during an hourly run.
fn failures(world: &mut World, per_day: u64) -> Vec<Planned> {
    let (t0, days, end) = (world.t0, world.days, world.end);
    let wall0 = world.wall0;
    let daily = world
        .policies
        .iter()
        .find(|p| p.name == "daily")
        .expect("a daily policy")
        .clone();
    let rng = &mut world.rng;
    let at = |t: DateTime<Utc>| t0 + (t - wall0).to_std().unwrap_or_default();
    let secs = chrono::Duration::seconds;
    let mut planned = Vec::new();
    for _ in 0..days * per_day {
        let midnight = wall0 + chrono::Duration::days(rng.random_range(0..days) as i64);
        let hour = midnight + chrono::Duration::hours(rng.random_range(0..24));
        let when = match rng.random_range(0..6) {
            0 | 1 => {
                let slot = daily.schedule.next_after(midnight).expect("daily fires");
                slot + secs(rng.random_range(60..25 * 60))
            }
            2 => hour - secs(rng.random_range(1..20)),
            // While the hourly snapshots complete: a leader that loses the lead now has
            // runs about to prune (a term's work drains for `shutdown_grace`).
            3 => hour + secs(rng.random_range(150..270)),
            _ => hour + secs(rng.random_range(0..10 * 60)),
        };
        let failure = match rng.random_range(0..10) {
            0..3 => Failure::Crash(Duration::from_secs(rng.random_range(1..300))),
            3..6 => Failure::Partition(if rng.random_bool(0.5) {
                Duration::from_millis(rng.random_range(1_000..TTL.as_millis() as u64))
            } else {
                Duration::from_secs(rng.random_range(TTL.as_secs() + 1..15 * 60))
            }),
            6..8 => Failure::LeaseLoss(TTL + Duration::from_millis(rng.random_range(100..1_000))),
            _ => Failure::Sigterm(Duration::from_secs(rng.random_range(1..120))),
        };
        planned.push(Planned {
            at: at(when),
            failure,
            leader: rng.random_bool(0.75),
            fallback: rng.random_range(0..NODES.len()),
        });
    }
    planned.retain(|p| p.at + QUIET_END < end);
    planned.sort_by_key(|p| p.at);
    planned
}

/// Who could act when, and what the nodes did: the windows when neither could act go to
/// [`Findings`] as the single host's crash windows do.
struct Tracker {
    findings: Shared<Findings>,
    clock: Arc<TokioClock>,
    /// Per node: in a term (taking fires), and its link up.
    in_term: [bool; 2],
    link_up: [bool; 2],
    /// Since when neither could act.
    since: Option<Instant>,
    longest_without: Duration,
    /// Every term: its node and epoch.
    terms: Vec<(usize, i64)>,
    lost: usize,
    nodes: [NodeFigures; 2],
    skipped: usize,
    /// Each node's election, while it lives.
    elections: [Option<Arc<Leadership<Link>>>; 2],
}

#[derive(Debug, Default, Clone)]
struct NodeFigures {
    terms: usize,
    crashes: usize,
    sigterms: usize,
    short_partitions: usize,
    long_partitions: usize,
    lease_losses: usize,
    /// Stops, creates and deletes sent.
    writes: u64,
    /// Of those, sent by the work of a term that drained while this node led again with a
    /// newer epoch (nobody else leading in between).
    late_writes: u64,
}

impl Tracker {
    fn update(&mut self) {
        let able = (0..NODES.len()).any(|i| self.in_term[i] && self.link_up[i]);
        let now = Instant::now();
        let wall = self.clock.now();
        let mut f = lock(&self.findings);
        match (able, self.since) {
            (false, None) => {
                self.since = Some(now);
                f.down_since = Some(wall);
            }
            (true, Some(from)) => {
                self.since = None;
                self.longest_without = self.longest_without.max(now - from);
                if let Some(from) = f.down_since.take() {
                    if from < wall {
                        f.down_windows.push((from, wall));
                    }
                }
            }
            _ => {}
        }
    }

    /// A node may act only while the store names it as leader with the epoch it acts with
    /// (`holder`): it stops acting before its lease can expire.
    fn check_self_fencing(&self, holder: Option<&Holder>, now: DateTime<Utc>) {
        for (node, election) in self.elections.iter().enumerate() {
            let Some(epoch) = election.as_ref().and_then(|e| e.acting_epoch()) else {
                continue;
            };
            if holder
                != Some(&Holder {
                    node: NODES[node].to_owned(),
                    epoch,
                })
            {
                lock(&self.findings).violation(format!(
                    "{} may act with epoch {epoch} at {now}, while the store names {holder:?} as leader",
                    NODES[node]
                ));
            }
        }
    }

    fn set(&mut self, node: usize, in_term: Option<bool>, link_up: Option<bool>) {
        if let Some(t) = in_term {
            self.in_term[node] = t;
        }
        if let Some(l) = link_up {
            self.link_up[node] = l;
        }
        self.update();
    }
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a node's terms tell the soak: when it begins and stops taking fires.
struct Terms {
    node: usize,
    tracker: Shared<Tracker>,
}

impl TermEvents for Terms {
    fn term(&mut self, epoch: Option<i64>) {
        let mut t = lock(&self.tracker);
        if let Some(epoch) = epoch {
            t.terms.push((self.node, epoch));
            t.nodes[self.node].terms += 1;
        }
        t.set(self.node, Some(epoch.is_some()), None);
    }

    fn lost(&mut self, _epoch: i64) {
        let mut t = lock(&self.tracker);
        t.lost += 1;
        t.set(self.node, Some(false), None);
    }
}

/// A node's requests to the shared [`Checked`] provider. Each stop, create and delete is
/// judged as it is sent: the store names this node as leader at that instant, with the epoch
/// this node acts with. (On the paused clock nothing runs between the fenced write before a
/// request and its send.) Starts are not judged: a node that lost the lead may still start a
/// server it stopped. On every request, whichever node sends it: no node may act unless the
/// store names it with that epoch (self-fencing).
#[derive(Clone)]
struct FromNode {
    node: usize,
    /// The epoch of the term whose service sends.
    term: i64,
    leadership: Arc<Leadership<Link>>,
    /// The soak's own link to the store, never cut: who leads, as the store says.
    observer: Link,
    checked: Checked,
    tracker: Shared<Tracker>,
}

impl FromNode {
    /// On every request: no node acts unless the store names it. For a stop, create or
    /// delete (`write`): this node is the leader the store names, acting with that epoch.
    async fn look(&self, write: Option<&str>) {
        let holder = self
            .observer
            .holder(&leader_key())
            .await
            .expect("the observer's link is never cut");
        let now = self.checked.clock.now();
        let mut t = lock(&self.tracker);
        t.check_self_fencing(holder.as_ref(), now);
        let Some(what) = write else {
            return;
        };
        let acting = self.leadership.acting_epoch();
        let leads = matches!(&holder, Some(Holder { node, epoch })
            if node == NODES[self.node] && acting == Some(*epoch));
        t.nodes[self.node].writes += 1;
        if !leads {
            let named = holder.map_or("nobody".to_owned(), |h| {
                format!("{} (epoch {})", h.node, h.epoch)
            });
            self.checked.findings().violation(format!(
                "{} sent {what} at {now} in its term of epoch {}, acting with {acting:?}, while \
                 the store names {named} as leader",
                NODES[self.node], self.term
            ));
            return;
        }
        if acting == Some(self.term) {
            return;
        }
        // Work of an earlier term, still draining when this node leads again: the fence
        // passes with the new epoch. Harmless while nobody else led in between; after the
        // other node led, it is old work sent after a newer epoch's.
        let other = t
            .terms
            .iter()
            .find(|(n, e)| *n != self.node && *e > self.term)
            .copied();
        match other {
            Some((n, e)) => self.checked.findings().violation(format!(
                "{} sent {what} at {now}, work of its term of epoch {} (acting with {acting:?}), \
                 after {} led with epoch {e}",
                NODES[self.node], self.term, NODES[n]
            )),
            None => t.nodes[self.node].late_writes += 1,
        }
    }
}

impl Provider for FromNode {
    async fn list_page(
        &self,
        scope: Scope<'_>,
        link: Option<&str>,
    ) -> Result<ListedPage, ApiError> {
        self.look(None).await;
        self.checked.list_page(scope, link).await
    }

    async fn create_snapshot(&self, request: &CreateSnapshot) -> Result<Snapshot, ApiError> {
        let what = format!("create {} of server {}", request.name, request.server_id);
        self.look(Some(&what)).await;
        self.checked.create_snapshot(request).await
    }

    async fn delete_snapshot(&self, id: SnapshotId) -> Result<(), ApiError> {
        self.look(Some(&format!("delete of snapshot {id}"))).await;
        self.checked.delete_snapshot(id).await
    }

    async fn restore_snapshot(&self, id: SnapshotId) -> Result<RestoreStarted, ApiError> {
        self.look(None).await;
        self.checked.restore_snapshot(id).await
    }

    async fn get_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.look(None).await;
        self.checked.get_server(id).await
    }

    async fn stop_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.look(Some(&format!("stop of server {id}"))).await;
        self.checked.stop_server(id).await
    }

    async fn start_server(&self, id: ServerId) -> Result<Server, ApiError> {
        self.look(None).await;
        self.checked.start_server(id).await
    }
}

/// The shared state with its fence taken off: each write goes to the store under whoever
/// leads and is `Ok` whether or not this node leads. Only to show that the soak reports what
/// unfenced writes let through.
struct Unfenced {
    fenced: Arc<dyn SharedState>,
    link: Link,
    tracker: Shared<Tracker>,
}

impl std::fmt::Debug for Unfenced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unfenced")
    }
}

impl SharedState for Unfenced {
    fn write(
        &self,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Boxed<'_, Result<(), SharedError>> {
        Box::pin(async move {
            // Whoever acts now, whichever node this is.
            let acting = lock(&self.tracker)
                .elections
                .iter()
                .flatten()
                .find_map(|l| l.acting_tenure());
            if let Some(tenure) = acting {
                let puts = puts
                    .into_iter()
                    .map(|(k, v)| (format!("{PREFIX}{k}"), v))
                    .collect();
                let deletes = deletes
                    .into_iter()
                    .map(|k| format!("{PREFIX}{k}"))
                    .collect();
                let _ = self
                    .link
                    .write_if_leader(&leader_key(), tenure, puts, deletes)
                    .await;
            }
            Ok(())
        })
    }

    fn leads(&self) -> bool {
        true
    }

    fn read<'a>(
        &'a self,
        section: &'a str,
    ) -> Boxed<'a, Result<Vec<(String, String)>, SharedError>> {
        self.fenced.read(section)
    }
}

/// What [`fail_nodes`] asks of a node's lives.
enum Command {
    Crash(Duration),
    Sigterm(Duration),
}

/// One node as [`fail_nodes`] sees it.
struct Host {
    node: usize,
    /// The current life's link and leadership; `None` while it is down or on its way down.
    life: Mutex<Option<(Link, Arc<Leadership<Link>>)>>,
    /// Until when its network is cut (a partition outlives a restart).
    cut_until: Mutex<Instant>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Host {
    fn leads(&self) -> bool {
        lock(&self.life)
            .as_ref()
            .is_some_and(|(_, l)| matches!(l.role(), Role::Leader { .. }))
    }

    fn is_up(&self) -> bool {
        lock(&self.life).is_some()
    }
}

/// What every node's lives are built from.
struct Common<'a> {
    world: &'a World,
    store: Memory,
    rules: RetryRules,
    reload: watch::Receiver<Vec<Policy>>,
    tracker: Shared<Tracker>,
    /// The mutation [`Unfenced`] in place of the fenced shared state.
    unfenced: bool,
}

/// A node's lives until the end of the run: each serves the cluster until [`fail_nodes`]
/// crashes it or sends it SIGTERM; the last ends with SIGTERM at the end. Returns whether every
/// life ended by SIGTERM (the last one too) drained in time.
async fn lives(
    common: &Common<'_>,
    host: Arc<Host>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> bool {
    let node = host.node;
    let world = common.world;
    let mut config = world.config.clone();
    let state_dir = super::temp_state_dir();
    config.daemon.state_dir = state_dir.path().to_owned();
    let mut clean = true;
    loop {
        let link = common.store.link();
        let cut = *lock(&host.cut_until) > Instant::now();
        if cut {
            link.cut();
        }
        let leadership = Leadership::new(Arc::new(link.clone()), PREFIX, NODES[node], TTL);
        let cluster = Cluster {
            leadership: leadership.clone(),
            store: Arc::new(link.clone()),
            prefix: PREFIX.to_owned(),
        };
        *lock(&host.life) = Some((link.clone(), leadership.clone()));
        lock(&common.tracker).elections[node] = Some(leadership.clone());
        lock(&common.tracker).set(node, Some(false), Some(!cut));
        let open = |parts: TermParts| {
            let TermParts {
                shared,
                may_write,
                shutdown: term,
                epoch,
            } = parts;
            let shared: Arc<dyn SharedState> = if common.unfenced {
                Arc::new(Unfenced {
                    fenced: shared,
                    link: link.clone(),
                    tracker: common.tracker.clone(),
                })
            } else {
                shared
            };
            let provider = FromNode {
                node,
                term: epoch,
                leadership: leadership.clone(),
                observer: common.store.link(),
                checked: world.checked(JournalAt::Shared(
                    common.store.clone(),
                    format!("{PREFIX}journal/"),
                )),
                tracker: common.tracker.clone(),
            };
            let retrying = Retrying::new(provider, common.rules.clone());
            // The fence off means the retry layer's check too.
            let retrying = if common.unfenced {
                retrying
            } else {
                retrying.fenced(may_write)
            };
            let service = Service::open_shared(
                retrying,
                world.clock.clone(),
                &config,
                Alerts::muted(),
                term,
                shared,
            );
            let on_wake: OnWake = Box::new(|_, _| {});
            (service, on_wake)
        };
        let mut events = Terms {
            node,
            tracker: common.tracker.clone(),
        };
        let shutdown = Shutdown::new();
        let mut serve = Box::pin(cluster.serve(
            open,
            common.reload.clone(),
            MAX_SLEEP,
            &mut events,
            shutdown.clone(),
        ));
        let command = tokio::select! {
            _ = &mut serve => {
                world.findings().violation(format!("{} stopped serving without being told to", NODES[node]));
                return false;
            }
            command = commands.recv() => command,
            () = tokio::time::sleep_until(world.end) => None,
        };
        *lock(&host.life) = None;
        match command {
            Some(Command::Crash(after)) => {
                // Dead: nothing more reaches the store from this life, and its election
                // (spawned, so not dropped with the service) ends once it sees that.
                link.cut();
                drop(serve);
                shutdown.begin();
                {
                    let mut t = lock(&common.tracker);
                    t.elections[node] = None;
                    t.set(node, Some(false), Some(false));
                }
                tokio::time::sleep(after).await;
            }
            Some(Command::Sigterm(after)) => {
                shutdown.begin();
                lock(&common.tracker).set(node, Some(false), None);
                if !serve.await {
                    world.findings().violation(format!(
                        "{} did not drain in time after SIGTERM",
                        NODES[node]
                    ));
                    clean = false;
                }
                tokio::time::sleep(after).await;
            }
            None => {
                shutdown.begin();
                lock(&common.tracker).set(node, Some(false), None);
                return serve.await && clean;
            }
        }
    }
}

/// Carries the planned failures out, each on the node it aims at (skipped when that node is
/// down).
async fn fail_nodes(planned: Vec<Planned>, hosts: [Arc<Host>; 2], tracker: Shared<Tracker>) {
    for p in planned {
        tokio::time::sleep_until(p.at).await;
        let target = match hosts.iter().position(|h| h.leads()) {
            Some(leader) if p.leader => leader,
            Some(leader) => 1 - leader,
            None => p.fallback,
        };
        let host = &hosts[target];
        if !host.is_up() {
            lock(&tracker).skipped += 1;
            continue;
        }
        let cut = match p.failure {
            Failure::Crash(after) => {
                lock(&tracker).nodes[target].crashes += 1;
                let _ = host.commands.send(Command::Crash(after));
                continue;
            }
            Failure::Sigterm(after) => {
                lock(&tracker).nodes[target].sigterms += 1;
                let _ = host.commands.send(Command::Sigterm(after));
                continue;
            }
            Failure::Partition(d) => {
                let mut t = lock(&tracker);
                if d > TTL {
                    t.nodes[target].long_partitions += 1;
                } else {
                    t.nodes[target].short_partitions += 1;
                }
                d
            }
            Failure::LeaseLoss(d) => {
                lock(&tracker).nodes[target].lease_losses += 1;
                d
            }
        };
        let until = Instant::now() + cut;
        {
            let mut cut_until = lock(&host.cut_until);
            *cut_until = (*cut_until).max(until);
        }
        if let Some((link, _)) = &*lock(&host.life) {
            link.cut();
        }
        lock(&tracker).set(target, None, Some(false));
        let (host, tracker) = (host.clone(), tracker.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if *lock(&host.cut_until) > Instant::now() {
                return;
            }
            if let Some((link, _)) = &*lock(&host.life) {
                link.mend();
                lock(&tracker).set(host.node, None, Some(true));
            }
        });
    }
}

/// The two-host figures.
pub(super) struct HaFigures {
    nodes: [NodeFigures; 2],
    terms: usize,
    failovers: usize,
    lost: usize,
    skipped: usize,
    longest_without: Duration,
}

impl std::fmt::Display for HaFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "terms: {} (failovers {}, leads lost {}), longest time without a leader: {}",
            self.terms,
            self.failovers,
            self.lost,
            humantime::format_duration(Duration::from_secs(self.longest_without.as_secs()))
        )?;
        for (name, n) in NODES.iter().zip(&self.nodes) {
            writeln!(
                f,
                "{name}: led {} terms, sent {} stops/creates/deletes ({} by a term draining while \
                 it led again); {} crashes, {} SIGTERMs, {} partitions (shorter than the TTL) \
                 and {} (longer), {} lease losses",
                n.terms,
                n.writes,
                n.late_writes,
                n.crashes,
                n.sigterms,
                n.short_partitions,
                n.long_partitions,
                n.lease_losses
            )?;
        }
        writeln!(
            f,
            "failures skipped (their node was down): {}",
            self.skipped
        )
    }
}

/// How the two hosts fail, and whether their shared state is fenced.
#[derive(Debug, Clone, Copy)]
struct Chaos {
    failures_per_day: u64,
    /// [`Unfenced`] in place of the fenced shared state (to show that the checks notice).
    unfenced: bool,
}

const CHAOS: Chaos = Chaos {
    failures_per_day: 3,
    unfenced: false,
};

/// Two hosts on one lease store for `days`, failing as `chaos` says.
async fn soak_ha(seed: u64, days: u64, rules: RetryRules, chaos: Chaos) -> Figures {
    super::install_soak_subscriber();
    let mut world = World::new(seed, days);
    let planned = failures(&mut world, chaos.failures_per_day);
    let store = Memory::new();
    let journal = JournalAt::Shared(store.clone(), format!("{PREFIX}journal/"));
    let tracker = Arc::new(Mutex::new(Tracker {
        findings: world.findings.clone(),
        clock: world.clock.clone(),
        in_term: [false; 2],
        link_up: [true; 2],
        since: None,
        longest_without: Duration::ZERO,
        terms: Vec::new(),
        lost: 0,
        nodes: Default::default(),
        skipped: 0,
        elections: Default::default(),
    }));
    lock(&tracker).update();
    let (_reload_tx, reload) = watch::channel(world.config.policies.clone());
    let common = Common {
        world: &world,
        store,
        rules,
        reload,
        tracker: tracker.clone(),
        unfenced: chaos.unfenced,
    };
    let (hosts, receivers): (Vec<Arc<Host>>, Vec<_>) = (0..NODES.len())
        .map(|node| {
            let (tx, rx) = mpsc::unbounded_channel();
            let host = Arc::new(Host {
                node,
                life: Mutex::new(None),
                cut_until: Mutex::new(Instant::now()),
                commands: tx,
            });
            (host, rx)
        })
        .unzip();
    let mut receivers = receivers.into_iter();
    let (rx1, rx2) = (
        receivers.next().expect("two"),
        receivers.next().expect("two"),
    );
    let (clean1, clean2, ()) = tokio::join!(
        lives(&common, hosts[0].clone(), rx1),
        lives(&common, hosts[1].clone(), rx2),
        fail_nodes(
            planned,
            [hosts[0].clone(), hosts[1].clone()],
            tracker.clone()
        ),
    );
    drop(common);
    let ha = {
        let t = lock(&tracker);
        HaFigures {
            nodes: t.nodes.clone(),
            terms: t.terms.len(),
            failovers: t.terms.windows(2).filter(|w| w[0].0 != w[1].0).count(),
            lost: t.lost,
            skipped: t.skipped,
            longest_without: t.longest_without,
        }
    };
    let crashes = ha.nodes.iter().map(|n| n.crashes).sum();
    let mut figures = world.finish(clean1 && clean2, crashes, &journal).await;
    figures.ha = Some(ha);
    figures
}

/// A current-thread runtime on paused time with only the timer: the soak reaches nothing
/// over the network or the OS, and without an I/O driver every advance of the paused clock
/// is a function call, not an `epoll_wait` (the standby looks for the leader every second).
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

#[test]
fn a_simulated_month_of_two_hosts_failing_over_breaks_no_safety_rule() {
    let seed = env_u64("SOAK_SEED", 1);
    let days = env_u64("SOAK_DAYS", DAYS);
    let started = std::time::Instant::now();
    let figures = paused_runtime().block_on(soak_ha(seed, days, retry_rules(seed), CHAOS));
    println!(
        "soak with two hosts, seed {seed}: {figures}ran in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        figures.violations.is_empty(),
        "seed {seed}:
{figures}"
    );
    // Every kind of failure happened, and the lead moved about once a day or more.
    let ha = figures.ha.as_ref().expect("two hosts' figures");
    let all = |count: fn(&NodeFigures) -> usize| ha.nodes.iter().map(count).sum::<usize>();
    for (what, n) in [
        ("crashes", all(|n| n.crashes)),
        ("SIGTERMs", all(|n| n.sigterms)),
        (
            "partitions shorter than the TTL",
            all(|n| n.short_partitions),
        ),
        ("partitions longer than the TTL", all(|n| n.long_partitions)),
        ("lease losses", all(|n| n.lease_losses)),
    ] {
        assert!(n > 0, "no {what}:\n{figures}");
    }
    assert!(ha.nodes.iter().all(|n| n.terms > 0), "{figures}");
    assert!(ha.failovers >= days as usize, "{figures}");
}

/// The soak guards the fence on the shared state: with every write of it let through whether
/// or not this node leads, a node that lost the lead takes a fire it was about to take, and
/// its runs in flight go on pruning; the stops, creates and deletes they send are reported.
/// (Two days of a failure an hour.)
#[test]
fn the_soak_catches_writes_not_fenced_by_the_leaders_epoch() {
    let chaos = Chaos {
        failures_per_day: 24,
        unfenced: true,
    };
    let figures = paused_runtime().block_on(soak_ha(1, 2, retry_rules(1), chaos));
    let unfenced = figures
        .violations
        .iter()
        .filter(|v| v.contains("as leader"))
        .count();
    assert!(unfenced > 0, "{figures}");
}

#[test]
#[ignore = "a sweep over many seeds: cargo test soak::ha::sweep -- --ignored --nocapture"]
fn sweep() {
    let from = env_u64("SOAK_SEED", 1);
    let count = env_u64("SOAK_SEEDS", 20);
    let days = env_u64("SOAK_DAYS", DAYS);
    let mut failing = Vec::new();
    for seed in from..from + count {
        let started = std::time::Instant::now();
        let figures = paused_runtime().block_on(soak_ha(seed, days, retry_rules(seed), CHAOS));
        println!(
            "seed {seed}: {figures}ran in {:.1} s\n",
            started.elapsed().as_secs_f64()
        );
        if !figures.violations.is_empty() {
            failing.push(seed);
        }
    }
    assert!(failing.is_empty(), "failing seeds: {failing:?}");
}
