//! The `keeper` binary: flags, then the SVID, then [`spike_keeper::serve`].

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::Parser;
use spike_sdk::cli::{SvidArgs, load_role_identity, run_server, shutdown_signal};
use spike_sdk::identity::Role;

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
    run_server("keeper", lock_memory, |hardening| async move {
        let (trust_roots, identity) = load_role_identity(&args.svid, Role::Keeper).await?;
        let address = SocketAddr::new(args.bind, args.port);
        spike_keeper::serve(address, identity, trust_roots, hardening, shutdown_signal()).await
    })
}
