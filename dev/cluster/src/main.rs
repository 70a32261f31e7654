//! `spike-dev-cluster`: a local SPIKE cluster on loopback, everything under one
//! directory.
//!
//! `up` creates dev identities (one per process) and starts the dev
//! Workload API, the keepers and the Nexus replicas, then waits until every
//! replica holds the root key; it writes `cluster.json` (every process with
//! its role, id, addresses, pid, data dir and log) and `env`, `env.recover`,
//! `env.restore` to `source`. The Workload API sockets live in
//! `DIR/identities/sockets`, or, when `DIR` is so deep that a socket path
//! there would pass the 107-byte limit of a unix socket address, in a
//! private `spike-sockets-*` directory of the system's temporary directory
//! (`cluster.json` names it; `down` removes it). A second `up` restarts
//! the same cluster on its existing data. `start`, `stop` and `kill` act on one process by name
//! (`nexus-2`, `keeper-4`, `workload-api`); `down` stops them all.
//! `up --spares K` also plans K spare replicas (fresh ids, addresses and
//! identities) that stay down until `join` starts one with `--join`, for an
//! operator to add; `retire` stops a removed replica for good. Only
//! processes recorded in `cluster.json` are ever signalled, and only while
//! they still run the binary recorded for them.
//!
//! Keepers hold shares in memory only, so after `down` the restarted
//! cluster cannot rebuild its root key by itself: that is a total loss. For
//! development convenience the first `up` saves the recovery shards (as
//! `spike operator recover` would) under `DIR/recovery`, and a later `up`
//! that finds the replicas locked feeds them back through `restore`. A
//! production deployment never keeps shards next to the data.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use spike_dev_identity::{IdentityDirectory, IdentitySpec, MAX_SOCKET_PATH};

mod netns;
mod operator;

