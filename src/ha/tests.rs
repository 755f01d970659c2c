//! The election on paused time against the in-memory lease store.

use super::memory::{Link, Memory};
use super::*;

const PREFIX: &str = "/snapshot-scheduler/test/";
const TTL: Duration = Duration::from_secs(15);

struct Node {
    leadership: Arc<Leadership<Link>>,
    link: Link,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn node(store: &Memory, name: &str) -> Node {
    let link = store.link();
    let leadership = Leadership::new(Arc::new(link.clone()), PREFIX, name, TTL);
    let stop = CancellationToken::new();
    let task = {
        let (l, s) = (leadership.clone(), stop.clone());
        tokio::spawn(async move { l.run(s).await })
    };
    Node {
        leadership,
        link,
        stop,
        task,
    }
}

/// Two nodes on one store, `ops-1` started first (so it leads), after two seconds.
async fn two_nodes() -> (Memory, Node, Node) {
    let store = Memory::new();
    let a = node(&store, "ops-1");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = node(&store, "ops-2");
    step_until(&[&a, &b], Duration::from_secs(2), || false).await;
    (store, a, b)
}

/// The node that may act now, if one may; fails when two may.
fn the_one_acting<'a>(nodes: impl Iterator<Item = &'a Node>) -> Option<&'a str> {
    let acting: Vec<&str> = nodes
        .filter(|n| n.leadership.acting_epoch().is_some())
        .map(|n| n.leadership.node())
        .collect();
    assert!(acting.len() <= 1, "two nodes act at once: {acting:?}");
    acting.first().copied()
}

/// Steps time by `step` up to `total`, checking after each step that at most one node may
/// act; returns how long it took until `done` held, if it did.
async fn step_until(nodes: &[&Node], total: Duration, done: impl Fn() -> bool) -> Option<Duration> {
    let start = Instant::now();
    let step = Duration::from_millis(50);
    while start.elapsed() < total {
        the_one_acting(nodes.iter().copied());
        if done() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(step).await;
    }
    None
}

#[tokio::test(start_paused = true)]
async fn one_of_two_nodes_leads_and_the_other_names_it() {
    let store = Memory::new();
    let a = node(&store, "ops-1");
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b = node(&store, "ops-2");
    step_until(&[&a, &b], Duration::from_secs(5), || false).await;

    let epoch = a.leadership.acting_epoch().expect("the first node leads");
    assert_eq!(a.leadership.role(), Role::Leader { epoch });
    assert_eq!(
        b.leadership.role(),
        Role::Standby(Holder {
            node: "ops-1".into(),
            epoch
        })
    );
    assert_eq!(b.leadership.acting_epoch(), None);
    // Leading goes on for many TTLs.
    step_until(&[&a, &b], TTL * 10, || false).await;
    assert_eq!(a.leadership.acting_epoch(), Some(epoch));
}

/// A leader cut off from the store stops acting before its lease can expire there; the
/// standby leads only after, with a higher epoch, and the old epoch can write nothing.
#[tokio::test(start_paused = true)]
async fn a_leader_cut_off_fences_itself_before_the_standby_leads() {
    let (store, a, b) = two_nodes().await;
    let old = a.leadership.acting_tenure().expect("a leads");

    a.link.cut();
    let took = step_until(&[&a, &b], TTL * 3, || b.leadership.acting_epoch().is_some())
        .await
        .expect("the standby leads");
    assert!(took <= TTL + Duration::from_secs(2), "{took:?}");
    let new = b.leadership.acting_epoch().unwrap();
    assert!(new > old.epoch, "epoch {new} after {old:?}");
    // Fenced, then campaigning against a store it cannot reach.
    assert!(
        matches!(a.leadership.role(), Role::Fenced { .. } | Role::Unknown),
        "{:?}",
        a.leadership.role()
    );

    a.link.mend();
    step_until(&[&a, &b], TTL * 2, || false).await;
    assert!(matches!(a.leadership.role(), Role::Standby(ref h) if h.node == "ops-2"));
    let stale = a
        .link
        .write_if_leader(
            a.leadership.key(),
            old,
            vec![("k".into(), "v".into())],
            vec![],
        )
        .await
        .unwrap();
    assert!(!stale, "a write with the old epoch went through");
    assert_eq!(store.get("k"), None);
}

