//! `/v1/cluster` (extension): status, membership and leadership.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ApiRequest, EmptyResponse, ErrorCode, Route};

/// Status: the contacted replica, the leader it knows, Raft progress,
/// members and the root key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatusRequest {}

impl ApiRequest for ClusterStatusRequest {
    const ROUTE: Route = Route::ClusterStatus;
    type Response = ClusterStatus;
}

/// The role a replica plays in Raft.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RaftRole {
    /// Leads: takes writes and serves read indexes.
    Leader,
    /// Follows a leader.
    #[default]
    Follower,
    /// Asking for votes.
    Candidate,
    /// Replicates without voting.
    Learner,
    /// Stopping.
    Shutdown,
}

/// Whether a replica holds the cluster's root key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKeyState {
    /// The cluster has no root key yet.
    #[default]
    Uninitialized,
    /// The cluster has one this replica does not hold (yet).
    Locked,
    /// This replica holds it and serves.
    Ready,
}

/// A replica as the membership records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// Its cluster port (Raft, forwarding).
    pub cluster_addr: SocketAddr,
    /// Its API port.
    pub api_addr: SocketAddr,
    /// Whether it votes (a learner does not).
    pub voter: bool,
    /// Whether it is a permanent non-voter (a read replica, never
    /// promoted); absent from replicas of releases before non-voters.
    #[serde(default)]
    pub non_voter: bool,
}

/// The root key as a replica reports it (public facts only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RootKeyStatus {
    /// Held, missing or not yet made.
    pub status: RootKeyState,
    /// The committed root key's id.
    pub root_key_id: Option<u64>,
    /// Its key check, hex (only where the key is held).
    pub key_check: Option<String>,
    /// The data key new data is sealed with (only where the key is held).
    pub data_key_id: Option<u32>,
    /// Encryptions counted under that data key, cluster-wide (the cipher
    /// routes' counted as reserved): the leader rotates it at
    /// `SPIKE_NEXUS_DATA_KEY_ROTATE_AFTER`.
    pub data_key_encryptions: Option<u64>,
}

/// Status's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The replica that answered.
    pub node_id: u64,
    /// Its Raft role.
    pub state: RaftRole,
    /// The leader it knows of.
    pub leader_id: Option<u64>,
    /// That leader's API address.
    pub leader_api_addr: Option<SocketAddr>,
    /// Its Raft term.
    pub term: u64,
    /// Index of its last log entry.
    pub last_log_index: Option<u64>,
    /// Highest index it knows to be committed.
    pub commit_index: Option<u64>,
    /// Highest index it has applied.
    pub applied_index: Option<u64>,
    /// Every member, voters and learners.
    pub members: Vec<Member>,
    /// Its root key.
    pub root_key: RootKeyStatus,
    /// Its release (`0.2.0`); absent from a replica of 0.1.0.
    pub release: Option<String>,
    /// The oldest on-disk format its build reads and writes.
    pub format_oldest: Option<u32>,
    /// The newest on-disk format its build reads and writes.
    pub format_newest: Option<u32>,
    /// The format the cluster writes, as this replica applied it: it
    /// switches to a newer one only once every member reads it.
    pub cluster_format: Option<u32>,
    /// The last scheduled backup the cluster recorded, as this replica
    /// applied it (any replica: the record is replicated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<LastBackup>,
    /// This replica's backup schedule, when scheduled backups are on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_schedule: Option<BackupSchedule>,
    /// Whether it raised the corruption alarm: its state differs from the
    /// one a majority of the voters holds, and it serves no data (absent,
    /// so false, from a replica before 0.3.0).
    pub corrupt: bool,
    /// Why, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corruption: Option<String>,
    /// The newest digest checkpoint (a log index) at which a majority of
    /// the voters held this replica's state digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest_agreed_index: Option<u64>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// The last scheduled backup the cluster recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LastBackup {
    /// Its schedule slot: floor(leader time / interval).
    pub slot: u64,
    /// The interval, milliseconds.
    pub interval_ms: u64,
    /// When the slot starts, RFC 3339.
    pub slot_time: String,
    /// The last log index it holds.
    pub index: u64,
    /// Its file name in the backup directory of `node`.
    pub file: String,
    /// The replica that wrote it.
    pub node: u64,
    /// The root key its records are sealed under (a restore elsewhere
    /// needs this key's recovery shards).
    pub root_key_id: u64,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// Hex SHA-256 of the file (also in its `.sha256` sidecar).
    pub sha256: String,
}

