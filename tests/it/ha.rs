//! Two `run` processes with `[ha]`, a real etcd and the simulated provider: whatever befalls
//! the leader (stopped, killed, cut off from etcd, etcd gone, shut down), no write of an old
//! leader reaches the provider after the new leader's first, the standby takes over within a
//! lease and a fire (at once after a clean shutdown), and no slot is snapshotted twice. Who sent
//! each write is read from the `User-Agent` the provider recorded (node and epoch). Policies
//! fire every 2 and 3 seconds; every wait is a poll with a generous deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use snapshot_scheduler::model::{PowerState, ServerId, SnapshotStatus};
use snapshot_scheduler::simulator::SimConfig;

use crate::common::policy;
use crate::etcd_support::EtcdServer;
use crate::ha_support::{EtcdProxy, Node, NodeSpec, RecordingProvider, Write, WriteKind};

const WEB: ServerId = 12345;
/// Stopped for its snapshots.
const DB: ServerId = 23456;

/// The slower policy's period: every policy fires within it.
const PERIOD: Duration = Duration::from_secs(3);
/// Beyond what a bound names: a campaign, a look at the journal, a busy machine.
const SLACK: Duration = Duration::from_secs(3);
/// How long any one condition may take before the test fails.
const WAIT: Duration = Duration::from_secs(40);

const NODES: [&str; 2] = ["ops-1", "ops-2"];

/// etcd, the recording provider, and two nodes, each on its own proxy to etcd. `ops-1` leads
/// (it starts first), `ops-2` stands by.
struct Cluster {
    etcd: EtcdServer,
    provider: RecordingProvider,
    links: Vec<EtcdProxy>,
    nodes: Vec<Node>,
    lease_ttl: Duration,
}

impl Cluster {
    /// `None` where etcd is not installed (the test returns; where every test must run it
    /// has failed already).
    async fn start(lease_ttl: &str, snapshot_duration: Duration) -> Option<Self> {
        let etcd = EtcdServer::start(&[]).await?;
        let provider = RecordingProvider::serve(
            &[WEB, DB],
            SimConfig {
                snapshot_duration,
                power_delay: Duration::from_millis(300),
                example_snapshots: false,
                refuse_create_while_in_progress: true,
                ..SimConfig::default()
            },
        )
        .await;
        let mut links = Vec::new();
        for _ in NODES {
            links.push(EtcdProxy::start(&etcd.url).await);
        }
        let mut cluster = Self {
            etcd,
            provider,
            links,
            nodes: Vec::new(),
            lease_ttl: humantime::parse_duration(lease_ttl).expect("a duration"),
        };
        cluster.nodes.push(cluster.node(0, lease_ttl));
        cluster.nodes[0].wait_for_log("leading", WAIT).await;
        let first_create = |c: &Self| {
            let writes = c.provider.writes();
            writes
                .into_iter()
                .find(|w| matches!(w.kind, WriteKind::Create { .. }))
        };
        cluster
            .eventually("ops-1 creates a snapshot", WAIT, |c| {
                first_create(c).is_some()
            })
            .await;
        let sender = first_create(&cluster).and_then(|w| w.sender);
        assert_eq!(
            sender.map(|s| s.node),
            Some("ops-1".to_owned()),
            "the leader's create does not name it and its epoch in its User-Agent\n{}",
            cluster.story()
        );
        cluster.nodes.push(cluster.node(1, lease_ttl));
        cluster.nodes[1].wait_for_log("standby", WAIT).await;
        Some(cluster)
    }

    fn node(&self, i: usize, lease_ttl: &str) -> Node {
        let policies = [
            policy("web", "*/2 * * * * *", &[WEB], ""),
            policy("db", "*/3 * * * * *", &[DB], "stop_server = true"),
        ];
        Node::start(&NodeSpec {
            node: NODES[i],
            etcd: &self.links[i].url,
            cluster: "prod",
            lease_ttl,
            base_url: &self.provider.base_url,
            policies: &policies,
            daemon: "",
        })
    }

