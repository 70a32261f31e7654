//! `spike-bench`: drives the same load against our cluster, an etcd
//! cluster and a Vault cluster of 3 (or 5) members each on this machine
//! (all TLS with client certificates, all fsync on) and prints them side
//! by side, with JSON and an SVG plot.
//!
//! ```text
//! spike-bench compare                       # everything, defaults below
//! spike-bench compare --targets nexus --clients 64 --duration 5s
//! spike-bench compare --replicas 5 --memory-keys 1000000
//! spike-bench compare --etcd-bin /path/to/etcd-3.6.8,/usr/bin/etcd
//! spike-bench compare --vault-bin "$(bench/vault/build)"
//! spike-bench report --from bench-results/results.json
//! ```
//!
//! A SIGINT or SIGTERM takes down every process it started ([`teardown`]).

mod etcd;
mod isolation;
mod load;
mod memory;
mod nexus;
mod ports;
mod report;
mod stages;
mod teardown;
mod vault;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use serde_json::json;
use spike_dev_cluster::Action;

use crate::load::{LoadShape, Store, Workload};
use crate::report::{Peer, Results, Row};

#[derive(Parser)]
#[command(name = "spike-bench", version, about)]
enum Cli {
    /// Start the clusters (ours, etcd, Vault), run every workload a peer
    /// offers at every concurrency level, then the failover and restart
    /// trials; print the table.
    Compare(CompareArgs),
    /// One workload against a running cluster of ours, as the caller: the
    /// SVID from `SPIFFE_ENDPOINT_SOCKET` or `SPIKE_SVID_*_FILE`, the nodes
    /// from `SPIKE_NEXUS_API_URL` and `SPIKE_NEXUS_API_URLS`.
    /// Writes go under `bench/`.
    Run(RunArgs),
    /// A noisy identity (many clients, never backing off) beside a quiet
    /// one (steady reads): the quiet one's p50/p99 alone, beside the noisy
    /// one, and with a rate limit on the noisy one. Starts its own cluster.
    Isolation(isolation::IsolationArgs),
    /// Where one request's time goes at one client: each workload run
    /// alone, with every replica's stage timings (Raft write, log fsync,
    /// apply, audit fsync) per operation. Starts its own cluster.
    Stages(stages::StagesArgs),
    /// Writes results.md and plot.svg again from a results.json, without
    /// measuring anything (e.g. for the README's table).
    Report(ReportArgs),
}

