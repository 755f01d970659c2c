//! A provider whose answers are hostile or broken: a redirect to another origin, text that
//! would forge log lines or drive the terminal, a record that does not fit. The real binary
//! against a scripted provider (wiremock); what a user would notice is asserted: the exit
//! code, what is printed and logged, and what the provider was asked to do.

use serde_json::{json, Value};
use snapshot_scheduler::model::ServerId;
use wiremock::matchers::{any, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::{bin, fast_config, policy, stderr, stdout, Scratch};

const WEB: ServerId = 12345;

fn snapshot(server: ServerId, id: u64, name: &str) -> Value {
    json!({
        "id": id,
        "server": {"id": server, "name": "web-server-01"},
        "name": name,
        "status": "completed",
        "size_mb": 5120,
        "created_at": "2025-01-15T18:30:00Z",
        "description": null,
    })
}

fn page(results: Vec<Value>) -> Value {
    json!({"count": results.len(), "next": null, "previous": null, "results": results})
}

/// The binary with these arguments against a config whose one policy (`nightly`, keep 2)
/// covers WEB on `provider`; stdout and stderr, and the exit code.
async fn run(
    provider: &MockServer,
    scratch: &Scratch,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let config = scratch.config(
        &fast_config(&policy("nightly", "0 3 * * *", &[WEB], ""), ""),
        &format!("{}/api/v1", provider.uri()),
    );
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&config)
        .args(["--log-format", "text"])
        .args(args);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("the binary runs");
    (out.status.code(), stdout(&out), stderr(&out))
}

async fn requests(server: &MockServer, verb: &str) -> Vec<String> {
    server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == verb)
        .map(|r| r.url.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_refuses_a_redirected_listing_and_deletes_nothing() {
    let provider = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    let location = format!("{}/api/v1/snapshots/?server_id={WEB}", elsewhere.uri());
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(302).insert_header("Location", location.as_str()))
        .mount(&provider)
        .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&provider)
        .await;
    // Elsewhere, the server is at the cap with snapshots named like ours (ids that exist on
    // the real provider): followed, this listing makes room by deleting one.
    let full: Vec<Value> = (1..=5)
        .map(|d| snapshot(WEB, 800 + d, &format!("nightly-2025011{d}T030000Z")))
        .collect();
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_json(page(full)))
        .mount(&elsewhere)
        .await;
    let scratch = Scratch::new();

    let (code, out, err) = run(&provider, &scratch, &["once"]).await;

    let text = format!("{out}{err}");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("redirect") && text.contains("refused") && text.contains(&location),
        "the error names the redirect and its target:\n{text}"
    );
    assert_eq!(requests(&provider, "DELETE").await, Vec::<String>::new());
    assert_eq!(requests(&provider, "POST").await, Vec::<String>::new());
    assert!(
        elsewhere
            .received_requests()
            .await
            .expect("recorded")
            .is_empty(),
        "the redirect was followed"
    );
}

const FORGED: &str = "1999-01-01T00:00:00.000000Z  INFO rotation: created nightly-19990101T000000Z";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_error_text_cannot_forge_log_lines_or_reach_the_terminal() {
    let provider = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![])))
        .mount(&provider)
        .await;
    let detail = format!("limit reached\n{FORGED}\u{1b}]0;owned\u{7}\u{1b}[2J\u{202e}");
    Mock::given(method("POST"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"detail": detail})))
        .mount(&provider)
        .await;
    let scratch = Scratch::new();

    let (code, out, err) = run(&provider, &scratch, &["once"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    // `status` shows the failure from the run log that `once` wrote.
    let (status_code, status_out, status_err) = run(&provider, &scratch, &["status"]).await;
    assert_eq!(status_code, Some(0), "{status_out}{status_err}");

    for (what, text) in [
        ("the once summary", &out),
        ("the once log", &err),
        ("status", &status_out),
        ("the status log", &status_err),
    ] {
        assert!(
            !text.contains(['\u{1b}', '\u{7}', '\u{202e}']),
            "{what} carries raw escapes: {text:?}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.trim_start().starts_with("1999-01-01")),
            "{what} has a forged line:\n{text}"
        );
    }
    assert!(out.contains(r"limit reached\n1999-01-01"), "{out}");
    assert!(
        status_out.contains(r"limit reached\n1999-01-01"),
        "{status_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_plan_print_names_with_bidi_and_control_characters_escaped() {
    let provider = MockServer::start().await;
    let mut s = snapshot(WEB, 801, "invoice\u{202e}fdp.exe");
    s["server"]["name"] = json!("web\u{1b}[2J\u{1b}]0;owned\u{7}");
    s["status"] = json!("archiving\u{2066}");
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![s])))
        .mount(&provider)
        .await;
    let scratch = Scratch::new();

    for command in ["list", "plan"] {
        let (code, out, err) = run(&provider, &scratch, &[command]).await;
        assert_eq!(code, Some(0), "{command}: {out}{err}");
        assert!(out.contains(r"invoice\u{202e}fdp.exe"), "{command}:\n{out}");
        for text in [&out, &err] {
            assert!(
                !text.contains(['\u{1b}', '\u{7}', '\u{202e}', '\u{2066}']),
                "{command} prints raw escapes: {text:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_skips_a_malformed_record_of_another_server_with_a_warning() {
    let provider = MockServer::start().await;
    let mut bad = snapshot(999, 901, "hand-made");
    bad["created_at"] = Value::Null;
    Mock::given(method("GET"))
        .and(path("/api/v1/snapshots/"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(vec![
            snapshot(WEB, 801, "pre-migration-snapshot"),
            bad,
        ])))
        .mount(&provider)
        .await;
    let scratch = Scratch::new();

    let (code, out, err) = run(&provider, &scratch, &["list"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("pre-migration-snapshot"), "{out}");
    assert!(
        err.contains("WARN") && err.contains("901") && err.contains("created_at"),
        "the skipped record is named:\n{err}"
    );
}
