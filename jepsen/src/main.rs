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

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use spike_jepsen::check::{self, Anomaly, Operation};
use spike_jepsen::cluster::{Cluster, Hosts};
use spike_jepsen::history::{EventKind, write_event};
use spike_jepsen::nemesis::{self, FaultWindow, Nemesis};
use spike_jepsen::recorder::{Invocation, Recorder};
use spike_jepsen::timeline;
use spike_jepsen::workload::{self, Workload};

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
    /// How long clients run (faults included), e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
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
    /// Where nexus, keeper, spike-dev-identity and spike-dev-cluster are (default: next
    /// to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s or 2m"))?;
    match unit {
        "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        _ => Err(format!("{text:?}: use s or m")),
    }
}

fn main() -> ExitCode {
    let Action::Run(args) = Cli::parse().command;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("spike-jepsen: cannot start the runtime: {error}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(verdict) => ExitCode::from(verdict.exit_code()),
        Err(error) => {
            eprintln!("spike-jepsen: {error:#}");
            ExitCode::from(3)
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Verdict {
    Valid,
    Anomalies,
    Undecided,
}

impl Verdict {
    fn exit_code(self) -> u8 {
        match self {
            Self::Valid => 0,
            Self::Anomalies => 1,
            Self::Undecided => 2,
        }
    }
}

/// Whether this process may make network namespaces.
fn namespaces_possible() -> bool {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|output| output.status.success())
        && rustix::process::geteuid().is_root()
}

async fn run(args: RunArgs) -> anyhow::Result<Verdict> {
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!("{} exists and is not empty", args.out.display());
    }
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("cannot locate the binaries")?
            .to_owned(),
    };
    // Names unique to this run, so parallel runs do not collide.
    let tag = std::process::id() % 100_000;
    let hosts = if !args.proxies && namespaces_possible() {
        Hosts::Namespaces {
            prefix: format!("sj{tag}"),
            subnet: format!("10.214.{}", tag % 250 + 1),
        }
    } else {
        if !args.proxies {
            println!(
                "no network namespaces here (they need root and iproute2): every process on \
                 loopback, links faulted in per-link proxies"
            );
        }
        Hosts::Proxies
    };
    if args.nemesis.needs_proxies() && !matches!(hosts, Hosts::Proxies) {
        bail!(
            "the {:?} nemesis needs the per-link proxies (--proxies): this kernel has no \
             netem to delay packets in namespaces",
            args.nemesis
        );
    }
    // The clock-jump nemesis moves clocks through this test hook.
    let mut nexus_args = vec!["--test-clock-offset".to_owned()];
    // Delayed links stand for replicas far apart: timing tuned for that,
    // as an operator would (a heartbeat must come back within one interval).
    let heartbeat = if args.nemesis == Nemesis::DelayedLinks {
        nexus_args.push("--heartbeat-interval=500ms".to_owned());
        nexus_args.push("--election-timeout=2s".to_owned());
        Duration::from_millis(500)
    } else {
        nemesis::DEFAULT_HEARTBEAT
    };
    if args.unsafe_local_reads {
        nexus_args.push("--unsafe-local-reads".to_owned());
    }
    println!(
        "starting {} replicas and 5 keepers, {}",
        args.replicas,
        match &hosts {
            Hosts::Namespaces { prefix, subnet } => {
                format!("one namespace each ({prefix}-*, {subnet}.0/24)")
            }
            Hosts::Proxies => "on loopback, each replica dialling through a proxy".to_owned(),
        }
    );
    // Spares for membership changes: every free id up to 10 (the ports
    // spike-dev-cluster has for replicas).
    let spares = if args.nemesis.needs_spares() {
        10u64.saturating_sub(args.replicas)
    } else {
        0
    };
    let mut cluster = Cluster::up(
        &out.join("cluster"),
        &bin_dir,
        args.base_port,
        &hosts,
        (args.replicas, spares),
        &nexus_args,
    )?;
    cluster.heartbeat = heartbeat;
    let outcome = drive(&args, &cluster, &out).await;
    if let Err(error) = cluster.down() {
        eprintln!("spike-jepsen: cleaning up the cluster: {error:#}");
    }
    outcome
}

