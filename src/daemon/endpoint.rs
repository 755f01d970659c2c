//! The daemon's `/metrics` and `/healthz` endpoint: Prometheus' exporter behind a server that
//! bounds its connections, so scrapes (or a flood of idle connections) can never take what the
//! journal and the provider calls need.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::health::Health;

/// At most this many metrics connections at once; more are closed as they arrive, so a flood
/// of connections cannot take the file descriptors the journal and the provider calls need.
const METRICS_CONNECTIONS: usize = 64;

/// A metrics connection gets this long for its one request, from its first byte to the last
/// byte of the answer (a scrape takes milliseconds); idle or slow ones are closed then.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve_metrics(
    addr: std::net::SocketAddr,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(crate::series::RUN_DURATION.into()),
            crate::series::RUN_DURATION_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .context("cannot install the metrics recorder")?;
    crate::series::describe();
    let scraped = health.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                let (healthy, _) = scraped.verdict();
                metrics::gauge!(crate::series::HEALTHY).set(if healthy { 1.0 } else { 0.0 });
                crate::series::export_oldest_stop_age(chrono::Utc::now());
                async move {
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let (healthy, line) = health.verdict();
                let code = if healthy {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                };
                async move { (code, format!("{line}\n")) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on metrics_listen {addr}"))?;
    tracing::info!(%addr, "serving /metrics and /healthz");
    tokio::spawn(serve_bounded(listener, app));
    Ok(())
}

/// Serves `app`, one request per connection, at most [`METRICS_CONNECTIONS`] at once, each
/// closed after [`METRICS_CONNECTION_TIMEOUT`]. (`axum::serve` has no limit of either kind.)
async fn serve_bounded(listener: tokio::net::TcpListener, app: axum::Router) {
    let turns = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!(error = %e, "the metrics endpoint cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(turn) = turns.clone().try_acquire_owned() else {
            tracing::debug!(
                "{METRICS_CONNECTIONS} metrics connections open already; closing a new one"
            );
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(METRICS_CONNECTION_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // Dropping the connection closes it.
            let _ = tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await;
            drop(turn);
        });
    }
}
