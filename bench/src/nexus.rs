//! Our side: a 3-replica cluster started with `spike-dev-cluster` (dev
//! identities, mTLS everywhere, fsynced redb), driven through the SDK.

use spike_sdk::api::SecretValues;
use spike_sdk::domain::SecretPath;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spike_dev_cluster::{Action, ClusterFile, Launcher, probe};
use spike_sdk::client::{NexusClient, Settings};
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::{SvidSource, WORKLOAD_API_TIMEOUT_DEFAULT};

use crate::load::Store;
use crate::teardown;

/// Each readiness probe's steps time out this soon: a restart is timed to
/// within a few milliseconds, so a probe must not hang on one attempt.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// A running local cluster, taken down on drop (or by [`teardown`] on a
/// signal).
pub struct NexusCluster {
    launcher: Launcher,
    binary: PathBuf,
    dir: PathBuf,
    file: ClusterFile,
}

impl NexusCluster {
    /// `spike-dev-cluster up` in `dir` on ports from `base_port`.
    pub fn up(bin_dir: &Path, dir: &Path, base_port: u16) -> anyhow::Result<Self> {
        Self::up_with(bin_dir, dir, base_port, &[])
    }

    /// [`NexusCluster::up`] with more `spike-dev-cluster up` arguments
    /// (`--workload NAME=PATH`).
    pub fn up_with(
        bin_dir: &Path,
        dir: &Path,
        base_port: u16,
        more: &[&str],
    ) -> anyhow::Result<Self> {
        let launcher = Launcher::new(bin_dir, dir);
        let binary = bin_dir.join(spike_dev_cluster::driver::BINARY);
        teardown::add_cluster(dir, launcher.clone());
        let base_port = base_port.to_string();
        let mut args = vec!["up", "--base-port", base_port.as_str()];
        args.extend_from_slice(more);
        match launch(&binary, dir, &args).and_then(|()| Ok(launcher.load()?)) {
            Ok(file) => Ok(Self {
                launcher,
                binary,
                dir: dir.to_owned(),
                file,
            }),
            Err(error) => {
                if !teardown::stopping() {
                    let _ = launcher.down();
                    teardown::remove_cluster(dir);
                }
                Err(error)
            }
        }
    }

    /// The cluster's file.
    pub fn file(&self) -> &ClusterFile {
        &self.file
    }

    /// Every replica's API address.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.file
            .serving_replicas()
            .map(|(_, replica)| replica.api_addr)
            .collect()
    }

    /// The process name of the replica serving `api`.
    pub fn name_of(&self, api: SocketAddr) -> Option<String> {
        self.file
            .replicas()
            .find(|(_, replica)| replica.api_addr == api)
            .map(|(process, _)| process.name.clone())
    }

    /// `spike-dev-cluster kill|start NAME`.
    pub fn act(&mut self, action: Action, name: &str) -> anyhow::Result<()> {
        launch(&self.binary, &self.dir, &[action.as_str(), name])?;
        self.file = self.launcher.load()?;
        Ok(())
    }

    /// Starts replica `name`; returns how long until it reports ready.
    pub fn restart_and_wait(&mut self, name: &str, limit: Duration) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.act(Action::Start, name)?;
        self.wait_ready(name, limit)?;
        Ok(began.elapsed())
    }

    /// Waits until replica `name` reports ready on its health port.
    pub fn wait_ready(&self, name: &str, limit: Duration) -> anyhow::Result<Duration> {
        let process = self.file.process(name)?;
        let replica = process.replica().context("not a replica")?;
        let began = Instant::now();
        while began.elapsed() < limit {
            if probe::ready(replica.health_addr, READY_PROBE_TIMEOUT) {
                return Ok(began.elapsed());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let log = std::fs::read_to_string(&process.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        bail!(
            "{name} not ready after {limit:?}; its last log lines, newest first:\n{}",
            tail.join("\n")
        )
    }

    /// A superuser SDK client for every replica.
    pub async fn client(&self) -> anyhow::Result<NexusStore> {
        let identity = self
            .file
            .svid_source("superuser")?
            .load(WORKLOAD_API_TIMEOUT_DEFAULT)
            .await?;
        let roots = TrustRoots::from_environment(&[])?;
        Ok(NexusStore {
            client: NexusClient::new(identity, roots, Settings::new(self.endpoints()))?,
        })
    }

    /// Resident memory (KiB) of each running replica, from /proc.
    pub fn resident_kib(&self) -> Vec<(String, u64)> {
        self.file
            .replicas()
            .filter_map(|(process, _)| {
                let rss = crate::load::resident_kib(process.pid?.get())?;
                Some((process.name.clone(), rss))
            })
            .collect()
    }
}

/// Runs `spike-dev-cluster ARGS --dir DIR`, unless a teardown has begun
/// (through [`teardown::spawn`]: the launcher would outlive the sweep).
fn launch(binary: &Path, dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new(binary);
    command
        .args(args)
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = teardown::spawn(&mut command)?.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            spike_dev_cluster::driver::BINARY,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for NexusCluster {
    fn drop(&mut self) {
        // After a signal the teardown takes it down, once.
        if !teardown::stopping() {
            let _ = self.launcher.down();
            teardown::remove_cluster(&self.dir);
        }
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

/// The path of key `key`: `bench/k<number>` follows the path rule.
fn path_of(key: u64) -> SecretPath {
    SecretPath::try_from(format!("bench/k{key}")).expect("bench paths follow the path rule")
}

impl Store for NexusStore {
    async fn put(&self, key: u64, value: &str) -> Result<(), String> {
        let values: SecretValues = [("v", value)].into_iter().collect();
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

    fn offers(&self, _workload: crate::load::Workload) -> bool {
        true
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        self.client
            .encrypt(plaintext)
            .await
            .map_err(|e| e.to_string())
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<(), String> {
        self.client
            .decrypt(ciphertext)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
