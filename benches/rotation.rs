//! One complete rotation of a full fleet, timed and counted: `cargo bench --bench rotation`.
//!
//! The simulated provider is served over HTTP from this process (20 ms per request, snapshots
//! that take 1 s, DRF pages of 100); every server already holds 5 snapshots (2 of the policy's
//! own, 3 hand-made), so each needs exactly one delete and one create under `keep = 2`. The real
//! release binary runs `once` against it as a child process, so its peak memory is its own
//! (`wait4`'s `ru_maxrss`) and the code path is exactly the command's. The provider counts the
//! requests. For comparison, the shape peer tools use (one server after another, each listed and
//! polled on its own) runs at 100 servers through the same HTTP client.
//!
//! Arguments: fleet sizes (default `1000 10000`; `--large` adds 50,000, a few minutes);
//! `--no-peer` skips the sequential shape.
//! `ROTATION_COMMAND` replaces the binary by a command line (split at spaces), e.g. a profiler
//! in front of a build with symbols. Exits 1 when a rotation fails or the request count per
//! server is over its target.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use snapshot_scheduler::clock::SystemClock;
use snapshot_scheduler::config::{Config, LoadOptions};
use snapshot_scheduler::context::http_provider;
use snapshot_scheduler::model::{CreateSnapshot, ServerId, SnapshotStatus};
use snapshot_scheduler::provider::Provider;
use snapshot_scheduler::simulator::{self, SimConfig, SimStats, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_snapshot-scheduler");
const TOKEN: &str = "bench-token-7c1e";

/// The provider.
const LATENCY: Duration = Duration::from_millis(20);
const SNAPSHOT_DURATION: Duration = Duration::from_secs(1);
const PAGE_SIZE: usize = 100;
/// The scheduler's config.
const REQUESTS_PER_SECOND: f64 = 1000.0;
const MAX_CONCURRENT: usize = 64;
const POLL_INTERVAL: Duration = Duration::from_secs(1);
const POLICY: &str = "bench";
/// January 1st: the slot is the same all year, and newer than the seeded ones.
const SCHEDULE: &str = "0 0 1 1 *";
const KEEP: usize = 2;

/// The targets.
const MAX_REQUESTS_PER_SERVER: f64 = 2.1;
const MAX_WALL_OVER_BOUND: f64 = 1.2;
/// Peak memory targets: (from this many servers, at most this many MiB).
const MAX_RSS_MIB: [(usize, f64); 2] = [(50_000, 40.0), (10_000, 30.0)];
const MIN_SPEEDUP: f64 = 10.0;
const PEER_SERVERS: usize = 100;

/// Each server: the policy's 2 own completed snapshots and 3 hand-made ones, 5 = the cap.
const OWN: [&str; 2] = ["bench-20200101T000000Z", "bench-20210101T000000Z"];
const HAND_MADE: [&str; 3] = [
    "pre-migration-snapshot",
    "before-kernel-upgrade",
    "manual-db-export",
];

struct Rotation {
    servers: usize,
    wall: Duration,
    stats: SimStats,
    peak_rss_kb: u64,
    /// User and system CPU time of the `once` process.
    cpu: Duration,
    failed: Option<String>,
}

impl Rotation {
    fn requests(&self) -> u64 {
        self.stats.total_requests
    }

    fn per_server(&self) -> f64 {
        self.requests() as f64 / self.servers as f64
    }

    /// The larger of what the request budget and the concurrency allow, plus one snapshot.
    fn bound(&self) -> Duration {
        let requests = self.requests() as f64;
        let by_rate = requests / REQUESTS_PER_SECOND;
        let by_concurrency = requests * LATENCY.as_secs_f64() / MAX_CONCURRENT as f64;
        Duration::from_secs_f64(by_rate.max(by_concurrency)) + SNAPSHOT_DURATION
    }
}

struct Peer {
    wall: Duration,
    requests: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    if sizes.is_empty() {
        sizes = vec![1_000, 10_000];
        if args.iter().any(|a| a == "--large") {
            sizes.push(50_000);
        }
    }
    let peer = !args.iter().any(|a| a == "--no-peer");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("rotation benchmark: {}", machine());
    println!(
        "provider: latency {} ms per request, snapshots take {} s, {PAGE_SIZE} per list page, \
         5 snapshots per server before (2 own, 3 hand-made)",
        LATENCY.as_millis(),
        SNAPSHOT_DURATION.as_secs()
    );
    println!(
        "scheduler: once, keep = {KEEP}, requests_per_second = {REQUESTS_PER_SECOND}, \
         max_concurrent = {MAX_CONCURRENT}, poll_interval = {} s",
        POLL_INTERVAL.as_secs()
    );
    println!(
        "bound = max(requests / {REQUESTS_PER_SECOND}, requests x {} ms / {MAX_CONCURRENT}) + {} s",
        LATENCY.as_millis(),
        SNAPSHOT_DURATION.as_secs()
    );
    println!(
        "binary: {} ({})",
        BIN,
        std::fs::metadata(BIN).map_or_else(|_| "?".into(), |m| mib(m.len()))
    );
    println!();

    let mut ok = true;
    let mut rows = Vec::new();
    for &n in &sizes {
        let r = rotation(&runtime, n);
        if let Some(why) = &r.failed {
            eprintln!("rotation of {n} servers FAILED: {why}");
            ok = false;
        }
        if r.per_server() > MAX_REQUESTS_PER_SERVER {
            eprintln!(
                "{n} servers: {:.2} requests per server, over the target of {MAX_REQUESTS_PER_SERVER}",
                r.per_server()
            );
            ok = false;
        }
        print_row(&r);
        rows.push(r);
    }

    println!();
    println!(
        "{:>7}  {:>9}  {:>9}  {:>6}  {:>13}  {:>10}  {:>9}  requests (list/create/delete)",
        "servers", "wall", "bound", "x bound", "req/server", "peak RSS", "targets"
    );
    for r in &rows {
        let over = r.wall.as_secs_f64() / r.bound().as_secs_f64();
        let rss_mib = r.peak_rss_kb as f64 / 1024.0;
        let mut misses = Vec::new();
        if r.per_server() > MAX_REQUESTS_PER_SERVER {
            misses.push("requests");
        }
        if over > MAX_WALL_OVER_BOUND {
            misses.push("wall");
        }
        let rss_target = MAX_RSS_MIB.iter().find(|(n, _)| r.servers >= *n);
        if rss_target.is_some_and(|(_, most)| rss_mib > *most) {
            misses.push("memory");
        }
        if r.failed.is_some() {
            misses.push("FAILED");
        }
        println!(
            "{:>7}  {:>8.2}s  {:>8.2}s  {:>6.2}  {:>13.3}  {:>6.1} MiB  {:>9}  {} ({}/{}/{})",
            r.servers,
            r.wall.as_secs_f64(),
            r.bound().as_secs_f64(),
            over,
            r.per_server(),
            rss_mib,
            if misses.is_empty() {
                "met".to_owned()
            } else {
                misses.join(",")
            },
            r.requests(),
            r.stats.request_count("list"),
            r.stats.request_count("create"),
            r.stats.request_count("delete"),
        );
    }

    if peer {
        println!();
        let p = runtime.block_on(sequential_peer(PEER_SERVERS));
        println!(
            "sequential peer shape, {PEER_SERVERS} servers: {:.2} s, {} requests ({:.2} per server)",
            p.wall.as_secs_f64(),
            p.requests,
            p.requests as f64 / PEER_SERVERS as f64
        );
        if let Some(r) = rows.iter().find(|r| r.servers == PEER_SERVERS) {
            let speedup = p.wall.as_secs_f64() / r.wall.as_secs_f64();
            let met = speedup >= MIN_SPEEDUP && r.requests() < p.requests;
            println!(
                "once, {PEER_SERVERS} servers: {:.2} s, {} requests: {speedup:.1}x faster, {:.2}x the requests ({})",
                r.wall.as_secs_f64(),
                r.requests(),
                r.requests() as f64 / p.requests as f64,
                if met { "met" } else { "MISSED" }
            );
        }
    }
    std::process::exit(if ok { 0 } else { 1 });
}

fn print_row(r: &Rotation) {
    println!(
        "{:>6} servers: {:.2} s (bound {:.2} s), {} requests = {:.3} per server, peak RSS {:.1} MiB, CPU {:.2} s",
        r.servers,
        r.wall.as_secs_f64(),
        r.bound().as_secs_f64(),
        r.requests(),
        r.per_server(),
        r.peak_rss_kb as f64 / 1024.0,
        r.cpu.as_secs_f64()
    );
}

fn server_ids(n: usize) -> Vec<ServerId> {
    (0..n as ServerId).map(|i| 100_000 + i).collect()
}

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("timestamp")
}

