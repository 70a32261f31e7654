//! The cluster under test: started, faulted and healed through
//! `spike-dev-cluster` (which owns the processes and, with `--netns`, the
//! namespaces), addressed through its `cluster.json`. Without namespaces,
//! links are faulted in the harness's own per-link proxies ([`crate::proxy`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use spike_sdk::client::NexusClient;
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::SvidSource;

use crate::proxy::{Impairment, LinkProxies};

/// The workload identity (besides the superuser) the harness can act as:
/// `spiffe://spike.ist/app/jepsen`, served at `sockets/jepsen-app.sock`.
pub const APP_IDENTITY: &str = "jepsen-app";

/// How the processes' links are made faultable.
#[derive(Debug, Clone)]
pub enum Hosts {
    /// Every process in a network namespace `PREFIX-NAME` on the /24
    /// `SUBNET.0` (needs root).
    Namespaces {
        /// Namespace name prefix.
        prefix: String,
        /// First three octets.
        subnet: String,
    },
    /// Every process on loopback; each replica dials through a proxy of the
    /// harness's (no privileges needed).
    Proxies,
}

/// Replica N's proxy listens on BASE_PORT + this + N.
const PROXY_PORT_OFFSET: u16 = 150;

/// A running cluster.
pub struct Cluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    /// Set when links are faulted in the harness's proxies.
    proxies: Option<LinkProxies>,
    /// The replicas' Raft heartbeat interval.
    pub heartbeat: Duration,
}

/// A process of the cluster as `cluster.json` lists it.
#[derive(Debug, Clone)]
pub struct Member {
    /// `nexus-2`, `keeper-4`.
    pub name: String,
    /// Its pid while it runs.
    pub pid: Option<u32>,
    /// Its API address (replicas and keepers).
    pub api_addr: Option<SocketAddr>,
    /// Its health address (replicas).
    pub health_addr: Option<SocketAddr>,
    /// Its cluster (Raft) address (replicas).
    pub cluster_addr: Option<SocketAddr>,
    /// Its node id (replicas and keepers).
    pub node_id: Option<u64>,
    /// `founder`, `spare`, `joined` or `retired`.
    pub membership: String,
}

impl Member {
    /// A replica that is, or is meant to be, in the cluster (not a spare
    /// never started nor a retired one).
    pub fn is_serving_replica(&self) -> bool {
        self.name.starts_with("nexus-") && matches!(self.membership.as_str(), "founder" | "joined")
    }
}

