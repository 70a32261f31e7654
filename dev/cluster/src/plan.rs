//! The port plan: what `up` lays out in a new directory. One identity per
//! process; ports from `base_port` up: replica N takes BASE+10(N-1) (API),
//! +1 (cluster) and +2 (health), keeper N takes BASE+100+N.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use spike_dev_identity::IdentitySpec;
use spike_dev_identity::directory::DirectoryError;

use crate::file::{ClusterFile, Keeper, Membership, Process, Replica, Role};
use crate::netns::{self, NetnsError};
use crate::sockets::{self, SocketsError};
use crate::spire::{self, Spire, SpireShape};

/// Replicas started by default.
pub const REPLICAS_DEFAULT: u64 = 3;
/// Keepers by default.
pub const KEEPERS_DEFAULT: u8 = 5;
/// Shares needed by default.
pub const THRESHOLD_DEFAULT: u8 = 3;
/// The first port by default.
pub const BASE_PORT_DEFAULT: u16 = 28_500;
/// The trust domain by default.
pub const TRUST_DOMAIN_DEFAULT: &str = "spike.ist";
/// Replicas and spares together: their ports stay below the keepers'.
pub const REPLICAS_MAX: u16 = 10;
/// Ports between one replica's and the next's.
const REPLICA_PORT_STRIDE: u64 = 10;
/// Keeper N listens on BASE + this + N.
const KEEPER_PORT_OFFSET: u64 = 100;

/// What `up` was asked for on a new directory.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Replicas started.
    pub replicas: u64,
    /// Spare replicas, planned but not started.
    pub spares: u64,
    /// Keepers (one share each).
    pub keepers: u8,
    /// Shares needed to rebuild the root key.
    pub threshold: u8,
    /// The first port.
    pub base_port: u16,
    /// Trust domain of every identity.
    pub trust_domain: String,
    /// Extra flags for every replica.
    pub nexus_args: Vec<String>,
    /// Extra workload identities, `NAME=PATH`.
    pub workloads: Vec<String>,
    /// Each keeper and replica in a namespace of its own.
    pub netns: Option<netns::Layout>,
    /// Replica N dials through the proxy at 127.0.0.1:BASE+N.
    pub connect_proxy_base: Option<u16>,
    /// Keep every recovery shard in `DIR/recovery` and restore from them
    /// after a total loss (development only: the root key is on disk).
    pub auto_restore_from_disk_shards: bool,
    /// Identities from SPIRE instead of the dev Workload API.
    pub spire: Option<SpireShape>,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            replicas: REPLICAS_DEFAULT,
            spares: 0,
            keepers: KEEPERS_DEFAULT,
            threshold: THRESHOLD_DEFAULT,
            base_port: BASE_PORT_DEFAULT,
            trust_domain: TRUST_DOMAIN_DEFAULT.to_owned(),
            nexus_args: Vec::new(),
            workloads: Vec::new(),
            netns: None,
            connect_proxy_base: None,
            auto_restore_from_disk_shards: false,
            spire: None,
        }
    }
}

