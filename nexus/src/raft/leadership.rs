//! Leadership as the rest of Nexus sees it: who leads (one definition, with
//! the quorum-freshness rule), the membership, a typed view for status and
//! metrics, and the work only a leader does (writes, read indexes,
//! membership changes). Nothing outside this module reads openraft's
//! metrics or calls its client API.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::async_runtime::{Instant as _, WatchReceiver};
use openraft::errors::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::type_config::alias::WatchReceiverOf;
use openraft::{ChangeMembers, RaftMetrics, ReadPolicy, ServerState};
use serde::{Deserialize, Serialize};

use super::contact::LeaderContact;
use super::format::ClusterFormat;
use super::{NexusNode, NexusRaft, TypeConfig};
use crate::state::command::{Request, Response};

/// How often an in-flight write or read index looks whether the leader
/// still has its quorum.
const QUORUM_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// The leader: its id and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    /// Its node id.
    pub id: u64,
    /// Its addresses (the API address is the hint clients get).
    pub node: NexusNode,
}

/// Why leader-side work did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// This replica is not the leader (any more); nothing was proposed.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader {
        /// The leader as this replica knows it.
        leader: Option<Leader>,
    },
    /// The work was handed to Raft and did not finish: a write may or may
    /// not apply, a read index is not known.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request needs an on-disk format the cluster does not write yet
    /// (a replica still runs an older release); nothing was proposed.
    #[error(
        "this needs on-disk format {needed}, and the cluster writes format {cluster} until every replica runs a release that reads it (spike cluster status)"
    )]
    FormatNotYet {
        /// The format the request needs.
        needed: u32,
        /// The format the cluster writes.
        cluster: u32,
    },
}

/// What Raft role this replica is in: the contract's [`RaftRole`].
pub use spike_sdk::api::RaftRole as Role;

fn role_of(state: ServerState) -> Role {
    match state {
        ServerState::Learner => Role::Learner,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Leader => Role::Leader,
        ServerState::Shutdown => Role::Shutdown,
    }
}

/// One replica of the membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its node id.
    pub id: u64,
    /// Its addresses.
    pub node: NexusNode,
    /// Whether it votes (a learner does not).
    pub voter: bool,
}

/// This replica's view of the cluster at one instant, for status and
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// This replica's id.
    pub node_id: u64,
    /// Its Raft role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The leader as [`Leadership::leader`] defines it.
    pub leader: Option<Leader>,
    /// Index of its last log entry.
    pub last_log_index: Option<u64>,
    /// Index of the last entry a quorum holds, as the leader last said.
    pub committed_index: Option<u64>,
    /// Index of its last applied entry.
    pub applied_index: Option<u64>,
    /// Every member, by id.
    pub members: Vec<Member>,
}

impl ClusterView {
    /// Whether this replica leads.
    pub fn is_leader(&self) -> bool {
        self.leader
            .as_ref()
            .is_some_and(|leader| leader.id == self.node_id)
    }

    /// How many members vote.
    pub fn voter_count(&self) -> usize {
        self.members.iter().filter(|member| member.voter).count()
    }
}

/// How one member keeps up with the leader, as the leader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Time since it last acknowledged a heartbeat or an append; `None`
    /// when it never has in this leader's term.
    pub last_contact: Option<Duration>,
    /// Entries the leader holds that it has not acknowledged.
    pub log_lag: u64,
}

/// The leader's view of how every member keeps up (see
/// [`Leadership::progress`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    /// The members, as [`ClusterView::members`].
    pub view: ClusterView,
    /// Each member's progress by id; the leader itself is always current.
    pub progress: BTreeMap<u64, Progress>,
}

/// Where the log stood when the process started (see
/// [`Leadership::read_index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAtStart {
    /// Term of the saved vote.
    pub term: u64,
    /// Index of the last entry.
    pub last_index: u64,
}

/// Leadership of one replica, over its Raft handle. Cheap to clone.
#[derive(Clone)]
pub struct Leadership {
    raft: NexusRaft,
    id: u64,
    quorum_lost_after: Duration,
    log_at_start: LogAtStart,
    contact: LeaderContact,
    format: ClusterFormat,
    metrics: crate::metrics::RaftMetrics,
}

impl Leadership {
    pub(super) fn new(
        raft: NexusRaft,
        id: u64,
        log_at_start: LogAtStart,
        contact: LeaderContact,
        format: ClusterFormat,
        metrics: crate::metrics::RaftMetrics,
    ) -> Self {
        let config = raft.config();
        let quorum_lost_after = quorum_lost_after(
            Duration::from_millis(config.election_timeout_max),
            Duration::from_millis(config.heartbeat_interval),
        );
        Self {
            raft,
            id,
            quorum_lost_after,
            log_at_start,
            contact,
            format,
            metrics,
        }
    }