#[derive(clap::Args)]
struct ReportArgs {
    /// The results.json a `compare` wrote.
    #[arg(long, default_value = "bench-results/results.json")]
    from: PathBuf,
    /// Where results.md and plot.svg go (default: beside the JSON).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Run length and data size, shared by both commands.
#[derive(clap::Args, Clone, Copy)]
struct Sizing {
    /// Length of each run (e.g. 10s, 1m30s).
    #[arg(long, default_value = "10s", value_parser = spike_sdk::duration::parse)]
    duration: Duration,
    /// Distinct keys (written before the reads).
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
}

impl Sizing {
    /// Refuses a run too short to measure anything.
    fn check_duration(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() {
            anyhow::bail!("--duration must be more than 0");
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The operation mix.
    #[arg(long, default_value = "put")]
    workload: Workload,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[command(flatten)]
    sizing: Sizing,
    /// A Nexus API URL (`https://HOST:PORT`).
    #[arg(long, env = spike_sdk::client::endpoints::API_URL_VARIABLE)]
    api_url: Option<String>,
    /// Every replica's API URL, comma-separated.
    #[arg(long, env = spike_sdk::client::endpoints::API_URLS_VARIABLE)]
    api_urls: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Nexus,
    Etcd,
    /// Measured when `--vault-bin` names a binary; skipped otherwise.
    Vault,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Which systems to measure.
    #[arg(long, value_delimiter = ',', default_value = "nexus,etcd,vault")]
    targets: Vec<Target>,
    /// The etcd binaries to measure, comma-separated: each is a peer of its
    /// own, named by the version it reports (bench/run builds etcd 3.6.8
    /// from its Go module and passes it here).
    #[arg(
        long = "etcd-bin",
        env = "SPIKE_BENCH_ETCD_BIN",
        value_delimiter = ',',
        default_value = "etcd"
    )]
    etcd_bins: Vec<PathBuf>,
    /// The Vault server binary to measure (bench/run builds Vault from its
    /// Go module with bench/vault/build and passes it here); without it
    /// the vault target is skipped.
    #[arg(long = "vault-bin", env = "SPIKE_BENCH_VAULT_BIN")]
    vault_bin: Option<PathBuf>,
    /// Workloads to run (a peer that lacks one skips it: etcd has no
    /// encryption, Vault no stale reads).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,get,get-stale,mixed,encrypt,decrypt"
    )]
    workloads: Vec<Workload>,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    #[command(flatten)]
    sizing: Sizing,
    /// kill -9 of the leader under writes, this many times per target.
    #[arg(long, default_value_t = 10)]
    failover_trials: usize,
    /// After the runs, grow each store to this many keys (64 clients,
    /// progress every 5 s) and report each member's resident memory and
    /// data files on disk, one member's restart to serving, and a new
    /// member added until it has caught up (ours: a spare joined as a
    /// learner; etcd: `member add`; Vault: not measured) (0: skip).
    #[arg(long, default_value_t = 0)]
    memory_keys: u64,
    /// Members of each cluster: 3 or 5. Ports from --base-port: our
    /// replica n at BASE+10(n-1) to +2 (API, cluster, health; the memory
    /// trial's spare is replica n+1), our keepers at BASE+101 to +105,
    /// Vault node i at BASE+200+2i and +1, etcd binary k's member i at
    /// BASE+300+20k+2i and +1 (client, peer; the memory trial's new member
    /// is member n).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Where the JSON, the SVG and the clusters' files go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Directory of the built binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// First of the loopback ports used (see --replicas for the layout:
    /// ours from here, Vault 200 above, the first etcd 300 above, each
    /// further etcd 20 above the one before).
    #[arg(long, default_value_t = 27_000)]
    base_port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Every command but `report` may start processes: those must go with
    // it when it is interrupted.
    let mut teardown_began = match &cli {
        Cli::Report(args) => return rerender(args),
        Cli::Compare(_) | Cli::Run(_) | Cli::Isolation(_) | Cli::Stages(_) => teardown::install()?,
    };
    let work = async {
        match cli {
            Cli::Compare(args) => compare(args).await,
            Cli::Run(args) => run_against_existing(args).await,
            Cli::Isolation(args) => run_isolation(args).await,
            Cli::Stages(args) => {
                let bin_dir = bin_dir_or_here(args.bin_dir())?;
                stages::run(args, bin_dir).await
            }
            Cli::Report(args) => rerender(&args),
        }
    };
    tokio::select! {
        result = work => {
            if !teardown::stopping() {
                return result;
            }
        }
        _ = teardown_began.wait_for(|began| *began) => {}
    }
    // The teardown exits with the signal's status once it is done.
    std::future::pending().await
}

/// `spike-bench report`: the table and the plot again from the JSON.
fn rerender(args: &ReportArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.from)
        .with_context(|| format!("cannot read {}", args.from.display()))?;
    let results: Results = serde_json::from_slice(&text)
        .with_context(|| format!("{} is no results.json of spike-bench", args.from.display()))?;
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => args
            .from
            .parent()
            .map(std::path::Path::to_owned)
            .unwrap_or_default(),
    };
    write_reports(&results, &out, false)
}

/// Writes results.md and plot.svg (and results.json when `with_json`)
/// into `out`, and prints the table.
fn write_reports(results: &Results, out: &std::path::Path, with_json: bool) -> anyhow::Result<()> {
    if !out.as_os_str().is_empty() {
        std::fs::create_dir_all(out)?;
    }
    let markdown = report::markdown(results);
    println!("\n{markdown}");
    if with_json {
        std::fs::write(
            out.join("results.json"),
            serde_json::to_vec_pretty(results)?,
        )?;
    }
    std::fs::write(out.join("results.md"), &markdown)?;
    std::fs::write(out.join("plot.svg"), report::svg(results))?;
    println!(
        "wrote {0}{1}/results.md and {0}/plot.svg",
        out.display(),
        if with_json {
            format!("/results.json, {}", out.display())
        } else {
            String::new()
        }
    );
    Ok(())
}

fn bin_dir_or_here(bin_dir: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    match bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("no binary directory")?
            .to_owned()),
    }
}

/// The version `binary --version` reports: the word after the program's
/// name (`spike-nexus 0.3.0-dev (on-disk formats ...)` -> `0.3.0-dev`).
fn version_of(binary: &std::path::Path) -> anyhow::Result<String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let said = String::from_utf8_lossy(&output.stdout);
    said.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .with_context(|| format!("{} --version says no version: {said}", binary.display()))
}

