//! The cluster port: Raft RPCs between replicas and client requests
//! forwarded to the leader, over gRPC with mTLS that admits Nexus
//! identities only.

pub mod forward;
pub mod service;
pub mod version;

use spike_sdk::domain::NodeId;

use serde::{Deserialize, Serialize};

use crate::raft::{Leader, LeaderError, NexusNode};

/// Work only the leader does, carried from any replica to the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderOp {
    /// Apply a client write through Raft.
    Write(crate::state::command::Request),
    /// Add a replica: as a learner, then as a voter once caught up.
    AddNode {
        /// Its id (never used before in this cluster).
        id: NodeId,
        /// Its addresses.
        node: NexusNode,
    },
    /// Remove a replica; its id is retired for good.
    RemoveNode {
        /// Its id.
        id: NodeId,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead next.
        to: NodeId,
    },
    /// One operator restore shard.
    Restore(RestoreShard),
    /// Replace the root key.
    Rekey {
        /// New n.
        shares: u8,
        /// New t.
        threshold: u8,
    },
    /// Add a data key for new writes.
    RotateDataKey,
    /// The leader's health report (autopilot). Appended: a leader of an
    /// older release cannot decode it, and the health route fails there.
    Health,
    /// Add a replica as a permanent non-voter (a read replica): a learner
    /// the autopilot never promotes. Needs cluster format 3.
    AddNonVoter {
        /// Its id (never used before in this cluster).
        id: NodeId,
        /// Its addresses.
        node: NexusNode,
    },
}

/// A restore shard in transit between replicas (inside mTLS); wiped on drop.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreShard {
    /// The shard's index.
    pub index: u8,
    /// Its 32 bytes.
    pub value: Vec<u8>,
}

impl Drop for RestoreShard {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.value);
    }
}

impl std::fmt::Debug for RestoreShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestoreShard(index {}, redacted)", self.index)
    }
}

/// What the leader did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaderReply {
    /// A write's response.
    Written(crate::state::command::Response),
    /// Done, nothing to report.
    Done,
    /// Restore progress.
    Restore {
        /// Shards collected.
        collected: usize,
        /// Shards still needed.
        remaining: usize,
        /// Whether the key is back.
        restored: bool,
        /// Whether a leader change dropped earlier progress.
        progress_reset: bool,
    },
    /// The new root key id.
    Rekeyed(u64),
    /// The new active data key id.
    Rotated(u32),
    /// The leader's health report.
    Health(crate::autopilot::HealthReport),
}

/// Why the leader could not take a forwarded request. It travels back to
/// the forwarding replica (postcard: variants by position, so new ones go
/// last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    /// The receiver is not the leader (any more); it names the leader it
    /// knows of. Nothing was applied.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader {
        /// The leader as the receiver knows it.
        leader: Option<Leader>,
    },
    /// The request may or may not have been applied: the leader could not
    /// complete it, or the connection failed after it was sent.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The leader refused the request as invalid; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The leader does not hold the root key.
    #[error("the leader does not hold the root key")]
    NotReady,
    /// The request never left this replica: no connection to the leader
    /// could be made. Only the forwarding side says this (a leader never
    /// does), and sending the request again is safe.
    #[error("never sent: {0}")]
    NeverSent(String),
    /// The leader cannot take this request yet and nothing changed: it
    /// needs an on-disk format the cluster does not write yet (a replica
    /// still runs an older release). Worth retrying later.
    #[error("{0}")]
    NotYet(String),
    /// The leader is past its storage quota and the request adds data;
    /// nothing was proposed. (A replica of an older release cannot decode
    /// this answer and reports an unknown outcome instead.)
    #[error("{0}")]
    StorageQuota(crate::quota::QuotaExceeded),
}

impl From<LeaderError> for ForwardError {
    fn from(error: LeaderError) -> Self {
        match error {
            LeaderError::NotLeader { leader } => ForwardError::NotLeader { leader },
            LeaderError::OutcomeUnknown(reason) => ForwardError::OutcomeUnknown(reason),
            // Nothing was proposed: 503, worth a retry once the cluster
            // has switched (within a second of forming, or at the end of
            // a rolling upgrade).
            refused @ LeaderError::FormatNotYet { .. } => ForwardError::NotYet(refused.to_string()),
        }
    }
}
