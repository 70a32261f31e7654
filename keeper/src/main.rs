//! The `keeper` binary: flags, then the SVID, then [`spike_keeper::serve`].

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use spike_sdk::cli::{LogArgs, SvidArgs, load_role_identity, run_server, shutdown_signal};
use spike_sdk::hardening::MemoryLock;
use spike_sdk::identity::Role;

#[derive(Debug, Parser)]
#[command(
    version,
    long_version = concat!(env!("CARGO_PKG_VERSION"), " (keeper protocol 1)"),
    about = "SPIKE Keeper: holds one share of the root key in memory",
    after_help = spike_sdk::cli::ENVIRONMENT_HELP
)]
struct Args {
    #[command(flatten)]
    svid: SvidArgs,
    #[command(flatten)]
    log: LogArgs,
    /// Address to listen on.
    #[arg(long, env = "SPIKE_KEEPER_BIND", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// TLS port of the keeper API.
    #[arg(long, env = "SPIKE_KEEPER_TLS_PORT", default_value_t = 8443)]
    port: u16,
    /// Lock memory so shares are never swapped out: auto (where no
    /// RLIMIT_MEMLOCK applies: CAP_IPC_LOCK or an unlimited limit; a
    /// warning otherwise), required (or refuse to start), off.
    #[arg(long, env = "SPIKE_LOCK_MEMORY", default_value = "auto", num_args = 0..=1, default_missing_value = "required")]
    lock_memory: MemoryLock,
    /// Longest life of a Nexus connection before the Nexus must connect,
    /// and be verified, again (e.g. 5m, 1h; at least 1s).
    #[arg(
        long,
        env = "SPIKE_KEEPER_MAX_CONNECTION_AGE",
        default_value = "15m",
        value_parser = connection_age
    )]
    max_connection_age: Duration,
}

/// A Go duration of at least a second: a shorter one would make every
/// connection a reconnect.
fn connection_age(text: &str) -> Result<Duration, String> {
    let age = spike_sdk::duration::parse(text).map_err(|e| e.to_string())?;
    if age < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    Ok(age)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let lock_memory = args.lock_memory;
    run_server(
        "keeper",
        lock_memory,
        args.log.log_format,
        |hardening| async move {
            let (trust_roots, identity) = load_role_identity(&args.svid, Role::Keeper).await?;
            let address = SocketAddr::new(args.bind, args.port);
            spike_keeper::serve(
                address,
                identity,
                trust_roots,
                hardening,
                args.max_connection_age,
                shutdown_signal(),
            )
            .await
        },
    )
}
