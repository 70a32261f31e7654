//! `/v1/store/secrets`: SPIKE's versioned secrets, plus destroy and
//! check-and-set (extensions).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use super::encoding::is_zero;
use super::{ApiRequest, ErrorCode, Route, Timestamp};

/// Largest secret: its values written as JSON, in bytes.
pub const SECRET_SIZE_MAX_BYTES: usize = 512 * 1024;

/// A secret's values: key to value. The keys are public (they follow
/// SPIKE's name rule); the values are secret: wiped on drop, never in
/// `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(BTreeMap<String, String>);

impl SecretValues {
    /// No values.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        if let Some(mut old) = self.0.insert(key.into(), value.into()) {
            old.zeroize();
        }
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every key and value, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for SecretValues {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretValues")
            .field("keys", &self.0.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for SecretValues {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(items: I) -> Self {
        let mut values = Self::new();
        for (key, value) in items {
            values.insert(key, value);
        }
        values
    }
}

/// An answer with nothing to say but success (`{}`), or the error code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmptyResponse {
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Put: a new version of the secret at `path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PutSecretRequest {
    /// The secret's path.
    pub path: String,
    /// Its values.
    pub values: SecretValues,
    /// Extension: write only if the current version is this one (0: only
    /// if the secret has none); otherwise 409 `api_conflict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas: Option<u64>,
}

impl ApiRequest for PutSecretRequest {
    const ROUTE: Route = Route::SecretPut;
    type Response = EmptyResponse;
}

/// Get: the values of a version (0: the current one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetSecretRequest {
    /// The secret's path.
    pub path: String,
    /// The version; 0 for the current one. Go's `int`: a negative version
    /// exists nowhere (404).
    #[serde(skip_serializing_if = "is_zero")]
    pub version: i64,
}

impl ApiRequest for GetSecretRequest {
    const ROUTE: Route = Route::SecretGet;
    type Response = GetSecretResponse;
}

/// Get's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetSecretResponse {
    /// The values (`null` on failure).
    pub data: Option<SecretValues>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Versions of one secret, for delete, undelete and destroy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretVersions {
    /// The secret's path.
    pub path: String,
    /// The versions; empty or 0 for the current one. Go's `[]int`:
    /// negative versions exist nowhere and are ignored.
    pub versions: Vec<i64>,
}

macro_rules! versions_request {
    ($($(#[$doc:meta])* $name:ident => $route:ident,)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub SecretVersions);

        impl ApiRequest for $name {
            const ROUTE: Route = Route::$route;
            type Response = EmptyResponse;
        }
    )*};
}

versions_request! {
    /// Delete: mark versions deleted (undelete brings them back).
    DeleteSecretRequest => SecretDelete,
    /// Undelete: clear deletion marks.
    UndeleteSecretRequest => SecretUndelete,
    /// Destroy (extension): drop versions' values for good.
    DestroySecretRequest => SecretDestroy,
}

/// List: every secret path with a current version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSecretsRequest {}

impl ApiRequest for ListSecretsRequest {
    const ROUTE: Route = Route::SecretList;
    type Response = ListSecretsResponse;
}

/// List's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListSecretsResponse {
    /// The paths, sorted (`null` on failure).
    pub keys: Option<Vec<String>>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Metadata get: a secret's versions and metadata, never values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretMetadataRequest {
    /// The secret's path.
    pub path: String,
    /// A version that must exist (0: the current one).
    #[serde(skip_serializing_if = "is_zero")]
    pub version: i64,
}

impl ApiRequest for SecretMetadataRequest {
    const ROUTE: Route = Route::SecretMetadata;
    type Response = SecretMetadataResponse;
}

/// Metadata get's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecretMetadataResponse {
    /// Every version kept, by number.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<u64, VersionInfo>,
    /// The secret as a whole.
    pub metadata: SecretMetadata,
    /// Extension: the custom metadata set on the path (absent when none is
    /// set, so SPIKE's answer is unchanged).
    #[serde(
        rename = "customMetadata",
        skip_serializing_if = "CustomMetadata::is_empty"
    )]
    pub custom_metadata: CustomMetadata,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// One version of a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct VersionInfo {
    /// When it was written.
    pub created_time: Timestamp,
    /// Its number.
    pub version: u64,
    /// When it was deleted (`null` if it is not).
    pub deleted_time: Option<Timestamp>,
    /// Extension: its values were destroyed for good.
    pub destroyed: bool,
}

/// A secret's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct SecretMetadata {
    /// The current version (0 when every version is deleted).
    pub current_version: u64,
    /// The oldest version kept.
    pub oldest_version: u64,
    /// When the secret was first written.
    pub created_time: Timestamp,
    /// When it last changed.
    pub updated_time: Timestamp,
    /// Versions kept before the oldest is dropped.
    pub max_versions: u32,
}

