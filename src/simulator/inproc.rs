//! The simulated provider as the HTTP client sees it, without a socket: each call goes as an
//! HTTP request to [`router`], called in process, and each answer is read by the client's own
//! code ([`crate::client::calls`], [`refuse_redirect`], [`read_answer`]): the JSON decoding,
//! the checks on an answer, the status -> [`ApiError`] mapping with the provider's message,
//! and the paging by `next` links and page numbers. Only the bytes' way differs from
//! [`HttpClient`](crate::client::HttpClient). So a test on tokio's paused clock (the soak)
//! exercises what production does with every answer.

use std::fmt;

use axum::body::Body;
use axum::http::{header, Request, Uri};
use axum::Router;
use futures_util::StreamExt as _;
use tower::ServiceExt as _;

use super::http::router;
use super::provider::Simulator;
use crate::client::{
    read_answer, refuse_redirect, retry_after, too_large, BaseUrl, Call, Transport,
    MAX_ANSWER_BYTES,
};
use crate::provider::ApiError;
use crate::text;

/// Where the in-process simulator answers: the host its `next` links name, never resolved.
pub const IN_PROCESS_BASE_URL: &str = "http://simulator.invalid/api/v1";

/// What an unauthorized answer tells to check.
const TOKEN_SOURCE: &str = "the simulator's token";

/// A [`Provider`] that speaks HTTP to a [`Simulator`]'s router in the same process.
#[derive(Clone)]
pub struct InProcess {
    router: Router,
    base: BaseUrl,
    /// Sent as the bearer token: the one the simulator accepted when this was built.
    token: String,
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess")
            .field("base_url", &IN_PROCESS_BASE_URL)
            .finish_non_exhaustive()
    }
}

impl InProcess {
    pub fn new(sim: Simulator) -> Self {
        let token = sim.config().token;
        Self {
            router: router(sim),
            base: BaseUrl::parse(IN_PROCESS_BASE_URL).expect("IN_PROCESS_BASE_URL is a URL"),
            token,
        }
    }

    /// The request as it would go on the wire: origin-form path and query, the URL's host
    /// in `Host` (the router writes its `next` links with it), a bearer token, a JSON body.
    fn request(&self, call: &Call<'_>) -> Result<Request<Body>, ApiError> {
        let invalid = |message: String| ApiError::Connection {
            what: call.what.to_owned(),
            message: text::message(&message),
        };
        let url =
            Uri::try_from(call.url.as_str()).map_err(|e| invalid(format!("{}: {e}", call.url)))?;
        let (Some(host), Some(path)) = (url.authority(), url.path_and_query()) else {
            return Err(invalid(format!("{} is not an absolute URL", call.url)));
        };
        let body = match &call.body {
            Some(json) => Body::from(serde_json::to_vec(json).map_err(|e| invalid(e.to_string()))?),
            None => Body::empty(),
        };
        Request::builder()
            .method(call.method.clone())
            .uri(path.as_str())
            .header(header::HOST, host.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| invalid(e.to_string()))
    }
}

impl Transport for InProcess {
    fn base_url(&self) -> &BaseUrl {
        &self.base
    }

