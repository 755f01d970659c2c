//! The HTTP client: pages followed (never off-host), errors a person can act on, `Retry-After`
//! honoured, idempotent requests retried, a lost create settled by name, timeouts that end, and
//! a token that never leaves the `Authorization` header.

use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use snapshot_scheduler::client::{HttpClient, USER_AGENT};
use snapshot_scheduler::config::{ApiConfig, Config, LoadOptions, TokenSource};
use snapshot_scheduler::model::{CreateSnapshot, ServerId, SnapshotStatus};
use snapshot_scheduler::provider::{ApiError, Provider};
use snapshot_scheduler::simulator::SimConfig;
use wiremock::matchers::{bearer_token, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{self, Scratch, TOKEN};

const WEB: ServerId = 12345;
const TOKEN_FILE: &str = "/etc/snapshot-scheduler/token";

/// Fast settings: a generous request budget, a short timeout, two retries.
fn api(base_url: &str) -> ApiConfig {
    ApiConfig {
        base_url: base_url.to_owned(),
        token: None,
        token_source: TokenSource::File(TOKEN_FILE.into()),
        timeout: Duration::from_secs(5),
        requests_per_second: 1000.0,
        max_retries: 2,
    }
}

fn client(api: &ApiConfig) -> HttpClient {
    HttpClient::new(api, SecretString::from(TOKEN)).expect("client builds")
}

/// A wiremock server and a client pointed at its `/api/v1`.
async fn mock() -> (MockServer, HttpClient) {
    let server = MockServer::start().await;
    let client = client(&api(&format!("{}/api/v1", server.uri())));
    (server, client)
}

fn snapshot(id: u64, name: &str, status: &str) -> Value {
    json!({
        "id": id,
        "server": {"id": WEB, "name": "web-server-01"},
        "name": name,
        "status": status,
        "size_mb": if status == "completed" { json!(5120) } else { Value::Null },
        "created_at": "2025-01-15T18:30:00Z",
        "description": "Before major migration",
    })
}

fn page(results: Vec<Value>, next: Option<String>) -> Value {
    json!({"count": results.len(), "next": next, "previous": null, "results": results})
}

fn request(name: &str) -> CreateSnapshot {
    CreateSnapshot {
        server_id: WEB,
        name: name.to_owned(),
        description: Some("nightly snapshot by snapshot-scheduler".to_owned()),
    }
}

async fn received(server: &MockServer, verb: &str) -> usize {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .iter()
        .filter(|r| r.method.as_str() == verb)
        .count()
}

// ---- pages ----

#[tokio::test]
async fn list_follows_absolute_next_links_until_null() {
    let (server, client) = mock().await;
    let second = format!("{}/api/v1/snapshots/?page=2", server.uri());
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![
                snapshot(801, "a", "completed"),
                snapshot(802, "b", "completed"),
            ],
            Some(second),
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(vec![snapshot(803, "c", "in_progress")], None)),
        )
        .expect(1)
        .mount(&server)
        .await;

    let all = client.list_snapshots(None).await.unwrap();
    let ids: Vec<u64> = all.iter().map(|s| s.id).collect();
    assert_eq!(ids, [801, 802, 803]);
}

#[tokio::test]
async fn list_follows_the_simulators_pages_and_keeps_the_server_filter() {
    let config = SimConfig {
        page_size: 2,
        example_snapshots: false,
        ..SimConfig::default()
    };
    let (sim, base_url) = common::serve_sim(&[WEB, 2], config).await;
    for i in 0..5 {
        sim.add_snapshot(WEB, &format!("s{i}"), SnapshotStatus::Completed, Utc::now());
    }
    sim.add_snapshot(2, "other", SnapshotStatus::Completed, Utc::now());
    let client = client(&api(&base_url));

    let mut names: Vec<String> = client
        .list_snapshots(Some(WEB))
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    names.sort();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    // 5 at 2 a page is 3 pages; had `next` lost `server_id`, "other" would have come along.
    assert_eq!(sim.stats().request_count("list"), 3);

    let everything = client.list_snapshots(None).await.unwrap();
    assert_eq!(everything.len(), 6);
}

#[tokio::test]
async fn next_link_to_another_host_is_refused_and_gets_no_token() {
    let (server, client) = mock().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![snapshot(801, "a", "completed")],
            Some(format!("{}/api/v1/snapshots/?page=2", elsewhere.uri())),
        )))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![], None)))
        .expect(0)
        .mount(&elsewhere)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("refusing to follow"), "{text}");
    assert!(text.contains(&elsewhere.uri()), "{text}");
    assert_eq!(received(&elsewhere, "GET").await, 0);
}

