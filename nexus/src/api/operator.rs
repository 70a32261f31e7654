//! `/v1/operator/*`: recovery shards out, restore shards in, and (as
//! extensions) rekey and data-key rotation.

use spike_sdk::api::{
    RecoverRequest, RecoverResponse, RekeyRequest, RekeyResponse, RestoreRequest, RestoreResponse,
    RotateRequest, RotateResponse, Shard,
};
use spike_sdk::crypto::ShamirParams;
use spike_sdk::identity::Role;

use super::{ApiError, Audited, Call};
use crate::cluster::{LeaderOp, LeaderReply, RestoreShard};

impl Audited for RecoverRequest {}
impl Audited for RestoreRequest {}
impl Audited for RekeyRequest {}
impl Audited for RotateRequest {}

fn unexpected(reply: &LeaderReply) -> ApiError {
    ApiError::Internal(format!("unexpected reply {reply:?}"))
}

/// Recover: the shares of the current root key, for safekeeping offline.
/// Any replica that holds the key answers identically (shares are
/// deterministic).
pub async fn recover(call: Call<'_>, _: RecoverRequest) -> Result<RecoverResponse, ApiError> {
    call.require(Role::PilotRecover)?;
    let shares = call
        .api
        .node
        .key_manager
        .recovery_shares()
        .map_err(|_| ApiError::NOT_READY)?;
    // Named step: the shares leave their wrappers for the answer's body.
    let shards = shares
        .iter()
        .map(|share| (share.index().get(), Shard::new(*share.expose_secret())))
        .collect();
    Ok(RecoverResponse {
        shards: Some(shards),
        err: None,
    })
}

/// Restore: one shard at a time, taken by the leader.
pub async fn restore(call: Call<'_>, body: RestoreRequest) -> Result<RestoreResponse, ApiError> {
    call.require(Role::PilotRestore)?;
    let index = u8::try_from(body.id)
        .ok()
        .filter(|index| *index > 0)
        .ok_or(ApiError::BAD_REQUEST)?;
    let shard = body.shard.ok_or(ApiError::BAD_REQUEST)?;
    let shard = RestoreShard {
        index,
        value: shard.expose_secret().to_vec(),
    };
    match call.api.node.execute(LeaderOp::Restore(shard)).await? {
        LeaderReply::Restore {
            collected,
            remaining,
            restored,
            progress_reset,
        } => Ok(RestoreResponse {
            collected: collected as u64,
            remaining: remaining as u64,
            restored,
            progress_reset,
            err: None,
        }),
        other => Err(unexpected(&other)),
    }
}

/// Rekey (extension): a new root key, possibly with new n and t.
pub async fn rekey(call: Call<'_>, body: RekeyRequest) -> Result<RekeyResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    // Impossible n and t are bad input on any node, whatever the leader's
    // state (the leader checks them again, with the keepers it has).
    ShamirParams::new(body.shares, body.threshold).map_err(|_| ApiError::BAD_REQUEST)?;
    let op = LeaderOp::Rekey {
        shares: body.shares,
        threshold: body.threshold,
    };
    match call.api.node.execute(op).await? {
        LeaderReply::Rekeyed(root_key_id) => Ok(RekeyResponse {
            root_key_id,
            err: None,
        }),
        other => Err(unexpected(&other)),
    }
}

/// Rotate (extension): a new data key for new writes.
pub async fn rotate(call: Call<'_>, _: RotateRequest) -> Result<RotateResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    match call.api.node.execute(LeaderOp::RotateDataKey).await? {
        LeaderReply::Rotated(data_key_id) => Ok(RotateResponse {
            data_key_id,
            err: None,
        }),
        other => Err(unexpected(&other)),
    }
}
