//! `/v1/operator/*`: recovery shards out, restore shards in, and (as
//! extensions) rekey and data-key rotation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::encoding::Shard;
use super::{ApiRequest, ErrorCode, Route};

/// Recover: the shares of the current root key, to keep offline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverRequest {}

impl ApiRequest for RecoverRequest {
    const ROUTE: Route = Route::Recover;
    type Response = RecoverResponse;
}

/// Recover's answer: every share, by its index.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecoverResponse {
    /// Share index (from 1) to share (`null` on failure).
    pub shards: Option<BTreeMap<u8, Shard>>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Restore: one shard of the root key, fed to the leader after a total
/// loss; once it has a threshold of them, the key is back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreRequest {
    /// The shard's index (from 1). Go's `int`.
    pub id: i64,
    /// The shard (`null` is refused).
    pub shard: Option<Shard>,
}

impl ApiRequest for RestoreRequest {
    const ROUTE: Route = Route::Restore;
    type Response = RestoreResponse;
}

/// Restore's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreResponse {
    /// Shards collected so far.
    pub collected: u64,
    /// Shards still needed.
    pub remaining: u64,
    /// Whether the root key is back.
    pub restored: bool,
    /// Extension, only when it happened: a leader change dropped the
    /// shards collected before it; feed them again.
    #[serde(rename = "progressReset", skip_serializing_if = "std::ops::Not::not")]
    pub progress_reset: bool,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Rekey (extension): a new root key, shared as `threshold` of `shares`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RekeyRequest {
    /// The new n.
    pub shares: u8,
    /// The new t.
    pub threshold: u8,
}

impl ApiRequest for RekeyRequest {
    const ROUTE: Route = Route::Rekey;
    type Response = RekeyResponse;
}

/// Rekey's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RekeyResponse {
    /// The new root key's id.
    pub root_key_id: u64,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Rotate (extension): a new data key for new writes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateRequest {}

impl ApiRequest for RotateRequest {
    const ROUTE: Route = Route::Rotate;
    type Response = RotateResponse;
}

/// Rotate's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RotateResponse {
    /// The new active data key's id.
    pub data_key_id: u32,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// When keys are replaced and how fast old ciphertext is re-sealed, as
/// the rotation routes carry them (extension).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RotationSettings {
    /// Encryptions after which the active data key is replaced.
    pub data_key_rotate_after_ops: u64,
    /// Age in seconds after which the active data key is replaced; 0: never.
    pub data_key_max_age_seconds: u64,
    /// Age in seconds after which the root key is replaced; 0: never.
    pub root_key_max_age_seconds: u64,
    /// Secret versions re-sealed under the newest data key per second; 0:
    /// none.
    pub reencrypt_per_second: u32,
}

/// Rotation get (extension): the settings in force and the keys' state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRotationRequest {}

impl ApiRequest for GetRotationRequest {
    const ROUTE: Route = Route::RotationGet;
    type Response = RotationResponse;
}

/// Rotation set (extension): replicated settings that override every
/// replica's flags from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SetRotationRequest {
    /// The new settings.
    pub settings: RotationSettings,
}

impl ApiRequest for SetRotationRequest {
    const ROUTE: Route = Route::RotationSet;
    type Response = RotationResponse;
}

/// The rotation routes' answer, as the answering replica sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct RotationResponse {
    /// The settings in force.
    pub settings: RotationSettings,
    /// Whether an operator set them (false: the replica's flags).
    pub replicated: bool,
    /// The committed root key's id.
    pub root_key_id: u64,
    /// The active data key's id.
    pub active_data_key_id: u32,
    /// Seconds since the active data key became active (0: not recorded).
    pub data_key_age_seconds: u64,
    /// Seconds since the root key became active (0: not recorded).
    pub root_key_age_seconds: u64,
    /// Kept secret versions under older data keys, as the leader last
    /// counted (0 on other replicas).
    pub versions_under_old_keys: u64,
    /// Secret versions the answering replica re-sealed while it led.
    pub reencrypted_versions: u64,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

super::responses!(
    RecoverResponse,
    RestoreResponse,
    RekeyResponse,
    RotateResponse,
    RotationResponse
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_request_is_spikes() {
        let request = RestoreRequest {
            id: 2,
            shard: Some(Shard::new(std::array::from_fn(|i| {
                u8::try_from(i + 1).unwrap_or(0)
            }))),
        };
        assert_eq!(
            serde_json::to_string(&request).expect("json"),
            r#"{"id":2,"shard":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32]}"#
        );
        assert_eq!(
            serde_json::to_string(&RestoreResponse {
                collected: 1,
                remaining: 2,
                ..Default::default()
            })
            .expect("json"),
            r#"{"collected":1,"remaining":2,"restored":false}"#
        );
    }
}
