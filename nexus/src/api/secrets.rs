//! `/v1/store/secrets`: SPIKE's versioned secrets, plus destroy and
//! check-and-set.
//!
//! Values are sealed on the replica that takes the request, before they
//! enter the Raft log, with the path in the associated data: a ciphertext
//! copied to another path does not open.

use spike_sdk::api::{
    CustomMetadata, DeleteSecretRequest, DestroySecretRequest, EmptyResponse, GetSecretRequest,
    GetSecretResponse, ListSecretsRequest, ListSecretsResponse, PutSecretMetadataRequest,
    PutSecretRequest, SECRET_SIZE_MAX_BYTES, SecretMetadata, SecretMetadataRequest,
    SecretMetadataResponse, SecretValues, SecretVersions, Timestamp, UndeleteSecretRequest,
    VersionInfo,
};
use spike_sdk::domain::{DataKeyId, SecretPath, valid_name};
use zeroize::Zeroizing;

use super::authz::{Permission, SECRET_LIST_PATH};
use super::{ApiError, Audited, Call};
use crate::keys::Unlocked;
use crate::state::command::{Command, Refusal, Request, Response, SecretCommand};
use crate::state::secret::{SecretError, SecretRecord};

impl Audited for PutSecretRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.path)
    }
}

impl Audited for GetSecretRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.path)
    }
}

impl Audited for SecretMetadataRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.path)
    }
}

impl Audited for DeleteSecretRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.0.path)
    }
}

impl Audited for UndeleteSecretRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.0.path)
    }
}

impl Audited for DestroySecretRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.0.path)
    }
}

impl Audited for PutSecretMetadataRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.path)
    }
}

impl Audited for ListSecretsRequest {}

/// Versions as the state machine takes them: negative ones exist nowhere,
/// so they are dropped (SPIKE ignores them).
fn known_versions(versions: &[i64]) -> Vec<u64> {
    versions
        .iter()
        .filter_map(|version| u64::try_from(*version).ok())
        .collect()
}

fn aad(path: &SecretPath) -> Vec<u8> {
    crate::keys::secret_aad(path)
}

/// Custom metadata's associated data: bound to the path, and never
/// mistaken for a value's ciphertext.
fn custom_metadata_aad(path: &SecretPath) -> Vec<u8> {
    format!("spike/secret-metadata/{path}").into_bytes()
}

fn unlocked(call: &Call<'_>) -> Result<std::sync::Arc<Unlocked>, ApiError> {
    call.api.node.keys.unlocked().ok_or(ApiError::NOT_READY)
}

async fn write(call: &Call<'_>, command: Command) -> Result<Response, ApiError> {
    let request = Request {
        command,
        session: call.session,
        time_ns: 0,
    };
    match call.api.node.write(request).await? {
        Response::Refused(Refusal::Secret(SecretError::NotFound)) => Err(ApiError::NOT_FOUND),
        Response::Refused(Refusal::Secret(SecretError::CasMismatch { .. })) => {
            Err(ApiError::CONFLICT)
        }
        Response::Refused(Refusal::NotInitialized) => Err(ApiError::NOT_READY),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        response => Ok(response),
    }
}

/// The record of `path` after the read barrier; 404 when there is none.
async fn read_record(call: &Call<'_>, path: &SecretPath) -> Result<SecretRecord, ApiError> {
    call.read_barrier().await?;
    call.api
        .node
        .state
        .secret(path)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NOT_FOUND)
}

/// Put: a new version of `path`.
pub async fn put(call: Call<'_>, body: PutSecretRequest) -> Result<EmptyResponse, ApiError> {
    call.authorize_path(&body.path, &[Permission::Write])
        .await?;
    let path = SecretPath::try_from(body.path.as_str())?;
    if !body.values.keys().all(valid_name) {
        return Err(ApiError::BAD_REQUEST);
    }
    let unlocked = unlocked(&call)?;
    // Named step: the values become the plaintext that is sealed.
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&body.values).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    if plaintext.len() > SECRET_SIZE_MAX_BYTES {
        return Err(ApiError::BAD_REQUEST);
    }
    let (ciphertext, data_key_id) = unlocked
        .seal(&aad(&path), &plaintext)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    write(
        &call,
        Command::Secret(SecretCommand::Put {
            path,
            ciphertext,
            data_key_id: DataKeyId(data_key_id),
            cas: body.cas,
            max_versions: call.api.max_versions,
        }),
    )
    .await?;
    Ok(EmptyResponse::default())
}

/// Get: the values of a version (0: current).
pub async fn get(call: Call<'_>, body: GetSecretRequest) -> Result<GetSecretResponse, ApiError> {
    call.authorize_path(&body.path, &[Permission::Read]).await?;
    let path = SecretPath::try_from(body.path.as_str())?;
    let unlocked = unlocked(&call)?;
    let record = read_record(&call, &path).await?;
    // Go's int: a negative version exists nowhere.
    let version = u64::try_from(body.version).map_err(|_| ApiError::NOT_FOUND)?;
    let (_, ciphertext) = record.read(version).map_err(|_| ApiError::NOT_FOUND)?;
    let plaintext = unlocked
        .open(&aad(&path), ciphertext)
        .map_err(|e| ApiError::Internal(format!("secret {path} does not open: {e}")))?;
    let values: SecretValues = serde_json::from_slice(plaintext.expose_secret())
        .map_err(|_| ApiError::Internal(format!("secret {path} is not a map of strings")))?;
    Ok(GetSecretResponse {
        data: Some(values),
        err: None,
    })
}

