//! The simulated provider over HTTP: API.md's endpoints on axum, with bearer auth, DRF pages
//! and DRF-shaped answers.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::provider::{Simulator, RESTORE_MESSAGE};
use super::refusal::Refusal;
use super::state::{Caller, SimState};
use crate::model::{CreateSnapshot, Server, ServerId};

pub(super) const CREATE_MESSAGE: &str =
    "Snapshot is being created. This may take 3-10 minutes depending on server size.";

/// API.md's endpoints under `/api/v1`, with bearer auth and DRF-shaped answers.
pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/api/v1/snapshots/", get(http_list).post(http_create))
        .route("/api/v1/snapshots/{id}/", delete(http_delete))
        .route("/api/v1/snapshots/{id}/restore/", post(http_restore))
        .route("/api/v1/servers/{id}/", get(http_get_server))
        .route("/api/v1/servers/{id}/stop/", post(http_stop))
        .route("/api/v1/servers/{id}/start/", post(http_start))
        .fallback(|| async { Refusal::not_found("Not found.") })
        .with_state(sim)
}

/// Serves the simulator on `listen` (port 0 picks a free one) and returns the bound address.
pub async fn serve(
    sim: Simulator,
    listen: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(sim)).await {
            tracing::error!(error = %e, "the simulated provider stopped serving");
        }
    });
    Ok((addr, handle))
}

/// The base URL a client should use for a simulator served on `addr`.
pub fn base_url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1")
}

fn bearer(headers: &HeaderMap) -> Caller {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    Caller::Http(token)
}

/// An id in the path; anything else is a URL that does not exist (Django's `<int:pk>`).
fn path_id(raw: &str) -> Result<u64, Refusal> {
    raw.parse().map_err(|_| Refusal::not_found("Not found."))
}

fn server_json(server: &Server) -> Value {
    json!({ "id": server.id, "name": server.name, "status": server.status })
}

/// DRF's page links: absolute, other query parameters kept, page 1 without `page=`.
fn page_link(host: &str, page: usize, server: Option<ServerId>) -> String {
    let mut params = Vec::new();
    if page > 1 {
        params.push(format!("page={page}"));
    }
    if let Some(id) = server {
        params.push(format!("server_id={id}"));
    }
    let query = if params.is_empty() {
        String::new()
    } else {
        format!("?{}", params.join("&"))
    };
    format!("http://{host}/api/v1/snapshots/{query}")
}

async fn http_list(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_owned();
    // Checked inside the request, after auth, as DRF's filters and paginator are.
    let server = query.get("server_id").map(|raw| {
        let invalid = || Refusal::bad_request(format!("server_id must be an integer, not {raw:?}"));
        raw.parse::<ServerId>().map_err(|_| invalid())
    });
    let page = query.get("page").map_or(Ok(1), |raw| {
        let page = raw.parse::<usize>().ok().filter(|p| *p >= 1);
        page.ok_or_else(|| Refusal::not_found("Invalid page."))
    });
    let (server, page, (count, results), page_size) = sim
        .dispatch("list", bearer(&headers), |state, _, _| {
            let (server, page) = (server.transpose()?, page?);
            let page_size = state.config.page_size.max(1);
            Ok((
                server,
                page,
                state.list_page(server, page, page_size),
                page_size,
            ))
        })
        .await?;
    let pages = count.div_ceil(page_size).max(1);
    if page > pages {
        return Err(Refusal::not_found("Invalid page."));
    }
    let next = (page < pages).then(|| page_link(&host, page + 1, server));
    let previous = (page > 1).then(|| page_link(&host, page - 1, server));
    let body = json!({ "count": count, "next": next, "previous": previous, "results": results });
    Ok(Json(body).into_response())
}

async fn http_create(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    // Parsed after auth, as DRF does: an unauthenticated bad body is still a 401.
    let request = serde_json::from_slice::<CreateSnapshot>(&body)
        .map_err(|e| Refusal::bad_request(format!("invalid request body: {e}")));
    let snapshot = sim
        .dispatch("create", bearer(&headers), |state, now, wall| {
            state.create(&request?, now, wall)
        })
        .await?;
    let mut body = serde_json::to_value(&snapshot).unwrap_or_default();
    body["message"] = json!(CREATE_MESSAGE);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn http_delete(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    sim.dispatch("delete", bearer(&headers), |state, _, _| state.delete(id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn http_restore(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    let (snapshot, server) = sim
        .dispatch("restore", bearer(&headers), |state, now, _| {
            state.restore(id, now)
        })
        .await?;
    Ok(Json(json!({
        "status": "success",
        "message": RESTORE_MESSAGE,
        "snapshot": { "id": snapshot.id, "name": snapshot.name, "created_at": snapshot.created_at },
        "server": server_json(&server),
    }))
    .into_response())
}

async fn http_get_server(
    AxumState(sim): AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    let id = path_id(&id)?;
    let server = sim
        .dispatch("get_server", bearer(&headers), |state, _, _| {
            state.server(id)
        })
        .await?;
    Ok(Json(server_json(&server)).into_response())
}

async fn http_power(
    sim: &Simulator,
    headers: &HeaderMap,
    id: &str,
    stop: bool,
) -> Result<Response, Refusal> {
    let id = path_id(id)?;
    let endpoint = if stop { "stop" } else { "start" };
    let op = |state: &mut SimState, now, _| state.power(id, stop, now);
    let server = sim.dispatch(endpoint, bearer(headers), op).await?;
    Ok(Json(json!({ "status": "success", "server": server_json(&server) })).into_response())
}

async fn http_stop(
    sim: AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(&sim, &headers, &id, true).await
}

async fn http_start(
    sim: AxumState<Simulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Refusal> {
    http_power(&sim, &headers, &id, false).await
}
