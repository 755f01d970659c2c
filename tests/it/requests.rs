//! What a fleet rotation costs the provider: the cheap, untimed version of
//! `cargo bench --bench rotation`. Listings and status polls are shared, so a full fleet costs
//! its one delete and one create per server and little more; and a listing whose pages shift
//! under it never shows one snapshot twice (a twice-counted snapshot looks like one too many
//! and gets pruned).

use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::{json, Value};
use snapshot_scheduler::client::HttpClient;
use snapshot_scheduler::config::{ApiConfig, TokenSource};
use snapshot_scheduler::context::http_provider;
use snapshot_scheduler::model::{ServerId, SnapshotStatus};
use snapshot_scheduler::provider::Provider;
use snapshot_scheduler::retry::Retrying;
use snapshot_scheduler::simulator::{SimConfig, Simulator};
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{bin, serve_sim, stderr, stdout, Scratch, TOKEN};

/// The benchmark's target at 1,000 servers; unavoidable are one create and one delete.
const MAX_REQUESTS_PER_SERVER: f64 = 2.5;

const OWN_OLDEST: &str = "fleet-20200101T000000Z";
const OWN_NEWER: &str = "fleet-20210101T000000Z";
const HAND_MADE: [&str; 3] = ["pre-migration-snapshot", "before-upgrade", "manual-export"];

fn at(text: &str) -> DateTime<Utc> {
    text.parse().expect("timestamp")
}

/// Every server at the cap: 2 of the policy's own (keep = 2) and 3 hand-made, so under
/// `keep = 2` each needs exactly one delete (the oldest own) and one create.
fn fill(sim: &Simulator, ids: &[ServerId]) {
    for &id in ids {
        for (i, name) in HAND_MADE.iter().enumerate() {
            let made = at(&format!("2019-0{}-01T12:00:00Z", i + 1));
            sim.add_snapshot(id, name, SnapshotStatus::Completed, made);
        }
        sim.add_snapshot(
            id,
            OWN_OLDEST,
            SnapshotStatus::Completed,
            at("2020-01-01T00:00:00Z"),
        );
        sim.add_snapshot(
            id,
            OWN_NEWER,
            SnapshotStatus::Completed,
            at("2021-01-01T00:00:00Z"),
        );
    }
}

fn explain(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

#[tokio::test]
async fn rotating_a_full_fleet_costs_at_most_two_and_a_half_requests_per_server() {
    let ids: Vec<ServerId> = (0..100).map(|i| 200_000 + i).collect();
    let (sim, base_url) = serve_sim(
        &ids,
        SimConfig {
            snapshot_duration: Duration::from_secs(1),
            page_size: 100,
            example_snapshots: false,
            ..SimConfig::default()
        },
    )
    .await;
    fill(&sim, &ids);
    let scratch = Scratch::new();
    let servers: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let config = scratch.config(
        &format!(
            "[api]\nbase_url = \"{{base_url}}\"\ntoken_file = \"{{token_file}}\"\n\
             requests_per_second = 1000\n\n\
             [daemon]\nstate_dir = \"{{state_dir}}\"\nmax_concurrent = 16\npoll_interval = \"1s\"\n\n\
             [[policy]]\nname = \"fleet\"\nschedule = \"0 0 1 1 *\"\nkeep = 2\nservers = [{}]\n",
            servers.join(", ")
        ),
        &base_url,
    );
    let mut cmd = bin();
    cmd.arg("--config").arg(&config).args(["-q", "once"]);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);

    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("once finishes within 60 s")
        .expect("the binary runs");

    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    let stats = sim.stats();
    assert_eq!(stats.request_count("create"), 100, "{:?}", stats.requests);
    assert_eq!(stats.request_count("delete"), 100, "{:?}", stats.requests);
    assert!(
        stats.deleted.iter().all(|d| d.name == OWN_OLDEST),
        "only the oldest own snapshot of each server goes: {:?}",
        stats.deleted
    );
    let per_server = stats.total_requests as f64 / ids.len() as f64;
    assert!(
        per_server <= MAX_REQUESTS_PER_SERVER,
        "{per_server:.2} requests per server (over {MAX_REQUESTS_PER_SERVER}): {:?}",
        stats.requests
    );
}