    /// Counts every new leader this replica sees (a change of Raft's
    /// current leader to another, or to one after none) until Raft stops.
    pub async fn count_leader_changes(self) {
        let mut watch = self.raft.metrics();
        let mut last = watch.borrow_watched().current_leader;
        while watch.changed().await.is_ok() {
            let leader = watch.borrow_watched().current_leader;
            if leader != last && leader.is_some() {
                self.metrics.leader_changed();
            }
            last = leader;
        }
    }

    /// This replica's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The leader as this replica knows it: the leader of the committed
    /// vote, except that this replica counts itself only while Raft has it
    /// leading and a quorum acknowledged it within the check-quorum window
    /// (a leader cut off from its followers stops calling itself one).
    pub fn leader(&self) -> Option<Leader> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        self.leader_in(&metrics)
    }

    fn leader_in(&self, metrics: &RaftMetrics<TypeConfig>) -> Option<Leader> {
        let id = metrics.current_leader?;
        if id == self.id && !(metrics.state == ServerState::Leader && self.quorum_fresh(metrics)) {
            return None;
        }
        let node = *metrics.membership_config.membership().get_node(&id)?;
        Some(Leader { id, node })
    }

    /// Whether this replica leads now (by [`Leadership::leader`]'s rule).
    pub fn is_leader(&self) -> bool {
        self.leader().is_some_and(|leader| leader.id == self.id)
    }

    /// Whether Raft has this replica leading but no quorum acknowledged it
    /// within the check-quorum window: requests then fail at once.
    pub fn leader_without_quorum(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.current_leader == Some(self.id) && !self.quorum_fresh(&metrics)
    }

    fn quorum_fresh(&self, metrics: &RaftMetrics<TypeConfig>) -> bool {
        // PLANTED BUG read-index-without-quorum (1/2): never stale.
        if metrics.membership_config.membership().voter_ids().count() <= 1
            || spike_sdk::planted!(ReadIndexWithoutQuorum)
        {
            return true;
        }
        metrics
            .last_quorum_acked
            .as_ref()
            .is_some_and(|acked| acked.elapsed() < self.quorum_lost_after)
    }

    /// How old this replica's state with `applied` entries applied is at
    /// most: the time since a quorum last acknowledged this replica as
    /// leader, or since a leader last told it a commit index it has
    /// applied. `None` when it cannot say (never heard from a leader,
    /// or behind every message it kept). A lone voter is never stale.
    pub fn staleness(&self, applied: u64) -> Option<Duration> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        if metrics.current_leader == Some(self.id) && metrics.state == ServerState::Leader {
            if metrics.membership_config.membership().voter_ids().count() <= 1 {
                return Some(Duration::ZERO);
            }
            return metrics
                .last_quorum_acked
                .as_ref()
                .map(|acked| acked.elapsed());
        }
        drop(metrics);
        self.contact.caught_up_at(applied).map(|at| at.elapsed())
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// The voters of the current membership.
    pub fn voters(&self) -> BTreeSet<u64> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.membership_config.membership().voter_ids().collect()
    }

    /// The addresses of member `id`, if it is one.
    pub fn member(&self, id: u64) -> Option<NexusNode> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .cloned()
    }

    /// This replica's view of the cluster now.
    pub fn view(&self) -> ClusterView {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        ClusterView {
            node_id: self.id,
            role: role_of(metrics.state),
            term: metrics.current_term,
            leader: self.leader_in(&metrics),
            last_log_index: metrics.last_log_index,
            committed_index: metrics
                .cluster_committed
                .as_ref()
                .map(|log_id| log_id.index),
            applied_index: metrics.last_applied.as_ref().map(|log_id| log_id.index),
            members: membership
                .nodes()
                .map(|(id, node)| Member {
                    id: *id,
                    node: *node,
                    voter: voters.contains(id),
                })
                .collect(),
        }
    }

    /// How each member keeps up, while this replica leads (openraft's
    /// heartbeat and replication metrics, which only a leader keeps).
    pub fn progress(&self) -> Option<Replication> {
        let view = self.view();
        if !view.is_leader() {
            return None;
        }
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let last_index = metrics.last_log_index.unwrap_or(0);
        let heartbeat = metrics.heartbeat.as_ref();
        let replication = metrics.replication.as_ref();
        let progress = view
            .members
            .iter()
            .map(|member| {
                if member.id == self.id {
                    let current = Progress {
                        last_contact: Some(Duration::ZERO),
                        log_lag: 0,
                    };
                    return (member.id, current);
                }
                let last_contact = heartbeat
                    .and_then(|acks| acks.get(&member.id).cloned().flatten())
                    .map(|acked| acked.elapsed());
                // An entry never acknowledged lags by the whole log.
                let matched = replication
                    .and_then(|matched| matched.get(&member.id).cloned().flatten())
                    .map_or(0, |log_id| log_id.index + 1);
                let log_lag = (last_index + 1).saturating_sub(matched);
                (
                    member.id,
                    Progress {
                        last_contact,
                        log_lag,
                    },
                )
            })
            .collect();
        Some(Replication { view, progress })
    }

    /// The leader, waiting for one until `deadline`.
    pub async fn wait_for_leader(&self, deadline: tokio::time::Instant) -> Option<Leader> {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(leader) = self.leader() {
                return Some(leader);
            }
            // Any change (a heartbeat, an acknowledgement) may change the
            // answer; a stopped Raft never will.
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// A watch that wakes when the leader or this replica's role changes
    /// (not on every heartbeat).
    pub fn changes(&self) -> LeadershipChanges {
        let metrics = self.raft.metrics();
        let seen = {
            let now = metrics.borrow_watched();
            (now.current_leader, now.state)
        };
        LeadershipChanges { metrics, seen }
    }

    /// Resolves once this leader has lost its quorum.
    async fn quorum_lost(&self) {
        loop {
            tokio::time::sleep(QUORUM_CHECK_INTERVAL).await;
            if self.leader_without_quorum() {
                return;
            }
        }
    }

    /// Applies `request` through Raft on this replica, which must be the
    /// leader; the leader's clock stamps it. If the leader loses its quorum
    /// while the entry is in flight, the caller learns at once that the
    /// outcome is unknown (the entry may still commit if the partition
    /// heals in time, so a retry must carry the same session to stay
    /// exactly-once).
    pub async fn write(&self, mut request: Request) -> Result<Response, LeaderError> {
        // A replica of an older release would stop at an entry it cannot
        // decode: a command of a newer format waits for the cluster's
        // switch (`cluster::version`), except the switch itself.
        let needed = request.format_needed();
        let cluster = self.format.get();
        if needed > cluster && request.switches_format_to().is_none() {
            return Err(LeaderError::FormatNotYet { needed, cluster });
        }
        request.time_ns = crate::clock::now_ns();
        let proposed = std::time::Instant::now();
        let written = tokio::select! {
            written = self.raft.client_write(request) => written,
            () = self.quorum_lost() => {
                return Err(LeaderError::OutcomeUnknown(
                    "the leader lost its quorum; the write may or may not apply".to_owned(),
                ));
            }
        };
        let written = written.map(|written| written.data).map_err(refused_write)?;
        self.metrics.written(proposed.elapsed());
        Ok(written)
    }

    /// The log index a linearizable read must see applied, asked of this
    /// replica as the leader: openraft's read index, but while leading in
    /// the term it restarted in, never below the log as it was at start.
    /// The committed id is saved without an fsync (raft/log_store.rs), and
    /// a leader openraft restores in its old term has no new no-op entry,
    /// so after a crash its committed id could trail entries it
    /// acknowledged before. (Caught by the cluster test
    /// `restarting_every_replica_loses_nothing`.) Leader restore is now
    /// off (raft/start.rs), so a restarted replica leads only in a later
    /// term, whose no-op covers them; the floor stays as a second guard.
    pub async fn read_index(&self) -> Result<u64, LeaderError> {
        let term = self.term();
        // PLANTED BUG read-index-without-quorum (2/2): what this replica
        // applied, with no round proving it still leads.
        if spike_sdk::planted!(ReadIndexWithoutQuorum) && self.is_leader() {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow_watched();
            return Ok(metrics
                .last_applied
                .as_ref()
                .map_or(0, |log_id| log_id.index));
        }
        let linearizer = tokio::select! {
            linearizer = self.raft.get_read_linearizer(ReadPolicy::ReadIndex) => linearizer,
            () = self.quorum_lost() => return Err(LeaderError::NotLeader { leader: None }),
        };
        let index = match linearizer {
            Ok(linearizer) => linearizer.read_log_id().index(),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                return Err(LeaderError::NotLeader {
                    leader: leader_of(forward),
                });
            }
            Err(error) => return Err(LeaderError::OutcomeUnknown(error.to_string())),
        };
        Ok(read_floor(index, term, self.log_at_start))
    }

    /// Whether this replica leads and has applied everything committed
    /// before its term (a read index round trip within `timeout`, then
    /// applying up to it, proves both), so it acts on the definitive
    /// state. The read index is [`Self::read_index`]'s: a leader restarted
    /// in its old term would otherwise act before applying the entries it
    /// acknowledged before the crash (regression: a restore right after a
    /// total loss compared the operator's shards with the root key a rekey
    /// had replaced, and refused them).
    pub async fn is_settled_leader(&self, timeout: Duration) -> bool {
        if !self.is_leader() {
            return false;
        }
        let settled = async {
            let index = self.read_index().await.ok()?;
            self.raft
                .wait(None)
                .applied_index_at_least(Some(index), "a settled leader")
                .await
                .ok()
        };
        matches!(tokio::time::timeout(timeout, settled).await, Ok(Some(_)))
    }

    /// Adds `id` as a learner and waits until it has caught up.
    pub async fn add_learner(&self, id: u64, node: NexusNode) -> Result<(), LeaderError> {
        self.raft
            .add_learner(id, node, true)
            .await
            .map(|_| ())
            .map_err(refused_write)
    }

    /// Makes the learner `id` a voter.
    pub async fn add_voter(&self, id: u64) -> Result<(), LeaderError> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(refused_write)
    }

    /// Removes the voter `id` from the membership.
    pub async fn remove_voter(&self, id: u64) -> Result<(), LeaderError> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(refused_write)
    }

    /// Removes the learner `id` from the membership.
    pub async fn remove_learner(&self, id: u64) -> Result<(), LeaderError> {
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(refused_write)
    }

    /// Asks Raft to hand leadership to the voter `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), LeaderError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|error| LeaderError::OutcomeUnknown(error.to_string()))
    }

    /// Founds the cluster with `founders` as its voters, unless the log
    /// already holds a membership (any later start, or another founder's).
    pub async fn found_cluster(&self, founders: &BTreeMap<u64, NexusNode>) {
        match self.raft.is_initialized().await {
            Ok(true) => {}
            Ok(false) => match self.raft.initialize(founders.clone()).await {
                Ok(()) => tracing::info!(voters = founders.len(), "cluster founded"),
                Err(error) => tracing::warn!(%error, "cluster not founded (already initialized?)"),
            },
            Err(error) => tracing::error!(%error, "cannot tell whether the cluster is initialized"),
        }
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft did not shut down cleanly");
        }
    }
}

