//! The health and metrics listener: plain HTTP for load balancers,
//! Kubernetes probes and Prometheus. It reveals no secrets: liveness,
//! readiness (whether this replica holds the root key) and the metrics of
//! [`crate::metrics`].

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::keys::KeyStatus;
use crate::metrics;
use crate::node::Node;

/// What the handlers read.
#[derive(Clone)]
struct Health {
    node: Node,
    registry: Arc<Registry>,
}

/// Serves `/livez`, `/readyz` and `/metrics` (`registry`, as OpenMetrics
/// text) on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state(Health { node, registry });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(health): State<Health>) -> impl IntoResponse {
    if health.node.integrity().is_corrupt() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "state corrupt: this replica's state differs from the cluster's\n",
        );
    }
    match health.node.keys.status() {
        KeyStatus::Ready { .. } => (StatusCode::OK, "ready\n"),
        KeyStatus::Locked { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the root key\n",
        ),
        KeyStatus::Uninitialized => (StatusCode::SERVICE_UNAVAILABLE, "cluster not initialized\n"),
    }
}

async fn scrape(State(health): State<Health>) -> axum::response::Response {
    // The scrape-time state reads the state database: off the async workers.
    let registry = health.registry.clone();
    match tokio::task::spawn_blocking(move || metrics::encode(&registry)).await {
        Ok(Ok(text)) => ([("content-type", metrics::CONTENT_TYPE)], text).into_response(),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}
