//! A replica as request handlers use it: writes go to the leader (here or
//! forwarded over the cluster port), linearizable reads wait for the
//! leader's read index to be applied here, and the leader is known for
//! hints.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::autopilot::{Autopilot, HealthReport};
use crate::cluster::forward::Forwarder;
use crate::cluster::{ForwardError, LeaderOp, LeaderReply};
use crate::keys::KeyState;
use crate::keys::manager::{KeyError, KeyManager};
use crate::limits::RateLimiter;
use crate::quota::{QuotaExceeded, StorageQuota};
use crate::raft::state_machine::{AppliedIndex, StateMachine};
use crate::raft::{ClusterView, Leader, LeaderError, Leadership, NexusNode};
use crate::state::command::{
    Command, KeyCommand, MembershipCommand, Request, Response, SecretCommand,
};
use crate::state::store::StateReader;
use spike_sdk::crypto::{KeyShare, SecretBytes, ShamirParams, ShareIndex};
use spike_sdk::domain::NodeId;

/// How long a request waits for a leader to exist; no retry starts later.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Attempts at the leader before giving up (leaders change mid-request).
const FORWARD_ATTEMPTS_MAX: usize = 5;
/// Pause before looking for the leader again when no hint came back.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// Why a write or linearizable read did not complete.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No leader is known (election in progress, or no quorum); nothing was
    /// applied.
    #[error("no leader is available")]
    NoLeader,
    /// The request may or may not have been applied (the leader failed, or
    /// the connection dropped after sending).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// The request is invalid; nothing changed.
    #[error("{0}")]
    Invalid(String),
    /// The leader does not hold the root key.
    #[error("the leader does not hold the root key")]
    NotReady,
    /// The cluster cannot take this request yet (it needs an on-disk
    /// format the cluster does not write yet); nothing changed.
    #[error("{0}")]
    NotYet(String),
    /// The leader is past its storage quota and the request adds data;
    /// nothing changed.
    #[error("{0}")]
    StorageQuota(QuotaExceeded),
}

/// How this replica serves linearizable reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reads {
    /// After the leader's read index is applied here.
    Linearizable,
    /// From local state at once: stale reads happen. Unsafe, for the
    /// checker's own test only.
    UnsafeLocal,
}

/// Whether a request may change state, which decides what an unknown
/// outcome allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Asking again is harmless.
    ReadOnly,
    /// Asking again after an unknown outcome could apply it twice.
    Mutating,
}

/// What the retry loop does after a failed attempt.
#[derive(Debug)]
enum Next {
    /// Try again at once, at this leader.
    RetryAt(Leader),
    /// Pause, find the leader again, and try again.
    RetryAfterPause,
    /// Give up with this error.
    Fail(NodeError),
}

/// The decision after `error` from an attempt at a request with `effect`,
/// made on replica `own_id`.
fn after_failure(error: ForwardError, effect: Effect, own_id: u64) -> Next {
    match error {
        ForwardError::NotLeader {
            leader: Some(leader),
        } if leader.id != own_id => Next::RetryAt(leader),
        ForwardError::NotLeader { .. } | ForwardError::NeverSent(_) => Next::RetryAfterPause,
        ForwardError::OutcomeUnknown(_) if effect == Effect::ReadOnly => Next::RetryAfterPause,
        // PLANTED BUG unknown-outcome-retried: a write that may have
        // applied is sent again.
        ForwardError::OutcomeUnknown(_) if spike_sdk::planted!(UnknownOutcomeRetried) => {
            Next::RetryAfterPause
        }
        ForwardError::OutcomeUnknown(reason) => Next::Fail(NodeError::OutcomeUnknown(reason)),
        ForwardError::Invalid(reason) => Next::Fail(NodeError::Invalid(reason)),
        ForwardError::NotReady => Next::Fail(NodeError::NotReady),
        ForwardError::NotYet(reason) => Next::Fail(NodeError::NotYet(reason)),
        ForwardError::StorageQuota(exceeded) => Next::Fail(NodeError::StorageQuota(exceeded)),
    }
}

