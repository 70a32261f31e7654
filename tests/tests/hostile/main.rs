//! A hostile client: a workload with a valid SVID that tries to hurt the
//! cluster (oversized, slow and malformed requests, floods of connections
//! and streams, garbage on the Nexus-only ports). Each attack runs while a
//! well-behaved client keeps asking; it must keep succeeding with p99
//! under [`P99_MAX`], and no replica's resident memory may pass
//! [`RSS_MAX_BYTES`].
//!
//! The replicas run with short edge timeouts (below) so the tests see them
//! fire; everything else is the default. Tests take turns: one cluster at
//! a time keeps a 2-core machine's timings meaningful.

mod bodies;
mod connections;
mod json;
mod ports;
mod snapshot;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::svid::Identity;
use spike_tests::LocalCluster;

/// The well-behaved client's p99 bound: generous for a loaded 2-core CI
/// machine (its requests take milliseconds when nothing attacks).
pub const P99_MAX: Duration = Duration::from_secs(2);
/// Every replica's resident memory bound (a replica idles near 30 MiB).
pub const RSS_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// The replicas' header read timeout.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The replicas' request timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The replicas' idle timeout.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// One test's turn: a cluster at a time.
pub async fn turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// A cluster with one hostile workload, `mallory`, which no policy names.
pub fn cluster() -> LocalCluster {
    let header = format!(
        "--nexus-arg=--header-read-timeout={}s",
        HEADER_READ_TIMEOUT.as_secs()
    );
    let request = format!(
        "--nexus-arg=--request-timeout={}s",
        REQUEST_TIMEOUT.as_secs()
    );
    let idle = format!("--nexus-arg=--idle-timeout={}s", IDLE_TIMEOUT.as_secs());
    LocalCluster::up(&[
        "--replicas",
        "3",
        "--keepers",
        "3",
        "--threshold",
        "2",
        "--workload",
        "mallory=/app/mallory",
        &header,
        &request,
        &idle,
    ])
}

/// A TLS client config presenting `identity` that accepts only a Nexus,
/// offering `alpn`.
pub fn tls_config(identity: &Identity, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let roots = TrustRoots::from_environment(&[]).expect("default trust roots");
    let mut config =
        spike_sdk::tls::client_config(identity.clone(), PeerAuthorizer::role(roots, Role::Nexus))
            .expect("client config");
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

/// An mTLS connection to `address`.
pub async fn tls(
    address: SocketAddr,
    config: &Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<spike_sdk::net::Stream>> {
    spike_sdk::tls::connect(address, config.clone())
        .await
        .map(|(stream, _)| stream)
}

/// Marks a phase in the test output.
pub fn phase(name: &str) {
    eprintln!("--- {name}");
}
