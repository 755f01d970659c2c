//! The etcd client against a real etcd: one winner per election, leases that expire unless kept
//! alive, writes fenced by the leader's epoch, endpoints passed over when closed, and answers
//! that are not etcd's refused with an error naming the call.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::json;
use snapshot_scheduler::etcd::{CreateOutcome, ErrorKind, Etcd, EtcdError, KeyChange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use url::Url;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::etcd_support::{free_port, EtcdServer};

const LEADER: &str = "/snapshot-scheduler/test/leader";

fn client(endpoints: &[&Url]) -> Etcd {
    let endpoints = endpoints.iter().map(|u| (*u).clone()).collect();
    Etcd::new(endpoints, Duration::from_secs(5), None).expect("client")
}

/// Polls `done` every 100 ms until it holds; fails after `within`.
async fn eventually<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_clients_racing_for_the_leader_key_elect_exactly_one() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (one, two) = (client(&[&etcd.url]), client(&[&etcd.url]));
    let lease_one = one.grant(Duration::from_secs(10)).await.expect("grant");
    let lease_two = two.grant(Duration::from_secs(10)).await.expect("grant");
    let (a, b) = tokio::join!(
        one.create_if_absent(LEADER, "ops-1", lease_one),
        two.create_if_absent(LEADER, "ops-2", lease_two),
    );
    let outcomes = [a.expect("ops-1 campaigns"), b.expect("ops-2 campaigns")];
    let (winner, revision, loser) = match &outcomes {
        [CreateOutcome::Created { revision }, loser] => ("ops-1", *revision, loser),
        [loser, CreateOutcome::Created { revision }] => ("ops-2", *revision, loser),
        other => panic!("not exactly one created the key: {other:?}"),
    };
    assert_eq!(
        loser,
        &CreateOutcome::Exists {
            value: winner.to_owned(),
            create_revision: revision
        },
        "the loser must see the winner and its epoch"
    );
    let kv = one.get(LEADER).await.expect("get").expect("the key exists");
    assert_eq!((kv.value.as_str(), kv.create_revision), (winner, revision));
}

#[tokio::test]
async fn a_lease_not_kept_alive_expires_and_takes_its_key() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let etcd_client = client(&[&etcd.url]);
    let lease = etcd_client
        .grant(Duration::from_secs(2))
        .await
        .expect("grant");
    let created = etcd_client
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign");
    assert!(
        matches!(created, CreateOutcome::Created { .. }),
        "{created:?}"
    );
    eventually(
        "the key of an expired lease is gone",
        Duration::from_secs(10),
        || async { etcd_client.get(LEADER).await.expect("get").is_none() },
    )
    .await;
    let gone = etcd_client.keep_alive(lease).await.expect_err("lease gone");
    assert!(
        matches!(gone.kind, ErrorKind::LeaseGone(l) if l == lease),
        "{gone}"
    );
    assert!(gone.to_string().contains("keep_alive"), "{gone}");
}

#[tokio::test]
async fn a_lease_kept_alive_outlives_three_times_its_ttl() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let etcd_client = client(&[&etcd.url]);
    let ttl = Duration::from_secs(2);
    let lease = etcd_client.grant(ttl).await.expect("grant");
    etcd_client
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign");
    let until = tokio::time::Instant::now() + 3 * ttl;
    while tokio::time::Instant::now() < until {
        let remaining = etcd_client.keep_alive(lease).await.expect("kept alive");
        assert!(
            remaining > Duration::ZERO && remaining <= ttl,
            "{remaining:?}"
        );
        tokio::time::sleep(ttl / 4).await;
    }
    let kv = etcd_client.get(LEADER).await.expect("get");
    assert_eq!(kv.map(|kv| kv.value), Some("ops-1".to_owned()));
}

