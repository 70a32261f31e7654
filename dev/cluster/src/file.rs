//! `cluster.json`: every process of a local cluster with its role, addresses,
//! pid, data directory and log. The launcher writes it; the tests, the
//! Jepsen harness and the benchmark read it through these types.
//!
//! On disk each process is one flat record (`role`, `node_id`,
//! `api_addr`, ...); in memory its [`Role`] carries exactly the fields the
//! role has, so a replica without a health address is refused when the
//! file is read rather than wherever the address is needed.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::netns;
use crate::pid::Pid;

/// The file's name in the cluster directory.
pub const FILE_NAME: &str = "cluster.json";

/// `cluster.json` could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The directory holds no cluster (yet): the caller named the wrong
    /// directory, or `up` never ran there.
    #[error("no cluster at {}: {source}", dir.display())]
    NoCluster {
        /// The cluster directory.
        dir: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not a cluster file (written by hand, or by an
    /// incompatible launcher).
    #[error("{} is not a cluster file: {source}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// A file in the cluster directory could not be written (the disk's or
    /// the permissions' fault).
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The caller named an identity the cluster does not have.
    #[error("no identity named {0}")]
    NoIdentity(String),
    /// The caller named a process the cluster does not have.
    #[error("no process named {name}; known: {known}")]
    NoProcess {
        /// The name asked for.
        name: String,
        /// Every process name, comma separated.
        known: String,
    },
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster directory (absolute).
    pub dir: PathBuf,
    /// Trust domain of every identity.
    pub trust_domain: String,
    /// Shamir shares (one per keeper).
    pub shares: u8,
    /// Shares needed to rebuild the root key.
    pub threshold: u8,
    /// Extra flags for every replica.
    pub nexus_args: Vec<String>,
    /// Extra workload identities, `NAME=PATH`.
    #[serde(default)]
    pub workloads: Vec<String>,
    /// Namespaces, when each process is a host of its own.
    #[serde(default)]
    pub netns: Option<netns::Layout>,
    /// Replica N dials through the proxy at 127.0.0.1:BASE+N.
    #[serde(default)]
    pub connect_proxy_base: Option<u16>,
    /// `up --auto-restore-from-disk-shards`: every recovery shard (the
    /// root key) is kept in `DIR/recovery` and fed back after a total loss.
    /// Development only; off unless asked for, and remembered once asked
    /// (absent from the file while off).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_restore_from_disk_shards: bool,
    /// Identities from SPIRE (`up --identity spire`) instead of the dev
    /// Workload API: the SPIRE server's and agents' settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spire: Option<Spire>,
    /// Where the Workload API sockets are (the dev server's, or the SPIRE
    /// agents'; see [`crate::sockets::choose`]).
    pub sockets_dir: PathBuf,
    /// Every process: the Workload API, then the keepers, then the
    /// replicas by id.
    pub processes: Vec<Process>,
}

/// The SPIRE settings of a cluster, as `cluster.json` keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spire {
    /// Where `spire-server` and `spire-agent` are.
    pub bin_dir: PathBuf,
    /// Where the server serves agents.
    pub server_addr: SocketAddr,
    /// The server CA's lifetime, in seconds.
    pub ca_ttl_secs: u64,
    /// Every workload SVID's lifetime, in seconds.
    pub svid_ttl_secs: u64,
    /// The first uid the cluster hands out.
    pub uid_base: u32,
    /// The uid of whoever ran `up` (its client registrations).
    pub operator_uid: u32,
    /// The clients' own trust domain, federated with the cluster's
    /// (`--spire-pilot-domain`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot_domain: Option<String>,
    /// Whether the registration entries were created (once, at the first
    /// `up`; a test may delete some, and a restart must not bring them
    /// back).
    #[serde(default)]
    pub registered: bool,
}

/// One process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ProcessRecord", into = "ProcessRecord")]
pub struct Process {
    /// `workload-api`, `keeper-N` or `nexus-N`.
    pub name: String,
    /// What it is, with the addresses of its kind.
    pub role: Role,
    /// Its `SPIFFE_ENDPOINT_SOCKET` (`unix://...`; keepers and replicas).
    pub spiffe_endpoint_socket: Option<String>,
    /// Its pid while the launcher believes it runs.
    pub pid: Option<Pid>,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// Its network namespace, if it has one.
    pub netns: Option<String>,
    /// Where it stands in the cluster's membership.
    pub membership: Membership,
    /// The user it runs as, if not the launcher's own (SPIRE clusters: one
    /// per keeper and replica, the selector of its registration entry).
    pub uid: Option<u32>,
}

