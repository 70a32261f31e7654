//! The health and metrics listener: plain HTTP for load balancers,
//! Kubernetes probes and Prometheus. It reveals no secrets: liveness,
//! readiness (whether this replica holds the root key) and Raft progress.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use std::fmt::Write;

use crate::keys::KeyStatus;
use crate::node::Node;

/// Serves `/livez`, `/readyz` and `/metrics` on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn ready(State(node): State<Node>) -> impl IntoResponse {
    if node.integrity().is_corrupt() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "state corrupt: this replica's state differs from the cluster's\n",
        );
    }
    match node.keys.status() {
        KeyStatus::Ready { .. } => (StatusCode::OK, "ready\n"),
        KeyStatus::Locked { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the root key\n",
        ),
        KeyStatus::Uninitialized => (StatusCode::SERVICE_UNAVAILABLE, "cluster not initialized\n"),
    }
}

async fn metrics(State(node): State<Node>) -> impl IntoResponse {
    let view = node.cluster_view();
    let voters = u64::try_from(view.voter_count()).unwrap_or(u64::MAX);
    let ready = matches!(node.keys.status(), KeyStatus::Ready { .. });
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{}\"}} {value}",
            node.id
        );
    };
    gauge("spike_raft_term", "Current Raft term.", view.term);
    gauge(
        "spike_raft_leader_id",
        "Id of the known leader (0: none).",
        view.leader.as_ref().map_or(0, |leader| leader.id),
    );
    gauge(
        "spike_raft_is_leader",
        "1 if this replica leads.",
        u64::from(view.is_leader()),
    );
    gauge(
        "spike_raft_last_log_index",
        "Index of the last log entry.",
        view.last_log_index.unwrap_or(0),
    );
    gauge(
        "spike_raft_applied_index",
        "Index of the last applied entry.",
        view.applied_index.unwrap_or(0),
    );
    gauge("spike_raft_voters", "Voters in the membership.", voters);
    gauge(
        "spike_root_key_ready",
        "1 if this replica holds the root key.",
        u64::from(ready),
    );
    gauge(
        "spike_cluster_format",
        "On-disk format the cluster writes, as applied here.",
        u64::from(node.state.cluster_format().unwrap_or(0)),
    );
    gauge(
        "spike_build_format_newest",
        "Newest on-disk format this replica's build reads.",
        u64::from(crate::raft::format::FORMAT_NEWEST),
    );
    let _ = writeln!(
        text,
        "# HELP spike_build_info This replica's release.\n# TYPE spike_build_info gauge\nspike_build_info{{node=\"{}\",release=\"{}\"}} 1",
        node.id,
        crate::cluster::version::RELEASE
    );
    ([("content-type", "text/plain; version=0.0.4")], text)
}
