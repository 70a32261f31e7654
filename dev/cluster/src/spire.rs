//! SPIRE as the cluster's identity plane (`up --identity spire`): a SPIRE
//! server (SQLite datastore, disk key manager, join-token node attestation),
//! one agent for this host's clients and, with `--netns`, one agent inside
//! each namespace host, so every keeper and replica fetches its SVID from
//! the agent of its own host, as in production.
//!
//! Workloads are told apart by unix uid (the `unix` workload attestor):
//! the launcher runs keeper N as uid BASE+N and replica N as BASE+100+N,
//! each registered under the agent of its host. The client identities
//! (superuser, recover, restore, bootstrap, lite workload, every
//! `--workload`) are registered twice: under a uid of their own
//! (BASE+200+i, for a client that is given nothing else, such as SPIKE's Go
//! CLI run with `setpriv`), and under the uid of whoever ran `up`, with the
//! identity's name as hint, so the operator's shell, the tests and the
//! harnesses can act as any of them by naming the SPIFFE ID they want
//! (`SPIKE_SPIFFE_ID`, which the env files set). That second registration
//! is a development convenience: a production deployment gives each
//! client role a uid (or binary) of its own and nothing else.
//!
//! The processes never learn they are on SPIRE: they read
//! `SPIFFE_ENDPOINT_SOCKET` as with any Workload API.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use spike_dev_identity::IdentitySpec;

pub use crate::file::Spire;
use crate::file::{ClusterFile, Process, Role};

/// The application workload registered when `up --identity spire` is
/// given none (`--workload`).
pub const EXAMPLE_WORKLOAD: &str = "example-app=/app/example";
/// The first uid of the cluster's processes and client identities.
pub const UID_BASE_DEFAULT: u32 = 61_000;
/// Where that first uid may be: above the system users, and far enough
/// below the largest uid for every keeper, replica and client above it.
pub const UID_BASE_RANGE: std::ops::RangeInclusive<u32> = 1_000..=(i32::MAX as u32);
/// The SPIRE server listens at BASE + this (above keeper 89's port, in
/// the block of 200 ports a cluster takes); with a pilot domain, its
/// server takes the next port and the two bundle endpoints the two after.
pub const SERVER_PORT_OFFSET: u16 = 190;
/// Uids of keeper N and replica N are BASE+N and BASE+REPLICA_UIDS+N.
const REPLICA_UIDS: u32 = 100;
/// Client identities take uids from BASE+CLIENT_UIDS up.
const CLIENT_UIDS: u32 = 200;
/// Longest wait for the server or an agent to serve.
const READY_WAIT: Duration = Duration::from_secs(60);
/// Agents' own SVIDs (they renew them at half life) live at most this long.
const AGENT_TTL_MAX: Duration = Duration::from_secs(3600);

/// A SPIRE operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SpireError {
    /// A SPIRE binary is missing (`dev/spire/build` builds both).
    #[error("cannot run {}: {source} (build SPIRE with dev/spire/build)", program.display())]
    Missing {
        /// The binary.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A `spire-server` command failed.
    #[error("spire-server {args} failed: {complaint}")]
    Command {
        /// Its arguments.
        args: String,
        /// What it said.
        complaint: String,
    },
    /// The server or an agent did not become healthy in time.
    #[error("{name} did not become healthy in {}s; see {}", READY_WAIT.as_secs(), log.display())]
    NotHealthy {
        /// The process.
        name: String,
        /// Its log.
        log: PathBuf,
    },
    /// The server or an agent exited while it was waited for (an agent
    /// whose server is unreachable, a configuration SPIRE refuses).
    #[error("{name} exited: {last_words}\n(see {})", log.display())]
    Exited {
        /// The process.
        name: String,
        /// The last line of its log.
        last_words: String,
        /// Its log.
        log: PathBuf,
    },
    /// A configuration or state file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The server printed something this launcher does not read.
    #[error("unexpected answer from spire-server {args}: {answer}")]
    Unexpected {
        /// Its arguments.
        args: String,
        /// What it printed.
        answer: String,
    },
}

