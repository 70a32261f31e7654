//! The command line and environment each process is started with.

use std::path::Path;
use std::process::Command;

use crate::file::{ClusterFile, Keeper, Membership, Process, Replica, Role};

/// How often a leader re-sends shares to the keepers: short, so a keeper
/// restarted in a test holds its share again within a second.
const KEEPER_UPDATE_INTERVAL: &str = "1s";

/// The command that starts `process` of `cluster` from the binaries in
/// `bin_dir`, inside its namespace if it has one.
pub fn command(cluster: &ClusterFile, process: &Process, bin_dir: &Path) -> Command {
    let program = bin_dir.join(process.role.binary());
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
    match &process.role {
        Role::WorkloadApi => workload_api(&mut command, cluster),
        Role::Keeper(keeper) => keeper_flags(&mut command, keeper),
        Role::Nexus(replica) => nexus_flags(&mut command, cluster, process, replica),
    }
    command
}

fn workload_api(command: &mut Command, cluster: &ClusterFile) {
    command
        .arg("workload-api")
        .arg("--dir")
        .arg(cluster.dir.join("identities"))
        .arg("--sockets")
        .arg(&cluster.sockets_dir);
}

fn keeper_flags(command: &mut Command, keeper: &Keeper) {
    command
        .args(["--bind", &keeper.api_addr.ip().to_string()])
        .args(["--port", &keeper.api_addr.port().to_string()]);
}

fn nexus_flags(command: &mut Command, cluster: &ClusterFile, process: &Process, replica: &Replica) {
    let keepers: Vec<String> = cluster
        .keepers()
        .map(|(_, keeper)| keeper.api_addr.to_string())
        .collect();
    command
        .args(["--node-id", &replica.id.to_string()])
        .args(["--keepers", &keepers.join(",")])
        .args(["--shares", &cluster.shares.to_string()])
        .args(["--threshold", &cluster.threshold.to_string()])
        // A dev cluster asked for t = 1 (every keeper holds the key; `up`
        // says so): nexus refuses it without this switch.
        .args((cluster.threshold == 1).then_some("--allow-insecure-threshold"))
        .args(["--health-addr", &replica.health_addr.to_string()])
        .args(["--keeper-update-interval", KEEPER_UPDATE_INTERVAL])
        .arg("--data-dir")
        .arg(&replica.data_dir)
        .args(&cluster.nexus_args);
    if let Some(base) = cluster.connect_proxy_base {
        let port = u64::from(base) + replica.id;
        command.args(["--connect-proxy", &format!("127.0.0.1:{port}")]);
    }
    if process.membership == Membership::Founder {
        let peers: Vec<String> = cluster
            .replicas()
            .filter(|(peer, _)| peer.membership == Membership::Founder)
            .map(|(_, peer)| format!("{}={}/{}", peer.id, peer.cluster_addr, peer.api_addr))
            .collect();
        command.args(["--peers", &peers.join(",")]);
    } else {
        command
            .arg("--join")
            .args(["--cluster-addr", &replica.cluster_addr.to_string()])
            .args(["--api-addr", &replica.api_addr.to_string()]);
    }
}