#[tokio::test]
async fn a_fenced_write_is_refused_once_another_client_leads() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (old, new) = (client(&[&etcd.url]), client(&[&etcd.url]));
    let lease = old.grant(Duration::from_secs(10)).await.expect("grant");
    let CreateOutcome::Created { revision: epoch } = old
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign")
    else {
        panic!("a fresh etcd has no leader");
    };

    let applied = old
        .txn_if_leader(LEADER, epoch, lease, &[("/journal/web", "stopped")], &[])
        .await
        .expect("fenced write");
    assert!(applied, "the leader's write with its own epoch is applied");
    let applied = old
        .txn_if_leader(
            LEADER,
            epoch,
            lease,
            &[("/slot/web", "2026-01-01")],
            &["/journal/web"],
        )
        .await
        .expect("fenced write");
    assert!(applied);
    assert_eq!(old.get("/journal/web").await.expect("get"), None, "deleted");

    // The old leader's lease is lost; another client takes over (a new create_revision).
    old.revoke(lease).await.expect("revoke");
    let new_lease = new.grant(Duration::from_secs(10)).await.expect("grant");
    let CreateOutcome::Created {
        revision: new_epoch,
    } = new
        .create_if_absent(LEADER, "ops-2", new_lease)
        .await
        .expect("campaign")
    else {
        panic!("the key was free");
    };
    assert!(new_epoch > epoch);

    let applied = old
        .txn_if_leader(
            LEADER,
            epoch,
            lease,
            &[("/journal/db", "stopped")],
            &["/slot/web"],
        )
        .await
        .expect("fenced write");
    assert!(!applied, "a write with the old epoch must be refused");
    assert_eq!(
        old.get("/journal/db").await.expect("get"),
        None,
        "nothing put"
    );
    let slot = old
        .get("/slot/web")
        .await
        .expect("get")
        .expect("not deleted");
    assert_eq!(slot.value, "2026-01-01");
    // The new epoch with the old lease (as after a wipe of etcd, whose revisions start again)
    // is not the leader either.
    assert!(!old
        .txn_if_leader(LEADER, new_epoch, lease, &[("/journal/db", "stopped")], &[])
        .await
        .expect("fenced write"));
    assert!(new
        .txn_if_leader(
            LEADER,
            new_epoch,
            new_lease,
            &[("/journal/db", "stopped")],
            &[]
        )
        .await
        .expect("fenced write"));
    // An epoch of 0 (an absent key's create_revision) never leads.
    assert!(!old
        .txn_if_leader("/nobody", 0, lease, &[("/x", "y")], &[])
        .await
        .expect("txn"));
    assert_eq!(old.get("/x").await.expect("get"), None);
}

#[tokio::test]
async fn revoking_the_lease_deletes_the_leader_key_at_once() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (leader, standby) = (client(&[&etcd.url]), client(&[&etcd.url]));
    let lease = leader.grant(Duration::from_secs(60)).await.expect("grant");
    leader
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign");
    let seen = standby.get(LEADER).await.expect("get").expect("a leader");
    let waiting = standby.wait_for_change(LEADER, seen.mod_revision, Duration::from_secs(5));

    let revoked = async {
        // The standby is polling by now, and sees nothing change while the lease lives.
        tokio::time::sleep(Duration::from_millis(600)).await;
        leader.revoke(lease).await.expect("revoke");
        tokio::time::Instant::now()
    };
    let (change, revoked_at) = tokio::join!(waiting, revoked);
    assert_eq!(change.expect("wait"), KeyChange::Changed(None));
    assert!(revoked_at.elapsed() < Duration::from_secs(2), "seen late");
    assert_eq!(
        leader.get(LEADER).await.expect("get"),
        None,
        "key gone at once"
    );
    let gone = leader.keep_alive(lease).await.expect_err("revoked");
    assert!(matches!(gone.kind, ErrorKind::LeaseGone(_)), "{gone}");
    let gone = leader.revoke(lease).await.expect_err("revoked twice");
    assert!(matches!(gone.kind, ErrorKind::LeaseGone(_)), "{gone}");
}

#[tokio::test]
async fn waiting_for_an_unchanged_key_ends_at_the_timeout() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let etcd_client = client(&[&etcd.url]);
    let lease = etcd_client
        .grant(Duration::from_secs(30))
        .await
        .expect("grant");
    etcd_client
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign");
    let seen = etcd_client
        .get(LEADER)
        .await
        .expect("get")
        .expect("a leader");
    let started = tokio::time::Instant::now();
    let change = etcd_client
        .wait_for_change(LEADER, seen.mod_revision, Duration::from_millis(700))
        .await
        .expect("wait");
    assert_eq!(change, KeyChange::Unchanged);
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(started.elapsed() < Duration::from_secs(3), "it must end");
}

