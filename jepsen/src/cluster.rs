//! The cluster under test: started, faulted and healed through
//! `spike-dev-cluster` (which owns the processes and, with `--netns`, the
//! namespaces), addressed through its `cluster.json`. Without namespaces,
//! links are faulted in the harness's own per-link proxies ([`crate::proxy`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spike_dev_cluster::supervise::running;
use spike_dev_cluster::{Action, ClusterFile, Launcher, Membership, Process, Replica, Role, probe};
use spike_sdk::client::NexusClient;
use spike_sdk::identity::TrustRoots;

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

/// A run on SPIRE.
#[derive(Debug, Clone)]
pub struct SpireSettings {
    /// Where spire-server and spire-agent are.
    pub bin_dir: PathBuf,
    /// Every SVID's lifetime.
    pub svid_ttl: Duration,
}

/// Replica N's proxy listens on BASE_PORT + this + N.
const PROXY_PORT_OFFSET: u16 = 150;

/// A running cluster.
pub struct Cluster {
    launcher: Launcher,
    /// Set when links are faulted in the harness's proxies.
    proxies: Option<LinkProxies>,
    /// The replicas' Raft heartbeat interval.
    pub heartbeat: Duration,
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
        spire: Option<&SpireSettings>,
    ) -> anyhow::Result<Self> {
        let mut args: Vec<String> = vec![
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
                Some(LinkProxies::start(sources, dir.to_owned())?)
            }
        };
        args.extend(nexus_args.iter().map(|arg| format!("--nexus-arg={arg}")));
        if let Some(spire) = spire {
            args.extend([
                "--identity".into(),
                "spire".into(),
                "--spire-bin-dir".into(),
                spire.bin_dir.display().to_string(),
                "--spire-svid-ttl".into(),
                format!("{}s", spire.svid_ttl.as_secs()),
            ]);
        }
        let cluster = Self {
            launcher: Launcher::new(bin_dir, dir),
            proxies,
            heartbeat: crate::nemesis::DEFAULT_HEARTBEAT,
        };
        if let Err(error) = cluster.launcher.up(&args) {
            // Whatever did start (processes, namespaces) goes away again.
            let _ = cluster.down();
            return Err(error.into());
        }
        Ok(cluster)
    }

    /// `cluster.json` as it is now.
    pub fn file(&self) -> anyhow::Result<ClusterFile> {
        Ok(self.launcher.load()?)
    }

    /// Every process as `cluster.json` says now.
    pub fn members(&self) -> anyhow::Result<Vec<Process>> {
        Ok(self.file()?.processes)
    }

    /// Names of the replicas in the cluster (spares and retired ones
    /// left out), lowest id first.
    pub fn replicas(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .file()?
            .serving_replicas()
            .map(|(process, _)| process.name.clone())
            .collect())
    }

    /// Spare replicas not started yet, lowest id first.
    pub fn spares(&self) -> anyhow::Result<Vec<(Process, Replica)>> {
        Ok(self
            .file()?
            .replicas()
            .filter(|(process, _)| process.membership == Membership::Spare)
            .map(|(process, replica)| (process.clone(), replica.clone()))
            .collect())
    }

    /// Starts spare `name` with --join (it waits to be added).
    pub fn join(&self, name: &str) -> anyhow::Result<()> {
        self.launcher.act(Action::Join, name)?;
        Ok(())
    }

    /// Stops a removed replica for good.
    pub fn retire(&self, name: &str) -> anyhow::Result<()> {
        self.launcher.act(Action::Retire, name)?;
        Ok(())
    }

    /// The SPIRE server and every agent (none on the dev Workload API), in
    /// the order they start.
    pub fn spire_processes(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .members()?
            .into_iter()
            .filter(|process| matches!(process.role, Role::SpireServer | Role::SpireAgent))
            .map(|process| process.name)
            .collect())
    }

    /// Names of the keepers.
    pub fn keepers(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .file()?
            .keepers()
            .map(|(process, _)| process.name.clone())
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
            .file()?
            .serving_replicas()
            .map(|(process, replica)| (process.name.clone(), replica.api_addr))
            .collect())
    }

    /// Kills `name` with SIGKILL.
    pub fn kill(&self, name: &str) -> anyhow::Result<()> {
        self.launcher.act(Action::Kill, name)?;
        Ok(())
    }

    /// Starts `name` again (nothing happens if it runs).
    pub fn start(&self, name: &str) -> anyhow::Result<()> {
        if running(self.file()?.process(name)?).is_some() {
            return Ok(());
        }
        self.launcher.act(Action::Start, name)?;
        Ok(())
    }

    /// Sends SIGSTOP or SIGCONT to `name`.
    pub fn pause(&self, name: &str, paused: bool) -> anyhow::Result<()> {
        let Some(pid) = running(self.file()?.process(name)?) else {
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
        let file = self.file()?;
        let replica = file
            .process(name)?
            .replica()
            .with_context(|| format!("{name} is not a replica"))?;
        let path = replica.data_dir.join("clock-offset-ms");
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
            None => self
                .launcher
                .run(&["cut", a, b])
                .map(drop)
                .map_err(Into::into),
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
        self.launcher.run(&args)?;
        Ok(())
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
            None => self.launcher.run(&["heal"]).map(drop).map_err(Into::into),
        }
    }

    /// Waits until every replica says it is ready; returns how long it took.
    pub fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let began = Instant::now();
        for (process, replica) in self.file()?.serving_replicas() {
            while !probe::ready(replica.health_addr, probe::PROBE_TIMEOUT) {
                if began.elapsed() > limit {
                    bail!("{} not ready after {limit:?}", process.name);
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
        let identity = self
            .file()?
            .svid_source(identity)?
            .load(Duration::from_secs(10))
            .await?;
        let roots = TrustRoots::from_environment(&[])?;
        let settings = crate::workload::client_settings(endpoints, follow_leader);
        Ok(NexusClient::new(identity, roots, settings)?)
    }

    /// Stops everything and removes the namespaces.
    pub fn down(&self) -> anyhow::Result<()> {
        // Paused processes do not die of SIGTERM: wake them first.
        for member in self.members().unwrap_or_default() {
            let _ = self.pause(&member.name, false);
        }
        Ok(self.launcher.down()?)
    }
}