async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    if args.sizing.keys == 0 || args.clients.contains(&0) {
        anyhow::bail!("--keys and every --clients level must be at least 1");
    }
    args.sizing.check_duration()?;
    let etcd_count = if args.targets.contains(&Target::Etcd) {
        args.etcd_bins.len()
    } else {
        0
    };
    let layout = ports::Layout::new(args.base_port, args.replicas, etcd_count)?;
    std::fs::create_dir_all(&args.out)?;
    let bin_dir = bin_dir_or_here(args.bin_dir.as_ref())?;
    let work = teardown::WorkDir::new("spike-bench")?;
    let grown = memory::Sizing {
        keys: args.memory_keys,
        value_size: args.sizing.value_size,
    };
    let mut results = Results {
        meta: report::Meta::now(
            args.sizing.duration,
            args.sizing.keys,
            args.sizing.value_size,
            layout.replicas(),
        ),
        peers: Vec::new(),
        rows: Vec::new(),
    };
    // Each etcd's version first: a wrong --etcd-bin fails before the long run.
    let mut etcds = Vec::new();
    if args.targets.contains(&Target::Etcd) {
        for binary in &args.etcd_bins {
            etcds.push((binary, etcd::version(binary)?));
        }
    }
    let vault = match (&args.vault_bin, args.targets.contains(&Target::Vault)) {
        (Some(binary), true) => Some((binary, vault::version(binary)?)),
        (None, true) => {
            eprintln!("vault: skipped (no --vault-bin; bench/vault/build builds one)");
            None
        }
        (_, false) => None,
    };
    for target in &args.targets {
        match target {
            Target::Nexus => {
                let dir = work.path().join("nexus");
                let binary = bin_dir.join("nexus");
                let mut peer = Peer::new("nexus", &version_of(&binary)?, &binary);
                let replicas = layout.replicas().to_string();
                let mut up = vec!["--replicas", replicas.as_str()];
                // The memory trial's new member.
                if args.memory_keys > 0 {
                    up.extend(["--spares", "1"]);
                }
                let mut cluster =
                    nexus::NexusCluster::up_with(&bin_dir, &dir, layout.nexus(), &up)?;
                let store = Arc::new(cluster.client().await?);
                results
                    .rows
                    .extend(measure(&peer.name, &store, &args).await?);
                peer.failover =
                    Some(nexus_failover(&mut cluster, &store, args.failover_trials).await?);
                if args.memory_keys > 0 {
                    peer.memory = Some(memory::nexus(&mut cluster, &store, grown).await?);
                }
                results.peers.push(peer);
            }
            Target::Etcd => {
                for (index, (binary, version)) in etcds.iter().enumerate() {
                    let mut peer = Peer::new(&format!("etcd {version}"), version, binary);
                    let dir = work.path().join(format!("etcd-{}", index + 1));
                    std::fs::create_dir_all(&dir)?;
                    let mut cluster =
                        etcd::EtcdCluster::up(binary, &dir, layout.etcd(index), layout.replicas())?;
                    cluster.wait_ready(Duration::from_secs(30)).await?;
                    let store = Arc::new(cluster.client());
                    results
                        .rows
                        .extend(measure(&peer.name, &store, &args).await?);
                    peer.failover = Some(
                        peer_failover(&mut cluster, store.as_ref(), args.failover_trials).await?,
                    );
                    if args.memory_keys > 0 {
                        peer.memory = Some(memory::etcd(&mut cluster, &store, grown).await?);
                    }
                    results.peers.push(peer);
                }
            }
            Target::Vault => {
                let Some((binary, version)) = &vault else {
                    continue;
                };
                let mut peer = Peer::new(&format!("vault {version}"), version, binary);
                let dir = work.path().join("vault");
                std::fs::create_dir_all(&dir)?;
                let mut cluster =
                    vault::VaultCluster::up(binary, &dir, layout.vault(), layout.replicas())
                        .await?;
                let store = Arc::new(cluster.client());
                results
                    .rows
                    .extend(measure(&peer.name, &store, &args).await?);
                peer.failover =
                    Some(peer_failover(&mut cluster, store.as_ref(), args.failover_trials).await?);
                if args.memory_keys > 0 {
                    peer.memory = Some(memory::vault(&mut cluster, &store, grown).await?);
                }
                results.peers.push(peer);
            }
        }
    }
    write_reports(&results, &args.out, true)
}