/// A replica's own backup schedule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BackupSchedule {
    /// One backup per interval, milliseconds.
    pub interval_ms: u64,
    /// Where this replica writes backups when it leads.
    pub dir: String,
    /// Backups kept there.
    pub retain: u64,
    /// Backups this replica completed since it started.
    pub succeeded: u64,
    /// Attempts that failed here since it started.
    pub failed: u64,
}

/// Members: every replica and whether it votes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMembersRequest {}

impl ApiRequest for ClusterMembersRequest {
    const ROUTE: Route = Route::ClusterMembers;
    type Response = ClusterMembers;
}

/// Members' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterMembers {
    /// Every member.
    pub members: Vec<Member>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Add: a replica already running with `--join` at these addresses joins
/// as a learner; the answer comes once it is one. The leader's autopilot
/// makes it a voter once it has been healthy for the stabilization time
/// (`SPIKE_NEXUS_AUTOPILOT_STABILIZATION_TIME`). Its id must never have
/// been used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AddMemberRequest {
    /// Its node id.
    pub id: u64,
    /// Its cluster address, `IP:PORT`.
    pub cluster_addr: String,
    /// Its API address, `IP:PORT`.
    pub api_addr: String,
    /// A permanent non-voter (a read replica): it stays a learner, serves
    /// reads and never counts toward quorum. Needs cluster format 3.
    /// Adding a non-voter again without it lets it become a voter.
    pub non_voter: bool,
}

impl ApiRequest for AddMemberRequest {
    const ROUTE: Route = Route::ClusterAdd;
    type Response = EmptyResponse;
}

/// Remove: a voter leaves, and its id is retired for good.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RemoveMemberRequest {
    /// The voter's node id.
    pub id: u64,
}

impl ApiRequest for RemoveMemberRequest {
    const ROUTE: Route = Route::ClusterRemove;
    type Response = EmptyResponse;
}

/// Transfer: hand leadership to another voter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TransferLeaderRequest {
    /// The voter to lead.
    pub id: u64,
}

impl ApiRequest for TransferLeaderRequest {
    const ROUTE: Route = Route::ClusterTransfer;
    type Response = EmptyResponse;
}

/// Health: the leader's autopilot report (answered by the leader,
/// wherever the request arrives).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealthRequest {}

impl ApiRequest for ClusterHealthRequest {
    const ROUTE: Route = Route::ClusterHealth;
    type Response = ClusterHealth;
}

/// One member's health, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberHealth {
    /// Its node id.
    pub id: u64,
    /// Its cluster port.
    pub cluster_addr: SocketAddr,
    /// Its API port.
    pub api_addr: SocketAddr,
    /// Whether it votes (a learner waiting for promotion does not).
    pub voter: bool,
    /// Whether it is a permanent non-voter (a read replica, never
    /// promoted).
    pub non_voter: bool,
    /// Whether it is the leader.
    pub leader: bool,
    /// Milliseconds since it last acknowledged the leader; absent when it
    /// has not in this leader's term.
    pub last_contact_ms: Option<u64>,
    /// Entries it is behind the leader's log.
    pub log_lag: u64,
    /// Contacted recently and not far behind.
    pub healthy: bool,
    /// Milliseconds it has been healthy (or unhealthy) without a change,
    /// as the current leader has watched it.
    pub stable_for_ms: u64,
}

/// Health's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClusterHealth {
    /// The leader that answered.
    pub leader_id: u64,
    /// Every member healthy.
    pub healthy: bool,
    /// Voters that may fail while a quorum of healthy voters is left:
    /// healthy voters - (voters / 2 + 1), at least 0.
    pub failure_tolerance: u64,
    /// Voters.
    pub voters: u64,
    /// Healthy voters.
    pub healthy_voters: u64,
    /// Every member.
    pub members: Vec<MemberHealth>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

super::responses!(ClusterStatus, ClusterMembers, ClusterHealth);