/// Wakes on changes of the leader or of this replica's role.
pub struct LeadershipChanges {
    metrics: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    seen: (Option<u64>, ServerState),
}

impl LeadershipChanges {
    /// Resolves at the next change of leader or role since this watch was
    /// made; never, once Raft has stopped.
    pub async fn changed(mut self) {
        loop {
            if self.metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
            let now = self.metrics.borrow_watched();
            if (now.current_leader, now.state) != self.seen {
                return;
            }
        }
    }
}

/// How long a leader may go without a quorum acknowledging it before it
/// stops calling itself the leader ("check quorum"): the longest election
/// timeout and four heartbeats more (500 ms by default), by when the others
/// are electing a new one. Requests then fail at once with 503 and no
/// leader hint, so clients move to another node instead of waiting out
/// their timeout on a leader cut off from its followers.
fn quorum_lost_after(election_timeout_max: Duration, heartbeat_interval: Duration) -> Duration {
    election_timeout_max + 4 * heartbeat_interval
}

/// The read index `index`, raised to the log at start while leading in
/// the term this process started in (see [`Leadership::read_index`]).
fn read_floor(index: u64, term: u64, log_at_start: LogAtStart) -> u64 {
    if term == log_at_start.term {
        index.max(log_at_start.last_index)
    } else {
        index
    }
}