/// A leader that shuts down gives its lease up: the standby leads within a second or so,
/// not after a TTL.
#[tokio::test(start_paused = true)]
async fn a_leader_that_shuts_down_hands_over_at_once() {
    let (_store, a, b) = two_nodes().await;
    assert!(a.leadership.acting_epoch().is_some());

    a.stop.cancel();
    let Node { task, .. } = a;
    task.await.unwrap();
    let took = step_until(&[&b], TTL, || b.leadership.acting_epoch().is_some())
        .await
        .expect("the standby leads");
    assert!(took <= Duration::from_millis(1500), "{took:?}");
}

/// With the store out of reach of both, nobody acts; once it is back, one node leads.
#[tokio::test(start_paused = true)]
async fn nobody_acts_while_the_store_is_out_of_reach_and_one_leads_after() {
    let (_store, a, b) = two_nodes().await;

    a.link.cut();
    b.link.cut();
    let none = || a.leadership.acting_epoch().is_none() && b.leadership.acting_epoch().is_none();
    step_until(&[&a, &b], TTL, none)
        .await
        .expect("the leader stops acting");
    // Nobody acts for as long as the store is away.
    step_until(&[&a, &b], TTL * 4, || !none()).await;
    assert!(none());

    a.link.mend();
    b.link.mend();
    let one = || a.leadership.acting_epoch().is_some() || b.leadership.acting_epoch().is_some();
    step_until(&[&a, &b], TTL * 3, one)
        .await
        .expect("one node leads again");
}

fn stop_entry(server: crate::model::ServerId) -> crate::journal::Entry {
    let t: chrono::DateTime<chrono::Utc> = "2025-01-15T02:30:00Z".parse().unwrap();
    crate::journal::Entry {
        server,
        policy: "nightly".into(),
        snapshot: "nightly-20250115T023000Z".into(),
        stopped_at: t,
        deadline: t + chrono::Duration::minutes(50),
    }
}

fn shared_journal(n: &Node) -> crate::journal::Journal {
    let fenced = Fenced::new(Arc::new(n.link.clone()), n.leadership.clone(), PREFIX);
    crate::journal::Journal::shared(std::path::Path::new("/nonexistent"), Arc::new(fenced))
}

/// With `[ha]` the stops and creates a leader records live in the shared store: the next
/// leader reads them when it takes over (and starts the server its predecessor left stopped);
/// a host that does not lead records nothing, so it stops and creates nothing.
#[tokio::test(start_paused = true)]
async fn a_new_leader_reads_what_the_old_one_recorded_and_a_standby_records_nothing() {
    use crate::ledger::{Answer, Record};
    let (store, a, b) = two_nodes().await;
    assert!(a.leadership.acting_epoch().is_some());

    let standby = shared_journal(&b);
    let refused = standby.record(stop_entry(7)).await;
    assert!(refused.is_err(), "a standby recorded a stop");
    assert!(standby.entries().is_empty());

    let leader = shared_journal(&a);
    leader.record(stop_entry(7)).await.unwrap();
    let create = Record {
        server: 8,
        policy: "nightly".into(),
        name: "nightly-20250115T023000Z".into(),
        at: "2025-01-15T02:30:01Z".parse().unwrap(),
        answer: Answer::Unknown,
    };
    leader.creates().record(create.clone()).await.unwrap();

    a.link.cut();
    step_until(&[&a, &b], TTL * 3, || b.leadership.acting_epoch().is_some())
        .await
        .expect("the standby leads");
    assert!(
        leader.record(stop_entry(9)).await.is_err(),
        "a fenced host recorded a stop"
    );
    let next = shared_journal(&b);
    next.load_shared().await.unwrap();
    assert_eq!(next.entries(), [stop_entry(7)]);
    assert_eq!(
        next.creates()
            .sent(8, "nightly", "nightly-20250115T023000Z"),
        Some(create)
    );
    next.clear(7).await.unwrap();
    assert!(store.under(&format!("{PREFIX}journal/")).is_empty());
}

/// A host that lost the lead with a server stopped starts it unless the cluster's journal
/// holds another stop of it (the new leader stopped it again for its own snapshot): with its
/// own stop there, or none (the leader settled it, or etcd was wiped), it starts it.
#[tokio::test(start_paused = true)]
async fn a_host_that_lost_the_lead_starts_its_server_unless_the_leader_stopped_it_again() {
    let (_store, a, b) = two_nodes().await;
    let old = shared_journal(&a);
    old.record(stop_entry(7)).await.unwrap();
    old.record(stop_entry(8)).await.unwrap();
    old.record(stop_entry(9)).await.unwrap();
    a.link.cut();
    step_until(&[&a, &b], TTL * 3, || b.leadership.acting_epoch().is_some())
        .await
        .expect("the standby leads");
    a.link.mend();
    let new = shared_journal(&b);
    new.load_shared().await.unwrap();
    // 7: settled (or lost with a wiped etcd); 8: stopped again for the new leader's snapshot;
    // 9: not settled yet.
    new.clear(7).await.unwrap();
    let again = crate::journal::Entry {
        snapshot: "nightly-20250116T023000Z".into(),
        ..stop_entry(8)
    };
    new.record(again).await.unwrap();
    assert!(
        old.may_start(7).await,
        "no stop of 7 in the journal: start it"
    );
    assert!(
        !old.may_start(8).await,
        "8 is stopped for the new leader's snapshot"
    );
    assert!(old.may_start(9).await, "its own stop of 9 is still there");
    assert!(
        old.entries().iter().all(|e| e.server != 8),
        "8 is the leader's now"
    );
}

