//! The HTTP client: pages followed (never off-host), errors a person can act on, `Retry-After`
//! honoured, idempotent requests retried, a lost create settled by name, timeouts that end, and
//! a token that never leaves the `Authorization` header.

use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use snapshot_scheduler::client::{HttpClient, USER_AGENT};
use snapshot_scheduler::config::{ApiConfig, Config, LoadOptions, TokenSource};
use snapshot_scheduler::context::http_provider;
use snapshot_scheduler::model::{CreateSnapshot, ServerId, SnapshotStatus};
use snapshot_scheduler::provider::{ApiError, Provider};
use snapshot_scheduler::retry::Retrying;
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

/// The client as production builds it: the HTTP transport with the retry rules.
fn client(api: &ApiConfig) -> Retrying<HttpClient> {
    http_provider(api, SecretString::from(TOKEN)).expect("client builds")
}

/// A wiremock server and a client pointed at its `/api/v1`.
async fn mock() -> (MockServer, Retrying<HttpClient>) {
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

/// One page of a listing of `count` snapshots in all.
fn page_of(count: u64, results: Vec<Value>, next: Option<String>) -> Value {
    json!({"count": count, "next": next, "previous": null, "results": results})
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
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            3,
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
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            3,
            vec![snapshot(803, "c", "in_progress")],
            None,
        )))
        .expect(1)
        .mount(&server)
        .await;

    let all = client.list_snapshots(None).await.unwrap();
    let ids: Vec<u64> = all.iter().map(|s| s.id).collect();
    assert_eq!(ids, [801, 802, 803]);
}

/// A page that fails is asked for again on its own: the pages before it are not read twice
/// (a fleet's listing is hundreds of pages; starting over would multiply every 5xx).
#[tokio::test]
async fn a_page_that_fails_is_asked_for_again_alone() {
    let (server, client) = mock().await;
    let second = format!("{}/api/v1/snapshots/?page=2", server.uri());
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param_is_missing("page"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(vec![snapshot(801, "a", "completed")], Some(second))),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("page", "2"))
        .respond_with(ResponseTemplate::new(503).set_body_string("503 Service Unavailable"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("page", "2"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(vec![snapshot(802, "b", "completed")], None)),
        )
        .expect(1)
        .mount(&server)
        .await;

    let all = client.list_snapshots(None).await.unwrap();
    let ids: Vec<u64> = all.iter().map(|s| s.id).collect();
    assert_eq!(ids, [801, 802]);
    assert_eq!(received(&server, "GET").await, 3);
}

/// A page-number listing of `count` snapshots, 2 a page: page 1 as `first`, then `later`
/// answers each of pages 2 and 3 (given the link to the page after it).
async fn numbered_listing(
    count: u64,
    first: Vec<Value>,
    later: impl Fn(u32, String) -> ResponseTemplate,
) -> (MockServer, Retrying<HttpClient>) {
    let (server, client) = mock().await;
    let link = |n: u32| format!("{}/api/v1/snapshots/?page={n}", server.uri());
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param_is_missing("page"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            count,
            first,
            Some(link(2)),
        )))
        .mount(&server)
        .await;
    for n in [2, 3] {
        Mock::given(method("GET"))
            .and(path("/api/v1/snapshots/"))
            .and(query_param("page", n.to_string()))
            .respond_with(later(n, link(n + 1)))
            .mount(&server)
            .await;
    }
    (server, client)
}

/// A snapshot deleted while the pages are read moves the records after it one place up: the
/// first record of page 2 moves onto page 1, already read, and is never seen. Such a listing
/// is an error naming what changed, not a shorter list (a server's own snapshot missed is
/// created a second time).
#[tokio::test]
async fn a_listing_whose_count_changes_while_it_is_read_is_an_error_not_a_shorter_list() {
    let first = vec![
        snapshot(801, "a", "completed"),
        snapshot(802, "b", "completed"),
    ];
    let (_server, client) = numbered_listing(5, first, |n, next| {
        let body = match n {
            // 801 was deleted meanwhile: 803 moved onto page 1, already read.
            2 => page_of(
                4,
                vec![
                    snapshot(804, "d", "completed"),
                    snapshot(805, "e", "completed"),
                ],
                Some(next),
            ),
            _ => page_of(4, vec![], None),
        };
        ResponseTemplate::new(200).set_body_json(body)
    })
    .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("list snapshots") && text.contains("changed while it was read"),
        "{text}"
    );
    assert!(
        text.contains("count 5") && text.contains("count 4"),
        "{text}"
    );
}