async fn run_isolation(args: isolation::IsolationArgs) -> anyhow::Result<()> {
    if args.duration.is_zero() || args.noisy_clients == 0 || args.quiet_rate == 0 {
        anyhow::bail!("--duration, --noisy-clients and --quiet-rate must be more than 0");
    }
    let bin_dir = bin_dir_or_here(args.bin_dir.as_ref())?;
    let work = teardown::WorkDir::new("spike-bench-isolation")?;
    let phases = isolation::run(&args, &bin_dir, work.path()).await?;
    println!(
        "\nisolation: {} noisy clients ({}{}), quiet reads at {}/s, {:?} per phase, noisy limit {}/s per replica",
        args.noisy_clients,
        if args.noisy_writes { "puts" } else { "gets" },
        if args.noisy_backs_off {
            ", backing off after a 429"
        } else {
            ", never backing off"
        },
        args.quiet_rate,
        args.duration,
        args.noisy_limit
    );
    println!(
        "{:<30} {:>9} {:>9} {:>9} {:>7} {:>11} {:>11}",
        "phase", "p50 ms", "p99 ms", "max ms", "errors", "noisy ok/s", "noisy 429/s"
    );
    for phase in &phases {
        println!(
            "{:<30} {:>9.2} {:>9.2} {:>9.2} {:>7} {:>11.0} {:>11.0}",
            phase.name,
            phase.quiet_p50_ms,
            phase.quiet_p99_ms,
            phase.quiet_max_ms,
            phase.quiet_errors,
            phase.noisy_ok_per_second,
            phase.noisy_limited_per_second
        );
    }
    println!("{}", serde_json::to_string(&phases)?);
    Ok(())
}

async fn run_against_existing(args: RunArgs) -> anyhow::Result<()> {
    if args.sizing.keys == 0 || args.clients == 0 {
        anyhow::bail!("--keys and --clients must be at least 1");
    }
    args.sizing.check_duration()?;
    let urls = [args.api_url.as_deref(), args.api_urls.as_deref()];
    let endpoints = spike_sdk::client::endpoints::resolve(urls.into_iter().flatten()).await?;
    let store = Arc::new(nexus::NexusStore::from_environment(endpoints).await?);
    let shape = LoadShape {
        workload: args.workload,
        clients: args.clients,
        duration: args.sizing.duration,
        keys: args.sizing.keys,
        value_size: args.sizing.value_size,
    };
    if args.workload != Workload::Put {
        load::preload(&store, &shape)
            .await
            .map_err(anyhow::Error::msg)?;
    }
    let outcome = load::run(&store, &shape).await;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "shape": shape, "outcome": outcome }))?
    );
    Ok(())
}

