//! Nexus configuration: SPIKE's environment variables and clap flags,
//! validated as a whole before any port is bound (exit code 64 otherwise).

use spike_sdk::domain::{NodeId, SecretPath};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use crate::audit::{AuditDurability, AuditForward};
use std::time::Duration;

use clap::Parser;
use spike_sdk::cli::{LogArgs, SvidArgs};
use spike_sdk::crypto::ShamirParams;
use spike_sdk::crypto::keyring::ENCRYPTIONS_ROTATE_AT;
use spike_sdk::hardening::MemoryLock;

use crate::raft::NexusNode;
use crate::state::command::RotationSettings;
use crate::state::secret::{MAX_VERSIONS_DEFAULT, MAX_VERSIONS_LIMIT};

/// `nexus --version`: the release and the on-disk formats it reads (a
/// test holds it to `raft::format`).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (on-disk formats 1 to 3; keeper protocol 1)"
);

/// The `nexus` command line.
#[derive(Debug, Parser)]
#[command(
    version,
    long_version = LONG_VERSION,
    about = "SPIKE Nexus: a replica of the secret store",
    after_help = spike_sdk::cli::ENVIRONMENT_HELP
)]
pub struct Args {
    // A doc comment here would become clap help text.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub svid: SvidArgs,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub log: LogArgs,
    /// This replica's id (from 1, never reused).
    #[arg(long, env = "SPIKE_NEXUS_NODE_ID", default_value_t = 1)]
    pub node_id: u64,
    /// The founding replicas, ID=CLUSTER_ADDR/API_ADDR, comma separated
    /// (e.g. 1=10.0.0.1:8554/10.0.0.1:8553,2=...).
    #[arg(long, env = "SPIKE_NEXUS_PEERS", default_value = "")]
    pub peers: String,
    /// Start empty and wait to be added with `spike cluster add` instead of
    /// founding a cluster from --peers.
    #[arg(long, env = "SPIKE_NEXUS_JOIN")]
    pub join: bool,
    /// Cluster port address (default: this replica's --peers entry).
    #[arg(long, env = "SPIKE_NEXUS_CLUSTER_ADDR")]
    pub cluster_addr: Option<SocketAddr>,
    /// API address (default: this replica's --peers entry, else the
    /// cluster host and SPIKE_NEXUS_TLS_PORT).
    #[arg(long, env = "SPIKE_NEXUS_API_ADDR")]
    pub api_addr: Option<SocketAddr>,
    /// API port of a joining replica when --api-addr is not given (SPIKE's
    /// variable).
    #[arg(long, env = "SPIKE_NEXUS_TLS_PORT", default_value_t = 8553)]
    pub port: u16,
    /// Plain-HTTP health and metrics address (/livez, /readyz, /metrics);
    /// off unless set.
    #[arg(long, env = "SPIKE_NEXUS_HEALTH_ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Where the log, state and snapshots live.
    #[arg(long, env = "SPIKE_NEXUS_DATA_DIR", default_value = "nexus-data")]
    pub data_dir: PathBuf,
    /// The audit log (one hash-chained JSON line per request); default
    /// DATA_DIR/audit.log.
    #[arg(long, env = "SPIKE_NEXUS_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Also send every audit line, once it is in the file, to `syslog`
    /// (/dev/log, facility authpriv) or `unix:PATH` (a unix datagram
    /// socket, one line per datagram). Best effort: lines the destination
    /// does not take at once are counted and dropped; requests never wait
    /// for it. Off unless set.
    #[arg(long, env = "SPIKE_NEXUS_AUDIT_FORWARD")]
    pub audit_forward: Option<String>,
    /// What an answer waits for: `fsync` (its audit record is on disk)
    /// or `write` (its record is written to the file, which is fsynced at
    /// least once a second: a power loss, not a crash of the replica, can
    /// take the last second of records; one fsync less per request).
    #[arg(
        long,
        env = "SPIKE_NEXUS_AUDIT_DURABILITY",
        value_enum,
        default_value_t = AuditDurability::Fsync
    )]
    pub audit_durability: AuditDurability,
    /// Storage backend.
    #[arg(
        long,
        env = "SPIKE_NEXUS_BACKEND_STORE",
        value_enum,
        default_value_t = BackendStore::Persistent
    )]
    pub backend_store: BackendStore,
    /// Keeper addresses, comma separated; keeper i holds share i.
    #[arg(long, env = "SPIKE_NEXUS_KEEPER_PEERS", default_value = "")]
    pub keepers: String,
    /// Shamir n: shares made (one per keeper).
    #[arg(long, env = "SPIKE_NEXUS_SHAMIR_SHARES", default_value_t = 3)]
    pub shares: u8,
    /// Shamir t: shares needed to rebuild the root key.
    #[arg(long, env = "SPIKE_NEXUS_SHAMIR_THRESHOLD", default_value_t = 2)]
    pub threshold: u8,
    /// How often the leader re-sends shares to keepers (e.g. 500ms, 5s, 1m).
    #[arg(
        long,
        env = "SPIKE_NEXUS_KEEPER_UPDATE_INTERVAL",
        default_value = "5s",
        value_parser = spike_sdk::duration::parse
    )]
    pub keeper_update_interval: Duration,
    /// Raft heartbeat interval (10ms to 10s). Each heartbeat and
    /// read-index round must come back within it, so it must exceed the
    /// round trip between replicas: the default suits one data centre;
    /// raise it for replicas further apart (with --election-timeout).
    #[arg(
        long,
        env = "SPIKE_NEXUS_HEARTBEAT_INTERVAL",
        default_value = "50ms",
        value_parser = spike_sdk::duration::parse
    )]
    pub heartbeat_interval: Duration,
    /// Shortest wait for a leader before a follower stands for election;
    /// each waits a random time up to twice this. At least 3 heartbeat
    /// intervals; failover takes about two of it.
    #[arg(
        long,
        env = "SPIKE_NEXUS_ELECTION_TIMEOUT",
        default_value = "150ms",
        value_parser = spike_sdk::duration::parse
    )]
    pub election_timeout: Duration,
    /// Oldest state a stale read (`X-Spike-Consistency: stale`) of
    /// secrets, policies or the cipher is answered from: a replica that
    /// has not been told by a leader, within this long, of a commit it
    /// has applied refuses such reads (503). Writes and other reads never
    /// use stale state. At least 2 heartbeat intervals, at most 60s.
    #[arg(
        long,
        env = "SPIKE_NEXUS_STALE_READ_MAX",
        default_value = "2s",
        value_parser = spike_sdk::duration::parse
    )]
    pub stale_read_max: Duration,
    /// How long a new replica (added as a learner) must stay healthy,
    /// without a break, before the leader's autopilot makes it a voter.
    #[arg(
        long,
        env = "SPIKE_NEXUS_AUTOPILOT_STABILIZATION_TIME",
        default_value = "10s",
        value_parser = spike_sdk::duration::parse
    )]
    pub autopilot_stabilization_time: Duration,
    /// Remove a voter that has been unhealthy this long (and retire its
    /// id), as `spike cluster remove` does; 0 (the default) never removes.
    /// Never below --autopilot-min-quorum voters, never the leader, never
    /// one that would cost the cluster its quorum.
    #[arg(
        long,
        env = "SPIKE_NEXUS_AUTOPILOT_CLEANUP_DEAD_AFTER",
        default_value = "0s",
        value_parser = spike_sdk::duration::parse
    )]
    pub autopilot_cleanup_dead_after: Duration,
    /// Fewest voters dead-replica cleanup leaves (at least 3).
    #[arg(long, env = "SPIKE_NEXUS_AUTOPILOT_MIN_QUORUM", default_value_t = 3)]
    pub autopilot_min_quorum: usize,
    /// Storage quota of the replicated state (like etcd's backend quota):
    /// a write that adds data (secret, custom-metadata and policy puts)
    /// and would take the store past it is refused with 507
    /// `storage_quota_exceeded` until deletes or destroys free space;
    /// reads, deletes, destroys, undeletes and key operations go on, and a
    /// backup larger than the quota is refused before a restore starts.
    /// Counts the bytes state.redb holds in use (its free pages are
    /// reused, so they do not count). Bytes with an optional unit (2GiB,
    /// 512MiB, 100MB); 0 turns the quota off.
    #[arg(
        long,
        env = "SPIKE_NEXUS_STORAGE_QUOTA",
        default_value = "2GiB",
        value_parser = spike_sdk::size::parse
    )]
    pub storage_quota: u64,
    /// Compact state.redb and log.redb before starting (redb files never
    /// shrink by themselves: deleted data leaves free pages that are
    /// reused). Needs the files to itself, so it runs before Raft opens
    /// them; restart one replica at a time with it to give space back.
    #[arg(long, env = "SPIKE_NEXUS_COMPACT_ON_START")]
    pub compact_on_start: bool,
    /// Encryptions under one data key (secrets, policies and cipher
    /// calls, counted cluster-wide) after which the leader rotates it;
    /// 1 to 2^30 (the default), far below AES-GCM's random-nonce limit.
    /// A default until an operator sets the replicated rotation settings.
    #[arg(
        long,
        env = "SPIKE_NEXUS_DATA_KEY_ROTATE_AFTER",
        default_value_t = ENCRYPTIONS_ROTATE_AT
    )]
    pub data_key_rotate_after: u64,
    /// Age after which the leader replaces the active data key ("0": never
    /// by age; otherwise 1s to 100 years). Like the two settings below, a
    /// default: once an operator sets the rotation settings
    /// (`spike operator rotation set`), the replicated settings apply on
    /// every leader and these flags no longer do.
    #[arg(
        long,
        env = "SPIKE_NEXUS_DATA_KEY_MAX_AGE",
        default_value = "720h",
        value_parser = spike_sdk::duration::parse
    )]
    pub data_key_max_age: Duration,
    /// Age after which the leader replaces the root key (a rekey with the
    /// same n and t, shares pushed to the keepers first); "0" (the
    /// default): never by age.
    #[arg(
        long,
        env = "SPIKE_NEXUS_ROOT_KEY_MAX_AGE",
        default_value = "0",
        value_parser = spike_sdk::duration::parse
    )]
    pub root_key_max_age: Duration,
    /// Secret versions per second the leader re-seals from older data keys
    /// under the newest one (0, the default: none; at most 10000).
    #[arg(long, env = "SPIKE_NEXUS_REENCRYPT_PER_SECOND", default_value_t = 0)]
    pub reencrypt_per_second: u32,
    /// Versions kept per secret.
    #[arg(long, env = "SPIKE_NEXUS_MAX_SECRET_VERSIONS", default_value_t = MAX_VERSIONS_DEFAULT)]
    pub max_secret_versions: u32,
    /// Build a snapshot after this many new log entries (etcd's default
    /// too: a snapshot copies the whole store, so frequent ones cost more
    /// than the log they let go of).
    #[arg(long, env = "SPIKE_NEXUS_SNAPSHOT_EVERY", default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "SPIKE_NEXUS_LOGS_KEPT", default_value_t = 5_000)]
    pub logs_kept: u64,
    /// How often the leader writes an encrypted backup into --backup-dir
    /// (once per interval, whoever leads; 1s to 8784h, 366 days); 0 (the default):
    /// no scheduled backups.
    #[arg(
        long,
        env = "SPIKE_NEXUS_BACKUP_INTERVAL",
        default_value = "0s",
        value_parser = spike_sdk::duration::parse
    )]
    pub backup_interval: Duration,
    /// Where this replica writes scheduled backups when it leads (created
    /// with mode 0700); default DATA_DIR/backups. Put it on another disk
    /// than the data directory, or copy the files off the host.
    #[arg(long, env = "SPIKE_NEXUS_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Scheduled backups kept in --backup-dir (the newest; 1 to 100000).
    #[arg(long, env = "SPIKE_NEXUS_BACKUP_RETAIN", default_value_t = 24)]
    pub backup_retain: u32,
    /// How often the replicas hash their state at one log index and
    /// compare (etcd's corruption check): a replica whose digest differs
    /// from a majority's stops serving data. 0 turns the check off;
    /// otherwise at least 1s.
    #[arg(
        long,
        env = "SPIKE_NEXUS_CORRUPTION_CHECK_INTERVAL",
        default_value = "5m",
        value_parser = spike_sdk::duration::parse
    )]
    pub corruption_check_interval: Duration,
    /// UNSAFE, for tests of the corruption check only: NODE_ID:PATH makes
    /// the replica NODE_ID store a different ciphertext than the log says
    /// whenever it applies a write of secret PATH (other replicas ignore
    /// it). Never set it on a cluster that holds real secrets.
    #[arg(long, env = "SPIKE_NEXUS_UNSAFE_TEST_DIVERGE", hide = true)]
    pub unsafe_test_diverge: Option<String>,
    /// Dial every outgoing connection (peers, keepers, forwarded
    /// requests) through this HTTP CONNECT proxy, HOST:PORT (an egress
    /// proxy; the fault-injection harness's per-link proxies). mTLS runs
    /// end to end through it: the proxy sees only ciphertext.
    #[arg(long, env = "SPIKE_NEXUS_CONNECT_PROXY")]
    pub connect_proxy: Option<SocketAddr>,
    /// Longest life of a connection to the API or cluster port before the
    /// client must connect, and be verified, again (at least 1s).
    #[arg(
        long,
        env = "SPIKE_NEXUS_MAX_CONNECTION_AGE",
        default_value = "15m",
        value_parser = spike_sdk::duration::parse
    )]
    pub max_connection_age: Duration,
    /// Lock memory so keys are never swapped out: auto (where no
    /// RLIMIT_MEMLOCK applies: CAP_IPC_LOCK or an unlimited limit; a
    /// warning otherwise), required (or refuse to start), off.
    #[arg(
        long,
        env = "SPIKE_LOCK_MEMORY",
        default_value = "auto",
        num_args = 0..=1,
        default_missing_value = "required"
    )]
    pub lock_memory: MemoryLock,
    /// DEVELOPMENT ONLY: accept Shamir threshold 1 (at start and in a
    /// rekey), where every keeper holds the root key itself.
    #[arg(long, env = "SPIKE_NEXUS_ALLOW_INSECURE_THRESHOLD")]
    pub allow_insecure_threshold: bool,
    /// UNSAFE, for fault-injection tests only (built with the
    /// `fault-injection` feature): serve linearizable reads from local
    /// state without a read index, so a partitioned old leader answers
    /// stale data. The Jepsen harness uses it to prove its checker catches
    /// stale reads.
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "SPIKE_NEXUS_UNSAFE_LOCAL_READS", hide = true)]
    pub unsafe_local_reads: bool,
    /// For fault-injection tests only (built with the `fault-injection`
    /// feature): offset the clock by the milliseconds in
    /// DATA_DIR/clock-offset-ms (the clock-jump nemesis writes it).
    #[cfg(feature = "fault-injection")]
    #[arg(long, env = "SPIKE_NEXUS_TEST_CLOCK_OFFSET", hide = true)]
    pub test_clock_offset: bool,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub edge: crate::edge::EdgeArgs,
}

