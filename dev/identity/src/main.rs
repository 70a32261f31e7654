//! `spike-dev-identity`: creates dev identities and serves them over the SPIFFE
//! Workload API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spike_dev_identity::{IdentityDirectory, IdentitySpec, ServeOptions, WorkloadApiServer};
use spike_sdk::cli::{LogArgs, init_logging};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(
    version,
    about = "Development identities for SPIKE (not for production)"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a dev CA and an SVID for every SPIKE role (and any workload)
    /// in a directory; an existing CA there is kept.
    Identities {
        /// The identity directory.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain of the CA and every SVID.
        #[arg(long, env = "SPIKE_TRUST_ROOT", default_value = "spike.ist")]
        trust_domain: String,
        /// Extra identity as NAME=PATH or PATH (e.g. nexus-2=/spike/nexus/2, /app/billing).
        #[arg(long = "workload", value_name = "NAME=PATH")]
        workloads: Vec<String>,
        /// Lifetime of the SVID files, in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl_secs: u64,
    },
    /// Serve every identity of a directory on its own Workload API socket
    /// (<dir>/sockets/<name>.sock) until SIGINT or SIGTERM; SIGHUP rotates
    /// every SVID at once.
    WorkloadApi {
        /// The identity directory.
        #[arg(long)]
        dir: PathBuf,
        /// Put the sockets here instead of <dir>/sockets (a unix socket
        /// path holds at most 107 bytes).
        #[arg(long, value_name = "DIR")]
        sockets: Option<PathBuf>,
        /// Lifetime of each SVID served, in seconds.
        #[arg(long, default_value_t = 24 * 3600)]
        svid_ttl_secs: u64,
        /// Re-mint SVIDs this often, in seconds (default: half the TTL).
        #[arg(long)]
        rotate_every_secs: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.log_format);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spike-dev-identity: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spike-dev-identity: {error:#}");
            ExitCode::from(64)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Identities {
            dir,
            trust_domain,
            workloads,
            ttl_secs,
        } => {
            let extra = workloads
                .iter()
                .map(|text| IdentitySpec::parse(text))
                .collect::<Result<Vec<_>, _>>()?;
            let directory = IdentityDirectory::create(
                &dir,
                &trust_domain,
                &extra,
                Duration::from_secs(ttl_secs),
            )?;
            let manifest = directory.manifest()?;
            for spec in &manifest.identities {
                println!("{:<16} {}", spec.name, manifest.spiffe_id(spec));
            }
            Ok(())
        }
        Command::WorkloadApi {
            dir,
            sockets,
            svid_ttl_secs,
            rotate_every_secs,
        } => {
            let directory = IdentityDirectory::at(&dir);
            let options = ServeOptions {
                svid_ttl: Duration::from_secs(svid_ttl_secs),
                rotate_every: rotate_every_secs.map(Duration::from_secs),
            };
            let sockets = sockets.unwrap_or_else(|| directory.sockets_dir());
            let server = WorkloadApiServer::start_in(&directory, &sockets, options)
                .await
                .with_context(|| format!("cannot serve identities from {}", dir.display()))?;
            for name in server.names() {
                println!("{:<16} {}", name, server.endpoint(name).unwrap_or_default());
            }
            println!("ready");
            let mut hangup = signal(SignalKind::hangup())?;
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            loop {
                tokio::select! {
                    _ = hangup.recv() => {
                        server.rotate_all()?;
                        tracing::info!("rotated every SVID");
                    }
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                }
            }
            drop(server);
            Ok(())
        }
    }
}