/// A provider whose `n` servers are all at the cap.
fn full_fleet(n: usize) -> (Simulator, Vec<ServerId>) {
    let ids = server_ids(n);
    let sim = Simulator::with_server_ids(
        SimConfig {
            latency: LATENCY,
            snapshot_duration: SNAPSHOT_DURATION,
            page_size: PAGE_SIZE,
            example_snapshots: false,
            token: TOKEN.into(),
            ..SimConfig::default()
        },
        &ids,
        Arc::new(SystemClock),
    );
    for &id in &ids {
        for (name, created) in HAND_MADE
            .iter()
            .zip(["2019-03-01", "2019-06-01", "2019-09-01"])
        {
            sim.add_snapshot(
                id,
                name,
                SnapshotStatus::Completed,
                at(&format!("{created}T12:00:00Z")),
            );
        }
        sim.add_snapshot(
            id,
            OWN[0],
            SnapshotStatus::Completed,
            at("2020-01-01T00:00:00Z"),
        );
        sim.add_snapshot(
            id,
            OWN[1],
            SnapshotStatus::Completed,
            at("2021-01-01T00:00:00Z"),
        );
    }
    (sim, ids)
}

/// The config `once` reads: this provider, this fleet, the parameters above.
fn write_config(dir: &Path, base_url: &str, ids: &[ServerId]) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).expect("write token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let servers: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let text = format!(
        "[api]\nbase_url = \"{base_url}\"\ntoken_file = \"{}\"\nrequests_per_second = {REQUESTS_PER_SECOND}\n\n\
         [daemon]\nstate_dir = \"{}\"\nmax_concurrent = {MAX_CONCURRENT}\npoll_interval = \"{}s\"\nlog_format = \"text\"\n\n\
         [[policy]]\nname = \"{POLICY}\"\nschedule = \"{SCHEDULE}\"\nkeep = {KEEP}\nservers = [{}]\n",
        token.display(),
        dir.join("state").display(),
        POLL_INTERVAL.as_secs(),
        servers.join(", ")
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// `snapshot-scheduler once` against a full fleet of `n` servers.
fn rotation(runtime: &tokio::runtime::Runtime, n: usize) -> Rotation {
    let (sim, ids) = full_fleet(n);
    let (addr, server) = runtime
        .block_on(simulator::serve(
            sim.clone(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .expect("serve the simulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &simulator::base_url(addr), &ids);
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");

    let command = std::env::var("ROTATION_COMMAND").unwrap_or_else(|_| BIN.to_owned());
    let mut words = command.split_whitespace();
    let started = Instant::now();
    #[expect(
        clippy::zombie_processes,
        reason = "reaped by `wait4`, which also reports the child's own peak memory"
    )]
    let child = Command::new(words.next().unwrap_or(BIN))
        .args(words)
        .args(["-q", "-c"])
        .arg(&config)
        .arg("once")
        .env_remove("SNAPSHOT_SCHEDULER_CONFIG")
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("start snapshot-scheduler once");
    let (status, peak_rss_kb, cpu) = wait_with_usage(child.id());
    let wall = started.elapsed();
    server.abort();

    let stats = sim.stats();
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let created = stdout.lines().filter(|l| l.contains(" created ")).count();
    let mut failed = None;
    if status != 0 {
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        failed = Some(format!("once exited {status}: {}", tail.join(" | ")));
    } else if created != n || stats.created.len() != n || stats.deleted.len() != n {
        let mut by_name = std::collections::BTreeMap::new();
        for d in &stats.deleted {
            *by_name.entry(d.name.as_str()).or_insert(0) += 1;
        }
        failed = Some(format!(
            "expected {n} created and {n} deleted; the summary shows {created} created, the \
             provider saw {} creates and {} deletes ({by_name:?})",
            stats.created.len(),
            stats.deleted.len()
        ));
    } else if let Some(s) = stats.deleted.iter().find(|d| d.name != OWN[0]) {
        failed = Some(format!(
            "deleted {} on server {}, not the oldest own",
            s.name, s.server
        ));
    }
    Rotation {
        servers: n,
        wall,
        stats,
        peak_rss_kb,
        cpu,
        failed,
    }
}

/// Waits for the child; its exit code, its own peak resident set (KiB) and CPU time.
fn wait_with_usage(pid: u32) -> (i32, u64, Duration) {
    let mut status = 0;
    // SAFETY: an all-zero `rusage` is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, not yet reaped; both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu = Duration::from_secs_f64(seconds(usage.ru_utime) + seconds(usage.ru_stime));
    (code, u64::try_from(usage.ru_maxrss).unwrap_or(0), cpu)
}

/// The peer tools' shape: for each server in turn, list it, delete its oldest own snapshot,
/// create, then list it every poll interval until the new snapshot has finished.
async fn sequential_peer(n: usize) -> Peer {
    let (sim, ids) = full_fleet(n);
    let (addr, server) = simulator::serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("serve the simulator");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(dir.path(), &simulator::base_url(addr), &ids);
    let config = Config::load(&path, LoadOptions::default()).expect("config loads");
    let client = http_provider(&config.api, SecretString::from(TOKEN)).expect("client");
    let policy = &config.policies[0];
    let slot = policy
        .schedule
        .slot_at(Utc::now())
        .expect("a slot this year");
    let name = policy.snapshot_name(slot);

    let started = Instant::now();
    for &id in &ids {
        let snapshots = client.list_snapshots(Some(id)).await.expect("list");
        let oldest = snapshots
            .iter()
            .filter(|s| policy.owns(&s.name).is_some() && s.status == SnapshotStatus::Completed)
            .min_by_key(|s| s.created_at)
            .expect("an own snapshot");
        client.delete_snapshot(oldest.id).await.expect("delete");
        client
            .create_snapshot(&CreateSnapshot {
                server_id: id,
                name: name.clone(),
                description: Some(policy.description.clone()),
            })
            .await
            .expect("create");
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let now = client.list_snapshots(Some(id)).await.expect("poll");
            let done = now
                .iter()
                .any(|s| s.name == name && s.status != SnapshotStatus::InProgress);
            if done {
                break;
            }
        }
    }
    let wall = started.elapsed();
    server.abort();
    let stats = sim.stats();
    assert_eq!(
        stats.created.len(),
        n,
        "the peer shape created every snapshot"
    );
    Peer {
        wall,
        requests: stats.total_requests,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// CPU model and core count, for the record.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = std::io::stdout().flush();
    format!("{model}, {cores} cores")
}