/// A numbered page that no longer exists means the list shrank while it was read: records
/// moved onto pages already read. The listing is not trusted.
#[tokio::test]
async fn a_numbered_page_that_answers_404_is_an_error_not_the_end_of_the_list() {
    let first = vec![
        snapshot(801, "a", "completed"),
        snapshot(802, "b", "completed"),
    ];
    let (_server, client) = numbered_listing(5, first, |n, next| match n {
        2 => ResponseTemplate::new(200).set_body_json(page_of(
            5,
            vec![
                snapshot(804, "d", "completed"),
                snapshot(805, "e", "completed"),
            ],
            Some(next),
        )),
        _ => ResponseTemplate::new(404).set_body_json(json!({"detail": "Invalid page."})),
    })
    .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("changed while it was read") && text.contains("page 3"),
        "{text}"
    );
}

/// A `next` link that leads back to a page already read is a loop: an error at once, not
/// ten thousand pages of the same records.
#[tokio::test]
async fn a_next_link_already_followed_is_an_error_not_ten_thousand_pages() {
    let (server, client) = mock().await;
    let link = |c: &str| format!("{}/api/v1/snapshots/?cursor={c}", server.uri());
    Mock::given(method("GET"))
        .and(query_param_is_missing("cursor"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            3,
            vec![snapshot(801, "a", "completed")],
            Some(link("x")),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("cursor", "x"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            3,
            vec![snapshot(802, "b", "completed")],
            Some(link("y")),
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("cursor", "y"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
            3,
            vec![snapshot(803, "c", "completed")],
            Some(link("x")),
        )))
        .mount(&server)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("loop"), "{text}");
    assert_eq!(received(&server, "GET").await, 3);
}

/// A relative `next` link is followed from the page it came on; one that resolves to
/// another host is still refused (the token would go along).
#[tokio::test]
async fn a_relative_next_link_is_followed_from_its_page() {
    for (next, followed) in [
        ("/api/v1/snapshots/?cursor=2", true),
        ("?cursor=2", true),
        ("//elsewhere.test/api/v1/snapshots/?cursor=2", false),
    ] {
        let (server, client) = mock().await;
        Mock::given(method("GET"))
            .and(query_param_is_missing("cursor"))
            .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
                2,
                vec![snapshot(801, "a", "completed")],
                Some(next.to_owned()),
            )))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/api/v1/snapshots/"))
            .and(query_param("cursor", "2"))
            .respond_with(ResponseTemplate::new(200).set_body_json(page_of(
                2,
                vec![snapshot(802, "b", "completed")],
                None,
            )))
            .mount(&server)
            .await;

        let listed = client.list_snapshots(None).await;
        if followed {
            let ids: Vec<u64> = listed.unwrap().iter().map(|s| s.id).collect();
            assert_eq!(ids, [801, 802], "{next}");
        } else {
            let err = listed.unwrap_err().to_string();
            assert!(err.contains("refusing to follow"), "{next}: {err}");
        }
    }
}

/// A provider whose pages never end, each with new records, is stopped by what its `count`
/// promised (plus a margin), not by memory running out.
#[tokio::test]
async fn a_listing_with_far_more_records_than_its_count_is_an_error() {
    let (server, client) = mock().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .respond_with(move |request: &wiremock::Request| {
            let n: u64 = request
                .url
                .query_pairs()
                .find(|(k, _)| k == "cursor")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let results = (0..100)
                .map(|i| snapshot(1000 + n * 100 + i, &format!("s{n}-{i}"), "completed"))
                .collect();
            let next = format!("{base}/api/v1/snapshots/?cursor={}", n + 1);
            ResponseTemplate::new(200).set_body_json(page_of(200, results, Some(next)))
        })
        .mount(&server)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("more records than") && text.contains("200"),
        "{text}"
    );
    assert!(received(&server, "GET").await < 10);
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

