use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use chrono::Utc;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::http::CREATE_MESSAGE;
use super::state::{FIRST_SNAPSHOT_ID, UNAUTHORIZED};
use super::*;
use crate::clock::{SystemClock, TokioClock};
use crate::model::{CreateSnapshot, PowerState, ServerId, SnapshotId, SnapshotStatus};
use crate::provider::{ApiError, Provider};
const WEB: ServerId = 12345;

fn quiet() -> SimConfig {
    SimConfig {
        example_snapshots: false,
        ..SimConfig::default()
    }
}

fn paused(config: SimConfig) -> Simulator {
    let clock = TokioClock::starting_at("2025-01-16T16:15:00Z".parse().unwrap());
    Simulator::with_server_ids(config, &[WEB], clock)
}

fn request(name: &str) -> CreateSnapshot {
    CreateSnapshot {
        server_id: WEB,
        name: name.to_owned(),
        description: None,
    }
}

async fn advance(d: Duration) {
    tokio::time::advance(d).await;
}

#[tokio::test(start_paused = true)]
async fn snapshot_completes_after_snapshot_duration_with_a_size() {
    let sim = paused(quiet());
    let created = sim.create_snapshot(&request("a")).await.unwrap();
    assert_eq!(created.id, FIRST_SNAPSHOT_ID);
    assert_eq!(created.status, SnapshotStatus::InProgress);
    assert_eq!(created.size_mb, None);
    assert_eq!(created.created_at.to_rfc3339(), "2025-01-16T16:15:00+00:00");
    advance(Duration::from_millis(2900)).await;
    assert_eq!(sim.snapshots(WEB)[0].status, SnapshotStatus::InProgress);
    advance(Duration::from_millis(100)).await;
    let done = &sim.list_snapshots(Some(WEB)).await.unwrap()[0];
    assert_eq!(done.status, SnapshotStatus::Completed);
    assert!(done.size_mb.is_some_and(|mb| mb > 1000));
}

#[tokio::test(start_paused = true)]
async fn failure_rate_one_ends_failed_without_size() {
    let sim = paused(SimConfig {
        failure_rate: 1.0,
        ..quiet()
    });
    sim.create_snapshot(&request("a")).await.unwrap();
    advance(Duration::from_secs(3)).await;
    let snap = &sim.snapshots(WEB)[0];
    assert_eq!(
        (snap.status.clone(), snap.size_mb),
        (SnapshotStatus::Failed, None)
    );
}

#[tokio::test(start_paused = true)]
async fn examples_count_toward_the_cap_of_five() {
    let sim = paused(SimConfig::default());
    let examples = sim.snapshots(WEB);
    let names: Vec<&str> = examples.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["weekly-snapshot-2025-01-08", "pre-migration-snapshot"]
    );
    assert_eq!(examples[0].id, 800);
    for name in ["a", "b", "c"] {
        sim.create_snapshot(&request(name)).await.unwrap();
        advance(Duration::from_secs(3)).await;
    }
    let err = sim.create_snapshot(&request("d")).await.unwrap_err();
    assert!(matches!(&err, ApiError::BadRequest { message, .. }
        if message == "snapshot limit reached (5 per server)"));
    assert_eq!(sim.stats().cap_refusals, 1);
}

#[tokio::test(start_paused = true)]
async fn second_create_while_in_progress_is_refused_and_duplicates_are_counted() {
    let sim = paused(quiet());
    sim.create_snapshot(&request("a")).await.unwrap();
    let err = sim.create_snapshot(&request("b")).await.unwrap_err();
    assert!(err.to_string().contains("already in progress"), "{err}");
    advance(Duration::from_secs(3)).await;
    sim.create_snapshot(&request("a")).await.unwrap();
    let stats = sim.stats();
    assert_eq!((stats.in_progress_refusals, stats.duplicate_names), (1, 1));
    assert_eq!(stats.request_count("create"), 3);
}