fn shared_runlog(n: &Node) -> crate::runlog::RunLog {
    let fenced = Fenced::new(Arc::new(n.link.clone()), n.leadership.clone(), PREFIX);
    crate::runlog::RunLog::shared(std::path::Path::new("/nonexistent"), Arc::new(fenced))
}

/// The handled slots and the last runs live in the shared store too: the next leader knows
/// which slot its predecessor handled (so it catches up only what nobody did, and does not
/// take a slot already fired for missed) and `status` on either host shows the same runs.
#[tokio::test(start_paused = true)]
async fn a_new_leader_knows_the_slots_and_runs_the_old_one_handled() {
    use crate::runlog::{LastRun, RunLogError};
    use crate::shared::SharedError;
    let (_store, a, b) = two_nodes().await;
    let policy = crate::policy::Policy {
        servers: vec![7, 8],
        ..crate::fixtures::policy("nightly")
    };
    let slot: chrono::DateTime<chrono::Utc> = "2025-01-15T02:30:00Z".parse().unwrap();

    let standby = shared_runlog(&b);
    let refused = standby.mark_fired(&policy, slot).await;
    assert!(
        matches!(refused, Err(RunLogError::Shared(SharedError::NotLeading))),
        "{refused:?}"
    );

    let leader = shared_runlog(&a);
    leader.mark_fired(&policy, slot).await.unwrap();
    let run = LastRun {
        policy: "nightly".into(),
        server: 7,
        slot,
        finished_at: slot + chrono::Duration::minutes(5),
        result: crate::report::RunResult::Created,
        message: "created".into(),
        created: Some("nightly-20250115T023000Z".into()),
    };
    leader.record(run.clone());
    leader.flush().await;

    a.link.cut();
    step_until(&[&a, &b], TTL * 3, || b.leadership.acting_epoch().is_some())
        .await
        .expect("the standby leads");
    let next = shared_runlog(&b);
    next.load_shared().await.unwrap();
    assert_eq!(next.recorded("nightly").map(|r| r.slot), Some(slot));
    assert_eq!(next.get("nightly", 7), Some(run));
    // Server 8's run of the slot has no result: the new leader finishes it.
    assert_eq!(next.interrupted(&policy), Some((slot, vec![8])));
}