#[cfg(feature = "fault-injection")]
impl Args {
    /// Whether linearizable reads skip the read index.
    pub fn unsafe_local_reads(&self) -> bool {
        self.unsafe_local_reads
    }

    /// Whether the clock follows `DATA_DIR/clock-offset-ms`.
    pub fn test_clock_offset(&self) -> bool {
        self.test_clock_offset
    }
}

#[cfg(not(feature = "fault-injection"))]
impl Args {
    /// Never: a build without the `fault-injection` feature has no such switch.
    pub fn unsafe_local_reads(&self) -> bool {
        false
    }

    /// Never: a build without the `fault-injection` feature has no such switch.
    pub fn test_clock_offset(&self) -> bool {
        false
    }
}

/// A configuration that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Node ids start at 1.
    #[error("--node-id must be at least 1")]
    NodeIdZero,
    /// A peer entry is malformed.
    #[error(
        "--peers entry {0:?} is not ID=CLUSTER_ADDR/API_ADDR (e.g. 2=10.0.0.2:8554/10.0.0.2:8553)"
    )]
    MalformedPeer(String),
    /// A node id appears twice.
    #[error("--peers names node {0} twice")]
    DuplicatePeerId(u64),
    /// An address appears twice.
    #[error("--peers uses address {0} twice")]
    DuplicatePeerAddress(SocketAddr),
    /// This node is not among the peers.
    #[error("--node-id {node_id} is not in --peers (known ids: {known})")]
    NodeNotInPeers {
        /// This node's id.
        node_id: u64,
        /// The ids given.
        known: String,
    },
    /// Join mode needs its own address.
    #[error("--join needs --cluster-addr")]
    JoinWithoutAddresses,
    /// A keeper address is malformed.
    #[error("SPIKE_NEXUS_KEEPER_PEERS entry {0:?} is not HOST:PORT or https://HOST:PORT")]
    MalformedKeeper(String),
    /// A keeper is listed twice.
    #[error("SPIKE_NEXUS_KEEPER_PEERS lists {0} twice")]
    DuplicateKeeper(SocketAddr),
    /// n and t are out of range.
    #[error("SPIKE_NEXUS_SHAMIR_SHARES / SPIKE_NEXUS_SHAMIR_THRESHOLD: {0}")]
    Shamir(String),
    /// t = 1 without the development switch.
    #[error(
        "SPIKE_NEXUS_SHAMIR_THRESHOLD is 1: every keeper would hold the root key itself; \
         set SPIKE_NEXUS_ALLOW_INSECURE_THRESHOLD=true (--allow-insecure-threshold) for development only"
    )]
    InsecureThreshold,
    /// One share per keeper.
    #[error(
        "SPIKE_NEXUS_SHAMIR_SHARES is {shares} but SPIKE_NEXUS_KEEPER_PEERS lists {keepers} keepers"
    )]
    KeeperCountMismatch {
        /// n.
        shares: u8,
        /// Keepers listed.
        keepers: usize,
    },
    /// A period that must pass between two events is zero.
    #[error("{0} must be more than 0")]
    ZeroDuration(&'static str),
    /// Out-of-range number.
    #[error("{0}")]
    OutOfRange(String),
    /// The audit forward destination is neither form.
    #[error("SPIKE_NEXUS_AUDIT_FORWARD (--audit-forward) {0:?} is not syslog or unix:PATH")]
    AuditForward(String),
}