/// What `up --identity spire` asks for.
#[derive(Debug, Clone)]
pub struct SpireShape {
    /// Where `spire-server` and `spire-agent` are.
    pub bin_dir: PathBuf,
    /// The server CA's lifetime.
    pub ca_ttl: Duration,
    /// Every workload SVID's lifetime.
    pub svid_ttl: Duration,
    /// The first uid the cluster hands out.
    pub uid_base: u32,
    /// The clients' own trust domain, federated with the cluster's.
    pub pilot_domain: Option<String>,
}

/// One registration entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The identity's name (`nexus-1`, `superuser`, a workload's).
    pub name: String,
    /// The server it is registered on.
    pub side: Side,
    /// `spiffe://TD/PATH`.
    pub spiffe_id: String,
    /// The agent (alias) it is issued through.
    pub parent_id: String,
    /// The uid the unix attestor must see.
    pub uid: u32,
    /// The other trust domain, whose bundle comes with the SVID
    /// (`spiffe://DOMAIN`; with a pilot domain only).
    pub federates_with: Option<String>,
}

impl Spire {
    /// The settings for a new cluster whose ports start at `base_port`;
    /// with namespaces the server listens on the bridge, where every
    /// namespace reaches it.
    pub fn plan(shape: &SpireShape, base_port: u16, gateway: Option<Ipv4Addr>) -> Option<Self> {
        let port = base_port.checked_add(SERVER_PORT_OFFSET)?;
        let ip = gateway.unwrap_or(Ipv4Addr::LOCALHOST);
        Some(Self {
            bin_dir: shape.bin_dir.clone(),
            server_addr: SocketAddr::new(IpAddr::V4(ip), port),
            ca_ttl_secs: shape.ca_ttl.as_secs().max(1),
            svid_ttl_secs: shape.svid_ttl.as_secs().max(1),
            uid_base: shape.uid_base,
            operator_uid: rustix::process::getuid().as_raw(),
            pilot_domain: shape.pilot_domain.clone(),
            registered: false,
        })
    }

    /// The uid keeper or replica `process` runs as.
    pub fn process_uid(&self, process: &Process) -> Option<u32> {
        match &process.role {
            Role::Keeper(keeper) => Some(self.uid_base + u32::try_from(keeper.id).ok()?),
            Role::Nexus(replica) => {
                Some(self.uid_base + REPLICA_UIDS + u32::try_from(replica.id).ok()?)
            }
            Role::WorkloadApi | Role::SpireServer | Role::SpireAgent => None,
        }
    }
}

/// The name of the agent serving `host` (a keeper or replica in a
/// namespace), or of this host's agent.
pub fn agent_name(host: Option<&str>) -> String {
    match host {
        Some(host) => format!("spire-agent-{host}"),
        None => "spire-agent".to_owned(),
    }
}

/// Which SPIRE trust domain: the cluster's, or (with `--spire-pilot-domain`)
/// the one its clients live in, federated with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The cluster's trust domain: keepers and replicas (and the clients,
    /// without federation).
    Cluster,
    /// The clients' trust domain.
    Pilot,
}

/// The suffix of the pilot domain's server and agent names.
const PILOT_SUFFIX: &str = "-pilot";

impl Side {
    /// The side of SPIRE process `process` (by its name).
    pub fn of(process: &Process) -> Self {
        if process.name.ends_with(PILOT_SUFFIX) {
            Self::Pilot
        } else {
            Self::Cluster
        }
    }

    /// Its server's process name.
    pub fn server_name(self) -> &'static str {
        match self {
            Self::Cluster => "spire-server",
            Self::Pilot => "spire-server-pilot",
        }
    }

    /// The name of the agent for this host's clients.
    pub fn client_agent(self) -> String {
        match self {
            Self::Cluster => agent_name(None),
            Self::Pilot => format!("{}{PILOT_SUFFIX}", agent_name(None)),
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Cluster => Self::Pilot,
            Self::Pilot => Self::Cluster,
        }
    }

    /// Port offsets from the server's own: the server, then its bundle
    /// endpoint (federation).
    fn port_offsets(self) -> (u16, u16) {
        match self {
            Self::Cluster => (0, 2),
            Self::Pilot => (1, 3),
        }
    }
}

impl ClusterFile {
    /// The SPIRE settings; only called for SPIRE clusters.
    fn spire_settings(&self) -> &Spire {
        self.spire
            .as_ref()
            .unwrap_or_else(|| unreachable!("a SPIRE process in a cluster without SPIRE"))
    }

