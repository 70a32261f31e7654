//! One run: start a cluster, drive a workload under a nemesis, heal, read
//! the final state, check the history and write the artifacts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::artifacts::{self, Artifacts, Judgement};
use crate::check::{self, Anomaly, Operation};
use crate::cluster::{APP_IDENTITY, Cluster, Hosts};
use crate::converge::{self, Replica};
use crate::history::EventKind;
use crate::nemesis::{self, Nemesis};
use crate::perform::secret_values;
use crate::recorder::Recorder;
use crate::self_running;
use crate::workload::{self, ClientSpec, KeyRotation, SetKind, Workload};

/// How long the register workload uses one set of keys.
const KEY_LIFETIME: Duration = Duration::from_secs(10);
/// How long every replica has to become ready after healing.
const RECOVERY_WITHIN: Duration = Duration::from_secs(60);
/// How long each final read may be retried after healing.
const FINAL_READ_WITHIN: Duration = Duration::from_secs(30);
/// How long each replica has to agree with the final reads.
const CONVERGE_WITHIN: Duration = Duration::from_secs(10);
/// Replica ids `spike-dev-cluster` has ports for (founders and spares).
const REPLICA_IDS_MAX: u64 = 10;

/// What one run does.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// What the clients do.
    pub workload: Workload,
    /// Which faults to inject.
    pub nemesis: Nemesis,
    /// How long clients run (faults included).
    pub time: Duration,
    /// Seed of every random choice (operations, keys, fault targets).
    pub seed: u64,
    /// Where the artifacts go (must not exist, or be empty).
    pub out: PathBuf,
    /// Concurrent clients.
    pub clients: u64,
    /// Register keys in use at once; a fresh set every 10 s.
    pub keys: u64,
    /// Nexus replicas.
    pub replicas: u64,
    /// First port of the cluster.
    pub base_port: u16,
    /// Fault links in the harness's per-link proxies even where network
    /// namespaces are possible.
    pub proxies: bool,
    /// Start the replicas with the deliberately unsafe
    /// `--unsafe-local-reads`.
    pub unsafe_local_reads: bool,
    /// Where nexus, keeper, spike-dev-identity and spike-dev-cluster are.
    pub bin_dir: PathBuf,
    /// Identities from SPIRE instead of the dev Workload API.
    pub spire: Option<crate::cluster::SpireSettings>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No anomaly, and enough was acknowledged to judge.
    Valid,
    /// The checkers found anomalies.
    Anomalies,
    /// No verdict: a search gave up, or nothing was acknowledged.
    Undecided,
}

impl Verdict {
    /// The binary's exit status for it.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Valid => 0,
            Self::Anomalies => 1,
            Self::Undecided => 2,
        }
    }
}

/// Runs `settings`: the cluster comes up, the workload runs, the cluster
/// goes down (also when the run fails).
pub async fn run(settings: &RunSettings) -> anyhow::Result<Verdict> {
    let out = &settings.out;
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    std::fs::create_dir_all(out)?;
    let out = std::fs::canonicalize(out)?;
    let hosts = hosts(settings)?;
    // The clock-jump nemesis moves clocks through this test hook.
    let mut nexus_args = vec!["--test-clock-offset".to_owned()];
    // Delayed links stand for replicas far apart: timing tuned for that,
    // as an operator would (a heartbeat must come back within one interval).
    let heartbeat = if settings.nemesis == Nemesis::DelayedLinks {
        nexus_args.push("--heartbeat-interval=500ms".to_owned());
        nexus_args.push("--election-timeout=2s".to_owned());
        Duration::from_millis(500)
    } else {
        nemesis::DEFAULT_HEARTBEAT
    };
    if settings.unsafe_local_reads {
        nexus_args.push("--unsafe-local-reads".to_owned());
    }
    if settings.workload == Workload::SelfRunning {
        nexus_args.extend(self_running::NEXUS_ARGS.iter().map(|arg| (*arg).to_owned()));
    }
    println!(
        "starting {} replicas and 5 keepers, {}",
        settings.replicas,
        match &hosts {
            Hosts::Namespaces { prefix, subnet } => {
                format!("one namespace each ({prefix}-*, {subnet}.0/24)")
            }
            Hosts::Proxies => "on loopback, each replica dialling through a proxy".to_owned(),
        }
    );
    let spares = if settings.nemesis.needs_spares() {
        REPLICA_IDS_MAX.saturating_sub(settings.replicas)
    } else {
        0
    };
    let mut cluster = Cluster::up(
        &out.join("cluster"),
        &settings.bin_dir,
        settings.base_port,
        &hosts,
        (settings.replicas, spares),
        &nexus_args,
        settings.spire.as_ref(),
    )?;
    cluster.heartbeat = heartbeat;
    let outcome = drive(settings, &cluster, &out).await;
    if let Err(error) = cluster.down() {
        eprintln!("spike-jepsen: cleaning up the cluster: {error:#}");
    }
    outcome
}

