//! The command line and environment each process is started with.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::file::{ClusterFile, Keeper, Membership, Process, Replica, Role};
use crate::spire;

/// How often a leader re-sends shares to the keepers: short, so a keeper
/// restarted in a test holds its share again within a second.
const KEEPER_UPDATE_INTERVAL: &str = "1s";
/// How long a new replica must stay healthy before the leader's autopilot
/// makes it a voter: short, so a replica a test adds votes within seconds
/// (nexus's default is 10s). A variable, never a flag (earlier releases
/// ignore it); one already in the launcher's environment wins.
const AUTOPILOT_STABILIZATION_TIME: (&str, &str) =
    ("SPIKE_NEXUS_AUTOPILOT_STABILIZATION_TIME", "1s");
/// How long a keeper or replica waits for its first SVID from a SPIRE
/// agent: an agent learns of new registration entries on its next sync
/// (every 5 s), and a restarted one first re-attests.
const SPIRE_WORKLOAD_API_TIMEOUT_MS: &str = "60000";

/// The command that starts `process` of `cluster` from the binaries in
/// `bin_dir`, inside its namespace if it has one.
pub fn command(cluster: &ClusterFile, process: &Process, bin_dir: &Path) -> Command {
    let program = match (&process.role, &cluster.spire) {
        (Role::SpireServer | Role::SpireAgent, Some(spire)) => {
            spire.bin_dir.join(process.role.binary())
        }
        _ => bin_dir.join(process.role.binary()),
    };
    let mut command = match (&process.netns, process.uid) {
        // `ip netns exec` enters the namespace and execs the program (via
        // setpriv to drop to the process's uid), so the pid recorded is
        // the program's own.
        (Some(namespace), uid) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", namespace]);
            if let Some(uid) = uid {
                let uid = uid.to_string();
                command.arg("setpriv").args([
                    "--reuid",
                    &uid,
                    "--regid",
                    &uid,
                    "--clear-groups",
                    "--",
                ]);
            }
            command.arg(&program);
            command
        }
        (None, Some(uid)) => {
            let mut command = Command::new(&program);
            command.uid(uid).gid(uid);
            command
        }
        (None, None) => Command::new(&program),
    };
    command
        .envs(cluster.trust_roots())
        .env(
            "SPIKE_SYSTEM_LOG_LEVEL",
            std::env::var("SPIKE_SYSTEM_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned()),
        )
        // Logs go to files: plain text. Set by variable, never by flag, so
        // binaries of earlier releases (which honour NO_COLOR but know no
        // newer flag) start the same way in a rolling upgrade.
        .env("NO_COLOR", "1");
    if let Some(socket) = &process.spiffe_endpoint_socket {
        command.env("SPIFFE_ENDPOINT_SOCKET", socket);
        if cluster.spire.is_some() {
            command.env(
                "SPIKE_WORKLOAD_API_TIMEOUT_MS",
                SPIRE_WORKLOAD_API_TIMEOUT_MS,
            );
        }
    }
    match &process.role {
        Role::WorkloadApi => workload_api(&mut command, cluster),
        Role::SpireServer | Role::SpireAgent => {
            command.args(spire::command_args(cluster, process));
        }
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
    let (variable, default) = AUTOPILOT_STABILIZATION_TIME;
    if std::env::var_os(variable).is_none() {
        command.env(variable, default);
    }
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
