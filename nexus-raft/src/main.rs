//! SPIKE Nexus: one replica of the secret store.
//!
//! Start-up order is fixed: flags and environment, then the SVID (which
//! must carry the Nexus role), and only then are ports bound; any problem
//! before binding exits with code 64 and a one-line reason.

mod api;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use spike_sdk::cli::{SvidArgs, config_error, init_logging, runtime_error, shutdown_signal};
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::tls::{PeerIdentity, TlsListener, server_config};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(version, about = "SPIKE Nexus: a replica of the secret store")]
struct Args {
    #[command(flatten)]
    svid: SvidArgs,
    /// Address the API listens on.
    #[arg(long, env = "SPIKE_NEXUS_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TLS port of the SPIKE API.
    #[arg(long, env = "SPIKE_NEXUS_TLS_PORT", default_value_t = 8553)]
    port: u16,
    /// Lock all memory so keys are never swapped out (needs a raised
    /// RLIMIT_MEMLOCK or CAP_IPC_LOCK).
    #[arg(long, env = "SPIKE_LOCK_MEMORY")]
    lock_memory: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let hardening = spike_sdk::hardening::harden_process(args.lock_memory);
    if args.lock_memory && !hardening.memory_locked {
        return config_error(
            "nexus",
            "--lock-memory: mlockall was refused (raise RLIMIT_MEMLOCK)",
        );
    }
    init_logging();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(args, hardening)),
        Err(error) => runtime_error("nexus", error),
    }
}

async fn run(args: Args, hardening: spike_sdk::hardening::Hardening) -> ExitCode {
    let trust_roots = match TrustRoots::from_environment(&ProcessEnvironment) {
        Ok(roots) => roots,
        Err(error) => return config_error("nexus", error),
    };
    let identity = match args.svid.load().await {
        Ok(identity) => identity,
        Err(error) => return config_error("nexus", error),
    };
    if let Err(error) = identity.require_role(&trust_roots, Role::Nexus) {
        return config_error("nexus", error);
    }
    // Any SVID from a trusted bundle may connect; routes authorize per request.
    let mut tls = match server_config(identity.clone(), PeerAuthorizer::any_verified()) {
        Ok(config) => config,
        Err(error) => return runtime_error("nexus", error),
    };
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let address = SocketAddr::new(args.bind, args.port);
    let tcp = match TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(error) => {
            return runtime_error("nexus", format!("cannot listen on {address}: {error}"));
        }
    };
    let listener = match TlsListener::new(tcp, Arc::new(tls), identity.spiffe_id()) {
        Ok(listener) => listener,
        Err(error) => return runtime_error("nexus", error),
    };
    tracing::info!(
        spiffe_id = %identity.spiffe_id(),
        address = %listener.local_address(),
        ?hardening,
        "nexus API listening"
    );
    let app = api::router().into_make_service_with_connect_info::<PeerIdentity>();
    match axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => runtime_error("nexus", error),
    }
}
