//! SPIKE Keeper: holds one Shamir share of the root key per root key id, in
//! memory only, and hands it back to Nexus replicas.
//!
//! A keeper knows nothing of its peers or the cluster: its whole
//! configuration is its identity and its port. Only callers with a Nexus
//! SPIFFE ID complete the TLS handshake. Restarting a keeper empties it; the
//! Nexus leader notices and pushes the share again.
//!
//! The `keeper` binary reads flags and an SVID and calls [`serve`]; the
//! deterministic simulator calls it on its own network.

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod service;
mod share_store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use spike_sdk::cli::{StartupError, listen};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::keeper_api::MESSAGE_SIZE_MAX_BYTES;
use spike_sdk::keeper_api::keeper_server::KeeperServer;
use spike_sdk::svid::Identity;
use spike_sdk::tls::server_config;

use crate::service::KeeperService;

/// Longest a single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests in progress on one connection.
const REQUESTS_PER_CONNECTION_MAX: usize = 32;
/// HTTP/2 keepalive, so a dead Nexus connection is noticed and dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Serves the keeper API on `address` as `identity` until `shutdown`
/// resolves; only Nexus SVIDs under `trust_roots` get in, and a connection
/// is retired after `max_connection_age` (its caller verified again).
pub async fn serve(
    address: SocketAddr,
    identity: Identity,
    trust_roots: TrustRoots,
    hardening: Hardening,
    max_connection_age: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let mut tls = server_config(
        identity.clone(),
        PeerAuthorizer::role(trust_roots, Role::Nexus),
    )
    .map_err(StartupError::failed)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let listener = listen(address, tls, &identity, max_connection_age).await?;
    tracing::info!(
        spiffe_id = %identity.spiffe_id(),
        address = %listener.local_address(),
        ?hardening,
        "keeper listening"
    );
    spike_sdk::cli::warn_if_unlocked(hardening);

    let service = KeeperServer::new(KeeperService::default())
        .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES);
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_INTERVAL))
        // GOAWAY at the maximum age; the listener ends the connection a
        // grace period later if the client has not gone.
        .max_connection_age(max_connection_age)
        .add_service(service)
        .serve_with_incoming_shutdown(listener.into_stream(), shutdown)
        .await
        .map_err(StartupError::failed)
}