    /// The epoch `nodes[i]` logged last that it leads with.
    fn epoch(&self, i: usize) -> i64 {
        let log = self.nodes[i].log();
        let line = log
            .lines()
            .rfind(|l| l.contains("leading"))
            .unwrap_or_else(|| panic!("{} never led\n{}", NODES[i], self.story()));
        let digits: String = line
            .split("epoch=")
            .nth(1)
            .unwrap_or_default()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("no epoch in {line:?}"))
    }

    /// The first write of a leader newer than `epoch`.
    fn first_write_after(&self, epoch: i64) -> Option<Write> {
        let writes = self.provider.writes();
        writes.into_iter().find(|w| w.epoch() > Some(epoch))
    }

    /// Creates accepted since `since`, of any leader.
    fn creates_since(&self, since: Instant) -> usize {
        let writes = self.provider.writes();
        let creates = writes.iter().filter(|w| {
            w.at >= since
                && w.status.is_some_and(|s| s < 300)
                && matches!(w.kind, WriteKind::Create { .. })
        });
        creates.count()
    }

    /// What the provider saw and both logs, for a failure message.
    fn story(&self) -> String {
        let mut story = format!("provider requests:\n{}", self.provider.describe());
        for node in &self.nodes {
            story.push_str(&format!("\n--- {} ---\n{}", node.name, node.log()));
        }
        story
    }

    /// Polls `done` until it holds and returns when it did; fails after `within` with the story.
    async fn eventually(
        &self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + within;
        loop {
            if done(self) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "not within {within:?}: {what}\n{}",
                self.story()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every write carries the node and epoch of a leader, and no write of `old` arrives after
    /// `new`'s first.
    fn assert_no_write_of_old_after(&self, old: i64, first_new: &Write) {
        let writes = self.provider.writes();
        let unsigned: Vec<_> = writes.iter().filter(|w| w.sender.is_none()).collect();
        assert!(
            unsigned.is_empty(),
            "writes without a leader's node and epoch: {unsigned:?}\n{}",
            self.story()
        );
        let late: Vec<_> = writes
            .iter()
            .filter(|w| w.epoch() == Some(old) && w.at > first_new.at)
            .collect();
        assert!(
            late.is_empty(),
            "epoch {old} wrote after the new leader's first write ({first_new:?}): {late:?}\n{}",
            self.story()
        );
    }

    /// No `(server, name)` was created twice.
    fn assert_no_slot_twice(&self) {
        let twice: Vec<_> = self
            .provider
            .creates_per_slot()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .collect();
        assert!(
            twice.is_empty(),
            "slots snapshotted twice: {twice:?}\n{}",
            self.story()
        );
        assert_eq!(self.provider.sim.stats().duplicate_names, 0);
    }

    /// `snapshot_scheduler_leader` of each node.
    async fn leader_gauges(&self) -> (Option<f64>, Option<f64>) {
        let gauge = "snapshot_scheduler_leader";
        (
            self.nodes[0].metric(gauge).await,
            self.nodes[1].metric(gauge).await,
        )
    }

    /// Waits until `nodes[i]` logged `after` and then `then`.
    async fn logs_in_order(&mut self, i: usize, after: &str, then: &str) -> Instant {
        let what = format!("{after:?} and then {then:?}");
        self.nodes[i]
            .until(&what, WAIT, |log| {
                log.find(after)
                    .is_some_and(|at| log[at + after.len()..].contains(then))
            })
            .await
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_is_replaced_within_a_lease_and_a_fire_and_writes_nothing_after_waking() {
    let Some(mut c) = Cluster::start("5s", Duration::from_secs(1)).await else {
        return;
    };
    let old = c.epoch(0);
    c.nodes[0].signal(libc::SIGSTOP);
    let stopped_at = Instant::now();

    c.eventually("ops-2 writes as the new leader", WAIT, |c| {
        c.first_write_after(old).is_some()
    })
    .await;
    let first_new = c.first_write_after(old).expect("seen");
    let took = first_new.at.duration_since(stopped_at);
    let sender = first_new.sender.clone().expect("signed");
    assert_eq!(sender.node, "ops-2", "{}", c.story());
    assert!(
        took <= c.lease_ttl + PERIOD + SLACK,
        "the standby's first write came {} after the leader stopped\n{}",
        secs(took),
        c.story()
    );

    c.nodes[0].signal(libc::SIGCONT);
    c.logs_in_order(0, "leadership lost", "standby").await;
    // Time for a stale write to surface: two more snapshots by the new leader.
    let woke = Instant::now();
    c.eventually("two more snapshots", WAIT, |c| c.creates_since(woke) >= 2)
        .await;

    c.assert_no_write_of_old_after(old, &first_new);
    let epochs: BTreeSet<_> = c
        .provider
        .writes()
        .iter()
        .filter_map(Write::epoch)
        .collect();
    assert_eq!(epochs, BTreeSet::from([old, sender.epoch]), "{}", c.story());
    c.assert_no_slot_twice();
    eprintln!(
        "SIGSTOP: the standby's first write {} after the leader stopped",
        secs(took)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leaders_stopped_server_is_started_after_its_snapshot_and_no_slot_is_taken_twice()
{
    // Longer than a failover: the new leader finds the snapshot still in progress.
    let snapshot_duration = Duration::from_secs(8);
    let Some(c) = Cluster::start("5s", snapshot_duration).await else {
        return;
    };
    let old = c.epoch(0);
    // ops-1 has stopped the server and asked for its snapshot: it holds the server stopped.
    let held = |c: &Cluster| {
        let writes: Vec<Write> = c
            .provider
            .writes()
            .into_iter()
            .filter(|w| w.epoch() == Some(old))
            .collect();
        let stop = writes.iter().rposition(|w| w.kind == WriteKind::Stop(DB))?;
        let create = writes[stop..]
            .iter()
            .find(|w| matches!(&w.kind, WriteKind::Create { server, .. } if *server == DB))?;
        let starts = c.provider.starts();
        let started = starts.iter().any(|s| s.server == DB && s.at > create.at);
        (!started).then(|| create.clone())
    };
    c.eventually("ops-1 holds db stopped under a snapshot", WAIT, |c| {
        held(c).is_some()
    })
    .await;
    let create = held(&c).expect("seen");
    c.nodes[0].signal(libc::SIGKILL);
    let killed_at = Instant::now();
    assert_eq!(
        c.provider.sim.server(DB).expect("simulated").status,
        PowerState::Stopped,
        "{}",
        c.story()
    );

    let start_after_kill = |c: &Cluster| {
        let starts = c.provider.starts();
        starts
            .into_iter()
            .find(|s| s.server == DB && s.at > killed_at)
    };
    c.eventually("db is started again", WAIT, |c| {
        start_after_kill(c).is_some()
    })
    .await;
    let start = start_after_kill(&c).expect("seen");
    let by = start.sender.clone().map(|s| s.node);
    assert_eq!(by.as_deref(), Some("ops-2"), "{}", c.story());
    assert!(
        start.in_progress.is_empty(),
        "db was started while its snapshot {:?} was in progress\n{}",
        start.in_progress,
        c.story()
    );
    assert!(start.at >= create.at + snapshot_duration, "{}", c.story());
    c.eventually("db runs again", WAIT, |c| {
        c.provider.sim.server(DB).expect("simulated").status == PowerState::Running
    })
    .await;

    // The new leader catches up and goes on: every slot still once.
    let since = Instant::now();
    c.eventually("two more snapshots", WAIT, |c| c.creates_since(since) >= 2)
        .await;
    c.assert_no_slot_twice();
    let first_new = c.first_write_after(old).expect("the new leader wrote");
    c.assert_no_write_of_old_after(old, &first_new);
    eprintln!(
        "SIGKILL: db started {} after the kill ({} after its snapshot was asked for)",
        secs(start.at.duration_since(killed_at)),
        secs(start.at.duration_since(create.at)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_fences_itself_before_the_standby_writes() {
    let Some(mut c) = Cluster::start("5s", Duration::from_secs(1)).await else {
        return;
    };
    let old = c.epoch(0);
    c.links[0].black_hole();
    let cut_at = Instant::now();

    let fenced_seen = c.nodes[0].wait_for_log("leadership lost", WAIT).await;
    c.eventually("ops-2 writes as the new leader", WAIT, |c| {
        c.first_write_after(old).is_some()
    })
    .await;
    let first_new = c.first_write_after(old).expect("seen");
    assert_eq!(
        first_new.sender.as_ref().map(|s| s.node.as_str()),
        Some("ops-2")
    );
    assert!(
        fenced_seen < first_new.at,
        "ops-1 logged its fencing {} after ops-2's first write\n{}",
        secs(fenced_seen.duration_since(first_new.at)),
        c.story()
    );
    let writes = c.provider.writes();
    let last_old = writes.iter().rfind(|w| w.epoch() == Some(old));
    let last_old = last_old.expect("ops-1 wrote before the cut");
    assert!(last_old.at < first_new.at, "{}", c.story());

    // Healed, the old leader stands by and stays silent.
    c.links[0].pass();
    c.logs_in_order(0, "leadership lost", "standby").await;
    // Whatever it had stopped is the cluster's journal's now: a standby that still counted it
    // would raise a false "server stopped too long" alert.
    assert_eq!(
        c.nodes[0]
            .metric("snapshot_scheduler_servers_stopped")
            .await,
        Some(0.0),
        "{}",
        c.story()
    );
    let healed = Instant::now();
    c.eventually("two more snapshots", WAIT, |c| c.creates_since(healed) >= 2)
        .await;
    c.assert_no_write_of_old_after(old, &first_new);
    c.assert_no_slot_twice();
    eprintln!(
        "black hole: ops-1 fenced within {} of the cut, {} before ops-2's first write \
         ({} after the cut)",
        secs(fenced_seen.duration_since(cut_at)),
        secs(first_new.at.duration_since(fenced_seen)),
        secs(first_new.at.duration_since(cut_at)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_gone_nobody_writes_and_one_leader_resumes_when_it_is_back() {
    let Some(mut c) = Cluster::start("5s", Duration::from_secs(1)).await else {
        return;
    };
    let old = c.epoch(0);
    c.etcd.kill();
    let killed_at = Instant::now();

    let fenced_seen = c.nodes[0].wait_for_log("leadership lost", WAIT).await;
    let mut unhealthy = None;
    let deadline = Instant::now() + WAIT;
    while unhealthy != Some(503) {
        assert!(
            Instant::now() < deadline,
            "healthz {unhealthy:?}\n{}",
            c.story()
        );
        unhealthy = c.nodes[0].healthz().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two fires of each policy come and go with etcd gone.
    tokio::time::sleep(2 * PERIOD).await;
    c.etcd.restart().await;
    let back_at = Instant::now();

    let writes = c.provider.writes();
    let while_down: Vec<_> = writes
        .iter()
        .filter(|w| w.at >= fenced_seen && w.at < back_at)
        .collect();
    assert!(
        while_down.is_empty(),
        "written with etcd gone: {while_down:?}\n{}",
        c.story()
    );
    let before_fence = writes.iter().filter(|w| w.at >= killed_at).count();

    c.eventually("three snapshots after etcd is back", WAIT, |c| {
        c.creates_since(back_at) >= 3
    })
    .await;
    let writes = c.provider.writes();
    let resumed: BTreeSet<_> = writes
        .iter()
        .filter(|w| w.at >= back_at)
        .map(|w| w.sender.clone().expect("signed"))
        .map(|s| (s.node, s.epoch))
        .collect();
    assert_eq!(resumed.len(), 1, "{resumed:?}\n{}", c.story());
    let (node, epoch) = resumed.into_iter().next().expect("one");
    assert!(
        epoch > old,
        "{node} resumed with epoch {epoch}\n{}",
        c.story()
    );
    let first_back = writes.iter().find(|w| w.at >= back_at).expect("one");
    // Not after one more lease: the fenced host's lease, which etcd keeps across its restart,
    // is given up as soon as etcd answers.
    assert!(
        first_back.at.duration_since(back_at) < Duration::from_millis(5500),
        "resumed {} after etcd was back\n{}",
        secs(first_back.at.duration_since(back_at)),
        c.story()
    );
    c.assert_no_slot_twice();
    let leading = if node == NODES[0] {
        (Some(1.0), Some(0.0))
    } else {
        (Some(0.0), Some(1.0))
    };
    assert_eq!(c.leader_gauges().await, leading, "{}", c.story());
    eprintln!(
        "etcd gone: ops-1 fenced within {} of the kill ({before_fence} writes between), \
         {node} resumed {} after etcd was back",
        secs(fenced_seen.duration_since(killed_at)),
        secs(first_back.at.duration_since(back_at)),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shut_down_hands_over_within_a_period_not_a_lease() {
    let Some(mut c) = Cluster::start("30s", Duration::from_secs(1)).await else {
        return;
    };
    let old = c.epoch(0);
    let deadline = Instant::now() + WAIT;
    while c.leader_gauges().await != (Some(1.0), Some(0.0)) {
        let gauges = c.leader_gauges().await;
        assert!(Instant::now() < deadline, "{gauges:?}\n{}", c.story());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.nodes[0].healthz().await, Some(200));
    assert_eq!(
        c.nodes[1].healthz().await,
        Some(200),
        "a standby with a known leader"
    );

    c.nodes[0].signal(libc::SIGTERM);
    let term_at = Instant::now();
    let status = c.nodes[0].wait_exit(WAIT).await;
    let exited_at = Instant::now();
    assert_eq!(status.code(), Some(0), "{}", c.story());

    c.eventually("ops-2 writes as the new leader", WAIT, |c| {
        c.first_write_after(old).is_some()
    })
    .await;
    let first_new = c.first_write_after(old).expect("seen");
    let after_exit = first_new.at.saturating_duration_since(exited_at);
    assert!(
        after_exit <= PERIOD + SLACK,
        "the standby's first write came {} after the leader exited\n{}",
        secs(after_exit),
        c.story()
    );
    assert!(
        first_new.at.duration_since(term_at) < c.lease_ttl / 2,
        "{}",
        c.story()
    );
    assert_eq!(
        c.nodes[1].metric("snapshot_scheduler_leader").await,
        Some(1.0)
    );
    c.assert_no_write_of_old_after(old, &first_new);
    c.assert_no_slot_twice();
    eprintln!(
        "SIGTERM: drained and exited in {}, the standby's first write {} after the exit",
        secs(exited_at.duration_since(term_at)),
        secs(after_exit),
    );
}

/// The old leader's run, woken up, must not start the server it had stopped once the new
/// leader has settled that stop and stopped the server again for a snapshot of its own (the
/// server would run under that snapshot): the cluster's journal says the stop is no longer its.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_leader_woken_up_does_not_start_a_server_the_new_leader_stopped_for_its_snapshot() {
    let Some(mut c) = Cluster::start("5s", Duration::from_secs(6)).await else {
        return;
    };
    let old = c.epoch(0);
    let holds_stopped = |c: &Cluster| {
        let writes = c.provider.writes();
        let stop = writes
            .iter()
            .rfind(|w| w.epoch() == Some(old) && w.kind == WriteKind::Stop(DB))?;
        let starts = c.provider.starts();
        let started = starts.iter().any(|s| s.server == DB && s.at > stop.at);
        (!started).then(|| stop.clone())
    };
    c.eventually("ops-1 holds db stopped", WAIT, |c| {
        holds_stopped(c).is_some()
    })
    .await;
    c.nodes[0].signal(libc::SIGSTOP);

    // ops-2 takes over, settles db, and stops it again for a snapshot of its own.
    let new_create = |c: &Cluster| {
        let writes = c.provider.writes();
        writes.into_iter().find_map(|w| match w.kind {
            WriteKind::Create { server, name } if server == DB && w.epoch() > Some(old) => {
                Some(name)
            }
            _ => None,
        })
    };
    c.eventually("ops-2 snapshots db stopped", WAIT, |c| {
        new_create(c).is_some()
    })
    .await;
    let name = new_create(&c).expect("seen");
    c.nodes[0].signal(libc::SIGCONT);
    c.logs_in_order(0, "leadership lost", "standby").await;
    c.eventually("ops-2's snapshot of db is done and db runs", WAIT, |c| {
        let sim = &c.provider.sim;
        let done = sim
            .snapshots(DB)
            .iter()
            .any(|s| s.name == name && s.status != SnapshotStatus::InProgress);
        done && sim.server(DB).expect("simulated").status == PowerState::Running
    })
    .await;

    let early: Vec<_> = c
        .provider
        .starts()
        .into_iter()
        .filter(|s| s.server == DB && !s.in_progress.is_empty())
        .collect();
    assert!(
        early.is_empty(),
        "db was started under its snapshot: {early:?}\n{}",
        c.story()
    );
}

/// A value in the cluster's journal that cannot be read is never taken for an empty journal
/// (it could be a server left stopped): the leader does not act, and says so where an operator
/// looks, `/healthz` (503, naming the key) and the log, instead of a healthy-looking `leading`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_journal_value_in_etcd_is_a_loud_not_acting_leader() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let client =
        snapshot_scheduler::etcd::Etcd::new(vec![etcd.url.clone()], Duration::from_secs(5), None)
            .expect("client");
    let lease = client.grant(Duration::from_secs(600)).await.expect("grant");
    // Written outside any leadership, as a hand edit would be.
    client
        .create_if_absent("/snapshot-scheduler/prod/journal/12345", "not json", lease)
        .await
        .expect("put");
    let provider = RecordingProvider::serve(&[WEB], SimConfig::default()).await;
    let node = Node::start(&NodeSpec {
        node: NODES[0],
        etcd: &etcd.url,
        cluster: "prod",
        lease_ttl: "5s",
        base_url: &provider.base_url,
        policies: &[policy("web", "*/2 * * * * *", &[WEB], "")],
        daemon: "",
    });
    let mut node = node;
    node.wait_for_log("shared state cannot be read", WAIT).await;
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        let answer = node.get("/healthz").await;
        if matches!(&answer, Some((503, _))) || Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (code, text) = answer.expect("an answer");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("journal/12345"), "{text}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(provider.writes().is_empty(), "{}", provider.describe());
}