/// `Retry-After` may be an HTTP date (RFC 9110): the wait until then is honoured, not
/// treated as no wait.
#[tokio::test]
async fn a_retry_after_given_as_a_date_is_the_wait_until_then() {
    let (server, client) = mock().await;
    let until = std::time::SystemTime::now() + Duration::from_secs(30);
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429).insert_header("Retry-After", httpdate::fmt_http_date(until)),
        )
        .mount(&server)
        .await;

    let err = client.inner().list_snapshots(None).await.unwrap_err();
    let ApiError::RateLimited {
        retry_after: Some(wait),
        ..
    } = err
    else {
        panic!("not a rate limit with a wait: {err}");
    };
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
        "{wait:?}"
    );
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

    let err = client.list_snapshots(Some(WEB)).await.unwrap_err();
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
    let client = http_provider(&config.api, loaded.clone()).unwrap();
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

// ---- answers that choose what is acted on ----

fn snapshot_of(server: ServerId, id: u64, name: &str) -> Value {
    let mut s = snapshot(id, name, "completed");
    s["server"] = json!({"id": server, "name": format!("server-{server}")});
    s
}

#[tokio::test]
async fn a_redirect_is_refused_and_its_target_gets_no_request() {
    let (server, client) = mock().await;
    let elsewhere = MockServer::start().await;
    let location = format!("{}/api/v1/snapshots/?server_id={WEB}", elsewhere.uri());
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", location.as_str()))
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(page(vec![snapshot(801, "a", "completed")], None)),
        )
        .mount(&elsewhere)
        .await;

    let err = client.list_snapshots(Some(WEB)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("redirect") && text.contains("refused") && text.contains(&location),
        "{text}"
    );
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(received(&elsewhere, "GET").await, 0);
    assert_eq!(
        received(&server, "GET").await,
        1,
        "a redirect is not retried"
    );
}

#[tokio::test]
async fn a_create_answer_for_another_server_or_name_is_refused() {
    for (server_id, name) in [(999, "nightly-20250115T030000Z"), (WEB, "someone-else")] {
        let (server, client) = mock().await;
        Mock::given(method("POST"))
            .and(path("/api/v1/snapshots/"))
            .respond_with(
                ResponseTemplate::new(201).set_body_json(snapshot_of(server_id, 777, name)),
            )
            .mount(&server)
            .await;

        let err = client
            .create_snapshot(&request("nightly-20250115T030000Z"))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
        assert!(
            text.contains("777") && text.contains(name) && text.contains(&server_id.to_string()),
            "names what came back: {text}"
        );
        assert_eq!(received(&server, "POST").await, 1);
    }
}

#[tokio::test]
async fn a_server_filtered_listing_drops_records_of_other_servers() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param("server_id", WEB.to_string()))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![
                snapshot_of(WEB, 801, "nightly-20250115T030000Z"),
                snapshot_of(999, 901, "nightly-20250114T030000Z"),
                snapshot_of(999, 902, "nightly-20250113T030000Z"),
            ],
            None,
        )))
        .mount(&server)
        .await;

    let listed = client.list_snapshots(Some(WEB)).await.unwrap();
    let ids: Vec<(u64, ServerId)> = listed.iter().map(|s| (s.id, s.server.id)).collect();
    assert_eq!(ids, [(801, WEB)]);
}

#[tokio::test]
async fn power_and_server_answers_about_another_server_are_refused() {
    let (server, client) = mock().await;
    let other = json!({"id": 999, "name": "db", "status": "stopping"});
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/servers/{WEB}/stop/")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "success", "server": other})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/api/v1/servers/{WEB}/start/")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"status": "success", "server": other})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/servers/{WEB}/")))
        .respond_with(ResponseTemplate::new(200).set_body_json(other.clone()))
        .mount(&server)
        .await;

    for err in [
        client.stop_server(WEB).await.unwrap_err(),
        client.start_server(WEB).await.unwrap_err(),
        client.get_server(WEB).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
        assert!(
            text.contains("server 999") && text.contains(&WEB.to_string()),
            "{text}"
        );
    }
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_refused_naming_the_limit() {
    let (server, client) = mock().await;
    let huge = format!(
        r#"{{"count": 1, "next": null, "results": [], "padding": "{}"}}"#,
        "x".repeat(33 << 20)
    );
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string(huge))
        .mount(&server)
        .await;

    let err = client.list_snapshots(None).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("32 MiB"), "{text}");
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn provider_error_text_is_escaped_and_shortened() {
    let (server, client) = mock().await;
    let detail = format!(
        "limit\n1999-01-01T00:00:00Z  INFO created nightly\u{1b}]0;x\u{7}\u{202e}{}",
        "y".repeat(2000)
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"detail": detail})))
        .mount(&server)
        .await;

    let err = client
        .create_snapshot(&request("nightly"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{text:?}"
    );
    assert!(text.contains(r"limit\n1999-01-01"), "{text}");
    assert!(
        text.chars().count() < 500,
        "{} characters",
        text.chars().count()
    );
}