#[derive(Parser)]
#[command(
    version,
    about = "A local SPIKE cluster on loopback (development and tests)"
)]
struct Cli {
    #[command(subcommand)]
    command: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Start (or restart) the whole cluster and wait until it serves.
    Up {
        #[command(flatten)]
        common: Common,
        /// Nexus replicas (3 or 5 for production-like runs).
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// Spare replicas, planned but not started (see `join`); replicas
        /// and spares together are at most 10.
        #[arg(long, default_value_t = 0)]
        spares: u64,
        /// Keepers; each holds one share.
        #[arg(long, default_value_t = 5)]
        keepers: u8,
        /// Shares needed to rebuild the root key.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// First port; every process takes ports from here up.
        #[arg(long, default_value_t = 28_500)]
        base_port: u16,
        /// Trust domain of every identity.
        #[arg(long, default_value = "spike.ist")]
        trust_domain: String,
        /// Longest wait for every replica to serve, in seconds.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        /// Extra flags for every nexus (e.g. "--snapshot-every=50").
        #[arg(long = "nexus-arg", allow_hyphen_values = true)]
        nexus_args: Vec<String>,
        /// Extra workload identity NAME=PATH (served at sockets/NAME.sock).
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
    /// `spike cluster add`, whose arguments this prints).
    Join {
        /// The spare (nexus-N).
        name: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop a replica removed from the cluster, for good: its id is
    /// retired, and `up` and `start` leave it down.
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

/// `cluster.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterFile {
    dir: PathBuf,
    trust_domain: String,
    shares: u8,
    threshold: u8,
    nexus_args: Vec<String>,
    #[serde(default)]
    workloads: Vec<String>,
    /// Namespaces, when each process is a host of its own.
    #[serde(default)]
    netns: Option<netns::Layout>,
    /// Replica N dials through the proxy at 127.0.0.1:BASE+N.
    #[serde(default)]
    connect_proxy_base: Option<u16>,
    /// Where the dev Workload API serves its sockets (see [`sockets_dir`]);
    /// absent in files from before it could move: `identities/sockets`.
    #[serde(default)]
    sockets_dir: Option<PathBuf>,
    processes: Vec<Process>,
}

impl ClusterFile {
    /// The directory of the dev Workload API's sockets.
    fn sockets(&self) -> PathBuf {
        self.sockets_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("identities").join("sockets"))
    }

    /// The Workload API socket serving identity `name`.
    fn socket(&self, name: &str) -> PathBuf {
        self.sockets().join(format!("{name}.sock"))
    }
}

/// Room kept for an identity's socket file name (`lite-workload.sock` is 18
/// bytes; process names are shorter).
const SOCKET_NAME_ROOM: usize = 24;

/// Where the dev Workload API puts its sockets: `identities/sockets` in the
/// cluster directory when every socket path there fits a unix socket
/// address (107 bytes), otherwise a private directory in the system's
/// temporary directory named after the cluster directory. A deep checkout
/// (a CI workspace, a long `--dir`) would otherwise leave the cluster
/// without identities.
fn sockets_dir(dir: &Path, workloads: &[IdentitySpec]) -> anyhow::Result<PathBuf> {
    let longest_name = workloads
        .iter()
        .map(|spec| spec.name.len() + ".sock".len())
        .fold(SOCKET_NAME_ROOM, usize::max);
    let fits = |sockets: &Path| sockets.as_os_str().len() + 1 + longest_name <= MAX_SOCKET_PATH;
    let inside = dir.join("identities").join("sockets");
    if fits(&inside) {
        return Ok(inside);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut hasher);
    let outside = std::env::temp_dir().join(format!("spike-sockets-{:016x}", hasher.finish()));
    if !fits(&outside) {
        bail!(
            "no directory for the Workload API sockets: {} and {} are both too long for a unix \
             socket path ({MAX_SOCKET_PATH} bytes); use a shorter --dir or TMPDIR",
            inside.display(),
            outside.display()
        );
    }
    Ok(outside)
}

/// Makes `sockets` a directory only this user can enter, or refuses one
/// that is not: in a shared temporary directory, a directory someone else
/// made first could let them serve identities to the cluster.
fn private_sockets_dir(sockets: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Err(error) = fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(sockets)
    {
        bail!("cannot create {}: {error}", sockets.display());
    }
    let metadata = fs::symlink_metadata(sockets)
        .with_context(|| format!("cannot inspect {}", sockets.display()))?;
    if !metadata.is_dir()
        || metadata.uid() != rustix::process::geteuid().as_raw()
        || metadata.mode() & 0o077 != 0
    {
        bail!(
            "{} is not a private directory of this user (a directory, mode 0700, owned by uid {}); \
             remove it and try again",
            sockets.display(),
            rustix::process::geteuid().as_raw()
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Process {
    name: String,
    role: String,
    node_id: Option<u64>,
    api_addr: Option<String>,
    cluster_addr: Option<String>,
    health_addr: Option<String>,
    spiffe_endpoint_socket: Option<String>,
    pid: Option<u32>,
    data_dir: Option<PathBuf>,
    log: PathBuf,
    /// Its network namespace, if it has one.
    #[serde(default)]
    netns: Option<String>,
    /// Where a replica stands in the cluster's membership.
    #[serde(default)]
    membership: Membership,
}

/// A replica's place in the membership (keepers and the Workload API are
/// always `Founder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Membership {
    /// Started by `up`; founding replicas are listed in each other's
    /// --peers.
    #[default]
    Founder,
    /// Planned by `up --spares`, never started.
    Spare,
    /// Started with --join by `join` (added, or waiting to be).
    Joined,
    /// Removed and stopped by `retire`; never started again.
    Retired,
}

impl Process {
    /// Whether `up` starts it and waits for it.
    fn serves(&self) -> bool {
        matches!(self.membership, Membership::Founder | Membership::Joined)
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("spike-dev-cluster: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Action::Up {
            common,
            replicas,
            spares,
            keepers,
            threshold,
            base_port,
            trust_domain,
            wait_secs,
            nexus_args,
            workloads,
            netns,
            netns_subnet,
            connect_proxy_base,
        } => {
            let dir = absolute(&common.dir)?;
            let layout = netns
                .map(|prefix| netns::Layout::new(&prefix, &netns_subnet))
                .transpose()?;
            let mut cluster = match load(&dir) {
                Ok(existing) => existing,
                Err(_) => plan(
                    &dir,
                    Shape {
                        replicas,
                        spares,
                        keepers,
                        threshold,
                        base_port,
                        trust_domain,
                        nexus_args,
                        workloads,
                        netns: layout,
                        connect_proxy_base,
                    },
                )?,
            };
            up(
                &mut cluster,
                &bin_dir(&common)?,
                Duration::from_secs(wait_secs),
            )
        }
        Action::Down { common } => {
            let mut cluster = load(&absolute(&common.dir)?)?;
            for index in (0..cluster.processes.len()).rev() {
                signal(&mut cluster, index, rustix::process::Signal::TERM)?;
            }
            if let Some(layout) = &cluster.netns {
                layout.destroy(&hosts(&cluster));
            }
            // A sockets directory outside the cluster's is not left behind
            // in the temporary directory (the server removed its sockets).
            if !cluster.sockets().starts_with(&cluster.dir) {
                let _ = fs::remove_dir(cluster.sockets());
            }
            save(&cluster)
        }
        Action::Cut { a, b, common } => {
            let cluster = load(&absolute(&common.dir)?)?;
            let a = host(&cluster, &a)?;
            let b = host(&cluster, &b)?;
            netns::cut(&a, &b)
        }
        Action::Impair {
            name,
            loss,
            rate,
            common,
        } => {
            if loss.is_none() && rate.is_none() {
                bail!("impair needs --loss, --rate or both");
            }
            let cluster = load(&absolute(&common.dir)?)?;
            netns::impair(
                &host(&cluster, &name)?,
                netns::Impairment {
                    loss_percent: loss,
                    rate_kbit: rate,
                },
            )
        }
        Action::Heal { common } => {
            let cluster = load(&absolute(&common.dir)?)?;
            if cluster.netns.is_none() {
                bail!("this cluster has no network namespaces (up --netns)");
            }
            hosts(&cluster).iter().try_for_each(netns::heal)
        }
        Action::Start { name, common } => {
            let mut cluster = load(&absolute(&common.dir)?)?;
            let index = find(&cluster, &name)?;
            match cluster.processes[index].membership {
                Membership::Spare => bail!("{name} is a spare: start it with `join`"),
                Membership::Retired => bail!("{name} was retired; its id is never reused"),
                Membership::Founder | Membership::Joined => {}
            }
            start(&mut cluster, index, &bin_dir(&common)?)?;
            save(&cluster)
        }
        Action::Join { name, common } => {
            let mut cluster = load(&absolute(&common.dir)?)?;
            let index = find(&cluster, &name)?;
            if cluster.processes[index].membership != Membership::Spare {
                bail!("{name} is not a spare replica");
            }
            cluster.processes[index].membership = Membership::Joined;
            start(&mut cluster, index, &bin_dir(&common)?)?;
            save(&cluster)?;
            let process = &cluster.processes[index];
            println!(
                "{name} waits to be added: spike cluster add --id {} --cluster-addr {} --api-addr {}",
                process.node_id.unwrap_or_default(),
                process.cluster_addr.as_deref().unwrap_or_default(),
                process.api_addr.as_deref().unwrap_or_default()
            );
            Ok(())
        }
        Action::Retire { name, common } => {
            let mut cluster = load(&absolute(&common.dir)?)?;
            let index = find(&cluster, &name)?;
            if cluster.processes[index].role != "nexus" {
                bail!("only replicas are retired");
            }
            signal(&mut cluster, index, rustix::process::Signal::TERM)?;
            cluster.processes[index].membership = Membership::Retired;
            save(&cluster)
        }
        Action::Stop { name, common } => signal_one(&name, &common, rustix::process::Signal::TERM),
        Action::Kill { name, common } => signal_one(&name, &common, rustix::process::Signal::KILL),
        Action::Status { common } => {
            let cluster = load(&absolute(&common.dir)?)?;
            for process in &cluster.processes {
                let state = match (running(process), process.membership) {
                    (Some(pid), _) => format!("running (pid {pid})"),
                    (None, Membership::Spare) => "spare".to_owned(),
                    (None, Membership::Retired) => "retired".to_owned(),
                    (None, _) => "stopped".to_owned(),
                };
                // A reader that stops early (`| head`) is not an error.
                match writeln!(std::io::stdout(), "{:<14} {state}", process.name) {
                    Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
                    written => written?,
                }
            }
            Ok(())
        }
    }
}

fn signal_one(
    name: &str,
    common: &Common,
    signal_kind: rustix::process::Signal,
) -> anyhow::Result<()> {
    let mut cluster = load(&absolute(&common.dir)?)?;
    let index = find(&cluster, name)?;
    signal(&mut cluster, index, signal_kind)?;
    save(&cluster)
}

fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))
}

