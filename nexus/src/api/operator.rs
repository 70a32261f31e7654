//! `/v1/operator/*`: recovery shards out, restore shards in, and (as
//! extensions) rekey and data-key rotation.

use spike_sdk::api::{
    GetRotationRequest, RecoverRequest, RecoverResponse, RekeyRequest, RekeyResponse,
    RestoreRequest, RestoreResponse, RotateRequest, RotateResponse, RotationResponse,
    RotationSettings as WireRotation, SetRotationRequest, Shard,
};
use spike_sdk::crypto::ShamirParams;
use spike_sdk::identity::Role;

use super::{ApiError, Audited, Call};
use crate::cluster::{LeaderOp, LeaderReply, RestoreShard};
use crate::state::command::{
    Command, Refusal, Request, Response, RotationSettings, SettingsCommand,
};

impl Audited for RecoverRequest {}
impl Audited for RestoreRequest {}
impl Audited for RekeyRequest {}
impl Audited for RotateRequest {}
impl Audited for GetRotationRequest {}
impl Audited for SetRotationRequest {}

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

const NS_PER_SECOND: u64 = 1_000_000_000;

fn to_wire(settings: &RotationSettings) -> WireRotation {
    WireRotation {
        data_key_rotate_after_ops: settings.data_key_rotate_after_ops,
        data_key_max_age_seconds: settings.data_key_max_age_ns / NS_PER_SECOND,
        root_key_max_age_seconds: settings.root_key_max_age_ns / NS_PER_SECOND,
        reencrypt_per_second: settings.reencrypt_per_second,
    }
}

/// The settings a request names, if every field is one a leader can
/// follow.
fn from_wire(settings: &WireRotation) -> Result<RotationSettings, ApiError> {
    let ns = |seconds: u64| {
        seconds
            .checked_mul(NS_PER_SECOND)
            .ok_or(ApiError::BAD_REQUEST)
    };
    let settings = RotationSettings {
        data_key_rotate_after_ops: settings.data_key_rotate_after_ops,
        data_key_max_age_ns: ns(settings.data_key_max_age_seconds)?,
        root_key_max_age_ns: ns(settings.root_key_max_age_seconds)?,
        reencrypt_per_second: settings.reencrypt_per_second,
    };
    settings.check().map_err(|_| ApiError::BAD_REQUEST)?;
    Ok(settings)
}

/// The rotation state as this replica sees it.
fn rotation_state(call: &Call<'_>) -> Result<RotationResponse, ApiError> {
    let node = &call.api.node;
    let (settings, rotation) = node
        .key_manager
        .rotation_settings()
        .ok_or(ApiError::NOT_READY)?;
    let meta = node
        .state
        .cluster_meta()
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let now_ns = crate::clock::now_ns();
    let age = |since: u64| now_ns.saturating_sub(since) / NS_PER_SECOND;
    let root_key_id = meta.root_key_id().map_or(0, |id| id.0);
    Ok(RotationResponse {
        settings: to_wire(&settings),
        replicated: rotation.settings.is_some(),
        root_key_id,
        active_data_key_id: node
            .keys
            .unlocked()
            .map_or(0, |unlocked| unlocked.active_data_key()),
        data_key_age_seconds: rotation.data_key_since.map_or(0, age),
        root_key_age_seconds: rotation
            .root_key_since
            .filter(|(id, _)| id.0 == root_key_id)
            .map_or(0, |(_, since)| age(since)),
        versions_under_old_keys: node.key_manager.metrics().versions_under_old_keys(),
        reencrypted_versions: node.key_manager.metrics().reencrypted_versions(),
        err: None,
    })
}

/// Rotation get (extension): the settings in force and the keys' state.
pub async fn get_rotation(
    call: Call<'_>,
    _: GetRotationRequest,
) -> Result<RotationResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    call.read_barrier().await?;
    rotation_state(&call)
}

/// Rotation set (extension): replicated settings every leader follows.
pub async fn set_rotation(
    call: Call<'_>,
    body: SetRotationRequest,
) -> Result<RotationResponse, ApiError> {
    call.require(Role::PilotSuperuser)?;
    let settings = from_wire(&body.settings)?;
    // Settings are a format-3 command: until the cluster writes format 3
    // (a new one switches about 2 s after start, an upgraded one once
    // every replica runs this release) the answer is "not ready", which
    // clients retry, rather than a refusal.
    let format = call
        .api
        .node
        .state
        .cluster_format()
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    if format < 3 {
        return Err(ApiError::NOT_READY);
    }
    let request = Request {
        command: Command::Settings(SettingsCommand::SetRotation(settings)),
        session: call.session,
        time_ns: 0,
    };
    match call.api.node.write(request).await? {
        Response::Done => {
            // The answer shows the settings just written, also when this
            // replica is a follower that has not applied them yet.
            call.api.node.linearize().await?;
            rotation_state(&call)
        }
        Response::Refused(Refusal::InvalidSettings(_)) => Err(ApiError::BAD_REQUEST),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        other => Err(ApiError::Internal(format!("unexpected response {other:?}"))),
    }
}
