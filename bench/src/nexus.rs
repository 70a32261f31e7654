//! Our side: a 3-replica cluster started with `spike-dev-cluster` (dev
//! identities, mTLS everywhere, fsynced redb), driven through the SDK.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spike_sdk::client::{NexusClient, Settings};
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::{SvidSource, WORKLOAD_API_TIMEOUT_DEFAULT};

use crate::load::Store;

/// A running local cluster, taken down on drop.
pub struct NexusCluster {
    dir: PathBuf,
    launcher: PathBuf,
    file: serde_json::Value,
}

impl NexusCluster {
    /// `spike-dev-cluster up` in `dir` on ports from `base_port`.
    pub fn up(bin_dir: &Path, dir: &Path, base_port: u16) -> anyhow::Result<Self> {
        let cluster = Self {
            dir: dir.to_owned(),
            launcher: bin_dir.join("spike-dev-cluster"),
            file: serde_json::Value::Null,
        };
        cluster.launch(&["up", "--base-port", &base_port.to_string()])?;
        let mut cluster = cluster;
        cluster.reload()?;
        Ok(cluster)
    }

    fn launch(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new(&self.launcher)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .with_context(|| format!("cannot run {}", self.launcher.display()))?;
        if !output.status.success() {
            bail!(
                "spike-dev-cluster {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn reload(&mut self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(self.dir.join("cluster.json"))?;
        self.file = serde_json::from_str(&text)?;
        Ok(())
    }

    fn replicas(&self) -> impl Iterator<Item = &serde_json::Value> {
        self.file["processes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|process| process["role"] == "nexus")
    }

    /// Every replica's API address.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.replicas()
            .filter_map(|p| p["api_addr"].as_str()?.parse().ok())
            .collect()
    }

    /// The process name of the replica serving `api`.
    pub fn name_of(&self, api: SocketAddr) -> Option<String> {
        self.replicas()
            .find(|p| p["api_addr"].as_str() == Some(&api.to_string()))
            .and_then(|p| p["name"].as_str().map(str::to_owned))
    }

    /// `spike-dev-cluster kill|start NAME`.
    pub fn act(&mut self, action: &str, name: &str) -> anyhow::Result<()> {
        self.launch(&[action, name])?;
        self.reload()
    }

    /// Starts replica `name`; returns how long until it reports ready.
    pub fn restart_and_wait(&mut self, name: &str, limit: Duration) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.act("start", name)?;
        self.wait_ready(name, limit)?;
        Ok(began.elapsed())
    }

    /// Waits until replica `name` reports ready on its health port.
    pub fn wait_ready(&self, name: &str, limit: Duration) -> anyhow::Result<Duration> {
        use std::io::{Read, Write};
        let address: SocketAddr = self
            .replicas()
            .find(|p| p["name"] == name)
            .and_then(|p| p["health_addr"].as_str()?.parse().ok())
            .context("no health address")?;
        let began = Instant::now();
        while began.elapsed() < limit {
            if let Ok(mut stream) =
                std::net::TcpStream::connect_timeout(&address, Duration::from_millis(100))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                let mut head = [0u8; 12];
                if stream.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_ok()
                    && stream.read_exact(&mut head).is_ok()
                    && head.ends_with(b"200")
                {
                    return Ok(began.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let log = std::fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        bail!(
            "{name} not ready after {limit:?}; its last log lines, newest first:\n{}",
            tail.join("\n")
        )
    }

    /// A superuser SDK client for every replica.
    pub async fn client(&self) -> anyhow::Result<NexusStore> {
        let socket = self.dir.join("identities/sockets/superuser.sock");
        let identity = SvidSource::WorkloadApi {
            endpoint: format!("unix://{}", socket.display()),
        }
        .load(WORKLOAD_API_TIMEOUT_DEFAULT)
        .await?;
        let roots = TrustRoots::from_environment(&[])?;
        Ok(NexusStore {
            client: NexusClient::new(identity, roots, Settings::new(self.endpoints()))?,
        })
    }

    /// Resident memory (KiB) of each running replica, from /proc.
    pub fn resident_kib(&self) -> Vec<(String, u64)> {
        self.replicas()
            .filter_map(|p| {
                let pid = u32::try_from(p["pid"].as_u64()?).ok()?;
                let rss = crate::load::resident_kib(pid)?;
                Some((p["name"].as_str()?.to_owned(), rss))
            })
            .collect()
    }
}

impl Drop for NexusCluster {
    fn drop(&mut self) {
        let _ = self.launch(&["down"]);
    }
}

/// The SDK as a [`Store`].
pub struct NexusStore {
    /// The client (also used directly by the failover mode).
    pub client: NexusClient,
}

impl NexusStore {
    /// A client of `endpoints` with the SVID and trust roots the
    /// environment names (as every SPIKE process finds them).
    pub async fn from_environment(endpoints: Vec<SocketAddr>) -> anyhow::Result<Self> {
        let env = spike_sdk::environment::ProcessEnvironment;
        let identity = SvidSource::from_environment(&env)?
            .load(WORKLOAD_API_TIMEOUT_DEFAULT)
            .await?;
        let roots = TrustRoots::from_environment(&env)?;
        Ok(Self {
            client: NexusClient::new(identity, roots, Settings::new(endpoints))?,
        })
    }
}

fn path_of(key: u64) -> String {
    format!("bench/k{key}")
}

impl Store for NexusStore {
    async fn put(&self, key: u64, value: &str) -> Result<(), String> {
        let values = BTreeMap::from([("v".to_owned(), value.to_owned())]);
        self.client
            .put_secret(&path_of(key), &values, None)
            .await
            .map_err(|e| e.to_string())
    }

    async fn get(&self, key: u64, stale: bool) -> Result<(), String> {
        let path = path_of(key);
        let read = if stale {
            self.client.get_secret_stale(&path, None).await
        } else {
            self.client.get_secret(&path, None).await
        };
        read.map(drop).map_err(|e| e.to_string())
    }
}