async fn versions_command(
    call: Call<'_>,
    body: SecretVersions,
    wants: Permission,
    build: fn(SecretPath, Vec<u64>) -> SecretCommand,
) -> Result<EmptyResponse, ApiError> {
    call.authorize_path(&body.path, &[wants]).await?;
    let path = SecretPath::try_from(body.path.as_str())?;
    unlocked(&call)?;
    let versions = known_versions(&body.versions);
    if versions.is_empty() && !body.versions.is_empty() {
        // Only negative versions: nothing to act on, like SPIKE.
        return Ok(EmptyResponse::default());
    }
    write(&call, Command::Secret(build(path, versions))).await?;
    Ok(EmptyResponse::default())
}

/// Delete: mark versions deleted.
pub async fn delete(call: Call<'_>, body: DeleteSecretRequest) -> Result<EmptyResponse, ApiError> {
    versions_command(call, body.0, Permission::Write, |path, versions| {
        SecretCommand::Delete { path, versions }
    })
    .await
}

/// Undelete: clear deletion marks.
pub async fn undelete(
    call: Call<'_>,
    body: UndeleteSecretRequest,
) -> Result<EmptyResponse, ApiError> {
    versions_command(call, body.0, Permission::Write, |path, versions| {
        SecretCommand::Undelete { path, versions }
    })
    .await
}

/// Destroy (extension): drop versions' ciphertext for good. Irreversible,
/// unlike delete, so `write` is not enough: the superuser, or a policy
/// granting `super` on the path.
pub async fn destroy(
    call: Call<'_>,
    body: DestroySecretRequest,
) -> Result<EmptyResponse, ApiError> {
    versions_command(call, body.0, Permission::Super, |path, versions| {
        SecretCommand::Destroy { path, versions }
    })
    .await
}

/// List: every path with a current version, sorted.
pub async fn list(call: Call<'_>, _: ListSecretsRequest) -> Result<ListSecretsResponse, ApiError> {
    call.authorize_path(SECRET_LIST_PATH, &[Permission::List])
        .await?;
    unlocked(&call)?;
    call.read_barrier().await?;
    let keys = call
        .api
        .node
        .state
        .secret_paths()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ListSecretsResponse {
        keys: Some(keys.into_iter().map(String::from).collect()),
        err: None,
    })
}

/// Metadata get: versions and metadata, no values.
pub async fn metadata(
    call: Call<'_>,
    body: SecretMetadataRequest,
) -> Result<SecretMetadataResponse, ApiError> {
    call.authorize_path(&body.path, &[Permission::Read]).await?;
    let path = SecretPath::try_from(body.path.as_str())?;
    let unlocked = unlocked(&call)?;
    call.read_barrier().await?;
    let (record, custom) = call
        .api
        .node
        .state
        .secret_and_custom_metadata(&path)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NOT_FOUND)?;
    let version = u64::try_from(body.version).map_err(|_| ApiError::NOT_FOUND)?;
    record.read(version).map_err(|_| ApiError::NOT_FOUND)?;
    let custom_metadata = match custom {
        Some(custom) => {
            let plaintext = unlocked
                .open(&custom_metadata_aad(&path), &custom.ciphertext)
                .map_err(|e| {
                    ApiError::Internal(format!("custom metadata of {path} does not open: {e}"))
                })?;
            serde_json::from_slice(plaintext.expose_secret()).map_err(|_| {
                ApiError::Internal(format!("custom metadata of {path} is not a map of strings"))
            })?
        }
        None => CustomMetadata::default(),
    };
    let versions = record
        .versions
        .iter()
        .map(|(number, version)| {
            let info = VersionInfo {
                created_time: Timestamp::from_unix_nanos(version.created_at),
                version: *number,
                deleted_time: version.deleted_at.map(Timestamp::from_unix_nanos),
                destroyed: version.destroyed,
            };
            (*number, info)
        })
        .collect();
    Ok(SecretMetadataResponse {
        versions,
        metadata: SecretMetadata {
            current_version: record.current_version,
            oldest_version: record.oldest_version,
            created_time: Timestamp::from_unix_nanos(record.created_at),
            updated_time: Timestamp::from_unix_nanos(record.updated_at),
            max_versions: record.max_versions,
        },
        custom_metadata,
        err: None,
    })
}

/// Metadata put (extension): replaces the custom metadata of an existing
/// secret. Needs `write` on the path, like a put.
pub async fn metadata_put(
    call: Call<'_>,
    body: PutSecretMetadataRequest,
) -> Result<EmptyResponse, ApiError> {
    call.authorize_path(&body.path, &[Permission::Write])
        .await?;
    let path = SecretPath::try_from(body.path.as_str())?;
    body.custom_metadata
        .check()
        .map_err(|_| ApiError::BAD_REQUEST)?;
    let unlocked = unlocked(&call)?;
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&body.custom_metadata).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    let (ciphertext, data_key_id) = unlocked
        .seal(&custom_metadata_aad(&path), &plaintext)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    write(
        &call,
        Command::Secret(SecretCommand::PutCustomMetadata {
            path,
            ciphertext,
            data_key_id: DataKeyId(data_key_id),
        }),
    )
    .await?;
    Ok(EmptyResponse::default())
}
