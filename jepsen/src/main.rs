//! `spike-jepsen`: one workload under one nemesis against a real cluster,
//! then a verdict.
//!
//! ```text
//! spike-jepsen run --workload register --nemesis partition-leader \
//!     --time 30s --seed 7 --out jepsen-results/register-partition-leader
//! ```
//!
//! Starts 3 (or 5) replicas and 5 keepers through `spike-dev-cluster`, each in
//! its own network namespace (root needed; without it only process faults
//! run, on loopback), drives the workload with many SDK clients while the
//! nemesis injects and heals faults, heals everything, waits for recovery,
//! reads the final state from every replica, checks the history and writes
//! `history.jsonl`, `results.json`, `timeline.svg` and `summary.txt`.
//! Exit status: 0 valid, 1 anomalies found, 2 no verdict (a search gave up
//! or nothing was acknowledged), 3 the run itself failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use spike_jepsen::cluster::SpireSettings;
use spike_jepsen::nemesis::Nemesis;
use spike_jepsen::run::{self, RunSettings};
use spike_jepsen::workload::Workload;

#[derive(Parser)]
#[command(
    version,
    about = "Jepsen-style fault injection against a SPIKE cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Run one workload under one nemesis and judge the history.
    Run(RunArgs),
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// What the clients do.
    #[arg(long, value_enum, default_value = "register")]
    workload: Workload,
    /// Which faults to inject.
    #[arg(long, value_enum, default_value = "partition-leader")]
    nemesis: Nemesis,
    /// How long clients run (faults included), e.g. 30s, 2m, 1m30s.
    #[arg(long, default_value = "30s", value_parser = spike_sdk::duration::parse)]
    time: Duration,
    /// Seed of every random choice (operations, keys, fault targets).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the artifacts go (must not exist, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// Register keys in use at once (few keys, many clients: contention);
    /// a fresh set every 10 s.
    #[arg(long, default_value_t = 4)]
    keys: u64,
    /// Nexus replicas.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// First port of the cluster.
    #[arg(long, default_value_t = 29_000)]
    base_port: u16,
    /// Fault links in per-link proxies of the harness's, with every process
    /// on loopback, even where network namespaces are possible (they are
    /// used without this flag if this runs as root; the proxies otherwise).
    #[arg(long)]
    proxies: bool,
    /// Start the replicas with linearizable reads served from local state
    /// without a read index: unsafe on purpose, to show the checker
    /// catches it.
    #[arg(long)]
    unsafe_local_reads: bool,
    /// Where nexus, keeper, spike-dev-identity and spike-dev-cluster are
    /// (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where every process gets its SVID: the dev Workload API, or SPIRE
    /// (a server and agents, built by dev/spire/build; needs root).
    #[arg(long, value_enum, default_value = "dev")]
    identity: IdentityPlane,
    /// Where spire-server and spire-agent are (default: BIN_DIR/../spire/bin).
    #[arg(long, env = "SPIKE_SPIRE_BIN_DIR")]
    spire_bin_dir: Option<PathBuf>,
    /// Lifetime of every SVID on SPIRE: short, so every process rotates
    /// several times in a run.
    #[arg(long, default_value = "20s", value_parser = spike_sdk::duration::parse)]
    spire_svid_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum IdentityPlane {
    /// The dev Workload API.
    Dev,
    /// SPIRE server and agents.
    Spire,
}

impl RunArgs {
    fn settings(self) -> anyhow::Result<RunSettings> {
        let bin_dir = match self.bin_dir {
            Some(dir) => dir,
            None => std::env::current_exe()?
                .parent()
                .context("cannot locate the binaries")?
                .to_owned(),
        };
        let spire = match self.identity {
            IdentityPlane::Dev => None,
            IdentityPlane::Spire => Some(SpireSettings {
                bin_dir: self
                    .spire_bin_dir
                    .unwrap_or_else(|| bin_dir.join("..").join("spire").join("bin")),
                svid_ttl: self.spire_svid_ttl,
            }),
        };
        if self.nemesis == Nemesis::SpireKill && spire.is_none() {
            anyhow::bail!("--nemesis spire-kill needs --identity spire");
        }
        Ok(RunSettings {
            workload: self.workload,
            nemesis: self.nemesis,
            time: self.time,
            seed: self.seed,
            out: self.out,
            clients: self.clients,
            keys: self.keys,
            replicas: self.replicas,
            base_port: self.base_port,
            proxies: self.proxies,
            unsafe_local_reads: self.unsafe_local_reads,
            bin_dir,
            spire,
        })
    }
}

fn main() -> ExitCode {
    let Action::Run(args) = Cli::parse().command;
    match run_blocking(args) {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(error) => {
            eprintln!("spike-jepsen: {error:#}");
            ExitCode::from(3)
        }
    }
}

fn run_blocking(args: RunArgs) -> anyhow::Result<run::Verdict> {
    let settings = args.settings()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run::run(&settings))
}
