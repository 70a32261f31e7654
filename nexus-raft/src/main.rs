//! SPIKE Nexus: one replica of the secret store.
//!
//! Start-up order is fixed: flags and environment, then the SVID (which
//! must carry the Nexus role), and only then are ports bound; any problem
//! before binding exits with code 64 and a one-line reason.

mod api;
mod raft;
mod state;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use spike_sdk::cli::{
    StartupError, SvidArgs, listen, load_role_identity, run_server, shutdown_signal,
};
use spike_sdk::hardening::Hardening;
use spike_sdk::identity::{PeerAuthorizer, Role};
use spike_sdk::tls::{PeerIdentity, server_config};

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
    let lock_memory = args.lock_memory;
    run_server("nexus", lock_memory, |hardening| serve(args, hardening))
}

async fn serve(args: Args, hardening: Hardening) -> Result<(), StartupError> {
    let (_trust_roots, identity) = load_role_identity(&args.svid, Role::Nexus).await?;
    // Any SVID from a trusted bundle may connect; routes authorize per request.
    let mut tls = server_config(identity.clone(), PeerAuthorizer::any_verified())
        .map_err(StartupError::failed)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = listen(SocketAddr::new(args.bind, args.port), tls, &identity).await?;
    tracing::info!(
        spiffe_id = %identity.spiffe_id(),
        address = %listener.local_address(),
        ?hardening,
        "nexus API listening"
    );
    let app = api::router().into_make_service_with_connect_info::<PeerIdentity>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(StartupError::failed)
}
