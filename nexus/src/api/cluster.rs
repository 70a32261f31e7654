//! `/v1/cluster` (extension): status, membership and leadership.

use spike_sdk::api::{
    AddMemberRequest, BackupSchedule, ClusterHealth, ClusterHealthRequest, ClusterLimits,
    ClusterLimitsRequest, ClusterMembers, ClusterMembersRequest, ClusterStatus,
    ClusterStatusRequest, EmptyResponse, LastBackup, Member, MemberHealth, RemoveMemberRequest,
    RootKeyState, RootKeyStatus, SetLimitsRequest, TransferLeaderRequest,
};
use spike_sdk::domain::{DataKeyId, NodeId};
use spike_sdk::identity::Role;

use super::{ApiError, Audited, Call};
use crate::cluster::{LeaderOp, LeaderReply};
use crate::keys::KeyStatus;
use crate::raft::{ClusterView, NexusNode};
use crate::state::command::{Command, LimitsCommand, Refusal, Request, Response};

impl Audited for ClusterStatusRequest {}
impl Audited for ClusterMembersRequest {}
impl Audited for AddMemberRequest {}
impl Audited for RemoveMemberRequest {}
impl Audited for TransferLeaderRequest {}
impl Audited for ClusterHealthRequest {}
impl Audited for ClusterLimitsRequest {}
impl Audited for SetLimitsRequest {}

fn member_list(call: &Call<'_>, view: &ClusterView) -> Result<Vec<Member>, ApiError> {
    let non_voters = call
        .api
        .node
        .state
        .non_voters()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(view
        .members
        .iter()
        .map(|member| Member {
            id: member.id,
            cluster_addr: member.node.cluster_addr,
            api_addr: member.node.api_addr,
            voter: member.voter,
            non_voter: !member.voter
                && NodeId::new(member.id).is_ok_and(|id| non_voters.contains(&id)),
        })
        .collect())
}

/// Status: this replica, the leader, Raft progress, members and the root key.
pub async fn status(call: Call<'_>, _: ClusterStatusRequest) -> Result<ClusterStatus, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let node = &call.api.node;
    let view = node.cluster_view();
    let leader = view.leader.as_ref();
    let (status, root_key_id) = match node.keys.status() {
        KeyStatus::Uninitialized => (RootKeyState::Uninitialized, None),
        KeyStatus::Locked { root_key_id } => (RootKeyState::Locked, Some(root_key_id)),
        KeyStatus::Ready { root_key_id } => (RootKeyState::Ready, Some(root_key_id)),
    };
    let unlocked = node.keys.unlocked();
    let key_check = unlocked
        .as_ref()
        .map(|unlocked| hex::encode(unlocked.key_check.as_bytes()));
    let data_key_id = unlocked.as_ref().map(|unlocked| unlocked.active_data_key());
    let data_key_encryptions = match data_key_id {
        Some(id) => Some(
            node.state
                .cluster_meta()
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .encryptions
                .get(&DataKeyId(id))
                .copied()
                .unwrap_or(0),
        ),
        None => None,
    };
    let alarm = node.integrity().alarm();
    Ok(ClusterStatus {
        node_id: node.id,
        state: view.role,
        leader_id: leader.map(|leader| leader.id),
        leader_api_addr: leader.map(|leader| leader.node.api_addr),
        term: view.term,
        last_log_index: view.last_log_index,
        commit_index: view.committed_index,
        applied_index: view.applied_index,
        members: member_list(&call, &view)?,
        root_key: RootKeyStatus {
            status,
            root_key_id,
            key_check,
            data_key_id,
            data_key_encryptions,
        },
        release: Some(crate::cluster::version::RELEASE.to_owned()),
        format_oldest: Some(crate::raft::format::FORMAT_OLDEST),
        format_newest: Some(crate::raft::format::FORMAT_NEWEST),
        cluster_format: Some(
            node.state
                .cluster_format()
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        ),
        last_backup: node
            .state
            .last_backup()
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map(|record| LastBackup {
                slot: record.slot,
                interval_ms: record.interval_ms,
                slot_time: crate::backup::files::rfc3339(record.slot_start_ms()),
                index: record.index,
                file: record.file,
                node: record.node.get(),
                root_key_id: record.root_key_id.0,
                size_bytes: record.size_bytes,
                sha256: hex::encode(record.sha256),
            }),
        backup_schedule: call.api.backups.as_ref().map(|backups| {
            let local = backups.local();
            BackupSchedule {
                interval_ms: u64::try_from(local.interval.as_millis()).unwrap_or(u64::MAX),
                dir: local.dir.display().to_string(),
                retain: local.retain as u64,
                succeeded: local.succeeded,
                failed: local.failed,
            }
        }),
        corrupt: alarm.is_some(),
        corruption: alarm.map(|alarm| alarm.reason),
        digest_agreed_index: node.integrity().agreed_index(),
        storage_used_bytes: Some(node.quota().used()),
        storage_quota_bytes: Some(node.quota().quota()),
        storage_quota_exceeded: Some(node.quota().exceeded()),
        err: None,
    })
}

