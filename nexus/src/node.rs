//! A replica as request handlers use it: writes go to the leader (here or
//! forwarded over the cluster port), linearizable reads wait for the
//! leader's read index to be applied here, and the leader is known for
//! hints.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeSet;

use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;

use crate::cluster::peers::Peers;
use crate::cluster::proto::Frame;
use crate::cluster::service::{
    known_leader, leader_read_index, leader_without_quorum, leader_write,
};
use crate::cluster::{FORWARD_TIMEOUT, ForwardError, LeaderOp, LeaderReply};
use crate::keys::KeyState;
use crate::keys::manager::{KeyError, KeyManager};
use crate::raft::codec::{decode, encode};
use crate::raft::state_machine::StateMachine;
use crate::raft::{LogIdOf, NexusNode, NexusRaft, TypeConfig};
use crate::state::command::{Command, MembershipCommand, Request, Response};
use crate::state::store::StateReader;
use spike_sdk::crypto::{KeyShare, SecretBytes, ShamirParams, ShareIndex};
use spike_sdk::domain::NodeId;

/// How long a request waits for a leader to exist before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Forwarding hops tried before giving up (leaders change mid-request).
const FORWARD_ATTEMPTS_MAX: usize = 5;

/// Why a write or linearizable read did not complete.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No leader is known (election in progress, or no quorum).
    #[error("no leader is available")]
    NoLeader,
    /// The request may or may not have been applied (the leader failed or
    /// the connection dropped after sending).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request is invalid; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The leader does not hold the root key.
    #[error("the leader does not hold the root key")]
    NotReady,
}

/// One replica.
#[derive(Clone)]
pub struct Node {
    /// This replica's id.
    pub id: u64,
    /// Its Raft handle.
    pub raft: NexusRaft,
    /// Read access to its applied state.
    pub state: StateReader,
    /// The root key as this replica holds it.
    pub keys: Arc<KeyState>,
    /// The root-key lifecycle (operator actions).
    pub key_manager: Arc<KeyManager>,
    peers: Peers,
    machine: StateMachine,
    applied: watch::Receiver<Option<LogIdOf<TypeConfig>>>,
    /// The vote's term and last log index when this process started.
    log_at_start: LogAtStart,
    /// Linearizable reads skip the read index: unsafe, tests only.
    unsafe_local_reads: bool,
}

/// How this replica serves linearizable reads.
#[derive(Debug, Clone, Copy)]
pub struct ReadSettings {
    /// Where the log stood at start (see [`Node::leader_read_index`]).
    pub log_at_start: LogAtStart,
    /// Skip the read index: unsafe, for the checker's own test only.
    pub unsafe_local_reads: bool,
}

/// Where the log stood when the process started (see
/// [`Node::leader_read_index`]).
#[derive(Debug, Clone, Copy)]
pub struct LogAtStart {
    /// Term of the saved vote.
    pub term: u64,
    /// Index of the last entry.
    pub last_index: u64,
}

impl Node {
    /// Assembles a replica.
    pub fn new(
        id: u64,
        raft: NexusRaft,
        machine: StateMachine,
        keys: Arc<KeyState>,
        key_manager: Arc<KeyManager>,
        peers: Peers,
        reads: ReadSettings,
    ) -> Self {
        let ReadSettings {
            log_at_start,
            unsafe_local_reads,
        } = reads;
        if unsafe_local_reads {
            tracing::warn!(
                "UNSAFE: linearizable reads are served from local state without a read index \
                 (--unsafe-local-reads); stale reads will happen"
            );
        }
        Self {
            log_at_start,
            unsafe_local_reads,
            id,
            raft,
            state: machine.reader(),
            keys,
            key_manager,
            peers,
            applied: machine.applied(),
            machine,
        }
    }

    /// A consistent copy of the applied state as a backup file's bytes,
    /// written through `path`.
    pub fn export_state(&self, path: &std::path::Path) -> std::io::Result<Vec<u8>> {
        self.machine.export(path)
    }