/// A member that takes connections and never answers (a frozen VM, a stalled disk) costs one
/// request its timeout; the next request goes to the next member. Asked again and again, it
/// held the whole cluster while the other members had quorum.
#[tokio::test]
async fn a_member_that_never_answers_is_passed_over_after_one_timeout() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = Url::parse(&format!("http://{}", silent.local_addr().unwrap())).unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let endpoints = vec![silent_url.clone(), etcd.url.clone()];
    let etcd_client = Etcd::new(endpoints, Duration::from_secs(1), None).expect("client");
    let first = etcd_client.get(LEADER).await;
    assert!(first.is_err(), "{first:?}");
    for _ in 0..3 {
        let next = etcd_client.get(LEADER).await;
        assert!(matches!(next, Ok(None)), "{next:?}");
    }
    held.abort();
}

#[tokio::test]
async fn a_closed_first_endpoint_is_passed_over_for_the_next() {
    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let closed = Url::parse(&format!("http://127.0.0.1:{}", free_port())).expect("url");
    let etcd_client = client(&[&closed, &etcd.url]);
    let lease = etcd_client
        .grant(Duration::from_secs(10))
        .await
        .expect("grant through the second endpoint");
    etcd_client
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("campaign");
    assert_eq!(
        etcd_client
            .get(LEADER)
            .await
            .expect("get")
            .map(|kv| kv.value),
        Some("ops-1".to_owned())
    );

    let nowhere = client(&[&closed]);
    let err = nowhere.get(LEADER).await.expect_err("nothing listens");
    assert!(matches!(err.kind, ErrorKind::Unreachable(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("etcd get") && text.contains(closed.as_str()),
        "{text}"
    );
}

/// An error from `etcd` asked by `call` at an endpoint answering `body`.
async fn error_for(body: &'static str) -> EtcdError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    let url = Url::parse(&server.uri()).expect("url");
    client(&[&url])
        .grant(Duration::from_secs(5))
        .await
        .expect_err("not an etcd answer")
}

#[tokio::test]
async fn an_answer_that_is_not_etcds_is_an_error_naming_the_call_and_field() {
    let not_json = error_for("<html>502 Bad Gateway</html>").await;
    assert!(
        matches!(not_json.kind, ErrorKind::Malformed(_)),
        "{not_json}"
    );
    assert!(
        not_json
            .to_string()
            .starts_with("etcd grant at http://127.0.0.1:"),
        "{not_json}"
    );

    let no_id = error_for(r#"{"header":{"revision":"1"},"TTL":"5"}"#).await;
    assert!(no_id.to_string().contains("`ID`"), "{no_id}");
    let bad_id = error_for(r#"{"header":{"revision":"1"},"ID":"many","TTL":"5"}"#).await;
    assert!(
        bad_id.to_string().contains("ID") && bad_id.to_string().contains("many"),
        "{bad_id}"
    );

    // A key whose revisions are missing, from a range.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/kv/range"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "header": {"revision": "3"}, "kvs": [{"key": "eA==", "mod_revision": "2"}]
        })))
        .mount(&server)
        .await;
    let url = Url::parse(&server.uri()).expect("url");
    let err = client(&[&url])
        .get("x")
        .await
        .expect_err("no create_revision");
    let text = err.to_string();
    assert!(
        text.contains("etcd get") && text.contains("create_revision"),
        "{text}"
    );

    // Any HTTP server answering `{}`: no `header`, so not etcd (not "no leader").
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v3/kv/range"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .mount(&server)
        .await;
    let url = Url::parse(&server.uri()).expect("url");
    let err = client(&[&url]).get("x").await.expect_err("not etcd");
    assert!(err.to_string().contains("header"), "{err}");

    // An answer cut off mid-body: the connection closes before the announced length.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"header\":{\"rev")
                .await;
        }
    });
    let url = Url::parse(&format!("http://{addr}")).expect("url");
    let err = client(&[&url])
        .keep_alive(snapshot_scheduler::etcd::LeaseId(7))
        .await;
    let err = err.expect_err("truncated");
    assert!(matches!(err.kind, ErrorKind::Transport(_)), "{err}");
    assert!(err.to_string().contains("etcd keep_alive at"), "{err}");
}