    async fn send(&self, call: Call<'_>) -> Result<bytes::Bytes, ApiError> {
        let request = self.request(&call)?;
        let Ok(response) = self.router.clone().oneshot(request).await;
        let (parts, body) = response.into_parts();
        refuse_redirect(parts.status, &parts.headers, call.what)?;
        let mut chunks = body.into_data_stream();
        let mut body = bytes::BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| ApiError::Connection {
                what: call.what.to_owned(),
                message: e.to_string(),
            })?;
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(too_large(call.what));
            }
            body.extend_from_slice(&chunk);
        }
        let retry_after = retry_after(&parts.headers);
        read_answer(
            parts.status,
            retry_after,
            body.freeze(),
            call.what,
            TOKEN_SOURCE,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::TokioClock;
    use crate::model::{CreateSnapshot, PowerState, ServerId, Snapshot, SnapshotId};
    use crate::provider::{Provider, Scope};
    use crate::simulator::SimConfig;

    fn sim(config: SimConfig, ids: &[ServerId]) -> Simulator {
        let clock = TokioClock::starting_at("2025-01-16T16:15:00Z".parse().unwrap());
        Simulator::with_server_ids(config, ids, clock)
    }

    fn request(server_id: ServerId, name: &str) -> CreateSnapshot {
        CreateSnapshot {
            server_id,
            name: name.to_owned(),
            description: None,
        }
    }

    fn ids(snapshots: &[Snapshot]) -> Vec<SnapshotId> {
        let mut ids: Vec<SnapshotId> = snapshots.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_of_several_pages_comes_back_whole_and_each_snapshot_once() {
        let config = SimConfig {
            page_size: 2,
            ..SimConfig::default()
        };
        let sim = sim(config, &[1, 2, 3]);
        for name in ["a", "b", "c"] {
            sim.add_snapshot(
                2,
                name,
                crate::model::SnapshotStatus::Completed,
                chrono::Utc::now(),
            );
        }
        let provider = InProcess::new(sim.clone());
        let every: Vec<Snapshot> = [1, 2, 3]
            .into_iter()
            .flat_map(|id| sim.snapshots(id))
            .collect();
        assert_eq!(every.len(), 8);

        let listed = provider.list_snapshots(None).await.unwrap();
        assert_eq!(ids(&listed), ids(&every));
        assert_eq!(sim.stats().requests["list"], 4, "one request a page");

        // The server filter is kept on every page: server 2's four snapshots take two.
        let of_two = provider.list_snapshots(Some(2)).await.unwrap();
        assert_eq!(ids(&of_two), ids(&sim.snapshots(2)));
        assert_eq!(sim.stats().requests["list"], 6);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_read_as_the_client_reads_them_and_errors_carry_the_providers_words() {
        let config = SimConfig {
            example_snapshots: false,
            ..SimConfig::default()
        };
        let sim = sim(config, &[1]);
        let provider = InProcess::new(sim.clone());

        let created = provider.create_snapshot(&request(1, "a")).await.unwrap();
        assert_eq!((created.server.id, created.name.as_str()), (1, "a"));
        let refused = provider
            .create_snapshot(&request(1, "b"))
            .await
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the API refused create snapshot b of server 1: a snapshot of this server is \
             already in progress (400)"
        );
        let gone = provider.delete_snapshot(999).await.unwrap_err();
        assert_eq!(
            gone.to_string(),
            "the API answered 404 (not found) to delete snapshot 999: Snapshot not found."
        );
        let stopped = provider.stop_server(1).await.unwrap();
        assert_eq!((stopped.id, stopped.status), (1, PowerState::Stopping));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(
            provider.get_server(1).await.unwrap().status,
            PowerState::Stopped
        );

        sim.set_config(|c| {
            c.burst_429_rate = 1.0;
            c.burst_retry_after = 7;
        });
        let throttled = provider.get_server(1).await.unwrap_err();
        assert!(
            matches!(throttled, ApiError::RateLimited { retry_after: Some(wait), .. } if wait == Duration::from_secs(7)),
            "{throttled:?}"
        );
        sim.set_config(|c| c.burst_429_rate = 0.0);
        sim.set_token("another");
        let rejected = provider.start_server(1).await.unwrap_err();
        assert_eq!(
            rejected.to_string(),
            "the API rejected the token (check the simulator's token); answer 401"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_next_link_off_the_simulators_host_is_not_followed() {
        let sim = sim(SimConfig::default(), &[1]);
        let provider = InProcess::new(sim.clone());
        let elsewhere = "http://elsewhere.invalid/api/v1/snapshots/?page=2";
        let refused = provider
            .list_page(Scope::Account, Some(elsewhere))
            .await
            .unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("is not on http://simulator.invalid; refusing to follow it"),
            "{refused}"
        );
        assert_eq!(sim.stats().total_requests, 0);
    }
}