/// What a process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The dev Workload API, serving every identity.
    WorkloadApi,
    /// The SPIRE server (`up --identity spire`).
    SpireServer,
    /// A SPIRE agent: one for this host's clients, and with `--netns` one
    /// in each namespace, serving the processes of that host.
    SpireAgent,
    /// A keeper.
    Keeper(Keeper),
    /// A Nexus replica.
    Nexus(Replica),
}

/// A keeper's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeper {
    /// Keeper i holds share i (from 1).
    pub id: u64,
    /// Where it serves.
    pub api_addr: SocketAddr,
}

/// A replica's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its node id (from 1, never reused).
    pub id: u64,
    /// The SPIKE API.
    pub api_addr: SocketAddr,
    /// The Raft port.
    pub cluster_addr: SocketAddr,
    /// Plain-HTTP `/readyz` (see [`crate::probe`]).
    pub health_addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
}

/// A process's place in the membership (keepers and the Workload API are
/// always `Founder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Membership {
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

impl Role {
    /// The role's name, as `cluster.json` and the identity paths
    /// (`/spike/ROLE/ID`) spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::WorkloadApi => "workload-api",
            Self::SpireServer => "spire-server",
            Self::SpireAgent => "spire-agent",
            Self::Keeper(_) => "keeper",
            Self::Nexus(_) => "nexus",
        }
    }

    /// The file name of the binary that runs it.
    pub fn binary(&self) -> &'static str {
        match self {
            Self::WorkloadApi => "spike-dev-identity",
            Self::SpireServer => "spire-server",
            Self::SpireAgent => "spire-agent",
            Self::Keeper(_) => "keeper",
            Self::Nexus(_) => "nexus",
        }
    }
}

impl Process {
    /// Its replica fields, if it is a replica.
    pub fn replica(&self) -> Option<&Replica> {
        match &self.role {
            Role::Nexus(replica) => Some(replica),
            _ => None,
        }
    }

    /// Its keeper fields, if it is a keeper.
    pub fn keeper(&self) -> Option<&Keeper> {
        match &self.role {
            Role::Keeper(keeper) => Some(keeper),
            _ => None,
        }
    }

    /// Its node id (keepers and replicas).
    pub fn node_id(&self) -> Option<u64> {
        match &self.role {
            Role::WorkloadApi | Role::SpireServer | Role::SpireAgent => None,
            Role::Keeper(keeper) => Some(keeper.id),
            Role::Nexus(replica) => Some(replica.id),
        }
    }

    /// Where it serves (keepers and replicas).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        match &self.role {
            Role::WorkloadApi | Role::SpireServer | Role::SpireAgent => None,
            Role::Keeper(keeper) => Some(keeper.api_addr),
            Role::Nexus(replica) => Some(replica.api_addr),
        }
    }

    /// Whether `up` starts it and waits for it (not a spare nor retired).
    pub fn serves(&self) -> bool {
        matches!(self.membership, Membership::Founder | Membership::Joined)
    }
}