fn bin_dir(common: &Common) -> anyhow::Result<PathBuf> {
    match &common.bin_dir {
        Some(dir) => Ok(dir.clone()),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_owned)
            .context("cannot locate the binaries"),
    }
}

fn binary(bin_dir: &Path, role: &str) -> PathBuf {
    bin_dir.join(match role {
        "workload-api" => "spike-dev-identity",
        other => other,
    })
}

fn load(dir: &Path) -> anyhow::Result<ClusterFile> {
    let path = dir.join("cluster.json");
    let text =
        fs::read_to_string(&path).with_context(|| format!("no cluster at {}", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a cluster file", path.display()))
}

fn save(cluster: &ClusterFile) -> anyhow::Result<()> {
    let path = cluster.dir.join("cluster.json");
    let temporary = cluster.dir.join("cluster.json.tmp");
    fs::write(&temporary, serde_json::to_vec_pretty(cluster)?)?;
    fs::rename(&temporary, &path)?;
    Ok(())
}

/// The hosts of a --netns cluster, in process order.
fn hosts(cluster: &ClusterFile) -> Vec<netns::Host> {
    let Some(layout) = &cluster.netns else {
        return Vec::new();
    };
    cluster
        .processes
        .iter()
        .filter(|process| process.netns.is_some())
        .enumerate()
        .map(|(index, process)| layout.host(&process.name, index))
        .collect()
}

fn host(cluster: &ClusterFile, name: &str) -> anyhow::Result<netns::Host> {
    if cluster.netns.is_none() {
        bail!("this cluster has no network namespaces (up --netns)");
    }
    let namespace = cluster.processes[find(cluster, name)?]
        .netns
        .clone()
        .with_context(|| format!("{name} has no namespace of its own"))?;
    hosts(cluster)
        .into_iter()
        .find(|host| host.namespace == namespace)
        .with_context(|| format!("no host for {name}"))
}

fn find(cluster: &ClusterFile, name: &str) -> anyhow::Result<usize> {
    cluster
        .processes
        .iter()
        .position(|process| process.name == name)
        .with_context(|| {
            let names: Vec<&str> = cluster.processes.iter().map(|p| p.name.as_str()).collect();
            format!("no process named {name}; known: {}", names.join(", "))
        })
}

/// Lays out a new cluster: ports from `base_port` up, one identity per process.
/// What `up` was asked for on a new directory.
struct Shape {
    replicas: u64,
    spares: u64,
    keepers: u8,
    threshold: u8,
    base_port: u16,
    trust_domain: String,
    nexus_args: Vec<String>,
    workloads: Vec<String>,
    netns: Option<netns::Layout>,
    connect_proxy_base: Option<u16>,
}

fn plan(dir: &Path, shape: Shape) -> anyhow::Result<ClusterFile> {
    let Shape {
        replicas,
        spares,
        keepers,
        threshold,
        base_port,
        trust_domain,
        nexus_args,
        workloads,
        netns,
        connect_proxy_base,
    } = shape;
    if connect_proxy_base.is_some_and(|base| base.checked_add(10).is_none()) {
        bail!("--connect-proxy-base leaves no room for 10 replicas");
    }
    if replicas == 0 || keepers == 0 || threshold == 0 || threshold > keepers {
        bail!("need at least one replica and keeper, and 1 <= threshold <= keepers");
    }
    // Replica N takes ports BASE+10(N-1) to +2, keepers BASE+101 up.
    if replicas + spares > 10 {
        bail!("at most 10 replicas and spares together (their ports would reach the keepers')");
    }
    // Hosts in namespaces are numbered in process order (keepers, then
    // replicas); without namespaces everything is on loopback.
    let mut hosts = 0;
    let mut next_host = |name: &str| {
        let host = netns.as_ref().map(|layout| layout.host(name, hosts));
        hosts += 1;
        host
    };
    let port = |host: &Option<netns::Host>, offset: u64| -> anyhow::Result<String> {
        let port = u64::from(base_port) + offset;
        let port = u16::try_from(port).context("--base-port leaves no room for every process")?;
        let address = host
            .as_ref()
            .map_or("127.0.0.1", |host| host.address.as_str());
        Ok(format!("{address}:{port}"))
    };
    let extra = workloads
        .iter()
        .map(|workload| IdentitySpec::parse(workload))
        .collect::<Result<Vec<_>, _>>()?;
    let sockets = sockets_dir(dir, &extra)?;
    let socket = |name: &str| format!("unix://{}", sockets.join(format!("{name}.sock")).display());
    let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
    let mut processes = vec![Process {
        name: "workload-api".to_owned(),
        role: "workload-api".to_owned(),
        node_id: None,
        api_addr: None,
        cluster_addr: None,
        health_addr: None,
        spiffe_endpoint_socket: None,
        pid: None,
        data_dir: None,
        log: log("workload-api"),
        netns: None,
        membership: Membership::Founder,
    }];
    for index in 1..=u64::from(keepers) {
        let name = format!("keeper-{index}");
        let host = next_host(&name);
        processes.push(Process {
            role: "keeper".to_owned(),
            node_id: Some(index),
            api_addr: Some(port(&host, 100 + index)?),
            cluster_addr: None,
            health_addr: None,
            spiffe_endpoint_socket: Some(socket(&name)),
            pid: None,
            data_dir: None,
            log: log(&name),
            netns: host.map(|host| host.namespace),
            membership: Membership::Founder,
            name,
        });
    }
    for id in 1..=replicas + spares {
        let name = format!("nexus-{id}");
        let base = (id - 1) * 10;
        let host = next_host(&name);
        processes.push(Process {
            role: "nexus".to_owned(),
            node_id: Some(id),
            api_addr: Some(port(&host, base)?),
            cluster_addr: Some(port(&host, base + 1)?),
            health_addr: Some(port(&host, base + 2)?),
            spiffe_endpoint_socket: Some(socket(&name)),
            pid: None,
            data_dir: Some(dir.join(&name)),
            log: log(&name),
            netns: host.map(|host| host.namespace),
            membership: if id <= replicas {
                Membership::Founder
            } else {
                Membership::Spare
            },
            name,
        });
    }
    Ok(ClusterFile {
        dir: dir.to_owned(),
        trust_domain,
        shares: keepers,
        threshold,
        nexus_args,
        workloads,
        netns,
        connect_proxy_base,
        sockets_dir: Some(sockets),
        processes,
    })
}

fn up(cluster: &mut ClusterFile, bin_dir: &Path, wait: Duration) -> anyhow::Result<()> {
    let began = Instant::now();
    let extra: Vec<IdentitySpec> = cluster
        .processes
        .iter()
        .filter_map(|process| {
            let id = process.node_id?;
            Some(format!("{}=/spike/{}/{id}", process.name, process.role))
        })
        .chain(cluster.workloads.iter().cloned())
        .map(|text| IdentitySpec::parse(&text))
        .collect::<Result<_, _>>()?;
    IdentityDirectory::create(
        cluster.dir.join("identities"),
        &cluster.trust_domain,
        &extra,
        Duration::from_secs(30 * 24 * 3600),
    )?;
    fs::create_dir_all(cluster.dir.join("logs"))?;
    if let Some(layout) = &cluster.netns
        && cluster
            .processes
            .iter()
            .all(|process| running(process).is_none())
    {
        layout.create(&hosts(cluster))?;
    }
    for index in 0..cluster.processes.len() {
        if cluster.processes[index].serves() && running(&cluster.processes[index]).is_none() {
            start(cluster, index, bin_dir)?;
        }
        save(cluster)?;
    }
    write_env_files(cluster)?;
    let deadline = Instant::now() + wait;
    let recovery_dir = cluster.dir.join("recovery");
    let saved_shards = recovery_dir.join("spike.recovery.1.txt").exists();
    if saved_shards && !wait_all_ready(cluster, Instant::now() + Duration::from_secs(3))? {
        println!(
            "keepers restarted empty: restoring the root key from {}",
            recovery_dir.display()
        );
        operator::restore(cluster)?;
    }
    if !wait_all_ready(cluster, deadline)? {
        let stuck = cluster
            .processes
            .iter()
            .filter(|process| process.role == "nexus" && process.serves())
            .find(|process| !process.health_addr.as_deref().is_some_and(ready))
            .map_or_else(String::new, |process| {
                format!("{}; see {}", process.name, process.log.display())
            });
        bail!("not every replica became ready in {wait:?}: {stuck}");
    }
    if !saved_shards {
        operator::save_recovery_shards(cluster)?;
    }
    println!(
        "cluster ready in {:.2}s: {} replicas, {} keepers (threshold {}) in {}",
        began.elapsed().as_secs_f64(),
        cluster
            .processes
            .iter()
            .filter(|p| p.role == "nexus" && p.serves())
            .count(),
        cluster.shares,
        cluster.threshold,
        cluster.dir.display()
    );
    println!("  source {}/env && spike whoami", cluster.dir.display());
    Ok(())
}

/// Waits until every replica is ready; fails at once if one has exited.
fn wait_all_ready(cluster: &ClusterFile, deadline: Instant) -> anyhow::Result<bool> {
    for process in cluster
        .processes
        .iter()
        .filter(|process| process.role == "nexus" && process.serves())
    {
        let health = process
            .health_addr
            .as_deref()
            .context("nexus without health address")?;
        while !ready(health) {
            if running(process).is_none() {
                let log = fs::read_to_string(&process.log).unwrap_or_default();
                let last = log.lines().last().unwrap_or("(empty log)");
                bail!(
                    "{} exited: {last}\n(see {})",
                    process.name,
                    process.log.display()
                );
            }
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(true)
}

/// Starts process `index` and records its pid.
fn start(cluster: &mut ClusterFile, index: usize, bin_dir: &Path) -> anyhow::Result<()> {
    if let Some(pid) = running(&cluster.processes[index]) {
        bail!("{} already runs (pid {pid})", cluster.processes[index].name);
    }
    let process = cluster.processes[index].clone();
    let program = binary(bin_dir, &process.role);
    let mut command = match &process.netns {
        // `ip netns exec` enters the namespace and execs the program, so
        // the pid recorded is the program's own.
        Some(namespace) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace]).arg(&program);
            command
        }
        None => Command::new(&program),
    };
    command.env("SPIKE_TRUST_ROOT", &cluster.trust_domain).env(
        "SPIKE_SYSTEM_LOG_LEVEL",
        std::env::var("SPIKE_SYSTEM_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
    );
    if let Some(socket) = &process.spiffe_endpoint_socket {
        command.env("SPIFFE_ENDPOINT_SOCKET", socket);
    }
    match process.role.as_str() {
        "workload-api" => {
            let sockets = cluster.sockets();
            private_sockets_dir(&sockets)?;
            command
                .arg("workload-api")
                .arg("--dir")
                .arg(cluster.dir.join("identities"))
                .arg("--sockets")
                .arg(&sockets);
        }
        "keeper" => {
            let address: SocketAddr = process
                .api_addr
                .as_deref()
                .context("keeper address")?
                .parse()?;
            command
                .args(["--bind", &address.ip().to_string()])
                .args(["--port", &address.port().to_string()]);
        }
        "nexus" => {
            let peers: Vec<String> = cluster
                .processes
                .iter()
                .filter(|p| p.role == "nexus" && p.membership == Membership::Founder)
                .filter_map(|p| {
                    Some(format!(
                        "{}={}/{}",
                        p.node_id?,
                        p.cluster_addr.as_ref()?,
                        p.api_addr.as_ref()?
                    ))
                })
                .collect();
            let keepers: Vec<String> = cluster
                .processes
                .iter()
                .filter(|p| p.role == "keeper")
                .filter_map(|p| p.api_addr.clone())
                .collect();
            command
                .args([
                    "--node-id",
                    &process.node_id.context("nexus id")?.to_string(),
                ])
                .args(["--keepers", &keepers.join(",")])
                .args(["--shares", &cluster.shares.to_string()])
                .args(["--threshold", &cluster.threshold.to_string()])
                .args([
                    "--health-addr",
                    process.health_addr.as_deref().context("health address")?,
                ])
                .args(["--keeper-update-interval", "1s"])
                .arg("--data-dir")
                .arg(process.data_dir.as_ref().context("data dir")?)
                .args(&cluster.nexus_args);
            if let Some(base) = cluster.connect_proxy_base {
                let id = process.node_id.context("nexus id")?;
                let port = u64::from(base) + id;
                command.args(["--connect-proxy", &format!("127.0.0.1:{port}")]);
            }
            if process.membership == Membership::Founder {
                command.args(["--peers", &peers.join(",")]);
            } else {
                command
                    .arg("--join")
                    .args([
                        "--cluster-addr",
                        process.cluster_addr.as_deref().context("cluster address")?,
                    ])
                    .args([
                        "--api-addr",
                        process.api_addr.as_deref().context("API address")?,
                    ]);
            }
        }
        other => bail!("unknown role {other}"),
    }
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&process.log)
        .with_context(|| format!("cannot open {}", process.log.display()))?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C aimed at whoever ran `up` does
        // not reach the cluster.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", process.name))?;
    cluster.processes[index].pid = Some(child.id());
    if process.netns.is_some() {
        // `ip` has not necessarily exec'd the program yet.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(&cluster.processes[index]).is_none() {
            if Instant::now() > deadline {
                bail!(
                    "{} did not start in its namespace; see {}",
                    process.name,
                    process.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    if process.role == "workload-api" {
        wait_for_sockets(cluster, &mut child, &process.log)?;
    }
    Ok(())
}

fn wait_for_sockets(
    cluster: &ClusterFile,
    server: &mut std::process::Child,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for socket in cluster
        .processes
        .iter()
        .filter_map(|p| p.spiffe_endpoint_socket.as_deref())
    {
        let path = socket.trim_start_matches("unix://");
        while !Path::new(path).exists() {
            // A server that exited will not create it: say why at once.
            if let Ok(Some(status)) = server.try_wait() {
                bail!(
                    "the dev Workload API exited ({status}): {}",
                    last_line(log).unwrap_or_else(|| format!("see {}", log.display()))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the dev Workload API did not create {path} in 10 s; see {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The last non-empty line of a log, for an error message.
fn last_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map(str::to_owned)
}

/// The pid of `process` if it still runs the binary recorded for its role.
fn running(process: &Process) -> Option<u32> {
    let pid = process.pid?;
    let expected = match process.role.as_str() {
        "workload-api" => "spike-dev-identity",
        other => other,
    };
    // A process in the middle of exec (its parent already resumed) shows
    // an empty command line until the kernel has laid out its arguments;
    // on a loaded machine that takes a while, and reading it as "not
    // running" made `up` report a replica it had just started as exited.
    // Only a kernel thread or a zombie stays empty.
    for _ in 0..100 {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // A zombie (exited, not yet reaped by its parent) does not run.
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if zombie {
            return None;
        }
        if cmdline.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let program = cmdline.split(|b| *b == 0).next()?;
        let program = Path::new(std::str::from_utf8(program).ok()?);
        return (program.file_name()? == expected).then_some(pid);
    }
    None
}

fn signal(
    cluster: &mut ClusterFile,
    index: usize,
    signal_kind: rustix::process::Signal,
) -> anyhow::Result<()> {
    let process = &cluster.processes[index];
    if let Some(pid) = running(process) {
        let target = rustix::process::Pid::from_raw(pid as i32).context("pid 0")?;
        rustix::process::kill_process(target, signal_kind)
            .with_context(|| format!("cannot signal {} (pid {pid})", process.name))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(process).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        println!("{} (pid {pid}) stopped", process.name);
    }
    cluster.processes[index].pid = None;
    Ok(())
}

/// Whether the health listener at `address` says ready.
fn ready(address: &str) -> bool {
    let Ok(address) = address.parse::<SocketAddr>() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: local\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn write_env_files(cluster: &ClusterFile) -> anyhow::Result<()> {
    let api = cluster
        .processes
        .iter()
        .find(|p| p.role == "nexus" && p.serves())
        .and_then(|p| p.api_addr.clone())
        .context("no nexus")?;
    for (file, role) in [
        ("env", "superuser"),
        ("env.recover", "recover"),
        ("env.restore", "restore"),
    ] {
        let mut text =
            format!("# source this file to act as the SPIKE {role} against the local cluster\n");
        text += &format!("export SPIKE_NEXUS_API_URL=https://{api}\n");
        text += &format!(
            "export SPIFFE_ENDPOINT_SOCKET=unix://{}\n",
            cluster.socket(role).display()
        );
        text += &format!("export SPIKE_TRUST_ROOT={}\n", cluster.trust_domain);
        for role_variable in ["NEXUS", "KEEPER", "PILOT", "BOOTSTRAP", "LITE_WORKLOAD"] {
            text += &format!(
                "export SPIKE_TRUST_ROOT_{role_variable}={}\n",
                cluster.trust_domain
            );
        }
        fs::write(cluster.dir.join(file), text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_of(role: &str, pid: u32) -> Process {
        Process {
            name: role.to_owned(),
            role: role.to_owned(),
            node_id: None,
            api_addr: None,
            cluster_addr: None,
            health_addr: None,
            spiffe_endpoint_socket: None,
            pid: Some(pid),
            data_dir: None,
            log: PathBuf::new(),
            netns: None,
            membership: Membership::Founder,
        }
    }

    #[test]
    fn a_process_just_started_runs_and_one_that_exited_does_not() {
        // Right after spawn returns, the child may still be in exec with an
        // empty command line: it must count as running all the same.
        for _ in 0..20 {
            let mut child = Command::new("sleep")
                .arg("10")
                .process_group(0)
                .spawn()
                .expect("spawn sleep");
            let sleeping = process_of("sleep", child.id());
            assert_eq!(running(&sleeping), Some(child.id()));
            assert_eq!(running(&process_of("nexus", child.id())), None);
            child.kill().expect("kill");
            child.wait().expect("reap");
            assert_eq!(running(&sleeping), None);
        }
    }

    #[test]
    fn sockets_stay_in_the_cluster_directory_unless_it_is_too_deep() {
        let short = Path::new("/var/lib/spike-local");
        assert_eq!(
            sockets_dir(short, &[]).expect("short"),
            short.join("identities").join("sockets")
        );
        let deep = PathBuf::from(format!("/{}", "d".repeat(80)));
        let outside = sockets_dir(&deep, &[]).expect("deep");
        assert!(
            outside.starts_with(std::env::temp_dir()),
            "{}",
            outside.display()
        );
        assert!(outside.as_os_str().len() + 1 + SOCKET_NAME_ROOM <= MAX_SOCKET_PATH);
        assert_eq!(
            sockets_dir(&deep, &[]).expect("deep"),
            outside,
            "stable per directory"
        );
        let other = PathBuf::from(format!("/{}", "e".repeat(80)));
        assert_ne!(sockets_dir(&other, &[]).expect("other"), outside);
        // A workload name that fits nowhere is refused before anything runs.
        let long_name = IdentitySpec::parse(&format!("{}=/app/x", "w".repeat(100)));
        if let Ok(spec) = long_name {
            assert!(sockets_dir(short, &[spec]).is_err());
        }
    }

    #[test]
    fn a_sockets_directory_others_can_enter_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("spike-cluster-test-{}", std::process::id()));
        let sockets = root.join("sockets");
        private_sockets_dir(&sockets).expect("a fresh directory is made private");
        let mode = fs::metadata(&sockets).expect("made").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        private_sockets_dir(&sockets).expect("and found private again");
        fs::set_permissions(&sockets, fs::Permissions::from_mode(0o755)).expect("chmod");
        let refused = private_sockets_dir(&sockets).expect_err("others may enter it");
        assert!(
            refused.to_string().contains("not a private directory"),
            "{refused}"
        );
        fs::remove_dir_all(&root).expect("clean up");
    }
}
