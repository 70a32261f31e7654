//! The `nexus` binary: flags and environment, then the SVID, then
//! [`spike_nexus::serve`]. See the library for the start-up order.

use std::process::ExitCode;

use clap::Parser;
use spike_nexus::Startup;
use spike_nexus::config::{Args, NexusConfig};
use spike_sdk::cli::{StartupError, load_role_identity, run_server, shutdown_signal};
use spike_sdk::identity::Role;

fn main() -> ExitCode {
    let args = Args::parse();
    let lock_memory = args.lock_memory;
    run_server(
        "nexus",
        lock_memory,
        args.log.log_format,
        |hardening| async move {
            let config = NexusConfig::from_args(&args).map_err(StartupError::config)?;
            if let Some(proxy) = args.connect_proxy {
                // Before anything dials.
                spike_sdk::net::install(Box::new(spike_sdk::net::HttpConnectProxy::new(proxy)))
                    .map_err(StartupError::config)?;
                tracing::info!(%proxy, "dialling through an HTTP CONNECT proxy");
            }
            let (trust_roots, identity) = load_role_identity(&args.svid, Role::Nexus).await?;
            let startup = Startup {
                config,
                identity,
                trust_roots,
                hardening,
                test_clock_offset: args.test_clock_offset(),
            };
            spike_nexus::serve(startup, shutdown_signal()).await
        },
    )
}
