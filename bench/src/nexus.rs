//! Our side: a 3- or 5-replica cluster started with `spike-dev-cluster`
//! (dev identities, mTLS everywhere, fsynced redb), driven through the SDK.

use spike_sdk::api::SecretValues;
use spike_sdk::domain::SecretPath;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use spike_dev_cluster::{Action, ClusterFile, Launcher, Membership, probe};
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
        self.client_with(Settings::new(self.endpoints())).await
    }

    /// A superuser SDK client with `settings`.
    async fn client_with(&self, settings: Settings) -> anyhow::Result<NexusStore> {
        let identity = self
            .file
            .svid_source("superuser")?
            .load(WORKLOAD_API_TIMEOUT_DEFAULT)
            .await?;
        let roots = TrustRoots::from_environment(&[])?;
        Ok(NexusStore {
            client: NexusClient::new(identity, roots, settings)?,
        })
    }

    /// Each replica's (spares' too) name and data directory.
    pub fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        self.file
            .replicas()
            .filter(|(process, _)| process.pid.is_some())
            .map(|(process, replica)| (process.name.clone(), replica.data_dir.clone()))
            .collect()
    }

    /// Each serving replica's name and health address.
    fn health_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.file
            .serving_replicas()
            .map(|(process, replica)| (process.name.clone(), replica.health_addr))
            .collect()
    }

    /// The leader's name and applied index, from each replica's
    /// `/metrics` (`spike_raft_is_leader`, `spike_raft_applied_index`).
    pub fn leader_applied(&self) -> anyhow::Result<(String, u64)> {
        let began = Instant::now();
        loop {
            for (name, health) in self.health_addrs() {
                let Some(text) = probe::scrape(health, METRICS_TIMEOUT) else {
                    continue;
                };
                if metric(&text, "spike_raft_is_leader", None) == Some(1) {
                    let applied = metric(&text, "spike_raft_applied_index", None)
                        .context("the leader's /metrics has no spike_raft_applied_index")?;
                    return Ok((name, applied));
                }
            }
            if began.elapsed() > LEADER_WAIT {
                bail!("no replica says it leads after {LEADER_WAIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first spare of the cluster file.
    pub fn spare(&self) -> Option<String> {
        self.file
            .replicas()
            .find(|(process, _)| process.membership == Membership::Spare)
            .map(|(process, _)| process.name.clone())
    }

    /// Starts spare `name` with --join and adds it as a learner; waits
    /// until it is ready and has applied at least the leader's applied
    /// index at the add. The leader sends it its latest snapshot when it
    /// has purged the log entries the new replica lacks.
    pub async fn join_and_wait(&mut self, name: &str, limit: Duration) -> anyhow::Result<Joined> {
        let (_, target_index) = self.leader_applied()?;
        let began = Instant::now();
        self.act(Action::Join, name)?;
        let replica = self
            .file
            .process(name)?
            .replica()
            .context("not a replica")?
            .clone();
        let id = spike_sdk::domain::NodeId::new(replica.id).context("a replica id of 0")?;
        // The add returns once the leader has caught the learner up: it may
        // take as long as the catch-up itself, so no short timeout, and no
        // retry of an add that may have happened.
        let mut settings = Settings::new(self.endpoints());
        settings.request_timeout = limit;
        settings.retry.attempts_max = 1;
        settings.retry.deadline = limit;
        let admin = self.client_with(settings).await?;
        let add = tokio::spawn(async move {
            admin
                .client
                .add_member(id, replica.cluster_addr, replica.api_addr)
                .await
        });
        let health = replica.health_addr;
        let caught_up = tokio::task::spawn_blocking(move || {
            while began.elapsed() < limit {
                if probe::ready(health, READY_PROBE_TIMEOUT)
                    && probe::gauge(health, "spike_raft_applied_index", METRICS_TIMEOUT)
                        .is_some_and(|applied| applied >= target_index)
                {
                    return Some(began.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        })
        .await?;
        let added = add.await?;
        let Some(caught_up) = caught_up else {
            bail!(
                "{name} not caught up to index {target_index} after {limit:?} (add: {})",
                added.map_or_else(|e| e.to_string(), |()| "done".to_owned())
            );
        };
        added.with_context(|| format!("the add of {name}"))?;
        let joined_metrics = probe::scrape(health, METRICS_TIMEOUT).unwrap_or_default();
        Ok(Joined {
            caught_up,
            target_index,
            installed_bytes: metric(
                &joined_metrics,
                "spike_raft_snapshot_size_bytes",
                Some("operation=\"install\""),
            )
            .filter(|bytes| *bytes > 0),
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

/// How long one scrape of a replica's `/metrics` may take.
const METRICS_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`NexusCluster::leader_applied`] waits for a leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// A spare that joined a loaded cluster.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    /// From its start to ready with the leader's applied index.
    pub caught_up: Duration,
    /// The leader's applied index when it was added.
    pub target_index: u64,
    /// The snapshot it installed, bytes (none: it caught up from the log).
    pub installed_bytes: Option<u64>,
}

/// The value of `name` in a `/metrics` text: the first series whose
/// labels contain `label` (any series without), as a whole number.
fn metric(text: &str, name: &str, label: Option<&str>) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !rest.starts_with([' ', '{']) {
            return None;
        }
        if let Some(label) = label {
            let labels = rest.strip_prefix('{')?.split('}').next()?;
            if !labels.split(',').any(|pair| pair == label) {
                return None;
            }
        }
        let value: f64 = rest.split_whitespace().last()?.parse().ok()?;
        (value >= 0.0).then_some(value as u64)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metric_is_found_by_name_and_label() {
        let text = "\
# TYPE spike_raft_snapshot_size_bytes gauge
spike_raft_snapshot_size_bytes{node=\"1\",operation=\"build\"} 4096
spike_raft_snapshot_size_bytes{node=\"1\",operation=\"install\"} 0
spike_raft_applied_index_total 3
spike_raft_applied_index{node=\"1\"} 1234
";
        let install = Some("operation=\"install\"");
        let build = Some("operation=\"build\"");
        assert_eq!(
            metric(text, "spike_raft_snapshot_size_bytes", build),
            Some(4096)
        );
        assert_eq!(
            metric(text, "spike_raft_snapshot_size_bytes", install),
            Some(0)
        );
        assert_eq!(metric(text, "spike_raft_applied_index", None), Some(1234));
        assert_eq!(metric(text, "spike_raft_is_leader", None), None);
        assert_eq!(
            metric(
                text,
                "spike_raft_applied_index",
                Some("operation=\"build\"")
            ),
            None
        );
    }
}
