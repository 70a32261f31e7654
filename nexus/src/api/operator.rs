//! `/v1/operator/*`: recovery shards out, restore shards in, and (as
//! extensions) rekey and data-key rotation.

use serde::Deserialize;
use serde_json::{Value, json};
use spike_sdk::identity::Role;

use super::{ApiError, Call};
use crate::cluster::{LeaderOp, LeaderReply, RestoreShard};

#[derive(Deserialize)]
struct RestoreBody {
    id: u64,
    shard: Vec<u8>,
}

impl Drop for RestoreBody {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.shard);
    }
}

#[derive(Deserialize)]
struct RekeyBody {
    shares: u8,
    threshold: u8,
}

/// Recover: the shares of the current root key, for safekeeping offline.
/// Any replica that holds the key answers identically (shares are
/// deterministic).
pub async fn recover(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse(&[])?;
    call.require(Role::PilotRecover)?;
    let shares = call
        .api
        .node
        .key_manager
        .recovery_shares()
        .map_err(|_| ApiError::NotReady)?;
    // Named step: the shares leave their wrappers for the response body.
    let shards: serde_json::Map<String, Value> = shares
        .iter()
        .map(|share| {
            (
                share.index().to_string(),
                json!(share.expose_secret().to_vec()),
            )
        })
        .collect();
    Ok(json!({ "shards": shards }))
}

/// Restore: one shard at a time, taken by the leader.
pub async fn restore(call: Call<'_>) -> Result<Value, ApiError> {
    let mut body: RestoreBody = call.parse(&["id", "shard"])?;
    call.require(Role::PilotRestore)?;
    let index = u8::try_from(body.id)
        .ok()
        .filter(|index| *index > 0)
        .ok_or(ApiError::BadRequest)?;
    if body.shard.len() != 32 {
        return Err(ApiError::BadRequest);
    }
    let shard = RestoreShard {
        index,
        value: std::mem::take(&mut body.shard),
    };
    match call.api.node.execute(LeaderOp::Restore(shard)).await? {
        LeaderReply::Restore {
            collected,
            remaining,
            restored,
            progress_reset,
        } => {
            let mut reply = json!({
                "collected": collected,
                "remaining": remaining,
                "restored": restored,
            });
            // Extension, only when it happened: a leader change dropped the
            // shards collected so far.
            if progress_reset {
                reply["progressReset"] = json!(true);
            }
            Ok(reply)
        }
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Rekey (extension): a new root key, possibly with new n and t.
pub async fn rekey(call: Call<'_>) -> Result<Value, ApiError> {
    let body: RekeyBody = call.parse(&["shares", "threshold"])?;
    call.require(Role::PilotSuperuser)?;
    // Impossible n and t are bad input on any node, whatever the leader's
    // state (the leader checks them again, with the keepers it has).
    spike_sdk::crypto::shamir::ShamirParams::new(body.shares, body.threshold)
        .map_err(|_| ApiError::BadRequest)?;
    match call
        .api
        .node
        .execute(LeaderOp::Rekey {
            shares: body.shares,
            threshold: body.threshold,
        })
        .await?
    {
        LeaderReply::Rekeyed(root_key_id) => Ok(json!({ "rootKeyId": root_key_id })),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}

/// Rotate (extension): a new data key for new writes.
pub async fn rotate(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse(&[])?;
    call.require(Role::PilotSuperuser)?;
    match call.api.node.execute(LeaderOp::RotateDataKey).await? {
        LeaderReply::Rotated(data_key_id) => Ok(json!({ "dataKeyId": data_key_id })),
        other => Err(ApiError::Internal(format!("unexpected reply {other:?}"))),
    }
}