/// Where the state lives. SPIKE's other backends (`sqlite`, `memory`)
/// have no counterpart here: a replica's state is its Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendStore {
    /// redb files in the data directory.
    Persistent,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct NexusConfig {
    /// This replica's id.
    pub node_id: NodeId,
    /// This replica's addresses.
    pub own: NexusNode,
    /// Founding members (empty in join mode).
    pub founders: BTreeMap<NodeId, NexusNode>,
    /// Keeper addresses in share order.
    pub keepers: Vec<SocketAddr>,
    /// n and t for a new root key.
    pub shamir: ShamirParams,
    /// Whether t = 1 is accepted (development only).
    pub allow_insecure_threshold: bool,
    /// Share push period.
    pub keeper_update_interval: Duration,
    /// Raft heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Shortest election timeout (the longest is twice it).
    pub election_timeout: Duration,
    /// Versions kept per secret.
    pub max_versions: u32,
    /// Oldest state a stale read is answered from.
    pub stale_read_max: Duration,
    /// Storage quota in bytes (0: none).
    pub storage_quota: u64,
    /// Compact the databases before starting.
    pub compact_on_start: bool,
    /// Encryptions under one data key before the leader rotates it.
    pub data_key_rotate_after: u64,
    /// The rotation settings until an operator sets replicated ones.
    pub rotation_defaults: RotationSettings,
    /// Health listener.
    pub health_addr: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Audit log file.
    pub audit_log: PathBuf,
    /// Where audit lines go as well, if anywhere.
    pub audit_forward: Option<AuditForward>,
    /// What an answer waits for of its audit record.
    pub audit_durability: AuditDurability,
    /// Snapshot after this many entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot.
    pub logs_kept: u64,
    /// Scheduled backups, when on.
    pub backup: Option<crate::backup::BackupSettings>,
    /// Linearizable reads skip the read index (tests of the checker only).
    pub unsafe_local_reads: bool,
    /// Period of the corruption check (zero: off).
    pub corruption_check_interval: Duration,
    /// TEST ONLY: the secret whose writes this replica stores altered.
    pub test_diverge: Option<SecretPath>,
    /// Longest life of an inbound connection.
    pub max_connection_age: Duration,
    /// Connection and request limits of the API and cluster ports.
    pub edge: crate::edge::EdgeLimits,
    /// The leader's autopilot: promotion and dead-replica cleanup.
    pub autopilot: crate::autopilot::AutopilotConfig,
}

