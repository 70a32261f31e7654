//! `spike-dev-cluster`: a local SPIKE cluster on loopback, everything under
//! one directory. The command line; the [`spike_dev_cluster`] library does
//! the work.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use spike_dev_cluster::netns::{Impairment, Layout};
use spike_dev_cluster::plan::{
    BASE_PORT_DEFAULT, KEEPERS_DEFAULT, REPLICAS_DEFAULT, Shape, THRESHOLD_DEFAULT,
    TRUST_DOMAIN_DEFAULT,
};
use spike_dev_cluster::spire::{self, SpireShape};
use spike_dev_cluster::supervise::Signal;
use spike_dev_cluster::{actions, up};

/// What `--help` adds about the files `up` writes.
const FILES_HELP: &str = "\
Files in DIR:
  cluster.json  every process: role, id, addresses, pid, data directory, log
  env, env.recover, env.restore
                `source` one to act as the superuser, recover or restore role
                with `spike`. Each sets SPIFFE_ENDPOINT_SOCKET, the
                SPIKE_TRUST_ROOT variables, SPIKE_NEXUS_API_URL (one replica's
                https://IP:PORT, as SPIKE's own clients read it) and
                SPIKE_NEXUS_API_URLS (every replica in the cluster, comma
                separated in node-id order, for clients that fail over; `join`
                and `retire` rewrite it)
  recovery/     with --auto-restore-from-disk-shards only: every recovery
                shard, that is the root key, on disk (development only)
  logs/         one log per process";

#[derive(Parser)]
#[command(
    version,
    about = "A local SPIKE cluster on loopback (development and tests)",
    after_help = FILES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start (or restart) the whole cluster and wait until it serves.
    #[command(after_help = FILES_HELP)]
    Up {
        #[command(flatten)]
        common: Common,
        /// Nexus replicas (3 or 5 for production-like runs).
        #[arg(long, default_value_t = REPLICAS_DEFAULT)]
        replicas: u64,
        /// Spare replicas, planned but not started (see `join`); replicas
        /// and spares together are at most 10.
        #[arg(long, default_value_t = 0)]
        spares: u64,
        /// Keepers; each holds one share.
        #[arg(long, default_value_t = KEEPERS_DEFAULT)]
        keepers: u8,
        /// Shares needed to rebuild the root key.
        #[arg(long, default_value_t = THRESHOLD_DEFAULT)]
        threshold: u8,
        /// First port; every process takes ports from here up.
        #[arg(long, default_value_t = BASE_PORT_DEFAULT)]
        base_port: u16,
        /// Trust domain of every identity.
        #[arg(long, default_value = TRUST_DOMAIN_DEFAULT)]
        trust_domain: String,
        /// Longest wait for every replica to serve (e.g. 90s, 2m).
        #[arg(long, default_value = "60s", value_parser = spike_sdk::duration::parse)]
        wait: Duration,
        /// Extra flags for every nexus (e.g. "--snapshot-every=50").
        #[arg(long = "nexus-arg", allow_hyphen_values = true)]
        nexus_args: Vec<String>,
        /// Extra workload identity NAME=PATH (served at sockets/NAME.sock;
        /// on SPIRE, registered; default there: example-app=/app/example).
        #[arg(long = "workload", value_name = "NAME=PATH")]
        workloads: Vec<String>,
        /// Run every keeper and replica in a network namespace of its own,
        /// named PREFIX-NAME (needs root; see `cut` and `heal`).
        #[arg(long, value_name = "PREFIX")]
        netns: Option<String>,
        /// The private /24 of the namespaces (three octets).
        #[arg(long, default_value = "10.213.7", requires = "netns")]
        netns_subnet: String,
        /// Replica N dials every outgoing connection through the HTTP
        /// CONNECT proxy at 127.0.0.1:PORT+N (the fault-injection
        /// harness's per-link proxies, for runs without namespaces).
        #[arg(long, value_name = "PORT", conflicts_with = "netns")]
        connect_proxy_base: Option<u16>,
        /// DEVELOPMENT ONLY: save every recovery shard (together, the root
        /// key) in DIR/recovery after the first start, and feed them back
        /// after a total loss (`down`, then `up`). Without it a restarted
        /// cluster waits (503) for `spike operator restore`, as production
        /// does. Remembered in cluster.json once given.
        #[arg(long)]
        auto_restore_from_disk_shards: bool,
        /// Where every process gets its SVID: `dev` (the dev Workload
        /// API, no Go needed) or `spire` (a SPIRE server and agents, built
        /// by dev/spire/build).
        #[arg(long, value_enum, default_value_t = IdentityPlane::Dev)]
        identity: IdentityPlane,
        #[command(flatten)]
        spire: Box<SpireArgs>,
    },
    /// Cut the network link between two processes, both ways (--netns
    /// clusters only).
    Cut {
        /// One end.
        a: String,
        /// The other end.
        b: String,
        #[command(flatten)]
        common: Common,
    },
    /// Impair one process's link to every other: random packet loss
    /// and/or a bandwidth cap (--netns clusters only; `heal` undoes it).
    Impair {
        /// The process.
        name: String,
        /// Drop this share of its packets, each way (1 to 100).
        #[arg(long, value_name = "PERCENT")]
        loss: Option<u8>,
        /// Cap its bandwidth, in kbit/s (at least 8).
        #[arg(long, value_name = "KBIT")]
        rate: Option<u32>,
        #[command(flatten)]
        common: Common,
    },
    /// Remove every cut and impairment (--netns clusters only).
    Heal {
        #[command(flatten)]
        common: Common,
    },
    /// Stop every process of the cluster.
    Down {
        #[command(flatten)]
        common: Common,
    },
    /// Start one process (nexus-N, keeper-N, workload-api).
    Start {
        /// The process.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop one process gracefully (SIGTERM).
    Stop {
        /// The process.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Kill one process (SIGKILL).
    Kill {
        /// The process.
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Start a spare replica with --join (an operator then adds it with
    /// `spike cluster add`, whose arguments this prints); the env files
    /// list it from now on.
    Join {
        /// The spare (nexus-N).
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a replica removed from the cluster, for good: its id is
    /// retired, `up` and `start` leave it down, and the env files drop it.
    Retire {
        /// The removed replica (nexus-N).
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print each process and whether it runs.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IdentityPlane {
    /// The dev Workload API and dev CA.
    Dev,
    /// SPIRE server and agents.
    Spire,
}

#[derive(clap::Args)]
struct SpireArgs {
    /// Where spire-server and spire-agent are (default: BIN_DIR/../spire/bin,
    /// where dev/spire/build puts them).
    #[arg(long, env = "SPIKE_SPIRE_BIN_DIR")]
    spire_bin_dir: Option<PathBuf>,
    /// Lifetime of the SPIRE server's CA (SPIRE prepares the next one at
    /// half of it and switches at five sixths).
    #[arg(long, default_value = "1h", value_parser = spike_sdk::duration::parse)]
    spire_ca_ttl: Duration,
    /// Lifetime of every SVID (agents renew at half of it).
    #[arg(long, default_value = "1m", value_parser = spike_sdk::duration::parse)]
    spire_svid_ttl: Duration,
    /// First uid handed out: keeper N runs as BASE+N, replica N as
    /// BASE+100+N, client identity I as BASE+200+I (1000 to 2^31 - 1).
    #[arg(long, default_value_t = spire::UID_BASE_DEFAULT)]
    spire_uid_base: u32,
    /// Put the client identities (superuser, recover, restore, bootstrap,
    /// lite workload, every --workload) in this trust domain of their own,
    /// with a SPIRE server and agent of its own, federated with the
    /// cluster's through SPIRE bundle endpoints.
    #[arg(long, value_name = "TRUST_DOMAIN")]
    spire_pilot_domain: Option<String>,
}

#[derive(clap::Args)]
struct Common {
    /// The cluster directory.
    #[arg(long, default_value = ".spike-local")]
    dir: PathBuf,
    /// Where the nexus, keeper and spike-dev-identity binaries are (default: next to
    /// this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

impl Common {
    fn bin_dir(&self) -> anyhow::Result<PathBuf> {
        match &self.bin_dir {
            Some(dir) => Ok(dir.clone()),
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_owned)
                .context("cannot locate the binaries"),
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The library's messages already carry their causes.
            eprintln!("spike-dev-cluster: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Up {
            common,
            replicas,
            spares,
            keepers,
            threshold,
            base_port,
            trust_domain,
            wait,
            nexus_args,
            workloads,
            netns,
            netns_subnet,
            connect_proxy_base,
            auto_restore_from_disk_shards,
            identity,
            spire,
        } => {
            if wait.is_zero() {
                bail!("--wait must be more than 0");
            }
            let bin_dir = common.bin_dir()?;
            let spire = match identity {
                IdentityPlane::Dev => None,
                IdentityPlane::Spire => {
                    if spire.spire_svid_ttl < Duration::from_secs(10)
                        || spire.spire_ca_ttl < spire.spire_svid_ttl * 6
                    {
                        bail!(
                            "--spire-svid-ttl must be at least 10s and --spire-ca-ttl at least \
                             six times it (SPIRE caps an SVID at its CA's remaining life)"
                        );
                    }
                    if !(spire::UID_BASE_RANGE).contains(&spire.spire_uid_base) {
                        bail!(
                            "--spire-uid-base must be {} to {} (below are system users; \
                             every process and client takes a uid above it)",
                            spire::UID_BASE_RANGE.start(),
                            spire::UID_BASE_RANGE.end()
                        );
                    }
                    Some(SpireShape {
                        bin_dir: spire
                            .spire_bin_dir
                            .unwrap_or_else(|| bin_dir.join("..").join("spire").join("bin")),
                        ca_ttl: spire.spire_ca_ttl,
                        svid_ttl: spire.spire_svid_ttl,
                        uid_base: spire.spire_uid_base,
                        pilot_domain: spire.spire_pilot_domain,
                    })
                }
            };
            let shape = Shape {
                replicas,
                spares,
                keepers,
                threshold,
                base_port,
                trust_domain,
                nexus_args,
                // On SPIRE an example application is registered unless
                // workloads are named.
                workloads: if workloads.is_empty() && spire.is_some() {
                    vec![spire::EXAMPLE_WORKLOAD.to_owned()]
                } else {
                    workloads
                },
                netns: netns
                    .map(|prefix| Layout::new(&prefix, &netns_subnet))
                    .transpose()?,
                connect_proxy_base,
                auto_restore_from_disk_shards,
                spire,
            };
            up::up(&common.dir, shape, &bin_dir, wait, out)?;
        }
        Command::Cut { a, b, common } => actions::cut(&common.dir, &a, &b)?,
        Command::Impair {
            name,
            loss,
            rate,
            common,
        } => {
            let impairment = Impairment {
                loss_percent: loss,
                rate_kbit: rate,
            };
            actions::impair(&common.dir, &name, impairment)?;
        }
        Command::Heal { common } => actions::heal(&common.dir)?,
        Command::Down { common } => actions::down(&common.dir, out)?,
        Command::Start { name, common } => {
            actions::start(&common.dir, &name, &common.bin_dir()?)?;
        }
        Command::Stop { name, common } => {
            actions::signal_one(&common.dir, &name, Signal::TERM, out)?;
        }
        Command::Kill { name, common } => {
            actions::signal_one(&common.dir, &name, Signal::KILL, out)?;
        }
        Command::Join { name, common } => {
            actions::join(&common.dir, &name, &common.bin_dir()?, out)?;
        }
        Command::Retire { name, common } => actions::retire(&common.dir, &name, out)?,
        Command::Status { common } => actions::status(&common.dir, out)?,
    }
    Ok(())
}
