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
    /// Bytes the replicated state takes on this replica, as the storage
    /// quota counts them (see `SPIKE_NEXUS_STORAGE_QUOTA`).
    pub storage_used_bytes: Option<u64>,
    /// The storage quota, bytes (0: none).
    pub storage_quota_bytes: Option<u64>,
    /// Whether this replica is past its storage quota: its writes that add
    /// data are refused while it leads.
    pub storage_quota_exceeded: Option<bool>,
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

/// Most rules a [`RateLimits`] holds.
pub const RATE_LIMIT_RULES_MAX: usize = 256;
/// Highest rate or burst a rule may set.
pub const RATE_LIMIT_MAX: u32 = 1_000_000;
/// Longest SPIFFE ID or prefix a rule may name, in bytes.
pub const RATE_LIMIT_ID_LEN_MAX: usize = 2048;

/// One rate-limit rule: which callers and routes it covers, and their
/// token bucket. Every matching (caller, route) pair gets a bucket of its
/// own on every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimitRule {
    /// A SPIFFE ID (exact), a prefix ending in `/*`
    /// (`spiffe://example.org/batch/*`), or `*` for every caller.
    pub spiffe_id: String,
    /// A route as `path?action=...` (`/v1/store/secrets?action=get`), or
    /// `*` (or empty) for every route.
    pub route: String,
    /// Requests per second refilled; 0 exempts the match from every later
    /// rule (no limit).
    pub rate_per_second: u32,
    /// Requests that may come at once (the bucket's size).
    pub burst: u32,
}

impl RateLimitRule {
    /// Whether the rule covers `caller` (a SPIFFE ID).
    pub fn covers_caller(&self, caller: &str) -> bool {
        match self.spiffe_id.strip_suffix('*') {
            _ if self.spiffe_id == "*" => true,
            Some(prefix) => caller.starts_with(prefix),
            None => caller == self.spiffe_id,
        }
    }

    /// Whether the rule covers `route`.
    pub fn covers_route(&self, route: Route) -> bool {
        self.route.is_empty() || self.route == "*" || self.route == route.path_and_query()
    }

    fn check(&self) -> Result<(), String> {
        let id = self.spiffe_id.as_str();
        if id.is_empty() || id.len() > RATE_LIMIT_ID_LEN_MAX {
            return Err(format!(
                "spiffeId must be 1 to {RATE_LIMIT_ID_LEN_MAX} bytes"
            ));
        }
        if id != "*" {
            if !id.starts_with("spiffe://") {
                return Err(format!(
                    "spiffeId {id:?} is neither a SPIFFE ID, a prefix ending in /*, nor *"
                ));
            }
            if let Some(prefix) = id.strip_suffix('*')
                && !prefix.ends_with('/')
            {
                return Err(format!("the prefix {id:?} must end in /*"));
            }
        }
        let route = self.route.as_str();
        if !(route.is_empty()
            || route == "*"
            || Route::ALL
                .iter()
                .any(|known| known.path_and_query() == route))
        {
            return Err(format!("route {route:?} is no route of the API"));
        }
        if self.rate_per_second > RATE_LIMIT_MAX || self.burst > RATE_LIMIT_MAX {
            return Err(format!("rate and burst are at most {RATE_LIMIT_MAX}"));
        }
        if self.rate_per_second > 0 && self.burst == 0 {
            return Err("a limited rule needs a burst of at least 1".to_owned());
        }
        Ok(())
    }
}

/// The cluster's rate limits, replicated: the first rule that covers a
/// (caller, route) pair decides its bucket; a pair no rule covers is not
/// limited. Each replica enforces them on the requests it receives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RateLimits {
    /// Rules, first match wins; at most [`RATE_LIMIT_RULES_MAX`].
    pub rules: Vec<RateLimitRule>,
}

impl RateLimits {
    /// Why these limits cannot be set, if they cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > RATE_LIMIT_RULES_MAX {
            return Err(format!(
                "{} rules; at most {RATE_LIMIT_RULES_MAX}",
                self.rules.len()
            ));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.check()
                .map_err(|reason| format!("rule {}: {reason}", index + 1))?;
        }
        Ok(())
    }

    /// The first rule covering `caller` on `route`.
    pub fn rule_for(&self, caller: &str, route: Route) -> Option<&RateLimitRule> {
        self.rules
            .iter()
            .find(|rule| rule.covers_caller(caller) && rule.covers_route(route))
    }
}

/// Limits: the replicated rate limits (superusers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLimitsRequest {}

impl ApiRequest for ClusterLimitsRequest {
    const ROUTE: Route = Route::ClusterLimits;
    type Response = ClusterLimits;
}

/// Limits' answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterLimits {
    /// The limits in force.
    pub limits: RateLimits,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

super::responses!(ClusterStatus, ClusterMembers, ClusterHealth, ClusterLimits);
/// Set limits: replaces the rate limits cluster-wide (superusers; an
/// empty rule list removes every limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SetLimitsRequest {
    /// The new limits.
    pub limits: RateLimits,
}

impl ApiRequest for SetLimitsRequest {
    const ROUTE: Route = Route::ClusterSetLimits;
    type Response = EmptyResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spiffe_id: &str, route: &str, rate: u32, burst: u32) -> RateLimitRule {
        RateLimitRule {
            spiffe_id: spiffe_id.to_owned(),
            route: route.to_owned(),
            rate_per_second: rate,
            burst,
        }
    }

    #[test]
    fn the_first_covering_rule_decides() {
        let limits = RateLimits {
            rules: vec![
                rule("spiffe://a.org/quiet", "*", 0, 0),
                rule("spiffe://a.org/*", "/v1/store/secrets?action=get", 5, 10),
                rule("*", "", 100, 200),
            ],
        };
        limits.validate().expect("valid");
        let get = Route::SecretGet;
        assert_eq!(
            limits
                .rule_for("spiffe://a.org/quiet", get)
                .map(|r| r.burst),
            Some(0)
        );
        assert_eq!(
            limits
                .rule_for("spiffe://a.org/noisy", get)
                .map(|r| r.burst),
            Some(10)
        );
        assert_eq!(
            limits
                .rule_for("spiffe://a.org/noisy", Route::SecretPut)
                .map(|r| r.burst),
            Some(200)
        );
        assert_eq!(
            limits.rule_for("spiffe://b.org/x", get).map(|r| r.burst),
            Some(200)
        );
    }

    #[test]
    fn invalid_rules_are_named() {
        for (bad, why) in [
            (rule("", "*", 1, 1), "1 to"),
            (rule("a.org/x", "*", 1, 1), "neither"),
            (rule("spiffe://a.org/x*", "*", 1, 1), "must end in /*"),
            (rule("*", "/v1/nope", 1, 1), "no route"),
            (rule("*", "*", RATE_LIMIT_MAX + 1, 1), "at most"),
            (rule("*", "*", 1, 0), "burst"),
        ] {
            let error = RateLimits { rules: vec![bad] }.validate().expect_err(why);
            assert!(error.contains(why), "{error}");
        }
        let many = RateLimits {
            rules: vec![rule("*", "*", 1, 1); RATE_LIMIT_RULES_MAX + 1],
        };
        assert!(many.validate().is_err());
    }
}
