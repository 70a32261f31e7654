//! SPIKE Keeper: holds one Shamir share of the root key per root key id, in
//! memory only, and hands it back to Nexus replicas.
//!
//! A keeper knows nothing of its peers or the cluster: its whole
//! configuration is its identity and its port. Only callers with a Nexus
//! SPIFFE ID complete the TLS handshake. Restarting a keeper empties it; the
//! Nexus leader notices and pushes the share again.

mod service;
mod share_store;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spike_sdk::cli::{
    StartupError, SvidArgs, listen, load_role_identity, run_server, shutdown_signal,
};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role};
use spike_sdk::keeper_api::MESSAGE_SIZE_MAX_BYTES;
use spike_sdk::keeper_api::keeper_server::KeeperServer;
use spike_sdk::tls::server_config;

use crate::service::KeeperService;

/// Longest a single request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests in progress on one connection.
const REQUESTS_PER_CONNECTION_MAX: usize = 32;
/// HTTP/2 keepalive, so a dead Nexus connection is noticed and dropped.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    version,
    about = "SPIKE Keeper: holds one share of the root key in memory"
)]
struct Args {
    #[command(flatten)]
    svid: SvidArgs,
    /// Address to listen on.
    #[arg(long, env = "SPIKE_KEEPER_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TLS port of the keeper API.
    #[arg(long, env = "SPIKE_KEEPER_TLS_PORT", default_value_t = 8443)]
    port: u16,
    /// Lock all memory so shares are never swapped out (needs a raised
    /// RLIMIT_MEMLOCK or CAP_IPC_LOCK).
    #[arg(long, env = "SPIKE_LOCK_MEMORY")]
    lock_memory: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let lock_memory = args.lock_memory;
    run_server("keeper", lock_memory, |hardening| serve(args, hardening))
}

async fn serve(args: Args, hardening: Hardening) -> Result<(), StartupError> {
    let (trust_roots, identity) = load_role_identity(&args.svid, Role::Keeper).await?;
    let mut tls = server_config(
        identity.clone(),
        PeerAuthorizer::role(trust_roots, Role::Nexus),
    )
    .map_err(StartupError::failed)?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let listener = listen(SocketAddr::new(args.bind, args.port), tls, &identity).await?;
    tracing::info!(
        spiffe_id = %identity.spiffe_id(),
        address = %listener.local_address(),
        ?hardening,
        "keeper listening"
    );

    let service = KeeperServer::new(KeeperService::default())
        .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES);
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_INTERVAL))
        .add_service(service)
        .serve_with_incoming_shutdown(listener.into_stream(), shutdown_signal())
        .await
        .map_err(StartupError::failed)
}