// ---- errors a person can act on ----

#[tokio::test]
async fn unauthorized_names_the_token_source_and_not_the_token() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"detail": "Invalid token."}))
                .insert_header("WWW-Authenticate", "Bearer"),
        )
        .expect(1) // not retried: the same token will not get better
        .mount(&server)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("the API rejected the token"), "{text}");
    assert!(text.contains(&format!("token_file {TOKEN_FILE}")), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!format!("{err:?}").contains(TOKEN));
}

#[tokio::test]
async fn bad_request_and_not_found_carry_the_providers_detail() {
    let (server, client) = mock().await;
    Mock::given(method("POST"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"detail": "snapshot limit reached (5 per server)"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/servers/999/"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "Not found."})))
        .mount(&server)
        .await;

    let err = client
        .create_snapshot(&request("nightly"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::BadRequest { message, .. }
            if message == "snapshot limit reached (5 per server)"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("snapshot limit reached (5 per server)"),
        "{err}"
    );

    let err = client.get_server(999).await.unwrap_err();
    assert!(
        matches!(&err, ApiError::NotFound { message, .. } if message == "Not found."),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("server 999") && text.contains("Not found."),
        "{text}"
    );
}

// ---- retries ----

#[tokio::test]
async fn retry_after_is_waited_out_before_the_retry() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "2")
                .set_body_json(
                    json!({"detail": "Request was throttled. Expected available in 2 seconds."}),
                ),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![], None)))
        .mount(&server)
        .await;

    let started = Instant::now();
    let all = client.list_snapshots(None).await.unwrap();
    let elapsed = started.elapsed();
    assert!(all.is_empty());
    assert_eq!(received(&server, "GET").await, 2);
    assert!(
        elapsed >= Duration::from_millis(1900),
        "retried after {elapsed:?}, before Retry-After: 2"
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
}

#[tokio::test]
async fn get_is_retried_after_a_500() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(500).set_body_json(json!({"detail": "A server error occurred."})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/servers/{WEB}/")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": WEB, "name": "web-server-01", "status": "running"})),
        )
        .mount(&server)
        .await;

    let web = client.get_server(WEB).await.unwrap();
    assert_eq!(web.id, WEB);
    assert_eq!(received(&server, "GET").await, 2);
}

#[tokio::test]
async fn delete_is_retried_after_a_503() {
    let (server, client) = mock().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(503).set_body_string("503 Service Unavailable"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/api/v1/snapshots/801/"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;

    client.delete_snapshot(801).await.unwrap();
    assert_eq!(received(&server, "DELETE").await, 2);
}

#[tokio::test]
async fn delete_retried_after_a_lost_answer_that_finds_it_gone_is_done() {
    let (server, client) = mock().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(502).set_body_string("502 Bad Gateway"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"detail": "Snapshot not found."})),
        )
        .mount(&server)
        .await;

    client.delete_snapshot(801).await.unwrap();
    assert_eq!(received(&server, "DELETE").await, 2);
}

#[tokio::test]
async fn create_refused_with_400_is_sent_once() {
    let (server, client) = mock().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"name": ["This field may not be blank."]})),
        )
        .mount(&server)
        .await;

    let err = client
        .create_snapshot(&request("nightly"))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::BadRequest { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("name: This field may not be blank."),
        "{err}"
    );
    assert_eq!(received(&server, "POST").await, 1);
    assert_eq!(received(&server, "GET").await, 0, "a 400 needs no look-up");
}

// ---- a create whose answer was lost ----

#[tokio::test]
async fn lost_create_on_the_simulator_is_found_by_name_not_repeated() {
    let config = SimConfig {
        lost_create_rate: 1.0,
        ..SimConfig::default()
    };
    let (sim, base_url) = common::serve_sim(&[WEB], config).await;
    let client = client(&api(&base_url));
    let name = "nightly-20250115T030000Z";

    let created = client.create_snapshot(&request(name)).await.unwrap();
    assert_eq!((created.name.as_str(), created.server.id), (name, WEB));
    let stats = sim.stats();
    assert_eq!(stats.fault_count("lost_create"), 1);
    assert_eq!(
        stats.request_count("create"),
        1,
        "the create was sent again"
    );
    assert_eq!(stats.duplicate_names, 0);
    let same_name = sim.snapshots(WEB).iter().filter(|s| s.name == name).count();
    assert_eq!(same_name, 1);
}

