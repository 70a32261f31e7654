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
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use spike_sdk::cli::{SvidArgs, config_error, init_logging, runtime_error, shutdown_signal};
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::keeper_api::MESSAGE_SIZE_MAX_BYTES;
use spike_sdk::keeper_api::keeper_server::KeeperServer;
use spike_sdk::tls::{TlsListener, server_config};
use tokio::net::TcpListener;

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
    let hardening = spike_sdk::hardening::harden_process(args.lock_memory);
    if args.lock_memory && !hardening.memory_locked {
        return config_error(
            "keeper",
            "--lock-memory: mlockall was refused (raise RLIMIT_MEMLOCK)",
        );
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return runtime_error("keeper", error),
    };
    runtime.block_on(run(args, hardening))
}

async fn run(args: Args, hardening: spike_sdk::hardening::Hardening) -> ExitCode {
    let trust_roots = match TrustRoots::from_environment(&ProcessEnvironment) {
        Ok(roots) => roots,
        Err(error) => return config_error("keeper", error),
    };
    let identity = match args.svid.load().await {
        Ok(identity) => identity,
        Err(error) => return config_error("keeper", error),
    };
    if let Err(error) = identity.require_role(&trust_roots, Role::Keeper) {
        return config_error("keeper", error);
    }
    let mut tls = match server_config(
        identity.clone(),
        PeerAuthorizer::role(trust_roots, Role::Nexus),
    ) {
        Ok(config) => config,
        Err(error) => return runtime_error("keeper", error),
    };
    tls.alpn_protocols = vec![b"h2".to_vec()];

    let address = SocketAddr::new(args.bind, args.port);
    let tcp = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            return runtime_error("keeper", format!("cannot listen on {address}: {error}"));
        }
    };
    let listener = match TlsListener::new(tcp, Arc::new(tls), identity.spiffe_id()) {
        Ok(listener) => listener,
        Err(error) => return runtime_error("keeper", error),
    };
    tracing::info!(
        spiffe_id = %identity.spiffe_id(),
        address = %listener.local_address(),
        ?hardening,
        "keeper listening"
    );

    let service = KeeperServer::new(KeeperService::default())
        .max_decoding_message_size(MESSAGE_SIZE_MAX_BYTES)
        .max_encoding_message_size(MESSAGE_SIZE_MAX_BYTES);
    let served = tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(REQUESTS_PER_CONNECTION_MAX)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_INTERVAL))
        .add_service(service)
        .serve_with_incoming_shutdown(listener.into_stream(), shutdown_signal())
        .await;
    match served {
        Ok(()) => {
            tracing::info!("keeper stopped");
            ExitCode::SUCCESS
        }
        Err(error) => runtime_error("keeper", error),
    }
}