impl NexusConfig {
    /// Validates `args`.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let node_id = NodeId::new(args.node_id).map_err(|_| ConfigError::NodeIdZero)?;
        let founders = if args.join {
            BTreeMap::new()
        } else {
            parse_peers(&args.peers)?
        };
        let own_entry = founders.get(&node_id).cloned();
        if !args.join && own_entry.is_none() {
            let known: Vec<String> = founders.keys().map(NodeId::to_string).collect();
            return Err(ConfigError::NodeNotInPeers {
                node_id: args.node_id,
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            });
        }
        let own = match (&own_entry, args.cluster_addr) {
            (Some(entry), cluster) => NexusNode {
                cluster_addr: cluster.unwrap_or(entry.cluster_addr),
                api_addr: args.api_addr.unwrap_or(entry.api_addr),
            },
            // Joining: the API listens on the cluster host at SPIKE_NEXUS_TLS_PORT
            // unless told otherwise.
            (None, Some(cluster)) => NexusNode {
                cluster_addr: cluster,
                api_addr: args
                    .api_addr
                    .unwrap_or_else(|| SocketAddr::new(cluster.ip(), args.port)),
            },
            (None, None) => return Err(ConfigError::JoinWithoutAddresses),
        };
        let (keepers, shamir) = parse_keepers(&args.keepers, args.shares, args.threshold)?;
        if shamir.every_share_is_the_key() && !args.allow_insecure_threshold {
            return Err(ConfigError::InsecureThreshold);
        }
        if args.max_secret_versions == 0 || args.max_secret_versions > MAX_VERSIONS_LIMIT {
            return Err(ConfigError::OutOfRange(format!(
                "SPIKE_NEXUS_MAX_SECRET_VERSIONS must be 1 to {MAX_VERSIONS_LIMIT}"
            )));
        }
        let (heartbeat_interval, election_timeout) =
            (args.heartbeat_interval, args.election_timeout);
        if args.keeper_update_interval.is_zero() {
            return Err(ConfigError::ZeroDuration(
                "SPIKE_NEXUS_KEEPER_UPDATE_INTERVAL (--keeper-update-interval)",
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&heartbeat_interval) {
            return Err(ConfigError::OutOfRange(
                "SPIKE_NEXUS_HEARTBEAT_INTERVAL must be 10ms to 10s".to_owned(),
            ));
        }
        if election_timeout < heartbeat_interval * 3 || election_timeout > Duration::from_secs(60) {
            return Err(ConfigError::OutOfRange(format!(
                "SPIKE_NEXUS_ELECTION_TIMEOUT must be 3 heartbeat intervals ({:?}) to 60s",
                heartbeat_interval * 3
            )));
        }
        if args.max_connection_age < Duration::from_secs(1) {
            return Err(ConfigError::OutOfRange(
                "SPIKE_NEXUS_MAX_CONNECTION_AGE must be at least 1s".to_owned(),
            ));
        }
        if args.stale_read_max < heartbeat_interval * 2
            || args.stale_read_max > Duration::from_secs(60)
        {
            return Err(ConfigError::OutOfRange(format!(
                "SPIKE_NEXUS_STALE_READ_MAX must be 2 heartbeat intervals ({:?}) to 60s",
                heartbeat_interval * 2
            )));
        }
        if !(1..=ENCRYPTIONS_ROTATE_AT).contains(&args.data_key_rotate_after) {
            return Err(ConfigError::OutOfRange(format!(
                "SPIKE_NEXUS_DATA_KEY_ROTATE_AFTER must be 1 to {ENCRYPTIONS_ROTATE_AT}"
            )));
        }
        let rotation_defaults = RotationSettings {
            data_key_rotate_after_ops: args.data_key_rotate_after,
            data_key_max_age_ns: duration_ns(args.data_key_max_age),
            root_key_max_age_ns: duration_ns(args.root_key_max_age),
            reencrypt_per_second: args.reencrypt_per_second,
        };
        rotation_defaults.check().map_err(|reason| {
            ConfigError::OutOfRange(format!(
                "SPIKE_NEXUS_DATA_KEY_MAX_AGE, SPIKE_NEXUS_ROOT_KEY_MAX_AGE or \
                 SPIKE_NEXUS_REENCRYPT_PER_SECOND: {reason}"
            ))
        })?;
        if args.autopilot_min_quorum < 3 {
            return Err(ConfigError::OutOfRange(
                "SPIKE_NEXUS_AUTOPILOT_MIN_QUORUM must be at least 3".to_owned(),
            ));
        }
        if args.snapshot_every == 0 {
            return Err(ConfigError::OutOfRange(
                "SPIKE_NEXUS_SNAPSHOT_EVERY must be at least 1".to_owned(),
            ));
        }
        let backup = backup_settings(args)?;
        if !args.corruption_check_interval.is_zero()
            && args.corruption_check_interval < Duration::from_secs(1)
        {
            return Err(ConfigError::OutOfRange(
                "SPIKE_NEXUS_CORRUPTION_CHECK_INTERVAL must be 0 (off) or at least 1s".to_owned(),
            ));
        }
        let test_diverge = match args.unsafe_test_diverge.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let (node, path) = text
                    .split_once(':')
                    .and_then(|(node, path)| Some((node.parse::<u64>().ok()?, path)))
                    .and_then(|(node, path)| Some((node, path.parse::<SecretPath>().ok()?)))
                    .ok_or_else(|| {
                        ConfigError::OutOfRange(format!(
                            "SPIKE_NEXUS_UNSAFE_TEST_DIVERGE {text:?} is not NODE_ID:SECRET_PATH"
                        ))
                    })?;
                (node == node_id.get()).then_some(path)
            }
        };
        let audit_forward = match args.audit_forward.as_deref() {
            None | Some("") => None,
            Some(text) => Some(
                AuditForward::parse(text)
                    .ok_or_else(|| ConfigError::AuditForward(text.to_owned()))?,
            ),
        };
        Ok(Self {
            node_id,
            own,
            founders,
            keepers,
            shamir,
            allow_insecure_threshold: args.allow_insecure_threshold,
            keeper_update_interval: args.keeper_update_interval,
            heartbeat_interval,
            election_timeout,
            max_versions: args.max_secret_versions,
            stale_read_max: args.stale_read_max,
            storage_quota: args.storage_quota,
            compact_on_start: args.compact_on_start,
            data_key_rotate_after: args.data_key_rotate_after,
            rotation_defaults,
            health_addr: args.health_addr,
            data_dir: args.data_dir.clone(),
            audit_log: args
                .audit_log
                .clone()
                .unwrap_or_else(|| args.data_dir.join("audit.log")),
            audit_forward,
            audit_durability: args.audit_durability,
            snapshot_every: args.snapshot_every,
            logs_kept: args.logs_kept,
            backup,
            unsafe_local_reads: args.unsafe_local_reads(),
            corruption_check_interval: args.corruption_check_interval,
            test_diverge,
            max_connection_age: args.max_connection_age,
            edge: args.edge.limits().map_err(ConfigError::OutOfRange)?,
            autopilot: crate::autopilot::AutopilotConfig {
                stabilization_time: args.autopilot_stabilization_time,
                cleanup_dead_after: Some(args.autopilot_cleanup_dead_after)
                    .filter(|after| !after.is_zero()),
                min_quorum: args.autopilot_min_quorum,
            },
        })
    }

    /// The API listen address.
    pub fn api_listen(&self) -> SocketAddr {
        self.own.api_addr
    }

    /// The cluster listen address.
    pub fn cluster_listen(&self) -> SocketAddr {
        self.own.cluster_addr
    }
}