/// Preloads, then runs every workload at every level.
async fn measure<S: Store>(
    target: &str,
    store: &Arc<S>,
    args: &CompareArgs,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let base = LoadShape {
        workload: Workload::Put,
        clients: 64,
        duration: args.sizing.duration,
        keys: args.sizing.keys,
        value_size: args.sizing.value_size,
    };
    let began = Instant::now();
    load::preload(store, &base)
        .await
        .map_err(|e| anyhow::anyhow!("{target}: preload: {e}"))?;
    eprintln!(
        "{target}: {} keys written in {:.1?}",
        args.sizing.keys,
        began.elapsed()
    );
    for workload in &args.workloads {
        if !store.offers(*workload) {
            eprintln!("{target}: has no {workload:?}, skipped");
            continue;
        }
        for clients in &args.clients {
            let shape = LoadShape {
                workload: *workload,
                clients: *clients,
                ..base
            };
            let outcome = load::run(store, &shape).await;
            eprintln!(
                "{target} {workload:?} x{clients}: {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, errors {}{}",
                outcome.ops_per_second,
                outcome.p50_ms,
                outcome.p99_ms,
                outcome.errors,
                outcome
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            rows.push(Row {
                target: target.to_owned(),
                shape,
                outcome,
            });
        }
    }
    Ok(rows)
}

/// Longest a killed leader may take to serve again after its restart.
const FAILOVER_RESTART_LIMIT: Duration = Duration::from_secs(30);

/// Each write of a failover trial is abandoned after this long and sent
/// again, for both targets alike, so the gap measures when the cluster
/// acknowledges writes again rather than a client's request timeout.
const FAILOVER_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(250);

/// Writes back to back from one client; returns how long after `kill`
/// the next write was acknowledged.
async fn gap_after<S: Store>(store: &S, kill: impl FnOnce()) -> Duration {
    let value = load::value_of(256);
    let _ = store.put(u64::MAX - 1, &value).await;
    kill();
    let killed = Instant::now();
    loop {
        let attempt =
            tokio::time::timeout(FAILOVER_ATTEMPT_TIMEOUT, store.put(u64::MAX - 1, &value));
        if matches!(attempt.await, Ok(Ok(()))) {
            return killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn median_ms(mut values: Vec<Duration>) -> serde_json::Value {
    values.sort_unstable();
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    json!({
        "median_ms": ms.get(ms.len() / 2).copied(),
        "min_ms": ms.first().copied(),
        "max_ms": ms.last().copied(),
        "trials_ms": ms,
    })
}

async fn nexus_failover(
    cluster: &mut nexus::NexusCluster,
    store: &nexus::NexusStore,
    trials: usize,
) -> anyhow::Result<serde_json::Value> {
    let (mut gaps, mut restarts) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        store
            .put(u64::MAX - 1, "warm")
            .await
            .map_err(anyhow::Error::msg)?;
        let leader = store.client.known_leader().context("no leader known")?;
        let name = cluster
            .name_of(leader)
            .context("leader not in cluster.json")?;
        let mut killed = Ok(());
        let gap = gap_after(store, || killed = cluster.act(Action::Kill, &name)).await;
        killed?;
        gaps.push(gap);
        restarts.push(cluster.restart_and_wait(&name, FAILOVER_RESTART_LIMIT)?);
    }
    Ok(json!({ "failover_gap": median_ms(gaps), "restart_to_serving": median_ms(restarts) }))
}

/// A peer's cluster as the failover trials see it: which member leads,
/// kill -9 of one, and its restart until it serves again.
trait KillableCluster {
    /// The member that leads (etcd) or is active (Vault) now.
    async fn leading(&self) -> anyhow::Result<usize>;
    /// kill -9 of member `index`.
    fn kill(&mut self, index: usize);
    /// Restarts member `index`; how long until it serves.
    async fn restart_and_wait(&mut self, index: usize, limit: Duration)
    -> anyhow::Result<Duration>;
}

impl KillableCluster for etcd::EtcdCluster {
    async fn leading(&self) -> anyhow::Result<usize> {
        self.leader().await
    }
    fn kill(&mut self, index: usize) {
        etcd::EtcdCluster::kill(self, index);
    }
    async fn restart_and_wait(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        etcd::EtcdCluster::restart_and_wait(self, index, limit).await
    }
}

impl KillableCluster for vault::VaultCluster {
    async fn leading(&self) -> anyhow::Result<usize> {
        self.active().await
    }
    fn kill(&mut self, index: usize) {
        vault::VaultCluster::kill(self, index);
    }
    async fn restart_and_wait(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        vault::VaultCluster::restart_and_wait(self, index, limit).await
    }
}

/// `trials` times: kill -9 of the leading member under writes (the gap
/// until the next acknowledged write), then its restart.
async fn peer_failover<C: KillableCluster, S: Store>(
    cluster: &mut C,
    store: &S,
    trials: usize,
) -> anyhow::Result<serde_json::Value> {
    let (mut gaps, mut restarts) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let leading = cluster.leading().await?;
        let gap = gap_after(store, || cluster.kill(leading)).await;
        gaps.push(gap);
        restarts.push(
            cluster
                .restart_and_wait(leading, FAILOVER_RESTART_LIMIT)
                .await?,
        );
    }
    Ok(json!({ "failover_gap": median_ms(gaps), "restart_to_serving": median_ms(restarts) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_every_other_binary() {
        let parsed = Cli::try_parse_from(["spike-bench", "compare", "--duration", "1m30s"]);
        let Ok(Cli::Compare(args)) = parsed else {
            panic!("compare --duration 1m30s does not parse");
        };
        assert_eq!(args.sizing.duration, Duration::from_secs(90));
        assert!(
            Cli::try_parse_from(["spike-bench", "compare", "--duration", "10"]).is_err(),
            "a bare number needs a unit"
        );
    }

    #[test]
    fn replicas_default_to_3_and_take_5() {
        let parse = |more: &[&str]| {
            let mut argv = vec!["spike-bench", "compare"];
            argv.extend_from_slice(more);
            match Cli::try_parse_from(argv) {
                Ok(Cli::Compare(args)) => args.replicas,
                _ => panic!("compare {more:?} does not parse"),
            }
        };
        assert_eq!(parse(&[]), 3);
        assert_eq!(parse(&["--replicas", "5"]), 5);
    }
}