    /// A directory for temporary files.
    pub fn scratch_dir(&self) -> std::path::PathBuf {
        self.machine.scratch_dir().to_owned()
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<(u64, NexusNode)> {
        known_leader(&self.raft)
    }

    async fn wait_for_leader(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<(u64, NexusNode), NodeError> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader() {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(NodeError::NoLeader);
            }
        }
    }

    /// Applies `request` through the leader, wherever it is.
    pub async fn write(&self, request: Request) -> Result<Response, NodeError> {
        match self.execute(LeaderOp::Write(request)).await? {
            LeaderReply::Written(response) => Ok(response),
            other => Err(NodeError::Unknown(format!("unexpected reply {other:?}"))),
        }
    }

    /// Runs `op` on the leader, wherever it is: here, or forwarded over the
    /// cluster port, following leader changes a few hops.
    pub async fn execute(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        if leader_without_quorum(&self.raft) {
            return Err(NodeError::NoLeader);
        }
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut hint: Option<(u64, NexusNode)> = None;
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let (leader, node) = match hint.take() {
                Some(leader) => leader,
                None => self.wait_for_leader(deadline).await?,
            };
            let outcome = if leader == self.id {
                self.execute_here(op.clone()).await
            } else {
                self.forward(&node, &op).await
            };
            match outcome {
                Ok(reply) => return Ok(reply),
                Err(ForwardError::NotLeader { leader }) => {
                    hint = leader.filter(|(id, _)| *id != self.id);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(ForwardError::Unavailable(reason)) => return Err(NodeError::Unknown(reason)),
                Err(ForwardError::Invalid(reason)) => return Err(NodeError::Invalid(reason)),
                Err(ForwardError::NotReady) => return Err(NodeError::NotReady),
            }
        }
        Err(NodeError::NoLeader)
    }

    /// Runs `op` on this replica, which must be the leader.
    pub async fn execute_here(&self, op: LeaderOp) -> Result<LeaderReply, ForwardError> {
        let not_leader = || ForwardError::NotLeader {
            leader: self.leader(),
        };
        match op {
            LeaderOp::Write(request) => leader_write(&self.raft, request)
                .await
                .map(LeaderReply::Written),
            LeaderOp::AddNode { id, node } => {
                self.add_node(id, node).await.map(|()| LeaderReply::Done)
            }
            LeaderOp::RemoveNode { id } => self.remove_node(id).await.map(|()| LeaderReply::Done),
            LeaderOp::TransferLeader { to } => {
                if !self.is_leader() {
                    return Err(not_leader());
                }
                if !self.voters().contains(&to) {
                    return Err(ForwardError::Invalid(format!("node {to} is not a voter")));
                }
                self.raft
                    .trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
                Ok(LeaderReply::Done)
            }
            LeaderOp::Restore(shard) => {
                let index = ShareIndex::new(shard.index)
                    .map_err(|e| ForwardError::Invalid(e.to_string()))?;
                let value = SecretBytes::<32>::from_slice(&shard.value).map_err(|length| {
                    ForwardError::Invalid(format!("a shard is 32 bytes, not {length}"))
                })?;
                let status = self
                    .key_manager
                    .restore(KeyShare::new(index, value))
                    .await
                    .map_err(|e| self.key_error(e))?;
                Ok(LeaderReply::Restore {
                    collected: status.collected,
                    remaining: status.remaining,
                    restored: status.restored,
                    progress_reset: status.progress_reset,
                })
            }
            LeaderOp::Rekey { shares, threshold } => {
                let params = ShamirParams::new(shares, threshold)
                    .map_err(|e| ForwardError::Invalid(e.to_string()))?;
                self.key_manager
                    .rekey(params)
                    .await
                    .map(LeaderReply::Rekeyed)
                    .map_err(|e| self.key_error(e))
            }
            LeaderOp::RotateDataKey => self
                .key_manager
                .rotate_data_key()
                .await
                .map(LeaderReply::Rotated)
                .map_err(|e| self.key_error(e)),
        }
    }