/// Shortest backup interval: a backup copies the whole store.
const BACKUP_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Longest backup interval.
const BACKUP_INTERVAL_MAX: Duration = Duration::from_secs(366 * 24 * 3600);
/// Most backups kept.
const BACKUP_RETAIN_MAX: u32 = 100_000;

/// The backup schedule, or `None` when the interval is 0.
fn backup_settings(args: &Args) -> Result<Option<crate::backup::BackupSettings>, ConfigError> {
    if !(1..=BACKUP_RETAIN_MAX).contains(&args.backup_retain) {
        return Err(ConfigError::OutOfRange(format!(
            "SPIKE_NEXUS_BACKUP_RETAIN must be 1 to {BACKUP_RETAIN_MAX}"
        )));
    }
    if args.backup_interval.is_zero() {
        return Ok(None);
    }
    if !(BACKUP_INTERVAL_MIN..=BACKUP_INTERVAL_MAX).contains(&args.backup_interval) {
        return Err(ConfigError::OutOfRange(
            "SPIKE_NEXUS_BACKUP_INTERVAL must be 0 (off) or 1s to 8784h".to_owned(),
        ));
    }
    Ok(Some(crate::backup::BackupSettings {
        interval: args.backup_interval,
        dir: args
            .backup_dir
            .clone()
            .unwrap_or_else(|| args.data_dir.join("backups")),
        retain: args.backup_retain as usize,
    }))
}