// ---- one bad record ----

/// The account-wide listing the status poll makes for several servers, with `bad` among
/// good records of WEB and server 2.
async fn account_listing_with(bad: Value) -> (MockServer, Retrying<HttpClient>) {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param_is_missing("server_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![
                snapshot_of(WEB, 801, "nightly-20250115T030000Z"),
                bad,
                snapshot_of(2, 802, "nightly-20250115T030000Z"),
            ],
            None,
        )))
        .mount(&server)
        .await;
    (server, client)
}

#[tokio::test]
async fn a_malformed_record_of_an_unrelated_server_does_not_stop_the_listing() {
    let bad_ones = [
        ("created_at null", json!({"created_at": null})),
        ("server null", json!({"server": null})),
        ("size_mb too big", json!({"size_mb": 1e30})),
        ("size_mb a string", json!({"size_mb": "5 GB"})),
        ("id negative", json!({"id": -3})),
        ("a string", json!(null)),
    ];
    for (what, patch) in bad_ones {
        let mut bad = snapshot_of(999, 901, "hand-made");
        match patch.as_object() {
            Some(fields) => {
                for (k, v) in fields {
                    bad[k] = v.clone();
                }
            }
            None => bad = json!("not a snapshot"),
        }
        let (_server, client) = account_listing_with(bad).await;

        let listing = snapshot_scheduler::execute::list(&client, &[WEB, 2])
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(listing.server(WEB).len(), 1, "{what}");
        assert_eq!(listing.server(2).len(), 1, "{what}");
        let all = client.list_snapshots(None).await.unwrap();
        assert_eq!(all.len(), 2, "{what}");
    }
}

#[tokio::test]
async fn a_malformed_record_of_a_requested_server_is_an_error_naming_it() {
    let mut bad = snapshot_of(WEB, 805, "hand-made");
    bad["created_at"] = Value::Null;
    let (server, client) = account_listing_with(bad.clone()).await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(query_param("server_id", WEB.to_string()))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![bad], None)))
        .mount(&server)
        .await;

    let err = snapshot_scheduler::execute::list(&client, &[WEB, 2])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    assert!(
        text.contains("805") && text.contains("created_at"),
        "{text}"
    );

    let err = client.list_snapshots(Some(WEB)).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("805") && text.contains("created_at"),
        "{text}"
    );
}

#[tokio::test]
async fn a_fractional_size_mb_is_accepted_and_rounded_up() {
    let (server, client) = mock().await;
    let mut s = snapshot(801, "a", "completed");
    s["size_mb"] = json!(5120.5);
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![s], None)))
        .mount(&server)
        .await;

    let listed = client.list_snapshots(Some(WEB)).await.unwrap();
    assert_eq!(listed[0].size_mb, Some(5121));
}

// ---- TLS ----

/// A certificate authority made for the test, and a certificate for 127.0.0.1 it signed:
/// (the CA in PEM, the server's certificate and key).
fn private_ca() -> (
    String,
    rustls::pki_types::CertificateDer<'static>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "snapshot-scheduler test CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    (
        ca.pem(),
        server.der().clone(),
        rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
    )
}