/// A shape that cannot be laid out (the caller's flags).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The proxies of replicas 1 to 10 would pass port 65535.
    #[error("--connect-proxy-base leaves no room for {REPLICAS_MAX} replicas")]
    ProxyPorts,
    /// Nothing to run, or a threshold no set of keepers meets.
    #[error("need at least one replica and keeper, and 1 <= threshold <= keepers")]
    Shape,
    /// Replica ports would reach the keepers'.
    #[error(
        "at most {REPLICAS_MAX} replicas and spares together (their ports would reach the keepers')"
    )]
    TooManyReplicas,
    /// Keeper ports would reach the SPIRE server's.
    #[error("at most 89 keepers on SPIRE (their ports would reach the SPIRE server's)")]
    TooManyKeepers,
    /// A process's port would pass 65535.
    #[error("--base-port leaves no room for every process")]
    Ports,
    /// A `--workload` is not NAME=PATH.
    #[error(transparent)]
    Workload(#[from] DirectoryError),
    /// No directory for the Workload API's sockets.
    #[error(transparent)]
    Sockets(#[from] SocketsError),
    /// More hosts than the namespaces' /24 holds.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// Lays out a new cluster in `dir` (absolute).
pub fn plan(dir: &Path, shape: Shape) -> Result<ClusterFile, PlanError> {
    check(&shape)?;
    let workloads = shape
        .workloads
        .iter()
        .map(|workload| IdentitySpec::parse(workload))
        .collect::<Result<Vec<_>, _>>()?;
    let sockets_dir = sockets::choose(dir, &workloads)?;
    let mut layout = Layout {
        dir,
        sockets_dir: &sockets_dir,
        shape: &shape,
        hosts: 0,
    };
    let mut hosts = Vec::new();
    for id in 1..=u64::from(shape.keepers) {
        hosts.push(layout.keeper(id)?);
    }
    for id in 1..=shape.replicas + shape.spares {
        hosts.push(layout.replica(id)?);
    }
    // The identity plane comes first: `up` starts processes in this order
    // and `down` stops them in the reverse one.
    let mut processes = match &shape.spire {
        None => vec![layout.identity_process("workload-api", Role::WorkloadApi, None)],
        Some(spire_shape) => {
            let mut sides = vec![spire::Side::Cluster];
            if spire_shape.pilot_domain.is_some() {
                sides.push(spire::Side::Pilot);
            }
            let mut plane = Vec::new();
            for side in &sides {
                plane.push(layout.identity_process(side.server_name(), Role::SpireServer, None));
            }
            for side in &sides {
                plane.push(layout.identity_process(&side.client_agent(), Role::SpireAgent, None));
            }
            for host in hosts.iter().filter(|host| host.netns.is_some()) {
                let name = spire::agent_name(Some(&host.name));
                plane.push(layout.identity_process(&name, Role::SpireAgent, host.netns.clone()));
            }
            plane
        }
    };
    processes.extend(hosts);
    let spire = match &shape.spire {
        None => None,
        Some(spire_shape) => {
            let gateway = shape.netns.as_ref().map(netns::Layout::gateway);
            Some(Spire::plan(spire_shape, shape.base_port, gateway).ok_or(PlanError::Ports)?)
        }
    };
    let mut cluster = ClusterFile {
        dir: dir.to_owned(),
        trust_domain: shape.trust_domain,
        shares: shape.keepers,
        threshold: shape.threshold,
        nexus_args: shape.nexus_args,
        workloads: shape.workloads,
        netns: shape.netns,
        connect_proxy_base: shape.connect_proxy_base,
        auto_restore_from_disk_shards: shape.auto_restore_from_disk_shards,
        spire,
        sockets_dir,
        processes,
    };
    if let Some(spire) = cluster.spire.clone() {
        // Each keeper and replica: its own uid, its host's agent.
        for index in 0..cluster.processes.len() {
            let process = &cluster.processes[index];
            if process.node_id().is_none() {
                continue;
            }
            let socket = cluster.agent_socket(&cluster.agent_of(process));
            let uid = spire.process_uid(process);
            let process = &mut cluster.processes[index];
            process.spiffe_endpoint_socket = Some(format!("unix://{}", socket.display()));
            process.uid = uid;
        }
    }
    Ok(cluster)
}

fn check(shape: &Shape) -> Result<(), PlanError> {
    if shape
        .connect_proxy_base
        .is_some_and(|base| base.checked_add(REPLICAS_MAX).is_none())
    {
        return Err(PlanError::ProxyPorts);
    }
    if shape.replicas == 0
        || shape.keepers == 0
        || shape.threshold == 0
        || shape.threshold > shape.keepers
    {
        return Err(PlanError::Shape);
    }
    if shape.replicas.saturating_add(shape.spares) > u64::from(REPLICAS_MAX) {
        return Err(PlanError::TooManyReplicas);
    }
    if shape.spire.is_some()
        && KEEPER_PORT_OFFSET + u64::from(shape.keepers) >= u64::from(spire::SERVER_PORT_OFFSET)
    {
        return Err(PlanError::TooManyKeepers);
    }
    Ok(())
}

/// Hands out hosts, ports and paths while the processes are laid out.
struct Layout<'a> {
    dir: &'a Path,
    sockets_dir: &'a Path,
    shape: &'a Shape,
    /// Hosts in namespaces so far: they are numbered in process order
    /// (keepers, then replicas).
    hosts: usize,
}

impl Layout<'_> {
    /// The next host of a namespaced cluster (none on loopback).
    fn next_host(&mut self, name: &str) -> Result<Option<netns::Host>, PlanError> {
        let Some(layout) = &self.shape.netns else {
            return Ok(None);
        };
        let host = layout.host(name, self.hosts)?;
        self.hosts += 1;
        Ok(Some(host))
    }

    /// The address at BASE + `offset` on `host` (loopback without one).
    fn address(&self, host: Option<&netns::Host>, offset: u64) -> Result<SocketAddr, PlanError> {
        let port = u64::from(self.shape.base_port) + offset;
        let port = u16::try_from(port).map_err(|_| PlanError::Ports)?;
        let ip = host.map_or(Ipv4Addr::LOCALHOST, |host| host.address);
        Ok(SocketAddr::new(IpAddr::V4(ip), port))
    }

    fn socket(&self, name: &str) -> String {
        format!(
            "unix://{}",
            self.sockets_dir.join(format!("{name}.sock")).display()
        )
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// A process of the identity plane (the dev Workload API, the SPIRE
    /// server or an agent).
    fn identity_process(&self, name: &str, role: Role, netns: Option<String>) -> Process {
        Process {
            name: name.to_owned(),
            role,
            spiffe_endpoint_socket: None,
            pid: None,
            log: self.log(name),
            netns,
            membership: Membership::Founder,
            uid: None,
        }
    }

    fn keeper(&mut self, id: u64) -> Result<Process, PlanError> {
        let name = format!("keeper-{id}");
        let host = self.next_host(&name)?;
        Ok(Process {
            role: Role::Keeper(Keeper {
                id,
                api_addr: self.address(host.as_ref(), KEEPER_PORT_OFFSET + id)?,
            }),
            spiffe_endpoint_socket: Some(self.socket(&name)),
            pid: None,
            log: self.log(&name),
            netns: host.map(|host| host.namespace),
            membership: Membership::Founder,
            uid: None,
            name,
        })
    }

    fn replica(&mut self, id: u64) -> Result<Process, PlanError> {
        let name = format!("nexus-{id}");
        let base = (id - 1) * REPLICA_PORT_STRIDE;
        let host = self.next_host(&name)?;
        Ok(Process {
            role: Role::Nexus(Replica {
                id,
                api_addr: self.address(host.as_ref(), base)?,
                cluster_addr: self.address(host.as_ref(), base + 1)?,
                health_addr: self.address(host.as_ref(), base + 2)?,
                data_dir: self.dir.join(&name),
            }),
            spiffe_endpoint_socket: Some(self.socket(&name)),
            pid: None,
            log: self.log(&name),
            netns: host.map(|host| host.namespace),
            membership: if id <= self.shape.replicas {
                Membership::Founder
            } else {
                Membership::Spare
            },
            uid: None,
            name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_and_keepers_take_their_ports_from_the_base_up() {
        let cluster = plan(
            Path::new("/c"),
            Shape {
                replicas: 2,
                spares: 1,
                keepers: 2,
                threshold: 2,
                base_port: 30_000,
                ..Shape::default()
            },
        )
        .expect("plan");
        let names: Vec<&str> = cluster.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "workload-api",
                "keeper-1",
                "keeper-2",
                "nexus-1",
                "nexus-2",
                "nexus-3"
            ]
        );
        let (spare, third) = cluster.replicas().nth(2).expect("nexus-3");
        assert_eq!(spare.membership, Membership::Spare);
        assert_eq!(third.api_addr, "127.0.0.1:30020".parse().expect("address"));
        assert_eq!(third.health_addr.port(), 30_022);
        assert_eq!(third.data_dir, Path::new("/c/nexus-3"));
        let ports: Vec<u16> = cluster
            .keepers()
            .map(|(_, keeper)| keeper.api_addr.port())
            .collect();
        assert_eq!(ports, [30_101, 30_102]);
        assert_eq!(cluster.sockets_dir, Path::new("/c/identities/sockets"));
    }

    #[test]
    fn impossible_shapes_are_refused_before_anything_runs() {
        let refused = |shape: Shape| plan(Path::new("/c"), shape).is_err();
        assert!(refused(Shape {
            threshold: 6,
            ..Shape::default()
        }));
        assert!(refused(Shape {
            replicas: 8,
            spares: 3,
            ..Shape::default()
        }));
        assert!(refused(Shape {
            base_port: 65_500,
            ..Shape::default()
        }));
        assert!(refused(Shape {
            connect_proxy_base: Some(65_530),
            ..Shape::default()
        }));
    }

    #[test]
    fn namespaced_hosts_are_numbered_keepers_first() {
        let cluster = plan(
            Path::new("/c"),
            Shape {
                replicas: 1,
                keepers: 1,
                threshold: 1,
                netns: Some(netns::Layout::new("t", "10.1.2").expect("layout")),
                ..Shape::default()
            },
        )
        .expect("plan");
        let addresses: Vec<String> = cluster
            .processes
            .iter()
            .filter_map(|process| Some(process.api_addr()?.ip().to_string()))
            .collect();
        assert_eq!(addresses, ["10.1.2.10", "10.1.2.11"]);
        assert_eq!(cluster.processes[2].netns.as_deref(), Some("t-nexus-1"));
    }
}