/// Parses `1=10.0.0.1:8554/10.0.0.1:8553,2=...`.
pub fn parse_peers(text: &str) -> Result<BTreeMap<NodeId, NexusNode>, ConfigError> {
    let mut peers = BTreeMap::new();
    let mut addresses = Vec::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let malformed = || ConfigError::MalformedPeer(entry.to_owned());
        let (id, addresses_text) = entry.split_once('=').ok_or_else(malformed)?;
        let id: u64 = id.trim().parse().map_err(|_| malformed())?;
        let (cluster, api) = addresses_text.split_once('/').ok_or_else(malformed)?;
        let cluster: SocketAddr = cluster.trim().parse().map_err(|_| malformed())?;
        let api: SocketAddr = api.trim().parse().map_err(|_| malformed())?;
        let id = NodeId::new(id).map_err(|_| ConfigError::NodeIdZero)?;
        for address in [cluster, api] {
            if addresses.contains(&address) {
                return Err(ConfigError::DuplicatePeerAddress(address));
            }
            addresses.push(address);
        }
        let node = NexusNode {
            cluster_addr: cluster,
            api_addr: api,
        };
        if peers.insert(id, node).is_some() {
            return Err(ConfigError::DuplicatePeerId(id.get()));
        }
    }
    Ok(peers)
}

/// Parses SPIKE's keeper list against the Shamir parameters.
pub fn parse_keepers(
    text: &str,
    shares: u8,
    threshold: u8,
) -> Result<(Vec<SocketAddr>, ShamirParams), ConfigError> {
    let params =
        ShamirParams::new(shares, threshold).map_err(|e| ConfigError::Shamir(e.to_string()))?;
    let mut keepers = Vec::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let address = entry
            .strip_prefix("https://")
            .unwrap_or(entry)
            .trim_end_matches('/');
        let address: SocketAddr = address
            .parse()
            .map_err(|_| ConfigError::MalformedKeeper(entry.to_owned()))?;
        if keepers.contains(&address) {
            return Err(ConfigError::DuplicateKeeper(address));
        }
        keepers.push(address);
    }
    if keepers.len() != usize::from(shares) {
        return Err(ConfigError::KeeperCountMismatch {
            shares,
            keepers: keepers.len(),
        });
    }
    Ok((keepers, params))
}