/// An HTTPS server on 127.0.0.1 that answers every request with one listing page.
async fn serve_tls(
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    body: String,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_certified_by_a_ca_in_the_system_store_is_trusted() {
    let (ca_pem, cert, key) = private_ca();
    let body = page(
        vec![snapshot(801, "signed-by-the-private-ca", "completed")],
        None,
    );
    let addr = serve_tls(cert, key, body.to_string()).await;
    let scratch = Scratch::new();
    let ca_file = scratch.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let config = scratch.config(
        &common::config_with_policy(
            "name = \"nightly\"\nschedule = \"0 3 * * *\"\nservers = [12345]\nkeep = 3",
        )
        .replacen("\n[daemon]\n", "max_retries = 0\n\n[daemon]\n", 1),
        &format!("https://{addr}/api/v1"),
    );
    let list = |ca: Option<&std::path::Path>| {
        let mut cmd = common::bin();
        cmd.arg("--config").arg(&config).arg("list");
        match ca {
            // The system's store, as OpenSSL and rustls-native-certs read it.
            Some(file) => cmd.env("SSL_CERT_FILE", file),
            None => cmd.env("SSL_CERT_FILE", scratch.path().join("no-such-bundle.pem")),
        };
        cmd.env_remove("SSL_CERT_DIR");
        tokio::process::Command::from(cmd).output()
    };

    let trusted = list(Some(&ca_file)).await.unwrap();
    let untrusted = list(None).await.unwrap();

    let (out, err) = (common::stdout(&trusted), common::stderr(&trusted));
    assert!(trusted.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("signed-by-the-private-ca"), "{out}");
    let err = common::stderr(&untrusted);
    assert_eq!(untrusted.status.code(), Some(1), "{err}");
    assert!(
        err.contains("certificate"),
        "an unknown CA is still refused:\n{err}"
    );
}

/// A provider that quotes the request back (an error detail with the Authorization header, a
/// snapshot named after it) never puts the token into an error, a name, a log line, the run
/// log or an alert: everything it answers is read with the token replaced.
#[tokio::test]
async fn a_provider_that_echoes_the_token_back_never_gets_it_printed() {
    let (server, client) = mock().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/v1/servers/{WEB}/")))
        .respond_with(
            ResponseTemplate::new(400).set_body_json(
                json!({"detail": format!("bad request with header Bearer {TOKEN}")}),
            ),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(
            vec![snapshot(801, &format!("copy-of-{TOKEN}"), "completed")],
            None,
        )))
        .mount(&server)
        .await;

    let err = client.get_server(WEB).await.unwrap_err().to_string();
    assert!(!err.contains(TOKEN), "{err}");
    assert!(err.contains("Bearer [redacted]"), "{err}");
    let listed = client.list_snapshots(None).await.unwrap();
    assert_eq!(listed[0].name, "copy-of-[redacted]");
}

/// The token quoted back in another spelling (a JSON `\u` escape, upper case, URL-encoded)
/// is still never printed: the provider's text is searched after it is decoded.
#[tokio::test]
async fn a_provider_that_echoes_the_token_in_another_spelling_never_gets_it_printed() {
    let (server, client) = mock().await;
    let escaped = format!("\\u{:04x}{}", TOKEN.as_bytes()[0], &TOKEN[1..]);
    let encoded: String = url::form_urlencoded::byte_serialize(TOKEN.as_bytes()).collect();
    let body = format!(
        r#"{{"detail": "a {escaped} b {} c {encoded} d"}}"#,
        TOKEN.to_uppercase()
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_string(body))
        .mount(&server)
        .await;

    let err = client
        .create_snapshot(&request("nightly-20250115T023000Z"))
        .await
        .unwrap_err()
        .to_string();

    assert!(!err.to_lowercase().contains(TOKEN), "{err}");
    assert_eq!(err.matches("[redacted]").count(), 3, "{err}");
}

/// With `[ha]` every request names the host and the epoch it acts under, so the provider's
/// logs tell which host, under which leadership, sent each one; outside a term it is the
/// plain `User-Agent` again.
#[tokio::test]
async fn the_user_agent_names_the_acting_host_and_its_epoch() {
    let (server, client) = mock().await;
    let acting = format!("{USER_AGENT} (ops-1; epoch 42)");
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(header("user-agent", acting.as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![], None)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .and(header("user-agent", USER_AGENT))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![], None)))
        .expect(1)
        .mount(&server)
        .await;

    client.inner().set_acting_as(Some(("ops-1", 42)));
    client.list_snapshots(None).await.unwrap();
    client.inner().set_acting_as(None);
    client.list_snapshots(None).await.unwrap();
}