/// A key manager's refusal as the forwarding protocol reports it; `leader`
/// is the hint for [`KeyError::NotLeader`].
fn key_refusal(error: KeyError, leader: Option<Leader>) -> ForwardError {
    match error {
        KeyError::NotLeader => ForwardError::NotLeader { leader },
        KeyError::NotReady | KeyError::Audit { committed: false } => ForwardError::NotReady,
        KeyError::Uninitialized
        | KeyError::WrongShards
        | KeyError::Parameters(_)
        | KeyError::IdsExhausted => ForwardError::Invalid(error.to_string()),
        KeyError::KeepersUnavailable { .. }
        | KeyError::Crypto(_)
        | KeyError::Proposal(_)
        | KeyError::Audit { committed: true } => ForwardError::OutcomeUnknown(error.to_string()),
    }
}

/// Whether a peer may forward `op` to the leader. A replica forwards
/// client writes (secrets, policies, backup restore pieces) and typed
/// operator operations, which the leader checks itself (restore shards,
/// rekey, rotation, membership). Raw key commands (`Initialize`, `Rekey`,
/// `ReplaceKeyring`) and membership facts are only ever proposed by the
/// leader's own key manager and membership code, after its own checks
/// (shares pushed to t keepers first): a forwarded one is refused, so a
/// peer cannot commit a key no keeper holds shares of. An encryption
/// reservation (the cipher routes' count) changes no key and comes from
/// any replica.
fn forwardable(op: &LeaderOp) -> Result<(), ForwardError> {
    let LeaderOp::Write(request) = op else {
        return Ok(());
    };
    // PLANTED BUG peer-forwards-key-commands.
    if spike_sdk::planted!(PeerForwardsKeyCommands) {
        return Ok(());
    }
    match &request.command {
        Command::Secret(SecretCommand::Reseal { .. }) => Err(ForwardError::Invalid(
            "re-seals come from the leader's re-encryption, never from a peer".to_owned(),
        )),
        Command::Secret(_)
        | Command::Settings(_)
        | Command::Policy(_)
        | Command::Restore(_)
        | Command::Limits(_)
        | Command::Keys(KeyCommand::ReserveEncryptions { .. }) => Ok(()),
        Command::Keys(_) => Err(ForwardError::Invalid(
            "key commands come from the leader's key manager, never from a peer".to_owned(),
        )),
        Command::Membership(_) => Err(ForwardError::Invalid(
            "membership facts come from the leader, never from a peer".to_owned(),
        )),
        Command::Backup(_) => Err(ForwardError::Invalid(
            "backup records come from the leader's own schedule, never from a peer".to_owned(),
        )),
    }
}

/// What bounds a replica's use: the storage quota (its writes, as the
/// leader) and the rate limits (its API edge).
pub struct Bounds {
    /// The storage quota, measured by its own task.
    pub quota: Arc<StorageQuota>,
    /// The API's token buckets.
    pub limiter: Arc<RateLimiter>,
}

/// One replica.
#[derive(Clone)]
pub struct Node {
    /// This replica's id.
    pub id: u64,
    /// Read access to its applied state.
    pub state: StateReader,
    /// The root key as this replica holds it.
    pub keys: Arc<KeyState>,
    /// The root-key lifecycle (operator actions).
    pub key_manager: Arc<KeyManager>,
    leadership: Leadership,
    forwarder: Forwarder,
    machine: StateMachine,
    applied: AppliedIndex,
    reads: Reads,
    autopilot: Arc<Autopilot>,
    quota: Arc<StorageQuota>,
    limiter: Arc<RateLimiter>,
}

impl Node {
    /// The corruption check of this replica: its alarm and digests.
    pub fn integrity(&self) -> &crate::integrity::Integrity {
        self.machine.integrity()
    }
}