#[tokio::test(start_paused = true)]
async fn bad_names_unknown_ids_and_in_progress_deletes_are_refused() {
    let sim = paused(quiet());
    let bad = sim.create_snapshot(&request("no spaces")).await;
    assert!(matches!(bad, Err(ApiError::BadRequest { .. })));
    let mut elsewhere = request("a");
    elsewhere.server_id = 1;
    let missing = sim.create_snapshot(&elsewhere).await;
    assert!(matches!(missing, Err(ApiError::NotFound { .. })));
    let id = sim.create_snapshot(&request("a")).await.unwrap().id;
    let busy = sim.delete_snapshot(id).await;
    assert!(matches!(busy, Err(ApiError::BadRequest { .. })));
    assert!(matches!(
        sim.delete_snapshot(9999).await,
        Err(ApiError::NotFound { .. })
    ));
    advance(Duration::from_secs(3)).await;
    sim.delete_snapshot(id).await.unwrap();
    let deleted = &sim.stats().deleted;
    assert_eq!(deleted.len(), 1);
    assert_eq!(
        (deleted[0].id, deleted[0].status.clone()),
        (id, SnapshotStatus::Completed)
    );
    assert!(sim.snapshots(WEB).is_empty());
}

/// Lax mode lets through what the provider refuses, so a test can judge what was asked for
/// (a refusal would hide it).
#[tokio::test(start_paused = true)]
async fn lax_mode_carries_out_a_create_while_in_progress_a_sixth_and_an_in_progress_delete() {
    let sim = paused(SimConfig {
        lax: true,
        ..quiet()
    });
    let first = sim.create_snapshot(&request("a")).await.unwrap().id;
    for name in ["b", "c", "d", "e", "f"] {
        sim.create_snapshot(&request(name)).await.unwrap();
    }
    assert_eq!(sim.snapshots(WEB).len(), 6);
    sim.delete_snapshot(first).await.unwrap();
    let stats = sim.stats();
    assert_eq!((stats.cap_refusals, stats.in_progress_refusals), (0, 0));
    assert_eq!(stats.deleted[0].status, SnapshotStatus::InProgress);
    assert_eq!(sim.snapshots(WEB).len(), 5);
}

#[tokio::test(start_paused = true)]
async fn stop_and_start_take_power_delay_and_downtime_is_measured() {
    let sim = paused(quiet());
    assert!(matches!(
        sim.start_server(WEB).await,
        Err(ApiError::BadRequest { .. })
    ));
    let stopping = sim.stop_server(WEB).await.unwrap();
    assert_eq!(stopping.status, PowerState::Stopping);
    assert!(matches!(
        sim.stop_server(WEB).await,
        Err(ApiError::BadRequest { .. })
    ));
    advance(Duration::from_secs(2)).await;
    assert_eq!(
        sim.get_server(WEB).await.unwrap().status,
        PowerState::Stopped
    );
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        sim.start_server(WEB).await.unwrap().status,
        PowerState::Starting
    );
    advance(Duration::from_secs(5)).await;
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    let downtime = sim.stats().downtime(WEB);
    assert_eq!(downtime.len(), 1);
    // Stop accepted at 0 s, running again when starting ended at 12 + 2 s.
    assert_eq!(downtime[0].duration(), Some(Duration::from_secs(14)));
}