impl Cluster {
    /// Starts a cluster of `replicas` replicas and 5 keepers (threshold 3)
    /// in `dir` on `hosts`, with `spares` spare replicas planned for
    /// membership changes. Ports are taken from `base_port` up to 200 more.
    pub fn up(
        dir: &Path,
        bin_dir: &Path,
        base_port: u16,
        hosts: &Hosts,
        (replicas, spares): (u64, u64),
        nexus_args: &[String],
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec![
            "up".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--base-port".into(),
            base_port.to_string(),
            "--replicas".into(),
            replicas.to_string(),
            "--spares".into(),
            spares.to_string(),
            "--workload".into(),
            format!("{APP_IDENTITY}=/app/jepsen"),
        ];
        let proxies = match hosts {
            Hosts::Namespaces { prefix, subnet } => {
                args.extend([
                    "--netns".into(),
                    prefix.clone(),
                    "--netns-subnet".into(),
                    subnet.clone(),
                ]);
                None
            }
            Hosts::Proxies => {
                let proxy_base = base_port
                    .checked_add(PROXY_PORT_OFFSET)
                    .context("--base-port leaves no room for the proxies")?;
                args.extend(["--connect-proxy-base".into(), proxy_base.to_string()]);
                // Every id a replica may have (spares included), before
                // any replica starts dialling.
                let sources = (1..=replicas + spares)
                    .map(|id| Ok((format!("nexus-{id}"), proxy_base + u16::try_from(id)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                std::fs::create_dir_all(dir)?;
                Some(LinkProxies::start(sources, dir.join("cluster.json"))?)
            }
        };
        args.extend(nexus_args.iter().map(|arg| format!("--nexus-arg={arg}")));
        let cluster = Self {
            dir: dir.to_owned(),
            bin_dir: bin_dir.to_owned(),
            proxies,
            heartbeat: crate::nemesis::DEFAULT_HEARTBEAT,
        };
        if let Err(error) =
            cluster.spike_cluster(&args.iter().map(String::as_str).collect::<Vec<_>>())
        {
            // Whatever did start (processes, namespaces) goes away again.
            let _ = cluster.down();
            return Err(error);
        }
        Ok(cluster)
    }

    /// Runs `spike-dev-cluster` with `args` on this cluster's directory.
    fn spike_cluster(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut command = Command::new(self.bin_dir.join("spike-dev-cluster"));
        command.args(args);
        if args.first() != Some(&"up") {
            command.arg("--dir").arg(&self.dir);
        }
        let output = command.output().context("cannot run spike-dev-cluster")?;
        if !output.status.success() {
            bail!(
                "spike-dev-cluster {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Where the dev Workload API serves identities (`cluster.json`'s
    /// `sockets_dir`: outside the cluster directory when its path is too
    /// long for a unix socket).
    pub fn sockets_dir(&self) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(self.dir.join("cluster.json"))?;
        let file: Value = serde_json::from_str(&text)?;
        file["sockets_dir"]
            .as_str()
            .map(PathBuf::from)
            .context("cluster.json names no sockets_dir")
    }

    /// Every process as `cluster.json` says now.
    pub fn members(&self) -> anyhow::Result<Vec<Member>> {
        let text = std::fs::read_to_string(self.dir.join("cluster.json"))?;
        let file: Value = serde_json::from_str(&text)?;
        let address = |process: &Value, field: &str| -> Option<SocketAddr> {
            process[field].as_str().and_then(|text| text.parse().ok())
        };
        Ok(file["processes"]
            .as_array()
            .context("cluster.json without processes")?
            .iter()
            .map(|process| Member {
                name: process["name"].as_str().unwrap_or_default().to_owned(),
                pid: process["pid"]
                    .as_u64()
                    .and_then(|pid| u32::try_from(pid).ok()),
                api_addr: address(process, "api_addr"),
                health_addr: address(process, "health_addr"),
                cluster_addr: address(process, "cluster_addr"),
                node_id: process["node_id"].as_u64(),
                membership: process["membership"]
                    .as_str()
                    .unwrap_or("founder")
                    .to_owned(),
            })
            .collect())
    }

    /// Names of the replicas in the cluster (spares and retired ones
    /// left out), lowest id first.
    pub fn replicas(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .members()?
            .into_iter()
            .filter(Member::is_serving_replica)
            .map(|member| member.name)
            .collect())
    }

    /// Spare replicas not started yet, lowest id first.
    pub fn spares(&self) -> anyhow::Result<Vec<Member>> {
        Ok(self
            .members()?
            .into_iter()
            .filter(|member| member.membership == "spare")
            .collect())
    }

    /// Starts spare `name` with --join (it waits to be added).
    pub fn join(&self, name: &str) -> anyhow::Result<()> {
        self.spike_cluster(&["join", name])
    }

    /// Stops a removed replica for good.
    pub fn retire(&self, name: &str) -> anyhow::Result<()> {
        self.spike_cluster(&["retire", name])
    }

    /// Names of the keepers.
    pub fn keepers(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .members()?
            .into_iter()
            .filter(|member| member.name.starts_with("keeper-"))
            .map(|member| member.name)
            .collect())
    }

    /// The API addresses of the replicas in the cluster, in order.
    pub fn api_addresses(&self) -> anyhow::Result<Vec<SocketAddr>> {
        Ok(self
            .replica_endpoints()?
            .into_iter()
            .map(|(_, address)| address)
            .collect())
    }

    /// The replicas in the cluster with their API addresses, in order.
    pub fn replica_endpoints(&self) -> anyhow::Result<Vec<(String, SocketAddr)>> {
        Ok(self
            .members()?
            .into_iter()
            .filter(Member::is_serving_replica)
            .filter_map(|member| Some((member.name, member.api_addr?)))
            .collect())
    }

    /// Kills `name` with SIGKILL.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.spike_cluster(&["kill", name])
    }

    /// Starts `name` again (nothing happens if it runs).
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        let running = self
            .members()?
            .iter()
            .any(|member| member.name == name && member.pid.is_some_and(alive));
        if running {
            return Ok(());
        }
        self.spike_cluster(&["start", name])
    }

    /// Sends SIGSTOP or SIGCONT to `name`.
    pub fn pause(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let member = self
            .members()?
            .into_iter()
            .find(|member| member.name == name)
            .with_context(|| format!("no process {name}"))?;
        let Some(pid) = member.pid.filter(|pid| alive(*pid)) else {
            return Ok(());
        };
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill {signal} {name} (pid {pid}) failed");
        }
        Ok(())
    }