    /// The trust domain of `side`.
    pub fn spire_domain(&self, side: Side) -> &str {
        match (side, &self.spire_settings().pilot_domain) {
            (Side::Pilot, Some(domain)) => domain,
            _ => &self.trust_domain,
        }
    }

    /// The side the client identities live on.
    pub fn client_side(&self) -> Side {
        match self
            .spire
            .as_ref()
            .and_then(|spire| spire.pilot_domain.as_ref())
        {
            Some(_) => Side::Pilot,
            None => Side::Cluster,
        }
    }

    /// The Workload API socket of SPIRE agent `agent` (its process name).
    pub fn agent_socket(&self, agent: &str) -> PathBuf {
        let short = agent.trim_start_matches("spire-");
        self.sockets_dir.join(format!("{short}.sock"))
    }

    /// The cluster side server's admin socket.
    pub fn spire_server_socket(&self) -> PathBuf {
        self.spire_server_socket_of(Side::Cluster)
    }

    /// The admin socket of `side`'s server, in a directory only this user
    /// enters.
    fn spire_server_socket_of(&self, side: Side) -> PathBuf {
        let name = side.server_name().trim_start_matches("spire-");
        self.sockets_dir
            .join("private")
            .join(format!("{name}.sock"))
    }

    /// Where `side`'s server serves agents and its bundle endpoint.
    fn spire_addresses(&self, side: Side) -> (SocketAddr, SocketAddr) {
        let base = self.spire_settings().server_addr;
        let (server, bundle) = side.port_offsets();
        let at = |offset: u16| SocketAddr::new(base.ip(), base.port().saturating_add(offset));
        (at(server), at(bundle))
    }

    fn spire_dir(&self) -> PathBuf {
        self.dir.join("spire")
    }

    /// The agent serving `process`: its namespace's, or this host's.
    pub fn agent_of(&self, process: &Process) -> String {
        match process.netns {
            Some(_) => agent_name(Some(&process.name)),
            None => agent_name(None),
        }
    }

    /// The SPIFFE ID of the agent alias `agent` on `side` (entries name it
    /// as parent).
    fn agent_alias(&self, side: Side, agent: &str) -> String {
        format!("spiffe://{}/node/{agent}", self.spire_domain(side))
    }

    /// Every registration entry of the cluster: one per keeper and replica
    /// (its uid, under its host's agent), and two per client identity
    /// (its own uid, and the operator's), under this host's agent of the
    /// clients' side.
    pub fn spire_entries(&self) -> Vec<Entry> {
        let spire = self.spire_settings();
        let federated = |side: Side| {
            spire
                .pilot_domain
                .as_ref()
                .map(|_| format!("spiffe://{}", self.spire_domain(side.other())))
        };
        let mut entries = Vec::new();
        for process in &self.processes {
            let (Some(uid), Some(path)) = (spire.process_uid(process), process_path(process))
            else {
                continue;
            };
            entries.push(Entry {
                name: process.name.clone(),
                side: Side::Cluster,
                spiffe_id: format!("spiffe://{}{path}", self.trust_domain),
                parent_id: self.agent_alias(Side::Cluster, &self.agent_of(process)),
                uid,
                federates_with: federated(Side::Cluster),
            });
        }
        let side = self.client_side();
        let local = self.agent_alias(side, &side.client_agent());
        for (index, spec) in self.client_identities().into_iter().enumerate() {
            let spiffe_id = format!("spiffe://{}{}", self.spire_domain(side), spec.path);
            let own = spire.uid_base + CLIENT_UIDS + u32::try_from(index).unwrap_or(u32::MAX - 1);
            for uid in [own, spire.operator_uid] {
                entries.push(Entry {
                    name: spec.name.clone(),
                    side,
                    spiffe_id: spiffe_id.clone(),
                    parent_id: local.clone(),
                    uid,
                    federates_with: federated(side),
                });
            }
        }
        entries
    }

    /// SPIKE's client roles (not nexus and keeper, whose processes have
    /// identities of their own) and every `--workload`.
    pub fn client_identities(&self) -> Vec<IdentitySpec> {
        IdentitySpec::roles()
            .into_iter()
            .filter(|spec| spec.name != "nexus" && spec.name != "keeper")
            .chain(
                self.workloads
                    .iter()
                    .filter_map(|text| IdentitySpec::parse(text).ok()),
            )
            .collect()
    }
}