fn snapshot(id: u64, name: &str) -> Value {
    json!({
        "id": id,
        "server": {"id": 12345, "name": "web-server-01"},
        "name": name,
        "status": "completed",
        "size_mb": 5120,
        "created_at": "2025-01-15T18:30:00Z",
        "description": null,
    })
}

fn client(base_url: &str) -> Retrying<HttpClient> {
    let api = ApiConfig {
        base_url: base_url.to_owned(),
        token: None,
        token_source: TokenSource::Env("TEST_TOKEN".into()),
        timeout: Duration::from_secs(5),
        requests_per_second: 1000.0,
        max_retries: 1,
    };
    http_provider(&api, SecretString::from(TOKEN)).expect("client builds")
}

async fn page(server: &MockServer, number: Option<&str>, body: Value) {
    let mock = Mock::given(method("GET")).and(path("/api/v1/snapshots/"));
    let mock = match number {
        None => mock.and(query_param_is_missing("page")),
        Some(n) => mock.and(query_param("page", n)),
    };
    mock.respond_with(ResponseTemplate::new(200).set_body_json(body))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_snapshot_that_shifts_onto_the_next_page_is_listed_once() {
    // A snapshot created between two page fetches pushes 802 from page 1 onto page 2.
    let server = MockServer::start().await;
    let link = |n: u32| format!("{}/api/v1/snapshots/?page={n}", server.uri());
    let body = |ids: &[u64], next: Option<String>| {
        let results: Vec<Value> = ids
            .iter()
            .map(|id| snapshot(*id, &format!("s{id}")))
            .collect();
        json!({"count": 6, "next": next, "previous": null, "results": results})
    };
    page(&server, None, body(&[801, 802], Some(link(2)))).await;
    page(&server, Some("2"), body(&[802, 803], Some(link(3)))).await;
    page(&server, Some("3"), body(&[804, 805], None)).await;

    let ids: Vec<u64> = client(&format!("{}/api/v1", server.uri()))
        .list_snapshots(None)
        .await
        .expect("listed")
        .iter()
        .map(|s| s.id)
        .collect();

    assert_eq!(ids, [801, 802, 803, 804, 805]);
}

#[tokio::test]
async fn a_listing_whose_last_pages_vanished_ends_and_one_that_grew_goes_on() {
    // `count` said 3 pages of 2, but snapshots were deleted meanwhile: page 3 is gone (404).
    let shrunk = MockServer::start().await;
    let link = |s: &MockServer, n: u32| format!("{}/api/v1/snapshots/?page={n}", s.uri());
    let body = |ids: &[u64], count: u64, next: Option<String>| {
        let results: Vec<Value> = ids
            .iter()
            .map(|id| snapshot(*id, &format!("s{id}")))
            .collect();
        json!({"count": count, "next": next, "previous": null, "results": results})
    };
    page(&shrunk, None, body(&[801, 802], 6, Some(link(&shrunk, 2)))).await;
    page(&shrunk, Some("2"), body(&[803], 3, None)).await;
    Mock::given(method("GET"))
        .and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "Invalid page."})))
        .mount(&shrunk)
        .await;

    let listed = client(&format!("{}/api/v1", shrunk.uri()))
        .list_snapshots(None)
        .await
        .expect("a vanished last page ends the list");
    assert_eq!(listed.len(), 3);

    // `count` said 3 pages, but one was created meanwhile: page 3 links to a page 4.
    let grown = MockServer::start().await;
    page(&grown, None, body(&[801, 802], 6, Some(link(&grown, 2)))).await;
    page(
        &grown,
        Some("2"),
        body(&[803, 804], 7, Some(link(&grown, 3))),
    )
    .await;
    page(
        &grown,
        Some("3"),
        body(&[805, 806], 7, Some(link(&grown, 4))),
    )
    .await;
    page(&grown, Some("4"), body(&[807], 7, None)).await;

    let listed = client(&format!("{}/api/v1", grown.uri()))
        .list_snapshots(None)
        .await
        .expect("listed");
    assert_eq!(listed.len(), 7);
}