#[tokio::test]
async fn lost_create_answer_504_is_settled_by_listing_not_reposting() {
    let (server, client) = mock().await;
    let name = "nightly-20250115T030000Z";
    Mock::given(method("POST"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(
            ResponseTemplate::new(504)
                .set_body_string("<html><center><h1>504 Gateway Time-out</h1></center></html>"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param("server_id", WEB.to_string()))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![
                snapshot(802, name, "in_progress"),
                snapshot(801, "pre-migration-snapshot", "completed"),
            ],
            None,
        )))
        .mount(&server)
        .await;

    let created = client.create_snapshot(&request(name)).await.unwrap();
    assert_eq!(created.id, 802);
    assert_eq!(created.status, SnapshotStatus::InProgress);
    assert_eq!(received(&server, "POST").await, 1);
    assert_eq!(received(&server, "GET").await, 1);
}

// ---- timeouts, decoding, statuses ----

#[tokio::test]
async fn a_stalled_answer_is_a_timeout_not_a_hang() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(vec![], None))
                .set_delay(Duration::from_secs(5)),
        )
        .mount(&server)
        .await;
    let client = client(&ApiConfig {
        timeout: Duration::from_millis(300),
        max_retries: 1,
        ..api(&format!("{}/api/v1", server.uri()))
    });

    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), client.list_snapshots(None))
        .await
        .expect("the client gave up on its own");
    let elapsed = started.elapsed();
    let err = result.unwrap_err();
    assert!(
        matches!(err, ApiError::Timeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.to_string().contains("no answer within 300ms"), "{err}");
    assert!(elapsed < Duration::from_secs(4), "took {elapsed:?}");
    assert_eq!(received(&server, "GET").await, 2, "one try and one retry");
}

#[tokio::test]
async fn decode_error_names_the_field() {
    let (server, client) = mock().await;
    let mut bad = snapshot(801, "a", "completed");
    bad["created_at"] = json!("yesterday");
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![bad], None)))
        .mount(&server)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("results[0].created_at"), "{text}");
    assert_eq!(
        received(&server, "GET").await,
        1,
        "a bad answer is not retried"
    );
}

#[tokio::test]
async fn unknown_snapshot_statuses_are_accepted() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![
                snapshot(801, "a", "completed"),
                snapshot(802, "b", "failed"),
                snapshot(803, "c", "queued"),
                snapshot(804, "d", "archiving"),
            ],
            None,
        )))
        .mount(&server)
        .await;

    let statuses: Vec<SnapshotStatus> = client
        .list_snapshots(None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(
        statuses,
        [
            SnapshotStatus::Completed,
            SnapshotStatus::Failed,
            SnapshotStatus::Other("queued".into()),
            SnapshotStatus::Other("archiving".into()),
        ]
    );
}

// ---- the token ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_never_appears_in_trace_output_or_debug_formatting() {
    let (sim, base_url) = common::serve_sim(&[WEB], SimConfig::default()).await;
    let scratch = Scratch::new();
    let config_path = scratch.config(
        &common::config_with_policy(
            "name = \"nightly\"\nschedule = \"0 3 * * *\"\nservers = [12345]\nkeep = 3",
        ),
        &base_url,
    );

    let path = config_path.clone();
    let output = tokio::task::spawn_blocking(move || {
        common::run(
            common::bin()
                .arg("--config")
                .arg(&path)
                .args(["-vv", "list"]),
        )
    })
    .await
    .unwrap();
    let (out, err) = (common::stdout(&output), common::stderr(&output));
    assert!(output.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("pre-migration-snapshot"), "{out}");
    assert!(sim.stats().request_count("list") >= 1);
    assert!(err.contains("TRACE"), "no trace logs on stderr:\n{err}");
    assert!(!out.contains(TOKEN), "the token is on stdout:\n{out}");
    assert!(!err.contains(TOKEN), "the token is on stderr:\n{err}");

    let config = Config::load(&config_path, LoadOptions::default()).unwrap();
    let loaded = config.api.token.as_ref().expect("the token was loaded");
    assert_eq!(loaded.expose_secret(), TOKEN);
    let client = HttpClient::new(&config.api, loaded.clone()).unwrap();
    assert!(!format!("{config:?}").contains(TOKEN));
    assert!(!format!("{:?}", config.api).contains(TOKEN));
    assert!(!format!("{client:?}").contains(TOKEN));
}

#[tokio::test]
async fn user_agent_names_the_program_and_its_version() {
    assert_eq!(
        USER_AGENT,
        concat!("snapshot-scheduler/", env!("CARGO_PKG_VERSION"))
    );
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .and(header("user-agent", USER_AGENT))
        .and(bearer_token(TOKEN))
        .and(header("content-type", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![], None)))
        .expect(1)
        .mount(&server)
        .await;

    client.list_snapshots(None).await.unwrap();
}