impl Node {
    /// Assembles a replica.
    pub fn new(
        leadership: Leadership,
        machine: StateMachine,
        keys: Arc<KeyState>,
        key_manager: Arc<KeyManager>,
        forwarder: Forwarder,
        reads: Reads,
        autopilot: Arc<Autopilot>,
    ) -> Self {
        if reads == Reads::UnsafeLocal {
            tracing::warn!(
                "UNSAFE: linearizable reads are served from local state without a read index \
                 (--unsafe-local-reads); stale reads will happen"
            );
        }
        Self {
            id: leadership.id(),
            state: machine.reader(),
            keys,
            key_manager,
            leadership,
            forwarder,
            applied: machine.applied(),
            machine,
            reads,
            autopilot,
            quota: Arc::new(StorageQuota::new(0)),
            limiter: Arc::new(RateLimiter::default()),
        }
    }

    /// This replica with `bounds` (no quota and no limits without).
    pub fn with_bounds(mut self, bounds: Bounds) -> Self {
        self.quota = bounds.quota;
        self.limiter = bounds.limiter;
        self
    }

    /// The leader's health report, wherever the leader is.
    pub async fn health(&self) -> Result<HealthReport, NodeError> {
        let reply = self
            .with_leader(Effect::ReadOnly, |leader| async move {
                if leader.id == self.id {
                    self.execute_here(LeaderOp::Health).await
                } else {
                    self.forwarder
                        .execute(&leader.node, &LeaderOp::Health)
                        .await
                }
            })
            .await?;
        match reply {
            LeaderReply::Health(report) => Ok(report),
            other => Err(NodeError::OutcomeUnknown(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Registers the storage quota's and the rate limiter's metrics.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.quota.register_metrics(registry);
        self.limiter.register_metrics(registry);
    }

    /// The index of the last entry applied here (0 before any); the state
    /// read after this call is at least that new.
    pub fn applied_index(&self) -> u64 {
        self.applied.current()
    }

    /// The rate limiter of this replica's API edge.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The storage quota as this replica measures it.
    pub fn quota(&self) -> &StorageQuota {
        &self.quota
    }

    /// Writes a consistent copy of the applied state to `path` as a backup
    /// file (fsynced).
    pub fn export_state(&self, path: &std::path::Path) -> std::io::Result<()> {
        self.machine.export(path)
    }

    /// A directory for temporary files.
    pub fn scratch_dir(&self) -> std::path::PathBuf {
        self.machine.scratch_dir().to_owned()
    }

    /// The leader as this replica knows it.
    pub fn leader(&self) -> Option<Leader> {
        self.leadership.leader()
    }

    /// This replica's view of the cluster: role, progress, leader, members.
    pub fn cluster_view(&self) -> ClusterView {
        self.leadership.view()
    }

    /// At most how old this replica's applied state is (see
    /// [`Leadership::staleness`]); `None` when it cannot say.
    pub fn staleness(&self) -> Option<Duration> {
        if self.reads == Reads::UnsafeLocal {
            return Some(Duration::ZERO);
        }
        self.leadership.staleness(self.applied.current())
    }

    /// Applies `request` through the leader, wherever it is.
    pub async fn write(&self, request: Request) -> Result<Response, NodeError> {
        // A leader of an older release could not even decode a command of
        // a newer format: refuse it here until this replica has applied the
        // cluster's switch (the leader checks again before proposing).
        let needed = request.format_needed();
        if needed > crate::raft::format::FORMAT_OLDEST && request.switches_format_to().is_none() {
            let cluster = self
                .state
                .cluster_format()
                .map_err(|e| NodeError::OutcomeUnknown(e.to_string()))?;
            if needed > cluster {
                let refused = crate::raft::LeaderError::FormatNotYet { needed, cluster };
                return Err(NodeError::NotYet(refused.to_string()));
            }
        }
        match self.execute(LeaderOp::Write(request)).await? {
            LeaderReply::Written(response) => Ok(response),
            other => Err(NodeError::OutcomeUnknown(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Runs `op` on the leader, wherever it is: here, or forwarded over the
    /// cluster port, following leader changes a few hops.
    pub async fn execute(&self, op: LeaderOp) -> Result<LeaderReply, NodeError> {
        let op = &op;
        self.with_leader(Effect::Mutating, |leader| async move {
            if leader.id == self.id {
                self.execute_here(op.clone()).await
            } else {
                self.forwarder.execute(&leader.node, op).await
            }
        })
        .await
    }

    /// Returns once this replica has applied everything committed when the
    /// call began, so a read that follows is linearizable.
    pub async fn linearize(&self) -> Result<(), NodeError> {
        if self.reads == Reads::UnsafeLocal {
            return Ok(());
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let index = self
            .with_leader(Effect::ReadOnly, |leader| async move {
                if leader.id == self.id {
                    self.leader_read_index().await
                } else {
                    self.forwarder.read_index(&leader.node).await
                }
            })
            .await?;
        if self.applied.clone().reached(index, deadline).await {
            Ok(())
        } else {
            Err(NodeError::OutcomeUnknown(format!(
                "this replica did not apply index {index} in time"
            )))
        }
    }

    /// Runs `attempt` at the leader until it succeeds, a failure says to
    /// stop ([`after_failure`]), [`FORWARD_ATTEMPTS_MAX`] attempts are
    /// spent, or [`LEADER_WAIT`] has passed.
    async fn with_leader<T, F, Fut>(&self, effect: Effect, mut attempt: F) -> Result<T, NodeError>
    where
        F: FnMut(Leader) -> Fut,
        Fut: Future<Output = Result<T, ForwardError>>,
    {
        if self.leadership.leader_without_quorum() {
            return Err(NodeError::NoLeader);
        }
        let deadline = Instant::now() + LEADER_WAIT;
        let mut hint: Option<Leader> = None;
        for _ in 0..FORWARD_ATTEMPTS_MAX {
            let leader = match hint.take() {
                Some(leader) => leader,
                None => self
                    .leadership
                    .wait_for_leader(deadline)
                    .await
                    .ok_or(NodeError::NoLeader)?,
            };
            let error = match attempt(leader).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            match after_failure(error, effect, self.id) {
                Next::RetryAt(leader) => hint = Some(leader),
                Next::RetryAfterPause => tokio::time::sleep(RETRY_PAUSE).await,
                Next::Fail(error) => return Err(error),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(NodeError::NoLeader)
    }

    /// Runs `op` that another replica forwarded, on this replica, which
    /// must be the leader. Commands only this leader's own key manager or
    /// membership code may propose never arrive this way (see
    /// [`forwardable`]).
    pub async fn execute_forwarded(&self, op: LeaderOp) -> Result<LeaderReply, ForwardError> {
        forwardable(&op)?;
        // A corrupt leader answers a write from its own state, which
        // differs from the cluster's: refused, nothing proposed, until it
        // has handed leadership away (`crate::integrity`).
        if matches!(op, LeaderOp::Write(_)) && self.integrity().is_corrupt() {
            return Err(ForwardError::NotReady);
        }
        self.execute_here(op).await
    }

    /// Runs `op` on this replica, which must be the leader.
    pub async fn execute_here(&self, op: LeaderOp) -> Result<LeaderReply, ForwardError> {
        match op {
            LeaderOp::Write(request) => {
                // Decided here, before proposing, so apply never looks at
                // a file size and every replica applies alike.
                let admitted = self
                    .quota
                    .check(&request.command)
                    .await
                    .map_err(ForwardError::StorageQuota)?;
                let written = self.leadership.write(request).await;
                let proposed = !matches!(
                    written,
                    Err(LeaderError::NotLeader { .. } | LeaderError::FormatNotYet { .. })
                );
                self.quota.landed(admitted, proposed);
                Ok(LeaderReply::Written(written?))
            }
            LeaderOp::AddNode { id, node } => self
                .add_node(id, node, false)
                .await
                .map(|()| LeaderReply::Done),
            LeaderOp::AddNonVoter { id, node } => self
                .add_node(id, node, true)
                .await
                .map(|()| LeaderReply::Done),
            LeaderOp::RemoveNode { id } => self.remove_node(id).await.map(|()| LeaderReply::Done),
            LeaderOp::TransferLeader { to } => {
                self.transfer_leader(to).await.map(|()| LeaderReply::Done)
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
                    .map_err(|e| self.key_refusal(e))?;
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
                    .map_err(|e| self.key_refusal(e))
            }
            LeaderOp::Health => self
                .autopilot
                .report()
                .map(LeaderReply::Health)
                .ok_or_else(|| self.not_leader()),
            LeaderOp::RotateDataKey => self
                .key_manager
                .rotate_data_key()
                .await
                .map(LeaderReply::Rotated)
                .map_err(|e| self.key_refusal(e)),
        }
    }

    fn key_refusal(&self, error: KeyError) -> ForwardError {
        key_refusal(error, self.leader())
    }

    fn not_leader(&self) -> ForwardError {
        ForwardError::NotLeader {
            leader: self.leader(),
        }
    }

    /// Adds replica `node_id` as a learner: one the autopilot promotes
    /// after the stabilization time, or, if `non_voter`, a read replica it
    /// never promotes. Adding a member again with the same addresses sets
    /// which of the two it is (a voter stays one).
    async fn add_node(
        &self,
        node_id: NodeId,
        node: NexusNode,
        non_voter: bool,
    ) -> Result<(), ForwardError> {
        let id = node_id.get();
        if !self.leadership.is_leader() {
            return Err(self.not_leader());
        }
        let meta = self
            .state
            .cluster_meta()
            .map_err(|e| ForwardError::OutcomeUnknown(e.to_string()))?;
        if meta.retired_node_ids.contains(&node_id) {
            return Err(ForwardError::Invalid(format!(
                "node id {id} was used before and is retired"
            )));
        }
        if self
            .leadership
            .member(id)
            .is_some_and(|known| known != node)
        {
            return Err(ForwardError::Invalid(format!(
                "node id {id} is a member with other addresses"
            )));
        }
        // A replica whose build cannot read what the cluster writes would
        // stop at the first entry it receives; refuse it before it counts.
        // One that cannot be asked yet is added as before (it may still be
        // starting); a build from before versions reads format 1 only.
        let cluster_format = self
            .state
            .cluster_format()
            .map_err(|e| ForwardError::OutcomeUnknown(e.to_string()))?;
        if let Some(version) = crate::cluster::version::ask(self.forwarder.peers(), &node).await
            && !version.reads(cluster_format)
        {
            let refusal = format!(
                "node {id} runs release {}, which reads on-disk formats {} to {}; the cluster writes format {cluster_format}: start it on a newer release",
                version.release, version.format_oldest, version.format_newest
            );
            // The API answers only `bad_request`; the leader's log says why.
            tracing::warn!(%refusal, "a replica was refused as a member");
            return Err(ForwardError::Invalid(refusal));
        }
        if non_voter && self.leadership.voters().contains(&id) {
            return Err(ForwardError::Invalid(format!(
                "node {id} is a voter; remove it first to add it as a non-voter"
            )));
        }
        // Recorded before it is a member, so no leader ever promotes it; a
        // plain add clears an earlier mark (from an add that failed, or to
        // let a read replica vote).
        let marked = self
            .state
            .non_voters()
            .map_err(|e| ForwardError::OutcomeUnknown(e.to_string()))?
            .contains(&node_id);
        if non_voter != marked {
            let mark = Request {
                command: Command::Membership(MembershipCommand::SetNonVoter {
                    id: node_id,
                    non_voter,
                }),
                session: None,
                time_ns: 0,
            };
            self.leadership.write(mark).await?;
        }
        // As a learner: it catches up without counting toward quorum, and
        // the autopilot makes it a voter once it has been healthy for the
        // stabilization time (`crate::autopilot`), unless it is a non-voter.
        self.leadership.add_learner(id, node).await?;
        Ok(())
    }

    async fn remove_node(&self, node_id: NodeId) -> Result<(), ForwardError> {
        let id = node_id.get();
        if !self.leadership.is_leader() {
            return Err(self.not_leader());
        }
        let voters = self.leadership.voters();
        let voter = voters.contains(&id);
        if !voter && self.leadership.member(id).is_none() {
            return Err(ForwardError::Invalid(format!("node {id} is not a member")));
        }
        if voter && voters.len() <= 1 {
            return Err(ForwardError::Invalid(
                "cannot remove the last voter".to_owned(),
            ));
        }
        // Retired first: the id is never to be used again, and an add that
        // races the removal (an operator's, or one retried) is refused
        // from the moment the member is gone. Retiring a member changes
        // nothing else; a removal that then fails is simply asked again.
        let retire = Request {
            command: Command::Membership(MembershipCommand::RetireNode { id: node_id }),
            session: None,
            time_ns: 0,
        };
        self.leadership.write(retire).await?;
        if voter {
            self.leadership.remove_voter(id).await?;
        } else {
            // A learner: one waiting for promotion that never came up.
            self.leadership.remove_learner(id).await?;
        }
        Ok(())
    }

    async fn transfer_leader(&self, to: NodeId) -> Result<(), ForwardError> {
        let to = to.get();
        if !self.leadership.is_leader() {
            return Err(self.not_leader());
        }
        if !self.leadership.voters().contains(&to) {
            return Err(ForwardError::Invalid(format!("node {to} is not a voter")));
        }
        Ok(self.leadership.transfer_leader(to).await?)
    }

    /// The read index, asked of this replica as the leader (see
    /// [`Leadership::read_index`]).
    pub async fn leader_read_index(&self) -> Result<u64, ForwardError> {
        Ok(self.leadership.read_index().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(id: u64) -> Leader {
        Leader {
            id,
            node: NexusNode {
                cluster_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16)),
                api_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 8000 + id as u16)),
            },
        }
    }

    fn reason() -> String {
        "reason".to_owned()
    }

    #[test]
    fn a_peer_cannot_forward_key_or_membership_commands() {
        use crate::state::command::{RestoreCommand, RootKeyRecord};
        use spike_sdk::crypto::key_check::RootKeyId;
        let write = |command| {
            LeaderOp::Write(Request {
                command,
                session: None,
                time_ns: 0,
            })
        };
        let record = RootKeyRecord {
            root_key_id: RootKeyId(9),
            key_check: [1; 32],
            wrapped_keyring: vec![2; 8],
            shares: 3,
            threshold: 2,
        };
        for refused in [
            write(Command::Keys(KeyCommand::Initialize(record.clone()))),
            write(Command::Keys(KeyCommand::Rekey {
                record,
                keyring_version: 1,
            })),
            write(Command::Keys(KeyCommand::ReplaceKeyring {
                root_key_id: RootKeyId(9),
                wrapped_keyring: vec![3; 8],
                keyring_version: 1,
            })),
            write(Command::Membership(MembershipCommand::RetireNode {
                id: NodeId::new(2).expect("a node id"),
            })),
        ] {
            assert!(
                matches!(forwardable(&refused), Err(ForwardError::Invalid(_))),
                "{refused:?} was accepted"
            );
        }
        // What replicas legitimately forward still goes through.
        for accepted in [
            write(Command::Restore(RestoreCommand::Begin { restore_id: 1 })),
            write(Command::Keys(KeyCommand::ReserveEncryptions {
                data_key_id: spike_sdk::domain::DataKeyId(1),
                count: 64,
            })),
            LeaderOp::Rekey {
                shares: 3,
                threshold: 2,
            },
            LeaderOp::RotateDataKey,
            LeaderOp::Restore(crate::cluster::RestoreShard {
                index: 1,
                value: vec![4; 32],
            }),
        ] {
            assert!(forwardable(&accepted).is_ok(), "{accepted:?} was refused");
        }
    }

    #[test]
    fn a_hint_naming_another_replica_is_followed_at_once() {
        for effect in [Effect::ReadOnly, Effect::Mutating] {
            let next = after_failure(
                ForwardError::NotLeader {
                    leader: Some(leader(2)),
                },
                effect,
                1,
            );
            assert!(matches!(next, Next::RetryAt(hinted) if hinted == leader(2)));
        }
    }

    #[test]
    fn no_hint_or_a_hint_naming_this_replica_means_finding_the_leader_again() {
        for hint in [None, Some(leader(1))] {
            let next = after_failure(
                ForwardError::NotLeader { leader: hint },
                Effect::Mutating,
                1,
            );
            assert!(matches!(next, Next::RetryAfterPause), "{next:?}");
        }
    }

    #[test]
    fn a_write_never_sent_is_retried() {
        let next = after_failure(ForwardError::NeverSent(reason()), Effect::Mutating, 1);
        assert!(matches!(next, Next::RetryAfterPause), "{next:?}");
    }

    #[test]
    fn a_write_of_unknown_outcome_is_never_retried() {
        let next = after_failure(ForwardError::OutcomeUnknown(reason()), Effect::Mutating, 1);
        assert!(
            matches!(next, Next::Fail(NodeError::OutcomeUnknown(_))),
            "{next:?}"
        );
    }

    #[test]
    fn a_read_index_of_unknown_outcome_is_asked_again() {
        let next = after_failure(ForwardError::OutcomeUnknown(reason()), Effect::ReadOnly, 1);
        assert!(matches!(next, Next::RetryAfterPause), "{next:?}");
    }

    #[test]
    fn refusals_end_the_request() {
        for effect in [Effect::ReadOnly, Effect::Mutating] {
            let invalid = after_failure(ForwardError::Invalid(reason()), effect, 1);
            assert!(matches!(invalid, Next::Fail(NodeError::Invalid(_))));
            let not_ready = after_failure(ForwardError::NotReady, effect, 1);
            assert!(matches!(not_ready, Next::Fail(NodeError::NotReady)));
        }
    }

    #[test]
    fn key_manager_refusals_map_to_what_the_forwarder_retries_or_reports() {
        let hint = Some(leader(3));
        assert_eq!(
            key_refusal(KeyError::NotLeader, hint.clone()),
            ForwardError::NotLeader {
                leader: hint.clone()
            }
        );
        for not_ready in [KeyError::NotReady, KeyError::Audit { committed: false }] {
            assert_eq!(key_refusal(not_ready, hint.clone()), ForwardError::NotReady);
        }
        for invalid in [KeyError::Uninitialized, KeyError::WrongShards] {
            assert!(matches!(
                key_refusal(invalid, hint.clone()),
                ForwardError::Invalid(_)
            ));
        }
        // A key operation that reached the keepers or Raft may have taken
        // effect: never reported as safe to retry.
        for unknown in [
            KeyError::KeepersUnavailable {
                acknowledged: 1,
                needed: 2,
            },
            KeyError::Proposal(reason()),
            KeyError::Audit { committed: true },
        ] {
            assert!(matches!(
                key_refusal(unknown, hint.clone()),
                ForwardError::OutcomeUnknown(_)
            ));
        }
    }
}
