//! `/v1/cluster` (extension): status, membership and leadership.

use serde::Deserialize;
use serde_json::{Value, json};
use spike_sdk::identity::Role;

use super::{ApiError, Call};
use crate::cluster::{LeaderOp, LeaderReply};
use crate::keys::KeyStatus;
use crate::raft::{ClusterView, NexusNode};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AddBody {
    id: u64,
    cluster_addr: String,
    api_addr: String,
}

#[derive(Deserialize)]
struct IdBody {
    id: u64,
}

fn members(view: &ClusterView) -> Value {
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|member| {
            json!({
                "id": member.id,
                "clusterAddr": member.node.cluster_addr,
                "apiAddr": member.node.api_addr,
                "voter": member.voter,
            })
        })
        .collect();
    Value::Array(members)
}

/// Status: this replica, the leader, Raft progress, members and the root key.
pub async fn status(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse(&[])?;
    call.require(Role::PilotSuperuser)?;
    let node = &call.api.node;
    let view = node.cluster_view();
    let leader = view.leader.as_ref();
    let (key_status, root_key_id) = match node.keys.status() {
        KeyStatus::Uninitialized => ("uninitialized", None),
        KeyStatus::Locked { root_key_id } => ("locked", Some(root_key_id)),
        KeyStatus::Ready { root_key_id } => ("ready", Some(root_key_id)),
    };
    let key_check = node
        .keys
        .unlocked()
        .map(|unlocked| hex::encode(unlocked.key_check.as_bytes()));
    Ok(json!({
        "nodeId": node.id,
        "state": view.role.name(),
        "leaderId": leader.map(|leader| leader.id),
        "leaderApiAddr": leader.map(|leader| leader.node.api_addr.clone()),
        "term": view.term,
        "lastLogIndex": view.last_log_index,
        "commitIndex": view.committed_index,
        "appliedIndex": view.applied_index,
        "members": members(&view),
        "rootKey": {
            "status": key_status,
            "rootKeyId": root_key_id,
            "keyCheck": key_check,
        },
    }))
}

/// Members: every replica and whether it votes.
pub async fn list_members(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse(&[])?;
    call.require(Role::PilotSuperuser)?;
    Ok(json!({ "members": members(&call.api.node.cluster_view()) }))
}

async fn run(call: &Call<'_>, op: LeaderOp) -> Result<Value, ApiError> {
    match call.api.node.execute(op).await? {
        LeaderReply::Done => Ok(json!({})),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Add: a new replica joins as a learner, then votes.
pub async fn add(call: Call<'_>) -> Result<Value, ApiError> {
    let body: AddBody = call.parse(&["id", "clusterAddr", "apiAddr"])?;
    call.require(Role::PilotSuperuser)?;
    let valid = |address: &str| address.parse::<std::net::SocketAddr>().is_ok();
    if body.id == 0 || !valid(&body.cluster_addr) || !valid(&body.api_addr) {
        return Err(ApiError::BadRequest);
    }
    let node = NexusNode {
        cluster_addr: body.cluster_addr,
        api_addr: body.api_addr,
    };
    run(&call, LeaderOp::AddNode { id: body.id, node }).await
}

/// Remove: a replica leaves; its id is retired.
pub async fn remove(call: Call<'_>) -> Result<Value, ApiError> {
    let body: IdBody = call.parse(&["id"])?;
    call.require(Role::PilotSuperuser)?;
    run(&call, LeaderOp::RemoveNode { id: body.id }).await
}

/// Transfer: hand leadership to another voter.
pub async fn transfer(call: Call<'_>) -> Result<Value, ApiError> {
    let body: IdBody = call.parse(&["id"])?;
    call.require(Role::PilotSuperuser)?;
    run(&call, LeaderOp::TransferLeader { to: body.id }).await
}