async fn drive(args: &RunArgs, cluster: &Cluster, out: &Path) -> anyhow::Result<Verdict> {
    let endpoints = cluster.api_addresses()?;
    let recorder = Arc::new(Recorder::new());
    if args.workload == Workload::Policy {
        let admin = cluster.client(endpoints.clone()).await?;
        let values = BTreeMap::from([("v".to_owned(), "1".to_owned())]);
        retry(|| admin.put_secret(workload::POLICY_SECRET, &values, None)).await?;
    }
    let started = Instant::now();
    let deadline = started + args.time;
    let key_rotation = workload::KeyRotation {
        started,
        lifetime: KEY_LIFETIME,
    };

    println!(
        "running {:?} under {:?} for {:?} with {} clients (seed {})",
        args.workload, args.nemesis, args.time, args.clients, args.seed
    );
    let mut workers = Vec::new();
    for process in 0..args.clients {
        // Even clients follow the leader from a different first node each;
        // odd ones are pinned to one node (as Jepsen binds clients to
        // nodes), so forwarding and follower read indexes are under test.
        let node = endpoints[process as usize % endpoints.len().max(1)];
        // The policy workload's readers act as the granted workload; its
        // admin (process 0) and everyone else as the superuser.
        let identity = if args.workload == Workload::Policy && process != 0 {
            spike_jepsen::cluster::APP_IDENTITY
        } else {
            "superuser"
        };
        let client = if process % 2 == 0 {
            let mut order = endpoints.clone();
            let shift = process as usize % order.len().max(1);
            order.rotate_left(shift);
            cluster.client_with(order, true, identity).await?
        } else {
            cluster.client_with(vec![node], false, identity).await?
        };
        let recorder = recorder.clone();
        let spec = workload::ClientSpec {
            workload: args.workload,
            process,
            keys: args.keys,
            key_rotation: Some(key_rotation),
            seed: args.seed,
            deadline,
            pinned: (process % 2 == 1).then_some(node),
        };
        workers.push(tokio::spawn(async move {
            workload::client_loop(spec, client, &recorder).await;
        }));
    }
    let nemesis_client = cluster.client(endpoints.clone()).await?;
    let windows = nemesis::run(
        args.nemesis,
        cluster,
        &nemesis_client,
        &recorder,
        args.seed,
        deadline,
    )
    .await;
    for worker in workers {
        worker.await?;
    }
    nemesis::heal_all(cluster)?;
    let windows = windows?;
    let recovery = cluster.wait_ready(Duration::from_secs(60))?;
    println!(
        "healed; every replica ready {:.2}s later",
        recovery.as_secs_f64()
    );

    // Membership changes may have replaced the replicas the run began with.
    let endpoints = cluster.api_addresses()?;
    let mut anomalies = Vec::new();
    let mut details = json!({});
    match args.workload {
        Workload::Register => {
            let keys = key_rotation.keys_used(args.keys, deadline);
            final_register_reads(args, keys, cluster, &recorder, &mut anomalies).await?;
        }
        Workload::Set | Workload::Lifecycle | Workload::Policy | Workload::Rootkey => {}
    }
    let events = recorder.events();
    let operations = check::pair(&events).context("the history does not pair")?;
    let mut unknown = false;
    match args.workload {
        Workload::Register => {
            let report = check::check_registers(&operations, check::SEARCH_STEPS_MAX);
            unknown |= !report.unknown_keys.is_empty();
            details["register"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Policy => {
            let report = check::policy::check(&operations);
            unknown |= report.reads_judged == 0;
            details["policy"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Lifecycle => {
            let report = check::lifecycle::check(&operations);
            details["lifecycle"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Set => {
            let client = cluster.client(endpoints.clone()).await?;
            let final_read = retry(|| workload::read_set(&client, "set")).await?;
            let report = check::set::check(&operations, &final_read);
            details["set"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Rootkey => {
            let client = cluster.client(endpoints.clone()).await?;
            let final_read = retry(|| workload::read_set(&client, "rootkey")).await?;
            let report = check::set::check(&operations, &final_read);
            details["rootkey"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
            let keys = root_key_checks(cluster, &final_read, args.seed, &mut anomalies).await?;
            details["root_keys"] = keys;
        }
    }
    let acknowledged = operations
        .iter()
        .filter(|op| op.outcome() == EventKind::Ok)
        .count();
    let verdict = if !anomalies.is_empty() {
        Verdict::Anomalies
    } else if unknown || acknowledged == 0 {
        Verdict::Undecided
    } else {
        Verdict::Valid
    };
    write_artifacts(
        args,
        out,
        &events,
        &operations,
        &windows,
        &anomalies,
        details,
        recovery,
        verdict,
        cluster.proxied(),
    )?;
    Ok(verdict)
}

/// How long the register workload uses one set of keys.
const KEY_LIFETIME: Duration = Duration::from_secs(10);

/// Retries `read` for up to 30 s (the cluster just healed).
async fn retry<T, F, Fut>(mut read: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, spike_sdk::client::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read().await {
            Ok(value) => return Ok(value),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => bail!("final read failed after healing: {error}"),
        }
    }
}

/// After healing: one linearizable read of every register key (recorded in
/// the history, so the checker judges it too), then every replica's own
/// copy must come to match it.
async fn final_register_reads(
    args: &RunArgs,
    keys: u64,
    cluster: &Cluster,
    recorder: &Recorder,
    anomalies: &mut Vec<Anomaly>,
) -> anyhow::Result<()> {
    let endpoints = cluster.api_addresses()?;
    let client = cluster.client(endpoints.clone()).await?;
    let process = args.clients;
    let mut finals = BTreeMap::new();
    for key in 0..keys {
        let path = workload::register_path(key);
        let value = retry(|| async {
            let invocation = Invocation {
                process,
                f: "read",
                key: Some(key.to_string()),
                value: Value::Null,
                node: client.known_leader().map(|a| a.to_string()),
            };
            recorder.invoke(&invocation);
            let result = match client.get_secret(&path, None).await {
                Ok(found) => Ok(found.get("v").and_then(|v| v.parse::<u64>().ok())),
                Err(spike_sdk::client::Error::NotFound) => Ok(None),
                Err(error) => Err(error),
            };
            match &result {
                Ok(value) => recorder.complete(&invocation, EventKind::Ok, json!(value), None),
                Err(error) => recorder.complete(
                    &invocation,
                    EventKind::Fail,
                    Value::Null,
                    Some(error.to_string()),
                ),
            }
            result
        })
        .await?;
        finals.insert(key, value);
    }
    // Convergence: each replica, read alone and without a barrier.
    for (name, endpoint) in cluster.replica_endpoints()? {
        let alone = cluster.client(vec![endpoint]).await?;
        for (key, expected) in &finals {
            let path = workload::register_path(*key);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let seen = match alone.get_secret_stale(&path, None).await {
                    Ok(found) => Some(found.get("v").and_then(|v| v.parse::<u64>().ok())),
                    Err(spike_sdk::client::Error::NotFound) => Some(None),
                    Err(_) => None,
                };
                if seen.as_ref() == Some(expected) {
                    break;
                }
                if Instant::now() > deadline {
                    anomalies.push(Anomaly::Divergence {
                        detail: format!(
                            "{name} holds {seen:?} for key {key}, the cluster {expected:?}"
                        ),
                    });
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}

/// After healing, for the root-key workload: every replica reports the
/// same root key (id and key check), and decrypts a sample of the
/// acknowledged secrets itself (a stale read is served from its own state
/// with its own keyring).
async fn root_key_checks(
    cluster: &Cluster,
    elements: &BTreeMap<u64, u64>,
    seed: u64,
    anomalies: &mut Vec<Anomaly>,
) -> anyhow::Result<Value> {
    const SAMPLE: usize = 500;
    let endpoints = cluster.replica_endpoints()?;
    let mut rng = spike_jepsen::recorder::Rng::new(seed ^ 0x726f_6f74);
    let all: Vec<u64> = elements.keys().copied().collect();
    let sample: Vec<u64> = if all.len() <= SAMPLE {
        all
    } else {
        (0..SAMPLE).map(|_| *rng.pick(&all)).collect()
    };
    let mut alone = Vec::new();
    for (name, endpoint) in &endpoints {
        alone.push((
            name.clone(),
            cluster
                .client_with(vec![*endpoint], false, "superuser")
                .await?,
        ));
    }
    // A replica may still be taking up the last rekey: give them 10 s to
    // agree.
    let settle = Instant::now() + Duration::from_secs(10);
    let keys = loop {
        let mut keys = Vec::new();
        for (name, client) in &alone {
            let status = retry(|| client.cluster_status()).await?;
            keys.push(json!({
                "replica": name,
                "rootKeyId": status["rootKey"]["rootKeyId"],
                "keyCheck": status["rootKey"]["keyCheck"],
            }));
        }
        let first = keys
            .first()
            .map(|k| (k["rootKeyId"].clone(), k["keyCheck"].clone()));
        let agree = keys
            .iter()
            .all(|k| Some((k["rootKeyId"].clone(), k["keyCheck"].clone())) == first);
        if agree {
            break keys;
        }
        if Instant::now() > settle {
            anomalies.push(Anomaly::Divergence {
                detail: format!("replicas hold different root keys: {keys:?}"),
            });
            break keys;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (name, alone) in &alone {
        for element in &sample {
            let path = workload::rootkey_path(*element);
            let read = retry(|| alone.get_secret_stale(&path, None)).await;
            let expected = element.to_string();
            match read {
                Ok(values) if values.get("v") == Some(&expected) => {}
                other => anomalies.push(Anomaly::Divergence {
                    detail: format!("{name} cannot read {path} after rekeys: {other:?}"),
                }),
            }
        }
    }
    Ok(Value::Array(keys))
}

#[allow(clippy::too_many_arguments)]
fn write_artifacts(
    args: &RunArgs,
    out: &Path,
    events: &[spike_jepsen::history::Event],
    operations: &[Operation<'_>],
    windows: &[FaultWindow],
    anomalies: &[Anomaly],
    details: Value,
    recovery: Duration,
    verdict: Verdict,
    proxied: bool,
) -> anyhow::Result<()> {
    let mut history = std::io::BufWriter::new(std::fs::File::create(out.join("history.jsonl"))?);
    for event in events {
        write_event(&mut history, event)?;
    }
    std::io::Write::flush(&mut history)?;

    let count = |kind: EventKind| operations.iter().filter(|op| op.outcome() == kind).count();
    let gaps = timeline::write_gaps(operations, windows);
    let results = json!({
        "verdict": verdict,
        "workload": args.workload,
        "nemesis": args.nemesis,
        "seed": args.seed,
        "seconds": args.time.as_secs(),
        "clients": args.clients,
        "replicas": args.replicas,
        "unsafe_local_reads": args.unsafe_local_reads,
        "hosts": if proxied { "proxies" } else { "namespaces" },
        "operations": { "ok": count(EventKind::Ok), "fail": count(EventKind::Fail), "info": count(EventKind::Info) },
        "faults": windows,
        "write_gap_ms": gaps,
        "recovery_ms": recovery.as_millis() as u64,
        "anomalies": anomalies,
        "details": details,
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    let title = format!(
        "{:?} under {:?}, seed {}: {:?}",
        args.workload, args.nemesis, args.seed, verdict
    );
    std::fs::write(
        out.join("timeline.svg"),
        timeline::svg(operations, windows, &title),
    )?;

    let mut summary = String::new();
    let _ = writeln!(summary, "{title}");
    let _ = writeln!(
        summary,
        "operations: {} ok, {} fail, {} info",
        count(EventKind::Ok),
        count(EventKind::Fail),
        count(EventKind::Info)
    );
    for (window, gap) in windows.iter().zip(&gaps) {
        let _ = writeln!(
            summary,
            "fault {:?} on {} at {:.1}s for {:.1}s: next acknowledged write {}",
            window.fault,
            window.targets.join(","),
            window.start_ns as f64 / 1e9,
            (window.end_ns - window.start_ns) as f64 / 1e9,
            gap.map_or("never".to_owned(), |ms| format!("after {ms:.0} ms"))
        );
    }
    let _ = writeln!(
        summary,
        "recovery after healing: {} ms",
        recovery.as_millis()
    );
    if anomalies.is_empty() {
        let _ = writeln!(summary, "anomalies: none");
    }
    const SHOWN: usize = 20;
    for anomaly in anomalies.iter().take(SHOWN) {
        let _ = writeln!(summary, "ANOMALY {}", serde_json::to_string(anomaly)?);
    }
    if anomalies.len() > SHOWN {
        let _ = writeln!(
            summary,
            "... and {} more anomalies (all in results.json)",
            anomalies.len() - SHOWN
        );
    }
    let _ = writeln!(
        summary,
        "replay: spike-jepsen run --workload {} --nemesis {} --time {}s --seed {} --clients {} --keys {} --replicas {}{}{} --out DIR",
        clap::ValueEnum::to_possible_value(&args.workload)
            .map_or_else(String::new, |v| v.get_name().to_owned()),
        clap::ValueEnum::to_possible_value(&args.nemesis)
            .map_or_else(String::new, |v| v.get_name().to_owned()),
        args.time.as_secs(),
        args.seed,
        args.clients,
        args.keys,
        args.replicas,
        if args.unsafe_local_reads {
            " --unsafe-local-reads"
        } else {
            ""
        },
        if args.proxies { " --proxies" } else { "" }
    );
    let _ = writeln!(summary, "artifacts: {}", out.display());
    std::fs::write(out.join("summary.txt"), &summary)?;
    print!("{summary}");
    Ok(())
}