impl ClusterFile {
    /// Where `cluster.json` is in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(FILE_NAME)
    }

    /// Reads `dir/cluster.json`.
    pub fn load(dir: &Path) -> Result<Self, FileError> {
        let path = Self::path(dir);
        let text = fs::read_to_string(&path).map_err(|source| FileError::NoCluster {
            dir: dir.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| FileError::Malformed { path, source })
    }

    /// Writes it back, atomically (readers never see half a file).
    pub fn save(&self) -> Result<(), FileError> {
        let path = Self::path(&self.dir);
        let temporary = path.with_extension("json.tmp");
        let write = |path: &Path, source| FileError::Write {
            path: path.to_owned(),
            source,
        };
        // Only a path that is not UTF-8 fails to encode.
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|error| write(&path, std::io::Error::other(error)))?;
        fs::write(&temporary, bytes).map_err(|source| write(&temporary, source))?;
        fs::rename(&temporary, &path).map_err(|source| write(&path, source))
    }

    /// The dev Workload API socket serving identity `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.sockets_dir.join(format!("{name}.sock"))
    }

    /// The index of process `name`.
    pub fn index_of(&self, name: &str) -> Result<usize, FileError> {
        self.processes
            .iter()
            .position(|process| process.name == name)
            .ok_or_else(|| FileError::NoProcess {
                name: name.to_owned(),
                known: self
                    .processes
                    .iter()
                    .map(|process| process.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Process `name`.
    pub fn process(&self, name: &str) -> Result<&Process, FileError> {
        Ok(&self.processes[self.index_of(name)?])
    }

    /// Every replica (spares and retired ones too), by id.
    pub fn replicas(&self) -> impl Iterator<Item = (&Process, &Replica)> {
        self.processes
            .iter()
            .filter_map(|process| Some((process, process.replica()?)))
    }

    /// The replicas that are, or are meant to be, in the cluster (founders
    /// and joined ones), by id.
    pub fn serving_replicas(&self) -> impl Iterator<Item = (&Process, &Replica)> {
        self.replicas().filter(|(process, _)| process.serves())
    }

    /// The hosts of a `--netns` cluster, in process order (none without
    /// namespaces).
    pub fn hosts(&self) -> Result<Vec<netns::Host>, netns::NetnsError> {
        let Some(layout) = &self.netns else {
            return Ok(Vec::new());
        };
        // A namespace's SPIRE agent is no host of its own.
        self.processes
            .iter()
            .filter(|process| process.netns.is_some() && process.node_id().is_some())
            .enumerate()
            .map(|(index, process)| layout.host(&process.name, index))
            .collect()
    }

    /// Every keeper, by id.
    pub fn keepers(&self) -> impl Iterator<Item = (&Process, &Keeper)> {
        self.processes
            .iter()
            .filter_map(|process| Some((process, process.keeper()?)))
    }
}

/// The role as `cluster.json` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RoleName {
    WorkloadApi,
    SpireServer,
    SpireAgent,
    Keeper,
    Nexus,
}

/// A process as `cluster.json` keeps it: one flat record, in this field
/// order, whatever its role.
#[derive(Serialize, Deserialize)]
struct ProcessRecord {
    name: String,
    role: RoleName,
    node_id: Option<u64>,
    api_addr: Option<SocketAddr>,
    cluster_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    spiffe_endpoint_socket: Option<String>,
    pid: Option<Pid>,
    data_dir: Option<PathBuf>,
    log: PathBuf,
    #[serde(default)]
    netns: Option<String>,
    #[serde(default)]
    membership: Membership,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
}

/// A record that lacks a field its role needs.
#[derive(Debug, thiserror::Error)]
#[error("process {name}: a {role} needs {field}")]
struct MissingField {
    name: String,
    role: &'static str,
    field: &'static str,
}

impl TryFrom<ProcessRecord> for Process {
    type Error = MissingField;

    fn try_from(record: ProcessRecord) -> Result<Self, Self::Error> {
        let missing = |role: &'static str, field| MissingField {
            name: record.name.clone(),
            role,
            field,
        };
        let role = match record.role {
            RoleName::WorkloadApi => Role::WorkloadApi,
            RoleName::SpireServer => Role::SpireServer,
            RoleName::SpireAgent => Role::SpireAgent,
            RoleName::Keeper => Role::Keeper(Keeper {
                id: record.node_id.ok_or_else(|| missing("keeper", "node_id"))?,
                api_addr: record
                    .api_addr
                    .ok_or_else(|| missing("keeper", "api_addr"))?,
            }),
            RoleName::Nexus => Role::Nexus(Replica {
                id: record.node_id.ok_or_else(|| missing("nexus", "node_id"))?,
                api_addr: record
                    .api_addr
                    .ok_or_else(|| missing("nexus", "api_addr"))?,
                cluster_addr: record
                    .cluster_addr
                    .ok_or_else(|| missing("nexus", "cluster_addr"))?,
                health_addr: record
                    .health_addr
                    .ok_or_else(|| missing("nexus", "health_addr"))?,
                data_dir: record
                    .data_dir
                    .clone()
                    .ok_or_else(|| missing("nexus", "data_dir"))?,
            }),
        };
        Ok(Self {
            name: record.name,
            role,
            spiffe_endpoint_socket: record.spiffe_endpoint_socket,
            pid: record.pid,
            log: record.log,
            netns: record.netns,
            membership: record.membership,
            uid: record.uid,
        })
    }
}

impl From<Process> for ProcessRecord {
    fn from(process: Process) -> Self {
        let mut record = Self {
            name: process.name,
            role: RoleName::WorkloadApi,
            node_id: None,
            api_addr: None,
            cluster_addr: None,
            health_addr: None,
            spiffe_endpoint_socket: process.spiffe_endpoint_socket,
            pid: process.pid,
            data_dir: None,
            log: process.log,
            netns: process.netns,
            membership: process.membership,
            uid: process.uid,
        };
        match process.role {
            Role::WorkloadApi => {}
            Role::SpireServer => record.role = RoleName::SpireServer,
            Role::SpireAgent => record.role = RoleName::SpireAgent,
            Role::Keeper(keeper) => {
                record.role = RoleName::Keeper;
                record.node_id = Some(keeper.id);
                record.api_addr = Some(keeper.api_addr);
            }
            Role::Nexus(replica) => {
                record.role = RoleName::Nexus;
                record.node_id = Some(replica.id);
                record.api_addr = Some(replica.api_addr);
                record.cluster_addr = Some(replica.cluster_addr);
                record.health_addr = Some(replica.health_addr);
                record.data_dir = Some(replica.data_dir);
            }
        }
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file as the launcher before this library wrote it, spaces and
    /// field order included.
    const WRITTEN_BEFORE: &str = r#"{
  "dir": "/c",
  "trust_domain": "spike.ist",
  "shares": 1,
  "threshold": 1,
  "nexus_args": [],
  "workloads": [],
  "netns": null,
  "connect_proxy_base": null,
  "sockets_dir": "/c/identities/sockets",
  "processes": [
    {
      "name": "workload-api",
      "role": "workload-api",
      "node_id": null,
      "api_addr": null,
      "cluster_addr": null,
      "health_addr": null,
      "spiffe_endpoint_socket": null,
      "pid": 41,
      "data_dir": null,
      "log": "/c/logs/workload-api.log",
      "netns": null,
      "membership": "founder"
    },
    {
      "name": "keeper-1",
      "role": "keeper",
      "node_id": 1,
      "api_addr": "127.0.0.1:101",
      "cluster_addr": null,
      "health_addr": null,
      "spiffe_endpoint_socket": "unix:///c/identities/sockets/keeper-1.sock",
      "pid": null,
      "data_dir": null,
      "log": "/c/logs/keeper-1.log",
      "netns": null,
      "membership": "founder"
    },
    {
      "name": "nexus-1",
      "role": "nexus",
      "node_id": 1,
      "api_addr": "127.0.0.1:1",
      "cluster_addr": "127.0.0.1:2",
      "health_addr": "127.0.0.1:3",
      "spiffe_endpoint_socket": "unix:///c/identities/sockets/nexus-1.sock",
      "pid": 42,
      "data_dir": "/c/nexus-1",
      "log": "/c/logs/nexus-1.log",
      "netns": null,
      "membership": "spare"
    }
  ]
}"#;

    #[test]
    fn the_file_format_is_unchanged_byte_for_byte() {
        let file: ClusterFile = serde_json::from_str(WRITTEN_BEFORE).expect("reads");
        let (nexus, replica) = file.replicas().next().expect("one replica");
        assert_eq!(nexus.membership, Membership::Spare);
        assert_eq!(replica.health_addr, "127.0.0.1:3".parse().expect("address"));
        assert_eq!(nexus.pid.map(Pid::get), Some(42));
        assert_eq!(
            file.keepers().next().map(|(_, keeper)| keeper.api_addr),
            "127.0.0.1:101".parse().ok()
        );
        let written = serde_json::to_string_pretty(&file).expect("writes");
        assert_eq!(written, WRITTEN_BEFORE);
    }

    #[test]
    fn a_replica_without_a_health_address_is_refused_on_reading() {
        let broken = WRITTEN_BEFORE.replace(r#""health_addr": "127.0.0.1:3","#, "");
        let refused = serde_json::from_str::<ClusterFile>(&broken).expect_err("refused");
        assert!(
            refused
                .to_string()
                .contains("nexus-1: a nexus needs health_addr"),
            "{refused}"
        );
    }

    #[test]
    fn an_unknown_process_names_the_known_ones() {
        let file: ClusterFile = serde_json::from_str(WRITTEN_BEFORE).expect("reads");
        let unknown = file.index_of("nexus-9").expect_err("unknown");
        assert_eq!(
            unknown.to_string(),
            "no process named nexus-9; known: workload-api, keeper-1, nexus-1"
        );
    }
}