    fn key_error(&self, error: KeyError) -> ForwardError {
        match error {
            KeyError::NotLeader => ForwardError::NotLeader {
                leader: self.leader(),
            },
            KeyError::NotReady => ForwardError::NotReady,
            KeyError::Uninitialized | KeyError::WrongShards => {
                ForwardError::Invalid(error.to_string())
            }
            KeyError::KeepersUnavailable { .. } | KeyError::Crypto(_) | KeyError::Proposal(_) => {
                ForwardError::Unavailable(error.to_string())
            }
        }
    }

    /// The voters of the current membership.
    pub fn voters(&self) -> Vec<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.membership_config.membership().voter_ids().collect()
    }

    async fn add_node(&self, id: u64, node: NexusNode) -> Result<(), ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader(),
            });
        }
        let meta = self
            .state
            .cluster_meta()
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        if id == 0 || NodeId::new(id).is_ok_and(|id| meta.retired_node_ids.contains(&id)) {
            return Err(ForwardError::Invalid(format!(
                "node id {id} was used before and is retired"
            )));
        }
        let known = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            metrics
                .membership_config
                .membership()
                .get_node(&id)
                .cloned()
        };
        if known.is_some_and(|known| known != node) {
            return Err(ForwardError::Invalid(format!(
                "node id {id} is a member with other addresses"
            )));
        }
        // As a learner first: it catches up without counting toward quorum.
        self.raft
            .add_learner(id, node, true)
            .await
            .map_err(membership_error)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        Ok(())
    }

    async fn remove_node(&self, id: u64) -> Result<(), ForwardError> {
        if !self.is_leader() {
            return Err(ForwardError::NotLeader {
                leader: self.leader(),
            });
        }
        let node_id = NodeId::new(id).map_err(|e| ForwardError::Invalid(e.to_string()))?;
        let voters = self.voters();
        if !voters.contains(&id) {
            return Err(ForwardError::Invalid(format!("node {id} is not a voter")));
        }
        if voters.len() <= 1 {
            return Err(ForwardError::Invalid(
                "cannot remove the last voter".to_owned(),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        // The id is never to be used again, even if it is re-added by mistake.
        let retire = Request {
            command: Command::Membership(MembershipCommand::RetireNode { id: node_id }),
            session: None,
            time_ns: 0,
        };
        leader_write(&self.raft, retire).await?;
        Ok(())
    }

    async fn forward(
        &self,
        leader: &NexusNode,
        op: &LeaderOp,
    ) -> Result<LeaderReply, ForwardError> {
        let mut client = self
            .peers
            .client(&leader.cluster_addr)
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let payload = encode(op).map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let mut call = tonic::Request::new(Frame { payload });
        call.set_timeout(FORWARD_TIMEOUT);
        match client.forward(call).await {
            Ok(reply) => decode::<Result<LeaderReply, ForwardError>>(
                "forward reply",
                &reply.into_inner().payload,
            )
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?,
            // Not connected at all: certainly not applied, find the leader again.
            // Retry only when the request certainly never left: a failed
            // connect. Anything else (a dropped connection, a keepalive
            // timeout) may come after the leader took it, and retrying a
            // write without a session could apply it twice.
            Err(status) if status.code() == tonic::Code::Unavailable && never_sent(&status) => {
                Err(ForwardError::NotLeader { leader: None })
            }
            Err(status) => Err(ForwardError::Unavailable(status.message().to_owned())),
        }
    }

    /// Returns once this replica has applied everything committed when the
    /// call began, so a read that follows is linearizable.
    pub async fn linearize(&self) -> Result<(), NodeError> {
        if self.unsafe_local_reads {
            return Ok(());
        }
        if leader_without_quorum(&self.raft) {
            return Err(NodeError::NoLeader);
        }
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        let mut hint: Option<(u64, NexusNode)> = None;
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let (leader, node) = match hint.take() {
                Some(leader) => leader,
                None => self.wait_for_leader(deadline).await?,
            };
            let read_index = if leader == self.id {
                self.leader_read_index().await
            } else {
                self.remote_read_index(&node).await
            };
            match read_index {
                Ok(index) => return self.wait_applied(index, deadline).await,
                Err(ForwardError::NotLeader { leader }) => {
                    hint = leader.filter(|(id, _)| *id != self.id);
                    if hint.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Err(error) => return Err(NodeError::Unknown(error.to_string())),
            }
        }
        Err(NodeError::NoLeader)
    }

    /// The log index a linearizable read must see applied, asked of this
    /// replica as the leader: openraft's read index, but while leading in
    /// the term it restarted in, never below the log as it was at start.
    /// The committed id is saved without an fsync (raft/log_store.rs), and
    /// openraft restores a restarted leader in its old term without a new
    /// no-op entry, so after a crash its committed id can trail entries it
    /// acknowledged before. Those are all in its own log (a leader counts
    /// only its own durable appends), and a read that waits for them cannot
    /// miss an acknowledged write. In any later term the new leader's no-op
    /// already covers them. (Caught by the cluster test
    /// `restarting_every_replica_loses_nothing`.)
    pub async fn leader_read_index(&self) -> Result<u64, ForwardError> {
        let term = self.raft.metrics().borrow_watched().current_term;
        let index = leader_read_index(&self.raft).await?;
        Ok(if term == self.log_at_start.term {
            index.max(self.log_at_start.last_index)
        } else {
            index
        })
    }

    async fn remote_read_index(&self, leader: &NexusNode) -> Result<u64, ForwardError> {
        let mut client = self
            .peers
            .client(&leader.cluster_addr)
            .map_err(|e| ForwardError::Unavailable(e.to_string()))?;
        let mut call = tonic::Request::new(Frame {
            payload: Vec::new(),
        });
        call.set_timeout(FORWARD_TIMEOUT);
        match client.read_index(call).await {
            Ok(reply) => {
                decode::<Result<u64, ForwardError>>("read index reply", &reply.into_inner().payload)
                    .map_err(|e| ForwardError::Unavailable(e.to_string()))?
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Err(ForwardError::NotLeader { leader: None })
            }
            Err(status) => Err(ForwardError::Unavailable(status.message().to_owned())),
        }
    }

    async fn wait_applied(
        &self,
        index: u64,
        deadline: tokio::time::Instant,
    ) -> Result<(), NodeError> {
        let mut applied = self.applied.clone();
        let reached = tokio::time::timeout_at(
            deadline,
            applied.wait_for(|log_id| log_id.as_ref().is_some_and(|log_id| log_id.index >= index)),
        )
        .await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(NodeError::Unknown(format!(
                "this replica did not apply index {index} in time"
            ))),
        }
    }

    /// Whether this replica is the leader now.
    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|(leader, _)| leader == self.id)
    }
}

/// A failed membership change, as the forwarding protocol reports it.
fn membership_error(
    error: openraft::errors::RaftError<TypeConfig, openraft::errors::ClientWriteError<TypeConfig>>,
) -> ForwardError {
    match error.forward_to_leader() {
        Some(forward) => ForwardError::NotLeader {
            leader: forward.leader_id.zip(forward.leader_node.clone()),
        },
        None => ForwardError::Unavailable(error.to_string()),
    }
}

/// Whether a failed forward certainly never reached the leader: the
/// connection itself could not be made.
fn never_sent(status: &tonic::Status) -> bool {
    let text = format!(
        "{} {:?}",
        status.message(),
        std::error::Error::source(status)
    );
    text.contains("connect") || text.contains("Connection refused")
}