#[tokio::test(start_paused = true)]
async fn restore_runs_for_restore_duration_and_refuses_busy_servers() {
    let sim = paused(SimConfig::default());
    let snap = sim.snapshots(WEB)[1].id;
    let started = sim.restore_snapshot(snap).await.unwrap();
    assert_eq!(started.server.status, PowerState::Restoring);
    assert!(matches!(
        sim.restore_snapshot(snap).await,
        Err(ApiError::BadRequest { .. })
    ));
    advance(Duration::from_secs(5)).await;
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);
    let stuck = sim.add_snapshot(WEB, "x", SnapshotStatus::InProgress, Utc::now());
    assert!(matches!(
        sim.restore_snapshot(stuck).await,
        Err(ApiError::BadRequest { .. })
    ));
    assert!(matches!(
        sim.restore_snapshot(1).await,
        Err(ApiError::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn rate_limit_answers_429_with_whole_seconds_then_recovers() {
    let sim = paused(SimConfig {
        rate_limit: Some(0.5),
        ..quiet()
    });
    sim.get_server(WEB).await.unwrap();
    let err = sim.get_server(WEB).await.unwrap_err();
    assert!(
        matches!(err, ApiError::RateLimited { retry_after: Some(d), .. }
        if d == Duration::from_secs(2))
    );
    advance(Duration::from_secs(2)).await;
    sim.get_server(WEB).await.unwrap();
    assert_eq!(sim.stats().fault_count("rate_limited"), 1);
}

#[tokio::test(start_paused = true)]
async fn errors_do_nothing_and_lost_creates_still_apply() {
    let sim = paused(SimConfig {
        error_rate: 1.0,
        ..quiet()
    });
    let err = sim.create_snapshot(&request("a")).await.unwrap_err();
    assert!(err.outcome_unknown() && sim.snapshots(WEB).is_empty());
    sim.set_config(|c| {
        c.error_rate = 0.0;
        c.lost_create_rate = 1.0;
    });
    let err = sim.create_snapshot(&request("a")).await.unwrap_err();
    assert!(matches!(err, ApiError::Server { status: 504, .. }));
    assert_eq!(sim.snapshots(WEB).len(), 1);
    let stats = sim.stats();
    assert_eq!(
        (
            stats.fault_count("error_5xx"),
            stats.fault_count("lost_create")
        ),
        (1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn latency_delays_every_request() {
    let sim = paused(SimConfig {
        latency: Duration::from_millis(250),
        ..quiet()
    });
    let start = Instant::now();
    sim.get_server(WEB).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_replays_the_same_faults() {
    async fn outcomes(seed: u64) -> Vec<bool> {
        let sim = paused(SimConfig {
            seed,
            error_rate: 0.5,
            ..quiet()
        });
        let mut seen = Vec::new();
        for _ in 0..32 {
            seen.push(sim.get_server(WEB).await.is_ok());
        }
        seen
    }
    let first = outcomes(7).await;
    assert_eq!(first, outcomes(7).await);
    assert!(first.contains(&true) && first.contains(&false));
}

// ---- over HTTP, on a real socket ----

async fn served(config: SimConfig, ids: &[ServerId]) -> (Simulator, String) {
    let sim = Simulator::with_server_ids(config, ids, Arc::new(SystemClock));
    let (addr, _) = serve(sim.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    (sim, base_url(addr))
}

fn authed(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    builder.bearer_auth("simulated-token")
}

#[tokio::test]
async fn http_pages_follow_absolute_next_links() {
    let config = SimConfig {
        page_size: 2,
        ..SimConfig::default()
    };
    let (_sim, base) = served(config, &[1, 2, 3]).await;
    let http = reqwest::Client::new();
    let mut url = format!("{base}/snapshots/");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = authed(http.get(&url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["count"], 5);
        pages += 1;
        seen.extend(
            page["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["id"].as_u64()),
        );
        match page["next"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&base), "{next}");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 5));
    let last: Value = authed(http.get(&url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(last["previous"], format!("{base}/snapshots/?page=2"));
    let one: Value = authed(http.get(format!("{base}/snapshots/?server_id=2")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["count"].as_u64(), one["next"].is_null()),
        (Some(1), true)
    );
    let beyond = authed(http.get(format!("{base}/snapshots/?page=9")))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 404);
}

#[tokio::test]
async fn http_without_or_with_a_wrong_token_is_401() {
    let (_sim, base) = served(quiet(), &[WEB]).await;
    let http = reqwest::Client::new();
    for request in [
        http.get(format!("{base}/servers/{WEB}/")),
        http.post(format!("{base}/snapshots/")).bearer_auth("wrong"),
    ] {
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["detail"], UNAUTHORIZED);
    }
}

#[tokio::test]
async fn http_create_is_201_in_progress_and_the_cap_is_400() {
    let config = SimConfig {
        refuse_create_while_in_progress: false,
        ..SimConfig::default()
    };
    let (_sim, base) = served(config, &[WEB]).await;
    let http = reqwest::Client::new();
    let create = |name: &str| {
        authed(http.post(format!("{base}/snapshots/")))
            .json(&json!({ "server_id": WEB, "name": name, "description": "d" }))
            .send()
    };
    let answer = create("before-update-snapshot").await.unwrap();
    assert_eq!(answer.status(), 201);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["size_mb"].is_null()),
        (Some("in_progress"), true)
    );
    assert_eq!(body["server"]["name"], format!("web-{WEB}"));
    assert_eq!(body["message"], CREATE_MESSAGE);
    create("b").await.unwrap();
    create("c").await.unwrap();
    let refused = create("d").await.unwrap();
    assert_eq!(refused.status(), 400);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["detail"], "snapshot limit reached (5 per server)");
    let unknown = authed(http.post(format!("{base}/snapshots/")))
        .json(&json!({ "server_id": 1, "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn http_lost_create_answers_504_but_the_snapshot_exists() {
    let config = SimConfig {
        lost_create_rate: 1.0,
        ..quiet()
    };
    let (sim, base) = served(config, &[WEB]).await;
    let answer = authed(reqwest::Client::new().post(format!("{base}/snapshots/")))
        .json(&json!({ "server_id": WEB, "name": "lost" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 504);
    assert!(answer
        .text()
        .await
        .unwrap()
        .contains("504 Gateway Time-out"));
    assert_eq!(sim.snapshots(WEB)[0].name, "lost");
}

#[tokio::test]
async fn http_delete_in_progress_is_400_and_completed_is_204() {
    let (sim, base) = served(quiet(), &[WEB]).await;
    let busy = sim.add_snapshot(WEB, "busy", SnapshotStatus::InProgress, Utc::now());
    let done = sim.add_snapshot(WEB, "done", SnapshotStatus::Completed, Utc::now());
    let http = reqwest::Client::new();
    let delete = |id: SnapshotId| authed(http.delete(format!("{base}/snapshots/{id}/"))).send();
    let refused = delete(busy).await.unwrap();
    assert_eq!(refused.status(), 400);
    let deleted = delete(done).await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert!(deleted.bytes().await.unwrap().is_empty());
    assert_eq!(delete(done).await.unwrap().status(), 404);
    assert_eq!(sim.stats().request_count("delete"), 3);
}

#[tokio::test]
async fn http_stop_start_restore_and_429_answer_as_documented() {
    let config = SimConfig {
        power_delay: Duration::from_millis(50),
        restore_duration: Duration::from_millis(50),
        ..SimConfig::default()
    };
    let (sim, base) = served(config, &[WEB]).await;
    let http = reqwest::Client::new();
    let post = |path: String| authed(http.post(format!("{base}{path}"))).send();
    let stop: Value = post(format!("/servers/{WEB}/stop/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stop,
        json!({"status": "success",
        "server": {"id": WEB, "name": format!("web-{WEB}"), "status": "stopping"}})
    );
    assert_eq!(
        post(format!("/servers/{WEB}/stop/"))
            .await
            .unwrap()
            .status(),
        400
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    let server: Value = authed(http.get(format!("{base}/servers/{WEB}/")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(server["status"], "stopped");
    let start: Value = post(format!("/servers/{WEB}/start/"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(start["server"]["status"], "starting");
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(sim.server(WEB).unwrap().status, PowerState::Running);

    let snap = sim.snapshots(WEB)[1].clone();
    let restore: Value = post(format!("/snapshots/{}/restore/", snap.id))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restore["status"], "success");
    assert_eq!(restore["snapshot"]["name"], "pre-migration-snapshot");
    assert_eq!(restore["server"]["status"], "restoring");

    sim.set_config(|c| c.burst_429_rate = 1.0);
    let throttled = post(format!("/servers/{WEB}/start/")).await.unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()[header::RETRY_AFTER], "1");
}