/// `duration` in nanoseconds, saturating (a setting that long is refused).
fn duration_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_forward_destinations_parse() {
        assert_eq!(AuditForward::parse("syslog"), Some(AuditForward::Syslog));
        assert_eq!(
            AuditForward::parse("unix:/run/audit.sock"),
            Some(AuditForward::Unix(PathBuf::from("/run/audit.sock")))
        );
        assert_eq!(AuditForward::parse("unix:"), None);
        assert_eq!(AuditForward::parse("tcp:10.0.0.1:514"), None);
    }

    #[test]
    fn peers_parse_and_reject_duplicates() {
        let peers =
            parse_peers("1=127.0.0.1:1/127.0.0.1:2, 2=127.0.0.1:3/127.0.0.1:4").expect("valid");
        let two = NodeId::new(2).expect("a node id");
        assert_eq!(peers[&two].api_addr.to_string(), "127.0.0.1:4");
        assert_eq!(
            parse_peers("1=127.0.0.1:1/127.0.0.1:2,1=127.0.0.1:3/127.0.0.1:4"),
            Err(ConfigError::DuplicatePeerId(1))
        );
        assert!(matches!(
            parse_peers("1=127.0.0.1:1/127.0.0.1:2,2=127.0.0.1:1/127.0.0.1:5"),
            Err(ConfigError::DuplicatePeerAddress(_))
        ));
        assert!(matches!(
            parse_peers("1=127.0.0.1:1"),
            Err(ConfigError::MalformedPeer(_))
        ));
    }

    #[test]
    fn keepers_match_shares_and_are_distinct() {
        let (keepers, params) = parse_keepers(
            "https://127.0.0.1:8443,127.0.0.1:8444/,127.0.0.1:8445",
            3,
            2,
        )
        .expect("valid");
        assert_eq!(keepers.len(), 3);
        assert_eq!(params.threshold(), 2);
        assert!(matches!(
            parse_keepers("127.0.0.1:1,127.0.0.1:2", 2, 3),
            Err(ConfigError::Shamir(_))
        ));
        assert!(matches!(
            parse_keepers("127.0.0.1:1,127.0.0.1:1", 2, 2),
            Err(ConfigError::DuplicateKeeper(_))
        ));
        assert_eq!(
            parse_keepers("127.0.0.1:1", 3, 2),
            Err(ConfigError::KeeperCountMismatch {
                shares: 3,
                keepers: 1
            })
        );
    }

    #[test]
    fn threshold_one_needs_the_development_switch() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4",
                "--shares=2",
            ];
            argv.extend_from_slice(extra);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        assert_eq!(
            config(&["--threshold=1"]).err(),
            Some(ConfigError::InsecureThreshold)
        );
        let allowed = config(&["--threshold=1", "--allow-insecure-threshold"]).expect("allowed");
        assert!(allowed.allow_insecure_threshold);
        assert!(config(&["--threshold=2"]).is_ok());
    }

    #[test]
    fn memory_is_locked_by_default_where_the_os_allows() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["nexus"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).expect("flags parse").lock_memory
        };
        assert_eq!(parse(&[]), MemoryLock::Auto);
        assert_eq!(parse(&["--lock-memory"]), MemoryLock::Required);
        assert_eq!(parse(&["--lock-memory=off"]), MemoryLock::Off);
    }

    #[cfg(not(feature = "fault-injection"))]
    #[test]
    fn the_release_build_has_no_fault_injection_switches() {
        use clap::Parser;
        for flag in ["--unsafe-local-reads", "--test-clock-offset"] {
            let error = Args::try_parse_from(["nexus", flag]).expect_err("no such flag");
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{flag}"
            );
        }
    }

    #[test]
    fn rotation_defaults_come_from_the_flags_within_limits() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
            ];
            argv.extend_from_slice(extra);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        let defaults = config(&[]).expect("defaults").rotation_defaults;
        assert_eq!(
            defaults,
            RotationSettings {
                data_key_rotate_after_ops: ENCRYPTIONS_ROTATE_AT,
                data_key_max_age_ns: 30 * 24 * 3600 * 1_000_000_000,
                root_key_max_age_ns: 0,
                reencrypt_per_second: 0,
            }
        );
        let set = config(&[
            "--data-key-max-age=0",
            "--root-key-max-age=2160h",
            "--reencrypt-per-second=50",
        ])
        .expect("valid")
        .rotation_defaults;
        assert_eq!(set.data_key_max_age_ns, 0);
        assert_eq!(set.root_key_max_age_ns, 2160 * 3600 * 1_000_000_000);
        assert_eq!(set.reencrypt_per_second, 50);
        for refused in [
            &["--data-key-max-age=500ms"][..],
            &["--root-key-max-age=900000h"],
            &["--reencrypt-per-second=10001"],
        ] {
            assert!(
                matches!(config(refused), Err(ConfigError::OutOfRange(_))),
                "{refused:?} accepted"
            );
        }
    }

    #[test]
    fn raft_timing_is_configurable_within_limits() {
        use clap::Parser;
        let config = |timing: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
            ];
            argv.extend_from_slice(timing);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        let defaults = config(&[]).expect("defaults");
        assert_eq!(defaults.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(defaults.election_timeout, Duration::from_millis(150));
        let far = config(&["--heartbeat-interval", "200ms", "--election-timeout", "2s"])
            .expect("replicas far apart");
        assert_eq!(far.election_timeout, Duration::from_secs(2));
        for refused in [
            &["--heartbeat-interval", "5ms"][..],
            &["--heartbeat-interval", "200ms"],
            &["--election-timeout", "100ms"],
            &["--election-timeout", "2m"],
        ] {
            assert!(
                matches!(config(refused), Err(ConfigError::OutOfRange(_))),
                "{refused:?} accepted"
            );
        }
        let fast = Args::try_parse_from(["nexus", "--heartbeat-interval", "fast"])
            .expect_err("not a duration");
        assert!(
            fast.to_string().contains("--heartbeat-interval"),
            "the error names the flag given: {fast}"
        );
    }

    #[test]
    fn autopilot_promotes_after_10s_cleans_up_only_when_asked_and_keeps_3_voters() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
            ];
            argv.extend_from_slice(extra);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        let defaults = config(&[]).expect("defaults").autopilot;
        assert_eq!(defaults.stabilization_time, Duration::from_secs(10));
        assert_eq!(defaults.cleanup_dead_after, None, "off unless asked");
        assert_eq!(defaults.min_quorum, 3);
        let asked = config(&[
            "--autopilot-stabilization-time",
            "1m30s",
            "--autopilot-cleanup-dead-after",
            "10m",
            "--autopilot-min-quorum",
            "5",
        ])
        .expect("set")
        .autopilot;
        assert_eq!(asked.stabilization_time, Duration::from_secs(90));
        assert_eq!(asked.cleanup_dead_after, Some(Duration::from_secs(600)));
        assert_eq!(asked.min_quorum, 5);
        assert!(matches!(
            config(&["--autopilot-min-quorum", "2"]),
            Err(ConfigError::OutOfRange(_))
        ));
    }

    #[test]
    fn durations_read_like_go_and_zero_is_refused_where_it_means_never() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
            ];
            argv.extend_from_slice(extra);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        let mixed = config(&["--keeper-update-interval", "1m30s"]).expect("Go grammar");
        assert_eq!(mixed.keeper_update_interval, Duration::from_secs(90));
        let zero = config(&["--keeper-update-interval", "0s"]).expect_err("zero");
        assert_eq!(
            zero,
            ConfigError::ZeroDuration(
                "SPIKE_NEXUS_KEEPER_UPDATE_INTERVAL (--keeper-update-interval)"
            )
        );
        assert!(
            zero.to_string()
                .contains("SPIKE_NEXUS_KEEPER_UPDATE_INTERVAL"),
            "{zero}"
        );
        assert!(matches!(
            config(&["--heartbeat-interval", "0"]),
            Err(ConfigError::OutOfRange(_))
        ));
        let age = config(&[]).expect("defaults").max_connection_age;
        assert_eq!(age, spike_sdk::tls::CONNECTION_AGE_MAX_DEFAULT);
        let short = config(&["--max-connection-age", "500ms"]).expect_err("under 1s");
        assert!(
            short.to_string().contains("SPIKE_NEXUS_MAX_CONNECTION_AGE"),
            "{short}"
        );
        let sqlite = Args::try_parse_from(["nexus", "--backend-store", "sqlite"])
            .expect_err("only persistent exists");
        assert!(sqlite.to_string().contains("persistent"), "{sqlite}");
    }

    #[test]
    fn scheduled_backups_are_off_by_default_and_their_settings_are_bounded() {
        use clap::Parser;
        let config = |extra: &[&str]| {
            let mut argv = vec![
                "nexus",
                "--peers",
                "1=127.0.0.1:1/127.0.0.1:2",
                "--keepers",
                "127.0.0.1:3,127.0.0.1:4,127.0.0.1:5",
                "--data-dir",
                "/var/lib/spike",
            ];
            argv.extend_from_slice(extra);
            NexusConfig::from_args(&Args::try_parse_from(argv).expect("flags parse"))
        };
        assert_eq!(config(&[]).expect("valid").backup, None);
        let on = config(&["--backup-interval", "1h"])
            .expect("valid")
            .backup
            .expect("on");
        assert_eq!(
            on,
            crate::backup::BackupSettings {
                interval: Duration::from_secs(3600),
                dir: PathBuf::from("/var/lib/spike/backups"),
                retain: 24,
            }
        );
        let elsewhere = config(&[
            "--backup-interval=2s",
            "--backup-dir=/mnt/backups",
            "--backup-retain=1",
        ])
        .expect("valid")
        .backup
        .expect("on");
        assert_eq!(
            (elsewhere.dir, elsewhere.retain),
            (PathBuf::from("/mnt/backups"), 1)
        );
        for refused in [
            &["--backup-interval", "500ms"][..],
            &["--backup-interval", "8785h"],
            &["--backup-retain", "0"],
            &["--backup-interval", "1h", "--backup-retain", "100001"],
        ] {
            assert!(
                matches!(config(refused), Err(ConfigError::OutOfRange(_))),
                "{refused:?}"
            );
        }
    }
}