/// Most custom metadata keys on one secret (Vault's KV limit).
pub const CUSTOM_METADATA_KEYS_MAX: usize = 64;
/// Longest custom metadata key, in bytes.
pub const CUSTOM_METADATA_KEY_MAX_BYTES: usize = 128;
/// Longest custom metadata value, in bytes.
pub const CUSTOM_METADATA_VALUE_MAX_BYTES: usize = 512;

/// Key/value pairs an operator attaches to a secret's path (owner, rotation
/// runbook, ticket): sealed at rest like the values, but not secret to
/// whoever may read the path's metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomMetadata(pub BTreeMap<String, String>);

impl CustomMetadata {
    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Refuses what the store does not keep: more than
    /// [`CUSTOM_METADATA_KEYS_MAX`] keys, an empty key, a key or value past
    /// its length limit, or control characters.
    pub fn check(&self) -> Result<(), String> {
        if self.0.len() > CUSTOM_METADATA_KEYS_MAX {
            return Err(format!(
                "{} custom metadata keys; at most {CUSTOM_METADATA_KEYS_MAX}",
                self.0.len()
            ));
        }
        for (key, value) in &self.0 {
            if key.is_empty() || key.len() > CUSTOM_METADATA_KEY_MAX_BYTES {
                return Err(format!(
                    "custom metadata key {key:?}: 1 to {CUSTOM_METADATA_KEY_MAX_BYTES} bytes"
                ));
            }
            if value.len() > CUSTOM_METADATA_VALUE_MAX_BYTES {
                return Err(format!(
                    "custom metadata value of {key:?}: at most {CUSTOM_METADATA_VALUE_MAX_BYTES} bytes"
                ));
            }
            if key.chars().chain(value.chars()).any(char::is_control) {
                return Err(format!(
                    "custom metadata {key:?}: control characters are not allowed"
                ));
            }
        }
        Ok(())
    }
}

/// Metadata put (extension): replaces the custom metadata of the secret at
/// `path` (an empty map clears it). The secret must exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PutSecretMetadataRequest {
    /// The secret's path.
    pub path: String,
    /// The pairs, replacing any set before.
    #[serde(rename = "customMetadata")]
    pub custom_metadata: CustomMetadata,
}

impl ApiRequest for PutSecretMetadataRequest {
    const ROUTE: Route = Route::SecretMetadataPut;
    type Response = EmptyResponse;
}

super::responses!(
    EmptyResponse,
    GetSecretResponse,
    ListSecretsResponse,
    SecretMetadataResponse,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_written_byte_for_byte_as_spikes_go_sdk_writes_them() {
        let put = PutSecretRequest {
            path: "apps/db".into(),
            values: [("user", "admin"), ("pass", "s3cr3t")]
                .into_iter()
                .collect(),
            cas: None,
        };
        assert_eq!(
            serde_json::to_string(&put).expect("json"),
            r#"{"path":"apps/db","values":{"pass":"s3cr3t","user":"admin"}}"#
        );
        let get = GetSecretRequest {
            path: "apps/db".into(),
            version: 0,
        };
        assert_eq!(
            serde_json::to_string(&get).expect("json"),
            r#"{"path":"apps/db"}"#
        );
        let delete = DeleteSecretRequest(SecretVersions {
            path: "apps/db".into(),
            versions: vec![0],
        });
        assert_eq!(
            serde_json::to_string(&delete).expect("json"),
            r#"{"path":"apps/db","versions":[0]}"#
        );
        assert_eq!(
            serde_json::to_string(&ListSecretsRequest {}).expect("json"),
            "{}"
        );
    }

    #[test]
    fn values_never_print() {
        let values: SecretValues = [("pass", "s3cr3t")].into_iter().collect();
        let printed = format!("{values:?}");
        assert!(
            printed.contains("pass") && !printed.contains("s3cr3t"),
            "{printed}"
        );
    }

    #[test]
    fn a_failed_answer_is_the_zero_shape_with_its_code() {
        use super::super::ApiResponse;
        let failed = SecretMetadataResponse::failed(ErrorCode::NotFound);
        assert_eq!(
            serde_json::to_string(&failed).expect("json"),
            r#"{"metadata":{"currentVersion":0,"oldestVersion":0,"createdTime":"0001-01-01T00:00:00Z","updatedTime":"0001-01-01T00:00:00Z","maxVersions":0},"err":"api_not_found"}"#
        );
        assert_eq!(
            serde_json::to_string(&GetSecretResponse::failed(ErrorCode::NotFound)).expect("json"),
            r#"{"data":null,"err":"api_not_found"}"#
        );
    }
}