#[tokio::test]
async fn etcd_s_own_words_reach_the_error_of_a_keep_alive() {
    let server = MockServer::start().await;
    let no_leader =
        json!({"error": {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader"}});
    Mock::given(method("POST"))
        .and(path("/v3/lease/keepalive"))
        .respond_with(ResponseTemplate::new(503).set_body_json(&no_leader))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v3/lease/keepalive"))
        .respond_with(ResponseTemplate::new(200).set_body_json(&no_leader))
        .mount(&server)
        .await;
    let url = Url::parse(&server.uri()).expect("url");
    let etcd_client = client(&[&url]);
    for status in [503, 200] {
        let err = etcd_client
            .keep_alive(snapshot_scheduler::etcd::LeaseId(7))
            .await;
        let err = err.expect_err("no leader");
        let words = matches!(&err.kind, ErrorKind::Refused { message, .. }
            if message == "etcdserver: no leader");
        assert!(words, "{status}: etcd's words, not the whole answer: {err}");
        let text = err.to_string();
        assert!(
            text.contains("etcd keep_alive at") && text.contains("etcdserver: no leader"),
            "{status}: {text}"
        );
    }
}

/// Turns auth on in `etcd` with a root user whose password is `password`.
async fn enable_auth(etcd: &EtcdServer, password: &str) {
    let http = reqwest::Client::new();
    for (call, body) in [
        (
            "auth/user/add",
            json!({"name": "root", "password": password}),
        ),
        ("auth/user/grant", json!({"user": "root", "role": "root"})),
        ("auth/enable", json!({})),
    ] {
        let url = etcd.url.join(&format!("v3/{call}")).expect("url");
        let answer = http.post(url).json(&body).send().await.expect(call);
        assert!(answer.status().is_success(), "{call}: {answer:?}");
    }
}

#[tokio::test]
async fn with_auth_a_token_is_fetched_renewed_when_stale_and_the_password_never_shows() {
    // Tokens live one second, so the second call below needs a fresh one.
    let Some(etcd) = EtcdServer::start(&["--auth-token-ttl", "1"]).await else {
        return;
    };
    let password = "pw-5e1f0c-secret";
    enable_auth(&etcd, password).await;
    let auth = |pw: &str| Some(("root".to_owned(), SecretString::from(pw.to_owned())));
    let urls = vec![etcd.url.clone()];
    let etcd_client =
        Etcd::new(urls.clone(), Duration::from_secs(5), auth(password)).expect("client");
    assert!(!format!("{etcd_client:?}").contains(password));

    let lease = etcd_client
        .grant(Duration::from_secs(30))
        .await
        .expect("grant with auth");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let created = etcd_client
        .create_if_absent(LEADER, "ops-1", lease)
        .await
        .expect("a stale token is replaced");
    assert!(matches!(created, CreateOutcome::Created { .. }));
    // etcd 3.4 checks no token on lease calls: a read shows the renewal again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let leader = etcd_client
        .get(LEADER)
        .await
        .expect("a stale token is replaced again");
    assert_eq!(leader.map(|kv| kv.value), Some("ops-1".to_owned()));

    let unauthenticated = client(&[&etcd.url])
        .get(LEADER)
        .await
        .expect_err("auth is on");
    assert!(
        matches!(unauthenticated.kind, ErrorKind::Refused { .. }),
        "{unauthenticated}"
    );

    let wrong = "wrong-9d2b7a-secret";
    let refused = Etcd::new(urls, Duration::from_secs(5), auth(wrong))
        .expect("client")
        .get(LEADER)
        .await
        .expect_err("wrong password");
    let text = format!("{refused} {refused:?}");
    assert!(
        text.contains("etcd authenticate") && text.contains("authentication failed"),
        "{text}"
    );
    assert!(!text.contains(wrong) && !text.contains(password), "{text}");
}

/// The election on a real etcd: one of two nodes leads, the other stands by naming it; the
/// leader's shutdown hands over within about a second (not a TTL), with a higher epoch, and
/// the old epoch can write nothing after.
#[tokio::test]
async fn two_nodes_elect_one_leader_and_hand_over_on_shutdown() {
    use snapshot_scheduler::ha::{Coordination, Leadership, Role};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let prefix = "/snapshot-scheduler/test/";
    let ttl = Duration::from_secs(5);
    let start = |name: &str| {
        let leadership = Leadership::new(Arc::new(client(&[&etcd.url])), prefix, name, ttl);
        let stop = CancellationToken::new();
        let task = {
            let (l, s) = (leadership.clone(), stop.clone());
            tokio::spawn(async move { l.run(s).await })
        };
        (leadership, stop, task)
    };
    let (a, stop_a, task_a) = start("ops-1");
    eventually("ops-1 leads", Duration::from_secs(10), || async {
        a.acting_epoch().is_some()
    })
    .await;
    let (b, _stop_b, _task_b) = start("ops-2");
    eventually("ops-2 stands by", Duration::from_secs(10), || async {
        matches!(b.role(), Role::Standby(ref h) if h.node == "ops-1")
    })
    .await;
    let old = a.acting_tenure().unwrap();
    // Leading outlasts several TTLs.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(a.acting_tenure(), Some(old));
    assert_eq!(b.acting_epoch(), None);

    let handed = tokio::time::Instant::now();
    stop_a.cancel();
    task_a.await.unwrap();
    eventually("ops-2 leads", Duration::from_secs(3), || async {
        b.acting_epoch().is_some()
    })
    .await;
    assert!(handed.elapsed() < ttl, "took {:?}", handed.elapsed());
    let new = b.acting_epoch().unwrap();
    assert!(new > old.epoch, "epoch {new} after {old:?}");

    let etcd_client = client(&[&etcd.url]);
    let stale = Coordination::write_if_leader(
        &etcd_client,
        &format!("{prefix}leader"),
        old,
        vec![(format!("{prefix}x"), "1".into())],
        vec![],
    )
    .await
    .unwrap();
    assert!(!stale, "a write with the old epoch went through");
}

/// `check --connect` reaches etcd (saying who leads) and the provider; an etcd that does not
/// answer is an error naming it, exit 1.
#[tokio::test]
async fn check_connect_reaches_etcd_and_the_provider() {
    use crate::common::{bin, config_with_policy, policy, serve_sim, stderr, stdout, Scratch};
    use snapshot_scheduler::simulator::SimConfig;

    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (_sim, base_url) = serve_sim(&[12345], SimConfig::default()).await;
    let scratch = Scratch::new();
    let with_etcd = |url: &str| {
        format!(
            "{}\n[ha]\netcd_endpoints = [\"{url}\"]\ncluster = \"prod\"\nnode = \"ops-1\"\n",
            config_with_policy(&policy("nightly", "30 2 * * *", &[12345], ""))
        )
    };
    let config = scratch.config(&with_etcd(etcd.url.as_str()), &base_url);
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&config)
        .args(["check", "--connect"]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("etcd: reached; cluster prod has no leader now"),
        "{text}"
    );
    assert!(text.contains(&format!("API: reached {base_url}")), "{text}");

    let closed = format!("http://127.0.0.1:{}", free_port());
    let config = scratch.config(&with_etcd(&closed), &base_url);
    let mut cmd = bin();
    cmd.arg("--config")
        .arg(&config)
        .args(["check", "--connect"]);
    let out = tokio::process::Command::from(cmd).output().await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("etcd"), "{}", stderr(&out));
}

/// With `[ha]` the power journal is the cluster's: `restore` on either host refuses a server
/// the leader has stopped for a snapshot (its own `state_dir` knows nothing of it), and does
/// nothing when etcd cannot say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_server_the_clusters_leader_has_stopped() {
    use crate::common::{bin, config_with_policy, policy, serve_sim, stderr, Scratch};
    use snapshot_scheduler::model::{PowerState, SnapshotStatus};
    use snapshot_scheduler::simulator::SimConfig;

    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (sim, base_url) = serve_sim(&[12345], SimConfig::default()).await;
    let made = chrono::Utc::now() - chrono::Duration::days(1);
    let id = sim.add_snapshot(12345, "before-upgrade", SnapshotStatus::Completed, made);
    // The leader (another host) stopped the server for a snapshot, and journaled it.
    let stopped = chrono::Utc::now();
    let entry = json!({
        "server": 12345,
        "policy": "nightly",
        "snapshot": "nightly-20250115T023000Z",
        "stopped_at": stopped,
        "deadline": stopped + chrono::Duration::minutes(50),
    })
    .to_string();
    another_host_leads_and_writes(&etcd.url, "/snapshot-scheduler/prod/journal/12345", &entry)
        .await;
    sim.set_server_status(12345, PowerState::Stopped);

    let scratch = Scratch::new();
    let with_etcd = |url: &str| {
        format!(
            "{}\n[ha]\netcd_endpoints = [\"{url}\"]\ncluster = \"prod\"\nnode = \"ops-1\"\n",
            config_with_policy(&policy("nightly", "30 2 * * *", &[12345], ""))
        )
    };
    let restore = |config: std::path::PathBuf| {
        let mut cmd = bin();
        cmd.arg("--config")
            .arg(config)
            .args(["restore", &id.to_string(), "--yes"]);
        tokio::process::Command::from(cmd).output()
    };
    let out = restore(scratch.config(&with_etcd(etcd.url.as_str()), &base_url))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "server 12345 is stopped for snapshot nightly-20250115T023000Z by the cluster's leader"
        ),
        "{}",
        stderr(&out)
    );

    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = restore(scratch.config(&with_etcd(&closed), &base_url))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sim.stats().request_count("restore"),
        0,
        "a restore was sent"
    );
}