/// Network namespaces when possible and not declined, else the proxies.
fn hosts(settings: &RunSettings) -> anyhow::Result<Hosts> {
    // Names unique to this run, so parallel runs do not collide.
    let tag = std::process::id() % 100_000;
    let hosts = if !settings.proxies && namespaces_possible() {
        Hosts::Namespaces {
            prefix: format!("sj{tag}"),
            subnet: format!("10.214.{}", tag % 250 + 1),
        }
    } else {
        if !settings.proxies {
            println!(
                "no network namespaces here (they need root and iproute2): every process on \
                 loopback, links faulted in per-link proxies"
            );
        }
        Hosts::Proxies
    };
    if settings.nemesis.needs_proxies() && !matches!(hosts, Hosts::Proxies) {
        bail!(
            "the {:?} nemesis needs the per-link proxies (--proxies): this kernel has no \
             netem to delay packets in namespaces",
            settings.nemesis
        );
    }
    Ok(hosts)
}

/// Whether this process may make network namespaces.
fn namespaces_possible() -> bool {
    std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|output| output.status.success())
        && rustix::process::geteuid().is_root()
}

/// The run proper, on a cluster that is up.
async fn drive(settings: &RunSettings, cluster: &Cluster, out: &Path) -> anyhow::Result<Verdict> {
    let endpoints = cluster.api_addresses()?;
    let recorder = Arc::new(Recorder::new());
    if settings.workload == Workload::Policy {
        let admin = cluster.client(endpoints.clone()).await?;
        let values = secret_values(1);
        let secret = workload::policy_secret();
        converge::retry(FINAL_READ_WITHIN, || {
            admin.put_secret(&secret, &values, None)
        })
        .await
        .context("the policy workload's secret")?;
    }
    let started = Instant::now();
    let deadline = started + settings.time;
    let key_rotation = KeyRotation {
        started,
        lifetime: KEY_LIFETIME,
    };
    println!(
        "running {:?} under {:?} for {:?} with {} clients (seed {})",
        settings.workload, settings.nemesis, settings.time, settings.clients, settings.seed
    );
    let workers = start_clients(
        settings,
        cluster,
        &endpoints,
        &recorder,
        key_rotation,
        deadline,
    )
    .await?;
    let nemesis_client = cluster.client(endpoints).await?;
    let windows = nemesis::run(
        settings.nemesis,
        cluster,
        &nemesis_client,
        &recorder,
        settings.seed,
        deadline,
    )
    .await;
    for worker in workers {
        worker.await?;
    }
    nemesis::heal_all(cluster)?;
    let windows = windows?;
    let recovery = cluster.wait_ready(RECOVERY_WITHIN)?;
    println!(
        "healed; every replica ready {:.2}s later",
        recovery.as_secs_f64()
    );

    let keys_used = key_rotation.keys_used(settings.keys, deadline);
    let mut finals = read_finals(settings, cluster, &recorder, keys_used).await?;
    if settings.workload == Workload::SelfRunning {
        let (report, anomalies) = self_running::check(&out.join("cluster"), &finals.replicas).await;
        println!(
            "self-running: {} backup slots completed by {} leaders, {} backup files verified, {} replicas without a corruption alarm",
            report.backups_completed,
            report.backup_writers,
            report.backup_files_verified,
            report.replicas_checked
        );
        finals.self_running = Some(serde_json::to_value(&report)?);
        finals.anomalies.extend(anomalies);
    }
    let events = recorder.events();
    let operations = check::pair(&events).context("the history does not pair")?;
    let judgement = judge(settings.workload, &operations, finals)?;
    let verdict = judgement.verdict;
    artifacts::write(&Artifacts {
        settings,
        out,
        events: &events,
        operations: &operations,
        windows: &windows,
        judgement,
        recovery,
        proxied: cluster.proxied(),
    })?;
    Ok(verdict)
}