fn leader_of(forward: ForwardToLeader<TypeConfig>) -> Option<Leader> {
    let id = forward.leader_id?;
    let node = forward.leader_node?;
    Some(Leader { id, node })
}

/// A refused or failed proposal: not the leader (nothing proposed), or an
/// unknown outcome.
fn refused_write(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> LeaderError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => LeaderError::NotLeader {
            leader: leader_of(forward),
        },
        error => LeaderError::OutcomeUnknown(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_loses_its_quorum_after_the_longest_election_timeout_and_four_heartbeats() {
        assert_eq!(
            quorum_lost_after(Duration::from_millis(300), Duration::from_millis(50)),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_leader_in_the_term_it_restarted_in_reads_no_lower_than_its_log_at_start() {
        let at_start = LogAtStart {
            term: 4,
            last_index: 90,
        };
        assert_eq!(read_floor(80, 4, at_start), 90);
        assert_eq!(read_floor(95, 4, at_start), 95);
        assert_eq!(
            read_floor(80, 5, at_start),
            80,
            "a later term has its own no-op"
        );
    }

    #[test]
    fn role_names_are_those_status_reports_have_always_shown() {
        for state in [
            ServerState::Learner,
            ServerState::Follower,
            ServerState::Candidate,
            ServerState::Leader,
            ServerState::Shutdown,
        ] {
            let shown = serde_json::to_value(role_of(state)).expect("json");
            assert_eq!(shown, serde_json::json!(format!("{state:?}")));
        }
    }
}