/// With `[ha]` the create ledger is the cluster's: `plan` and `once --dry-run` on either host
/// read it from etcd, so a create whose answer the leader lost is `create_unconfirmed` there
/// too, not "would create" (the leader would not send it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_dry_run_read_the_clusters_create_ledger() {
    use crate::common::{bin, config_with_policy, policy, serve_sim, stderr, stdout, Scratch};
    use snapshot_scheduler::simulator::SimConfig;

    let Some(etcd) = EtcdServer::start(&[]).await else {
        return;
    };
    let (_sim, base_url) = serve_sim(&[12345], SimConfig::default()).await;
    let yearly = "0 3 1 1 *";
    let schedule =
        snapshot_scheduler::schedule::Schedule::parse(yearly, chrono_tz::Tz::UTC).unwrap();
    let slot = schedule.slot_at(chrono::Utc::now()).unwrap();
    let name = snapshot_scheduler::policy::snapshot_name("nightly", slot);
    let record = json!({
        "server": 12345, "policy": "nightly", "name": name,
        "at": slot + chrono::Duration::seconds(1), "answer": "unknown",
    })
    .to_string();
    another_host_leads_and_writes(
        &etcd.url,
        "/snapshot-scheduler/prod/creates/12345/nightly",
        &record,
    )
    .await;

    let scratch = Scratch::new();
    let config = scratch.config(
        &format!(
            "{}\n[ha]\netcd_endpoints = [\"{}\"]\ncluster = \"prod\"\nnode = \"ops-1\"\n",
            config_with_policy(&policy("nightly", yearly, &[12345], "")),
            etcd.url
        ),
        &base_url,
    );
    let run = |args: &[&str]| {
        let mut cmd = bin();
        cmd.arg("--config").arg(&config).args(args);
        tokio::process::Command::from(cmd).output()
    };
    let out = run(&["plan", "--json"]).await.unwrap();
    let plans: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(
        plans[0]["outcome"]["kind"],
        "create_unconfirmed",
        "{plans:#}\n{}",
        stderr(&out)
    );
    let out = run(&["once", "--dry-run"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stdout(&out).contains("answer was lost"), "{}", stdout(&out));
}

/// Another host (`ops-2`) leads cluster `prod` and has written `value` at `key`, fenced.
async fn another_host_leads_and_writes(etcd: &Url, key: &str, value: &str) {
    let client = client(&[etcd]);
    let lease = client.grant(Duration::from_secs(60)).await.expect("grant");
    let leader = "/snapshot-scheduler/prod/leader";
    let CreateOutcome::Created { revision } = client
        .create_if_absent(leader, "ops-2", lease)
        .await
        .expect("campaign")
    else {
        panic!("the leader key exists already");
    };
    let written = client
        .txn_if_leader(leader, revision, lease, &[(key, value)], &[])
        .await
        .expect("fenced write");
    assert!(written, "the leader's write was refused");
}