/// Starts one task per client. Even clients follow the leader from a
/// different first node each; odd ones are pinned to one node (as Jepsen
/// binds clients to nodes), so forwarding and follower read indexes are
/// under test.
async fn start_clients(
    settings: &RunSettings,
    cluster: &Cluster,
    endpoints: &[SocketAddr],
    recorder: &Arc<Recorder>,
    key_rotation: KeyRotation,
    deadline: Instant,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let mut workers = Vec::new();
    for process in 0..settings.clients {
        let shift = process as usize % endpoints.len().max(1);
        let node = *endpoints.get(shift).context("the cluster has no replica")?;
        // The policy workload's readers act as the granted workload; its
        // admin (process 0) and everyone else as the superuser.
        let identity = if settings.workload == Workload::Policy && process != 0 {
            APP_IDENTITY
        } else {
            "superuser"
        };
        let pinned = process % 2 == 1;
        let nexus = if pinned {
            cluster.client_with(vec![node], false, identity).await?
        } else {
            let mut order = endpoints.to_vec();
            order.rotate_left(shift);
            cluster.client_with(order, true, identity).await?
        };
        let spec = ClientSpec {
            workload: settings.workload,
            process,
            keys: settings.keys,
            key_rotation: Some(key_rotation),
            seed: settings.seed,
            deadline,
            pinned: pinned.then_some(node),
        };
        let recorder = recorder.clone();
        workers.push(tokio::spawn(async move {
            workload::client_loop(spec, nexus, &recorder).await;
        }));
    }
    Ok(workers)
}

/// What the healed cluster held.
#[derive(Default)]
struct Finals {
    /// The elements read, for the set checker.
    elements: Option<BTreeMap<u64, u64>>,
    /// The root keys the replicas reported.
    root_keys: Option<Value>,
    /// Replicas that did not converge.
    anomalies: Vec<Anomaly>,
    /// The replicas, each through a client of its own.
    replicas: Vec<Replica>,
    /// What the self-running workload's checks saw.
    self_running: Option<Value>,
}

/// After healing: the final reads (register reads go into the history)
/// and every replica's convergence to them.
async fn read_finals(
    settings: &RunSettings,
    cluster: &Cluster,
    recorder: &Recorder,
    keys_used: u64,
) -> anyhow::Result<Finals> {
    // Membership changes may have replaced the replicas the run began with.
    let reader = cluster.client(cluster.api_addresses()?).await?;
    let mut replicas = Vec::new();
    for (name, endpoint) in cluster.replica_endpoints()? {
        let nexus = cluster
            .client_with(vec![endpoint], false, "superuser")
            .await?;
        replicas.push(Replica { name, nexus });
    }
    let mut finals = Finals::default();
    if settings.workload == Workload::Register {
        let values = converge::final_register_reads(
            &reader,
            keys_used,
            settings.clients,
            recorder,
            FINAL_READ_WITHIN,
        )
        .await?;
        finals.anomalies = converge::registers_converge(&replicas, &values, CONVERGE_WITHIN).await;
    }
    if let Some(kind) = settings.workload.set_kind() {
        let elements = converge::final_set(&reader, kind, FINAL_READ_WITHIN).await?;
        let listed: BTreeSet<u64> = elements.keys().copied().collect();
        finals.anomalies = converge::set_converges(&replicas, kind, &listed, CONVERGE_WITHIN).await;
        if kind == SetKind::Rootkey {
            let (keys, anomalies) =
                converge::root_keys_converge(&replicas, &elements, settings.seed, CONVERGE_WITHIN)
                    .await?;
            finals.root_keys = Some(keys);
            finals.anomalies.extend(anomalies);
        }
        finals.elements = Some(elements);
    }
    finals.replicas = replicas;
    Ok(finals)
}

/// Runs the workload's checkers over the history and the final state.
fn judge(
    workload: Workload,
    operations: &[Operation<'_>],
    finals: Finals,
) -> anyhow::Result<Judgement> {
    let mut anomalies = finals.anomalies;
    let mut details = json!({});
    let mut undecided = false;
    let elements = finals.elements.unwrap_or_default();
    match workload {
        Workload::Register => {
            let report = check::check_registers(operations, check::SEARCH_STEPS_MAX);
            undecided |= !report.unknown_keys.is_empty();
            details["register"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Policy => {
            let report = check::policy::check(operations);
            undecided |= report.reads_judged == 0;
            details["policy"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Lifecycle => {
            let report = check::lifecycle::check(operations);
            details["lifecycle"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Set => {
            let report = check::set::check(operations, &elements);
            details["set"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
        }
        Workload::Rootkey | Workload::SelfRunning => {
            let report = check::set::check(operations, &elements);
            details["rootkey"] = serde_json::to_value(&report)?;
            anomalies.extend(report.anomalies);
            details["root_keys"] = finals.root_keys.unwrap_or_default();
            if let Some(report) = finals.self_running {
                details["self_running"] = report;
            }
        }
    }
    let acknowledged = operations
        .iter()
        .filter(|op| op.outcome() == EventKind::Ok)
        .count();
    let verdict = if !anomalies.is_empty() {
        Verdict::Anomalies
    } else if undecided || acknowledged == 0 {
        Verdict::Undecided
    } else {
        Verdict::Valid
    };
    Ok(Judgement {
        verdict,
        anomalies,
        details,
    })
}