/// Members: every replica and whether it votes.
pub async fn members(call: Call<'_>, _: ClusterMembersRequest) -> Result<ClusterMembers, ApiError> {
    call.require(Role::PilotSuperuser)?;
    Ok(ClusterMembers {
        members: member_list(&call, &call.api.node.cluster_view())?,
        err: None,
    })
}

/// Health: the leader's autopilot report, asked of the leader wherever it
/// is.
pub async fn health(call: Call<'_>, _: ClusterHealthRequest) -> Result<ClusterHealth, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let report = call.api.node.health().await?;
    Ok(ClusterHealth {
        leader_id: report.leader_id,
        healthy: report.healthy,
        failure_tolerance: report.failure_tolerance,
        voters: report.voters,
        healthy_voters: report.healthy_voters,
        members: report
            .members
            .into_iter()
            .map(|member| MemberHealth {
                id: member.id,
                cluster_addr: member.node.cluster_addr,
                api_addr: member.node.api_addr,
                voter: member.voter,
                non_voter: member.non_voter,
                leader: member.leader,
                last_contact_ms: member.last_contact_ms,
                log_lag: member.log_lag,
                healthy: member.healthy,
                stable_for_ms: member.stable_for_ms,
            })
            .collect(),
        err: None,
    })
}

async fn run(call: &Call<'_>, op: LeaderOp) -> Result<EmptyResponse, ApiError> {
    match call.api.node.execute(op).await? {
        LeaderReply::Done => Ok(EmptyResponse::default()),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Add: a new replica joins as a learner; the autopilot promotes it later.
pub async fn add(call: Call<'_>, body: AddMemberRequest) -> Result<EmptyResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let address = |text: &str| text.parse().map_err(|_| ApiError::BAD_REQUEST);
    let id = NodeId::new(body.id)?;
    let node = NexusNode {
        cluster_addr: address(&body.cluster_addr)?,
        api_addr: address(&body.api_addr)?,
    };
    let op = if body.non_voter {
        LeaderOp::AddNonVoter { id, node }
    } else {
        LeaderOp::AddNode { id, node }
    };
    run(&call, op).await
}

/// Remove: a replica leaves; its id is retired.
pub async fn remove(call: Call<'_>, body: RemoveMemberRequest) -> Result<EmptyResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let id = NodeId::new(body.id)?;
    run(&call, LeaderOp::RemoveNode { id }).await
}

/// Transfer: hand leadership to another voter.
pub async fn transfer(
    call: Call<'_>,
    body: TransferLeaderRequest,
) -> Result<EmptyResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let to = NodeId::new(body.id)?;
    run(&call, LeaderOp::TransferLeader { to }).await
}

/// Limits: the rate limits in force, as committed.
pub async fn limits(call: Call<'_>, _: ClusterLimitsRequest) -> Result<ClusterLimits, ApiError> {
    call.require(Role::PilotSuperuser)?;
    call.read_barrier().await?;
    let limits = call
        .api
        .node
        .state
        .limits()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ClusterLimits { limits, err: None })
}

/// Set limits: replaces the rate limits cluster-wide (400 if invalid, or
/// while a replica still runs a release without them).
pub async fn set_limits(call: Call<'_>, body: SetLimitsRequest) -> Result<EmptyResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    if let Err(reason) = body.limits.validate() {
        tracing::info!(%reason, "limits refused");
        return Err(ApiError::BAD_REQUEST);
    }
    let request = Request {
        command: Command::Limits(LimitsCommand::Set(body.limits)),
        session: None,
        time_ns: 0,
    };
    match call.api.node.write(request).await {
        Ok(Response::Done) => Ok(EmptyResponse::default()),
        Ok(Response::Refused(Refusal::InvalidLimits(reason))) => {
            tracing::info!(%reason, "limits refused");
            Err(ApiError::BAD_REQUEST)
        }
        Ok(other) => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
        Err(crate::node::NodeError::Invalid(reason)) => {
            tracing::info!(%reason, "limits refused");
            Err(ApiError::BAD_REQUEST)
        }
        Err(error) => Err(error.into()),
    }
}
