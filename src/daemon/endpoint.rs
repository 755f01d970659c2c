//! The daemon's `/metrics` and `/healthz` endpoint: Prometheus' exporter behind a server that
//! bounds its connections, so scrapes (or a flood of idle connections) can never take what the
//! journal and the provider calls need.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

/// At most this many metrics connections at once; more are closed as they arrive, so a flood
/// of connections cannot take the file descriptors the journal and the provider calls need.
const METRICS_CONNECTIONS: usize = 64;

/// A metrics connection gets this long for its one request, from its first byte to the last
/// byte of the answer (a scrape takes milliseconds); idle or slow ones are closed then.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// What `/healthz` answers: whether this process is healthy (200, else 503), and a line
/// saying what it does (with `[ha]`: leading, standby and who leads, or not acting and why).
pub(super) type Health = tokio::sync::watch::Receiver<(bool, String)>;

pub(super) async fn serve_metrics(
    addr: std::net::SocketAddr,
    health: Option<Health>,
) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(crate::series::RUN_DURATION.into()),
            crate::series::RUN_DURATION_BUCKETS,
        )
        .and_then(|b| b.install_recorder())
        .context("cannot install the metrics recorder")?;
    crate::series::describe();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    handle.render()
                }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(move || {
                let health = health.clone();
                async move {
                    use axum::http::StatusCode;
                    match health {
                        None => (StatusCode::OK, "ok\n".to_owned()),
                        Some(health) => {
                            let (healthy, line) = health.borrow().clone();
                            let code = if healthy {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            };
                            (code, format!("{line}\n"))
                        }
                    }
                }
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