/// A host on its way out (`retire`) that loses its lead does not campaign again: it would
/// hold the lead for nobody while it drains, and the other host could not take over.
#[tokio::test(start_paused = true)]
async fn a_retiring_node_that_loses_the_lead_does_not_seek_it_again() {
    let store = Memory::new();
    let link = store.link();
    let leadership = Leadership::new(Arc::new(link.clone()), PREFIX, "ops-1", TTL);
    let (retire, shutdown) = (CancellationToken::new(), CancellationToken::new());
    let task = {
        let (l, r, s) = (leadership.clone(), retire.clone(), shutdown.clone());
        tokio::spawn(async move { l.run_until(r, s).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(leadership.acting_epoch().is_some());

    retire.cancel();
    tokio::time::sleep(TTL * 2).await;
    assert!(
        leadership.acting_epoch().is_some(),
        "a retiring leader keeps its lead"
    );
    link.cut();
    tokio::time::sleep(TTL * 2).await;
    link.mend();
    tokio::time::sleep(TTL * 2).await;
    assert!(task.is_finished(), "it campaigned again");
    assert_eq!(leadership.acting_epoch(), None);
    assert_eq!(store.get(&format!("{PREFIX}leader")), None);
}

/// A store whose fenced writes are answered `delay` late (applied at once), and whose reads
/// add `stray`, a key that was not asked for.
struct LateAnswers {
    link: Link,
    delay: Duration,
    stray: Option<(String, String)>,
    /// How late keep-alives are answered (applied at once).
    slow_keep_alive: Duration,
    /// How late grants and claims are answered.
    slow_campaign: Duration,
}

impl Coordination for LateAnswers {
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, CoordError> {
        let granted = self.link.grant(ttl).await;
        tokio::time::sleep(self.slow_campaign).await;
        granted
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), CoordError> {
        let kept = self.link.keep_alive(lease).await;
        tokio::time::sleep(self.slow_keep_alive).await;
        kept
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), CoordError> {
        self.link.revoke(lease).await
    }
    async fn claim(&self, key: &str, node: &str, lease: LeaseId) -> Result<Claim, CoordError> {
        let claimed = self.link.claim(key, node, lease).await;
        tokio::time::sleep(self.slow_campaign).await;
        claimed
    }
    async fn holder(&self, key: &str) -> Result<Option<Holder>, CoordError> {
        self.link.holder(key).await
    }
    async fn read_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, CoordError> {
        let mut found = self.link.read_prefix(prefix).await?;
        found.extend(self.stray.clone());
        Ok(found)
    }
    async fn write_if_leader(
        &self,
        key: &str,
        tenure: Tenure,
        puts: Vec<(String, String)>,
        deletes: Vec<String>,
    ) -> Result<bool, CoordError> {
        let applied = self.link.write_if_leader(key, tenure, puts, deletes).await;
        tokio::time::sleep(self.delay).await;
        applied
    }
}

/// A fenced write whose answer arrives after the lease may have expired allows nothing: the
/// stop or create it records must not go out from a host that may no longer lead.
#[tokio::test(start_paused = true)]
async fn a_fenced_write_answered_after_the_lease_could_expire_allows_nothing() {
    let store = Memory::new();
    let late = Arc::new(LateAnswers {
        link: store.link(),
        delay: TTL,
        stray: None,
        slow_keep_alive: Duration::ZERO,
        slow_campaign: Duration::ZERO,
    });
    let leadership = Leadership::new(late.clone(), PREFIX, "ops-1", TTL);
    let (stop, task) = {
        let (l, s) = (leadership.clone(), CancellationToken::new());
        let stop = s.clone();
        (stop, tokio::spawn(async move { l.run(s).await }))
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(leadership.acting_epoch().is_some());
    // The keep-alives stop reaching the store while the write is under way.
    let fenced = Fenced::new(late.clone(), leadership.clone(), PREFIX);
    let write = tokio::spawn(async move {
        crate::shared::SharedState::write(&fenced, vec![("k".into(), "v".into())], vec![]).await
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        store.get(&format!("{PREFIX}k")).as_deref(),
        Some("v"),
        "applied at once"
    );
    late.link.cut();
    let answer = write.await.unwrap();
    assert!(
        matches!(answer, Err(crate::shared::SharedError::NotLeading)),
        "{answer:?}"
    );
    stop.cancel();
    let _ = task.await;
}

/// Keep-alives answered a third of a TTL late still keep the lead: the next one is paced from
/// when the last was sent, as the acting deadline is (paced from the answer, they fell behind
/// the deadline and the leader lost the lead every few renewals).
#[tokio::test(start_paused = true)]
async fn slow_keep_alive_answers_do_not_cost_the_lead() {
    let store = Memory::new();
    let slow = Arc::new(LateAnswers {
        link: store.link(),
        delay: Duration::ZERO,
        stray: None,
        slow_keep_alive: TTL / 3,
        slow_campaign: Duration::ZERO,
    });
    let leadership = Leadership::new(slow, PREFIX, "ops-1", TTL);
    let stop = CancellationToken::new();
    let task = {
        let (l, s) = (leadership.clone(), stop.clone());
        tokio::spawn(async move { l.run(s).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let epoch = leadership.acting_epoch().expect("it leads");
    for _ in 0..(10 * 60 * 10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            leadership.acting_epoch(),
            Some(epoch),
            "{:?}",
            leadership.role()
        );
    }
    stop.cancel();
    let _ = task.await;
}

/// A store that answers everything a fifth of a TTL late still gets a leader that keeps the
/// lead: the first keep-alive is paced from when the grant was sent (granting and claiming took
/// two fifths of the TTL, and a keep-alive a third of a TTL after winning came too late).
#[tokio::test(start_paused = true)]
async fn a_slow_store_still_gets_a_leader_that_keeps_the_lead() {
    let store = Memory::new();
    let slow = Arc::new(LateAnswers {
        link: store.link(),
        delay: Duration::ZERO,
        stray: None,
        slow_keep_alive: TTL / 5,
        slow_campaign: TTL / 5,
    });
    let leadership = Leadership::new(slow, PREFIX, "ops-1", TTL);
    let stop = CancellationToken::new();
    let task = {
        let (l, s) = (leadership.clone(), stop.clone());
        tokio::spawn(async move { l.run(s).await })
    };
    let mut epochs = std::collections::BTreeSet::new();
    for _ in 0..(5 * 60 * 10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        epochs.extend(leadership.acting_epoch());
    }
    assert_eq!(
        epochs.len(),
        1,
        "the lead was lost and taken again: {epochs:?}"
    );
    stop.cancel();
    let _ = task.await;
}

const HANDLED: &str =
    r#"{"schedule":"30 2 * * *","timezone":"UTC","servers":{"1":"2025-01-15T02:30:00Z"}}"#;

/// A store that answers a read with a key outside what was asked (short, or under another
/// prefix) is not believed about it: the key is left out, nothing panics.
#[tokio::test(start_paused = true)]
async fn a_key_outside_the_prefix_in_an_answer_is_left_out() {
    // Another cluster's key, as long as this one's prefix: cut at the prefix's length, it
    // would read as this cluster's.
    for stray in ["x", "/snapshot-scheduler/prod/handled/nightly"] {
        let store = Memory::new();
        let odd = Arc::new(LateAnswers {
            link: store.link(),
            delay: Duration::ZERO,
            stray: Some((stray.to_owned(), HANDLED.to_owned())),
            slow_keep_alive: Duration::ZERO,
            slow_campaign: Duration::ZERO,
        });
        let leadership = Leadership::new(odd.clone(), PREFIX, "ops-1", TTL);
        let fenced = Arc::new(Fenced::new(odd, leadership, PREFIX));
        let log = crate::runlog::RunLog::shared(std::path::Path::new("/nonexistent"), fenced);
        log.load_shared().await.unwrap();
        assert_eq!(log.recorded("nightly"), None, "{stray}");
    }
}

/// A day of random trouble on paused time: links cut and mended, nodes crashed (no hand-over)
/// and restarted, clean restarts. At no step do two nodes act, and whenever one node has been
/// able to reach the store for longer than a lease and a campaign take, one leads.
#[tokio::test(start_paused = true)]
async fn a_day_of_cuts_and_crashes_never_has_two_acting_nodes() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let store = Memory::new();
    let mut nodes = [node(&store, "ops-1"), node(&store, "ops-2")];
    // Since when each node has been up and linked (None: it is not).
    let mut reachable_since = [Some(Instant::now()), Some(Instant::now())];
    let step = Duration::from_millis(250);
    let bound = TTL + Duration::from_secs(3);
    let (mut failovers, mut last_leader, mut longest_gap) = (0, None::<String>, Duration::ZERO);
    let mut leaderless_since: Option<Instant> = None;
    let day = Instant::now() + Duration::from_secs(86_400);
    while Instant::now() < day {
        if rng.random_bool(0.005) {
            let i = rng.random_range(0..2);
            match rng.random_range(0..4) {
                0 => {
                    nodes[i].link.cut();
                    reachable_since[i] = None;
                }
                1 => {
                    nodes[i].link.mend();
                    reachable_since[i].get_or_insert(Instant::now());
                }
                2 => {
                    // A crash: no revoke, the lease runs out on its own.
                    nodes[i].task.abort();
                    let name = nodes[i].leadership.node().to_owned();
                    nodes[i] = node(&store, &name);
                    reachable_since[i] = Some(Instant::now());
                }
                _ => {
                    nodes[i].stop.cancel();
                    let name = nodes[i].leadership.node().to_owned();
                    nodes[i] = node(&store, &name);
                    reachable_since[i] = Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(step).await;
        match the_one_acting(nodes.iter()) {
            Some(name) => {
                if last_leader.as_deref() != Some(name) {
                    failovers += 1;
                    last_leader = Some(name.to_owned());
                }
                leaderless_since = None;
            }
            None => {
                let since = *leaderless_since.get_or_insert(Instant::now());
                let able = reachable_since
                    .iter()
                    .flatten()
                    .any(|t| t.elapsed() > bound && since.elapsed() > bound);
                assert!(
                    !able,
                    "nobody leads for {:?} though a node has reached the store for {bound:?}",
                    since.elapsed()
                );
                longest_gap = longest_gap.max(since.elapsed());
            }
        }
    }
    assert!(
        failovers > 10,
        "only {failovers} leaders in a day: the trouble was too mild"
    );
    eprintln!("a day: {failovers} leaders, longest stretch without one {longest_gap:?}");
}