/// `/spike/ROLE/ID` of a keeper or replica.
pub fn process_path(process: &Process) -> Option<String> {
    let id = process.node_id()?;
    Some(format!("/spike/{}/{id}", process.role.name()))
}

/// What runs before `process` (a SPIRE server or agent) starts: its
/// directories and configuration; an agent also gets a fresh join token
/// when the server can issue one (an agent that holds a valid SVID of its
/// own from an earlier run ignores it).
pub fn prepare(cluster: &ClusterFile, process: &Process) -> Result<(), SpireError> {
    let dir = cluster.spire_dir();
    let side = Side::of(process);
    let config = match process.role {
        Role::SpireServer => {
            let data = dir.join(&process.name);
            private_dir(&data)?;
            private_dir(&cluster.sockets_dir.join("private"))?;
            server_config(cluster, side, &data)
        }
        Role::SpireAgent => {
            let data = dir.join(&process.name);
            private_dir(&data)?;
            let bundle = dir.join(format!("{}-bundle.pem", side.server_name()));
            let fresh = server_on(cluster, side, &["bundle", "show", "-format", "pem"]).and_then(
                |answer| {
                    write(&bundle, answer.as_bytes())?;
                    join_token(cluster, side, &process.name)
                },
            );
            match fresh {
                Ok(token) => agent_config(cluster, side, process, &data, &bundle, &token),
                // The server is away: an agent restarted now attests with
                // the SVID it keeps in its data directory, from the
                // configuration it had (its old token is spent, unused).
                Err(SpireError::Command { .. }) if config_path(cluster, process).exists() => {
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        _ => return Ok(()),
    };
    write(&config_path(cluster, process), config.as_bytes())
}

/// What runs once `process` (a SPIRE server or agent) has been spawned:
/// waiting until it serves. Once every server serves, the first time, the
/// federated servers get each other's bundle and every server its
/// registration entries.
pub fn started(
    cluster: &mut ClusterFile,
    process: &Process,
    exited: &mut dyn FnMut() -> bool,
) -> Result<(), SpireError> {
    match process.role {
        Role::SpireServer => {
            let side = Side::of(process);
            wait_healthy(process, exited, || {
                server_on(cluster, side, &["healthcheck"]).is_ok()
            })?;
            if side == cluster.client_side() && !cluster.spire_settings().registered {
                if side == Side::Pilot {
                    federate(cluster)?;
                }
                register(cluster)?;
                if let Some(spire) = cluster.spire.as_mut() {
                    spire.registered = true;
                }
            }
            Ok(())
        }
        Role::SpireAgent => {
            let socket = cluster.agent_socket(&process.name);
            let program = cluster.spire_settings().bin_dir.join("spire-agent");
            wait_healthy(process, exited, || {
                socket.exists()
                    && Command::new(&program)
                        .args(["healthcheck", "-socketPath"])
                        .arg(&socket)
                        .output()
                        .is_ok_and(|output| output.status.success())
            })
        }
        _ => Ok(()),
    }
}

/// Federates the two servers: each gets a federation relationship with
/// the other's bundle endpoint, seeded with the other's current bundle (so
/// it can authenticate that endpoint at once); from then on each fetches
/// the other's updates from the endpoint by itself. Relationships live in
/// the servers' datastores and survive restarts; one that exists is kept.
fn federate(cluster: &ClusterFile) -> Result<(), SpireError> {
    for side in [Side::Cluster, Side::Pilot] {
        let bundle = server_on(cluster, side, &["bundle", "show", "-format", "spiffe"])?;
        let path = cluster
            .spire_dir()
            .join(format!("{}.spiffe-bundle.json", side.server_name()));
        write(&path, bundle.as_bytes())?;
        let domain = cluster.spire_domain(side);
        // Made by an `up` that failed later: it stands, with its bundle.
        let made = ["federation", "show", "-trustDomain", domain];
        if server_on(cluster, side.other(), &made).is_ok() {
            continue;
        }
        let (_, endpoint) = cluster.spire_addresses(side);
        let url = format!("https://{endpoint}");
        let endpoint_id = format!("spiffe://{domain}/spire/server");
        let path = path.display().to_string();
        server_on(
            cluster,
            side.other(),
            &[
                "federation",
                "create",
                "-trustDomain",
                domain,
                "-bundleEndpointURL",
                &url,
                "-bundleEndpointProfile",
                "https_spiffe",
                "-endpointSpiffeID",
                &endpoint_id,
                "-trustDomainBundlePath",
                &path,
                "-trustDomainBundleFormat",
                "spiffe",
            ],
        )?;
    }
    Ok(())
}

/// The command line of a SPIRE server or agent.
pub fn command_args(cluster: &ClusterFile, process: &Process) -> Vec<String> {
    vec![
        "run".to_owned(),
        "-config".to_owned(),
        config_path(cluster, process).display().to_string(),
    ]
}

fn config_path(cluster: &ClusterFile, process: &Process) -> PathBuf {
    cluster.spire_dir().join(format!("{}.conf", process.name))
}

fn wait_healthy(
    process: &Process,
    exited: &mut dyn FnMut() -> bool,
    mut healthy: impl FnMut() -> bool,
) -> Result<(), SpireError> {
    let deadline = Instant::now() + READY_WAIT;
    while !healthy() {
        if exited() {
            return Err(SpireError::Exited {
                name: process.name.clone(),
                last_words: crate::supervise::last_line(&process.log)
                    .unwrap_or_else(|| "(empty log)".to_owned()),
                log: process.log.clone(),
            });
        }
        if Instant::now() > deadline {
            return Err(SpireError::NotHealthy {
                name: process.name.clone(),
                log: process.log.clone(),
            });
        }
        sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Creates every registration entry, each on its side's server; one that
/// exists already (an `up` that failed half way and runs again) is kept.
fn register(cluster: &ClusterFile) -> Result<(), SpireError> {
    let ttl = cluster.spire_settings().svid_ttl_secs.to_string();
    for entry in cluster.spire_entries() {
        let selector = format!("unix:uid:{}", entry.uid);
        let mut args = vec![
            "entry",
            "create",
            "-spiffeID",
            &entry.spiffe_id,
            "-parentID",
            &entry.parent_id,
            "-selector",
            &selector,
            "-x509SVIDTTL",
            &ttl,
            "-hint",
            &entry.name,
        ];
        if let Some(domain) = &entry.federates_with {
            args.extend(["-federatesWith", domain]);
        }
        match server_on(cluster, entry.side, &args) {
            Err(SpireError::Command { complaint, .. })
                if complaint.contains("code: AlreadyExists") => {}
            outcome => drop(outcome?),
        }
    }
    Ok(())
}

/// A one-use join token of `side`'s server whose agent is known as
/// `agent`'s alias.
fn join_token(cluster: &ClusterFile, side: Side, agent: &str) -> Result<String, SpireError> {
    let alias = cluster.agent_alias(side, agent);
    let args = ["token", "generate", "-spiffeID", &alias, "-ttl", "600"];
    let answer = server_on(cluster, side, &args)?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Token:"))
        .map(|token| token.trim().to_owned())
        .ok_or_else(|| SpireError::Unexpected {
            args: args.join(" "),
            answer,
        })
}

/// Runs `spire-server SUBCOMMAND... -socketPath ADMIN FLAGS...` against
/// the cluster's server (the subcommand is the words before the first
/// flag) and returns what it printed.
pub fn server(cluster: &ClusterFile, args: &[&str]) -> Result<String, SpireError> {
    server_on(cluster, Side::Cluster, args)
}

/// Like [`server`], against `side`'s server.
pub fn server_on(cluster: &ClusterFile, side: Side, args: &[&str]) -> Result<String, SpireError> {
    let words = args.iter().take_while(|arg| !arg.starts_with('-')).count();
    let (subcommand, flags) = args.split_at(words);
    let program = cluster.spire_settings().bin_dir.join("spire-server");
    let output = Command::new(&program)
        .args(subcommand)
        .arg("-socketPath")
        .arg(cluster.spire_server_socket_of(side))
        .args(flags)
        .output()
        .map_err(|source| SpireError::Missing {
            program: program.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(SpireError::Command {
            args: args.join(" "),
            complaint: format!("{}{}", String::from_utf8_lossy(&output.stderr), stdout)
                .trim()
                .to_owned(),
        })
    }
}

fn private_dir(path: &Path) -> Result<(), SpireError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|source| SpireError::Write {
            path: path.to_owned(),
            source,
        })
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), SpireError> {
    fs::write(path, bytes).map_err(|source| SpireError::Write {
        path: path.to_owned(),
        source,
    })
}

fn server_config(cluster: &ClusterFile, side: Side, data: &Path) -> String {
    let spire = cluster.spire_settings();
    let agent_ttl = AGENT_TTL_MAX.as_secs().min(spire.ca_ttl_secs);
    let (address, bundle_endpoint) = cluster.spire_addresses(side);
    // With a pilot domain, each server publishes its bundle at an
    // endpoint (SPIFFE's https_spiffe profile: it authenticates with an
    // SVID of its own domain) and asks the other side to fetch it every
    // 10 s, so a CA rotation on one side reaches the other within a test;
    // the relationships themselves are made through the API ([`federate`]).
    let federation = match spire.pilot_domain {
        None => String::new(),
        Some(_) => format!(
            r#"
    federation {{
        bundle_endpoint {{
            address = "{ip}"
            port = {port}
            refresh_hint = "10s"
            profile "https_spiffe" {{}}
        }}
    }}"#,
            ip = bundle_endpoint.ip(),
            port = bundle_endpoint.port(),
        ),
    };
    format!(
        r#"server {{
    bind_address = "{ip}"
    bind_port = "{port}"
    socket_path = "{socket}"
    trust_domain = "{domain}"
    data_dir = "{data}"
    log_level = "INFO"
    ca_ttl = "{ca_ttl}s"
    default_x509_svid_ttl = "{svid_ttl}s"
    agent_ttl = "{agent_ttl}s"{federation}
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{data}/datastore.sqlite3"
        }}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{data}/keys.json"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
        ip = address.ip(),
        port = address.port(),
        socket = cluster.spire_server_socket_of(side).display(),
        domain = cluster.spire_domain(side),
        data = data.display(),
        ca_ttl = spire.ca_ttl_secs,
        svid_ttl = spire.svid_ttl_secs,
    )
}

fn agent_config(
    cluster: &ClusterFile,
    side: Side,
    process: &Process,
    data: &Path,
    bundle: &Path,
    token: &str,
) -> String {
    let (address, _) = cluster.spire_addresses(side);
    format!(
        r#"agent {{
    data_dir = "{data}"
    log_level = "INFO"
    server_address = "{ip}"
    server_port = "{port}"
    socket_path = "{socket}"
    trust_bundle_path = "{bundle}"
    trust_domain = "{domain}"
    join_token = "{token}"
}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{data}"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
        data = data.display(),
        ip = address.ip(),
        port = address.port(),
        socket = cluster.agent_socket(&process.name).display(),
        bundle = bundle.display(),
        domain = cluster.spire_domain(side),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns;
    use crate::plan::{Shape, plan};

    fn spire_cluster(pilot_domain: Option<&str>, netns: bool) -> ClusterFile {
        plan(
            Path::new("/c"),
            Shape {
                replicas: 2,
                keepers: 2,
                threshold: 2,
                base_port: 30_000,
                workloads: vec!["billing=/app/billing".to_owned()],
                netns: netns.then(|| netns::Layout::new("t", "10.1.2").expect("layout")),
                spire: Some(SpireShape {
                    bin_dir: PathBuf::from("/spire"),
                    ca_ttl: Duration::from_secs(3600),
                    svid_ttl: Duration::from_secs(60),
                    uid_base: 50_000,
                    pilot_domain: pilot_domain.map(str::to_owned),
                }),
                ..Shape::default()
            },
        )
        .expect("plan")
    }

    #[test]
    fn each_keeper_and_replica_has_a_uid_and_an_entry_under_its_hosts_agent() {
        let cluster = spire_cluster(None, true);
        let names: Vec<&str> = cluster.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "spire-server",
                "spire-agent",
                "spire-agent-keeper-1",
                "spire-agent-keeper-2",
                "spire-agent-nexus-1",
                "spire-agent-nexus-2",
                "keeper-1",
                "keeper-2",
                "nexus-1",
                "nexus-2"
            ]
        );
        // Namespaced agents share their host's namespace and take no
        // host address of their own.
        let hosts = cluster.hosts().expect("hosts");
        assert_eq!(hosts.len(), 4);
        assert_eq!(
            cluster.process("spire-agent-nexus-2").expect("agent").netns,
            cluster.process("nexus-2").expect("replica").netns
        );
        let nexus = cluster.process("nexus-2").expect("replica");
        assert_eq!(nexus.uid, Some(50_102));
        assert_eq!(
            nexus.spiffe_endpoint_socket.as_deref(),
            Some("unix:///c/identities/sockets/agent-nexus-2.sock")
        );
        let entries = cluster.spire_entries();
        let of = |name: &str| -> Vec<&Entry> {
            entries.iter().filter(|entry| entry.name == name).collect()
        };
        let keeper = of("keeper-1");
        assert_eq!(keeper.len(), 1);
        assert_eq!(keeper[0].uid, 50_001);
        assert_eq!(keeper[0].spiffe_id, "spiffe://spike.ist/spike/keeper/1");
        assert_eq!(
            keeper[0].parent_id,
            "spiffe://spike.ist/node/spire-agent-keeper-1"
        );
        // A client identity: its own uid and the operator's, under this
        // host's agent; the server listens on the bridge.
        let billing = of("billing");
        let uids: Vec<u32> = billing.iter().map(|entry| entry.uid).collect();
        assert_eq!(uids, [50_205, rustix::process::getuid().as_raw()]);
        assert!(billing.iter().all(|entry| {
            entry.parent_id == "spiffe://spike.ist/node/spire-agent"
                && entry.spiffe_id == "spiffe://spike.ist/app/billing"
                && entry.federates_with.is_none()
        }));
        let spire = cluster.spire.as_ref().expect("spire");
        assert_eq!(spire.server_addr.to_string(), "10.1.2.1:30190");
        // Every identity the test and the env files ask for is offered.
        let source = cluster.svid_source("recover").expect("recover");
        assert!(matches!(
            source,
            spike_sdk::svid::SvidSource::WorkloadApi { spiffe_id: Some(id), .. }
                if id.to_string() == "spiffe://spike.ist/spike/pilot/role/recover"
        ));
    }

    #[test]
    fn a_pilot_domain_takes_the_client_identities_and_federates_both_ways() {
        let cluster = spire_cluster(Some("pilot.example"), false);
        let names: Vec<&str> = cluster.processes[..4]
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "spire-server",
                "spire-server-pilot",
                "spire-agent",
                "spire-agent-pilot"
            ]
        );
        let entries = cluster.spire_entries();
        let superuser: Vec<&Entry> = entries
            .iter()
            .filter(|entry| entry.name == "superuser")
            .collect();
        assert_eq!(superuser.len(), 2);
        assert!(superuser.iter().all(|entry| {
            entry.side == Side::Pilot
                && entry.spiffe_id == "spiffe://pilot.example/spike/pilot/role/superuser"
                && entry.parent_id == "spiffe://pilot.example/node/spire-agent-pilot"
                && entry.federates_with.as_deref() == Some("spiffe://spike.ist")
        }));
        let replica = entries
            .iter()
            .find(|entry| entry.name == "nexus-1")
            .expect("nexus-1");
        assert_eq!(replica.side, Side::Cluster);
        assert_eq!(
            replica.federates_with.as_deref(),
            Some("spiffe://pilot.example")
        );
        // The replicas accept the client roles from the pilot domain only.
        let roots = cluster.trust_roots();
        let root = |name: &str| {
            roots
                .iter()
                .find(|(variable, _)| variable == name)
                .map(|(_, domain)| domain.as_str())
        };
        assert_eq!(root("SPIKE_TRUST_ROOT_PILOT"), Some("pilot.example"));
        assert_eq!(
            root("SPIKE_TRUST_ROOT_LITE_WORKLOAD"),
            Some("pilot.example")
        );
        assert_eq!(root("SPIKE_TRUST_ROOT_NEXUS"), Some("spike.ist"));
        assert_eq!(roots.len(), 6, "{roots:?}");
        // Server, pilot server, and their bundle endpoints: four ports.
        assert_eq!(
            cluster.spire_addresses(Side::Pilot),
            (
                "127.0.0.1:30191".parse().expect("address"),
                "127.0.0.1:30193".parse().expect("address")
            )
        );
        let config = server_config(&cluster, Side::Cluster, Path::new("/d"));
        assert!(config.contains("port = 30192"), "{config}");
        assert!(config.contains(r#"profile "https_spiffe""#), "{config}");
    }
}