    /// Offsets replica `name`'s clock by `offset_ms` (the replicas run
    /// with `--test-clock-offset`, which reads this file).
    pub fn set_clock_offset(&self, name: &str, offset_ms: i64) -> anyhow::Result<()> {
        let path = self.dir.join(name).join("clock-offset-ms");
        if offset_ms == 0 && !path.exists() {
            return Ok(());
        }
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, offset_ms.to_string())?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    /// Cuts the link between `a` and `b`.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        match &self.proxies {
            Some(proxies) => {
                proxies.cut(a, b);
                Ok(())
            }
            None => self.spike_cluster(&["cut", a, b]),
        }
    }

    /// Impairs `name`'s links to every other process. In namespaces,
    /// loss drops packets and the rate caps the link; a fixed delay needs
    /// the proxies (this kernel has no netem).
    pub fn impair(&self, name: &str, impairment: Impairment) -> anyhow::Result<()> {
        if let Some(proxies) = &self.proxies {
            proxies.impair(name, impairment);
            return Ok(());
        }
        if !impairment.delay.is_zero() {
            bail!("a fixed delay needs the proxies (spike-jepsen run --proxies)");
        }
        let mut args = vec!["impair".to_owned(), name.to_owned()];
        if impairment.loss_percent > 0 {
            args.extend(["--loss".to_owned(), impairment.loss_percent.to_string()]);
        }
        if let Some(rate) = impairment.rate_kbit {
            args.extend(["--rate".to_owned(), rate.to_string()]);
        }
        self.spike_cluster(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Whether links are faulted in the harness's proxies.
    pub fn proxied(&self) -> bool {
        self.proxies.is_some()
    }

    /// Removes every cut and impairment.
    pub fn heal_network(&self) -> anyhow::Result<()> {
        match &self.proxies {
            Some(proxies) => {
                proxies.heal();
                Ok(())
            }
            None => self.spike_cluster(&["heal"]),
        }
    }

    /// Waits until every replica says it is ready; returns how long it took.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for member in self.members()? {
            let Some(health) = member.health_addr.filter(|_| member.is_serving_replica()) else {
                continue;
            };
            while !ready(health) {
                if began.elapsed() > limit {
                    bail!("{} not ready after {limit:?}", member.name);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(began.elapsed())
    }

    /// An SDK client as the superuser, with the given endpoints and short
    /// budgets: a fault shows up as an unknown outcome within seconds.
    pub async fn client(&self, endpoints: Vec<SocketAddr>) -> anyhow::Result<NexusClient> {
        self.client_with(endpoints, true, "superuser").await
    }

    /// Like [`Self::client`], as `identity` (`superuser` or
    /// [`APP_IDENTITY`]); with `follow_leader` false the client stays on
    /// its endpoints (pinned to a node), which forward writes and serve
    /// linearizable reads through a read index.
    pub async fn client_with(
        &self,
        endpoints: Vec<SocketAddr>,
        follow_leader: bool,
        identity: &str,
    ) -> anyhow::Result<NexusClient> {
        let socket = self.sockets_dir()?.join(format!("{identity}.sock"));
        let identity = SvidSource::WorkloadApi {
            endpoint: format!("unix://{}", socket.display()),
        }
        .load(Duration::from_secs(10))
        .await?;
        let roots = TrustRoots::from_environment(&[])?;
        let settings = crate::workload::client_settings(endpoints, follow_leader);
        Ok(NexusClient::new(identity, roots, settings)?)
    }

    /// Stops everything and removes the namespaces.
    pub fn down(&self) -> anyhow::Result<()> {
        // Paused processes do not die of SIGTERM: wake them first.
        for member in self.members()? {
            let _ = self.pause(&member.name, false);
        }
        self.spike_cluster(&["down"])
    }
}

/// Whether `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether the health listener at `address` says ready.
pub fn ready(address: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: jepsen\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}
