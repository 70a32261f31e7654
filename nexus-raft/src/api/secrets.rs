//! `/v1/store/secrets`: SPIKE's versioned secrets, plus destroy and
//! check-and-set.
//!
//! Values are sealed on the replica that takes the request, before they
//! enter the Raft log, with the path in the associated data: a ciphertext
//! copied to another path does not open.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use spike_sdk::identity::Role;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::{ApiError, Call};
use crate::keys::Unlocked;
use crate::state::command::{Command, Refusal, Request, Response};
use crate::state::secret::{SecretError, SecretRecord};

/// Longest secret path (SPIKE's limit).
pub const PATH_LEN_MAX: usize = 500;
/// Longest value key (SPIKE's name rule).
pub const KEY_LEN_MAX: usize = 250;
/// Largest secret: its values serialized as JSON.
pub const SECRET_SIZE_MAX_BYTES: usize = 512 * 1024;

#[derive(Deserialize)]
struct PutBody {
    path: String,
    #[serde(default)]
    values: BTreeMap<String, String>,
    /// Extension: write only if the current version is this one.
    #[serde(default)]
    cas: Option<u64>,
}

impl Drop for PutBody {
    fn drop(&mut self) {
        for value in self.values.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

#[derive(Deserialize)]
struct ReadBody {
    path: String,
    #[serde(default)]
    version: u64,
}

#[derive(Deserialize)]
struct VersionsBody {
    path: String,
    #[serde(default)]
    versions: Vec<u64>,
}

/// SPIKE's path rule: 1 to 500 of `a-zA-Z0-9._-/()?+*|[]{}\`.
pub fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= PATH_LEN_MAX
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/()?+*|[]{}\\".contains(&b))
}

/// SPIKE's name rule for value keys: 1 to 250 of `a-zA-Z0-9-_ `.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= KEY_LEN_MAX
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_ ".contains(&b))
}

fn aad(path: &str) -> Vec<u8> {
    format!("spike/secret/{path}").into_bytes()
}

fn unlocked(call: &Call<'_>) -> Result<std::sync::Arc<Unlocked>, ApiError> {
    call.api.node.keys.unlocked().ok_or(ApiError::NotReady)
}

async fn write(call: &Call<'_>, command: Command) -> Result<Response, ApiError> {
    let request = Request {
        command,
        session: call.session,
        time_ns: 0,
    };
    match call.api.node.write(request).await? {
        Response::Refused(Refusal::Secret(SecretError::NotFound)) => Err(ApiError::NotFound),
        Response::Refused(Refusal::Secret(SecretError::CasMismatch { .. })) => {
            Err(ApiError::Conflict)
        }
        Response::Refused(Refusal::NotInitialized) => Err(ApiError::NotReady),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        response => Ok(response),
    }
}

async fn read_barrier(call: &Call<'_>) -> Result<(), ApiError> {
    if call.stale {
        return Ok(());
    }
    call.api.node.linearize().await.map_err(ApiError::from)
}

/// The record of `path` after the read barrier; 404 when there is none.
async fn read_record(call: &Call<'_>, path: &str) -> Result<SecretRecord, ApiError> {
    read_barrier(call).await?;
    call.api
        .node
        .state
        .secret(path)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)
}

/// Put: a new version of `path`.
pub async fn put(call: Call<'_>) -> Result<Value, ApiError> {
    let body: PutBody = call.parse()?;
    call.require(Role::PilotSuperuser)?;
    if !valid_path(&body.path) || !body.values.keys().all(|key| valid_key(key)) {
        return Err(ApiError::BadRequest);
    }
    let unlocked = unlocked(&call)?;
    let plaintext = Zeroizing::new(
        serde_json::to_vec(&body.values).map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    if plaintext.len() > SECRET_SIZE_MAX_BYTES {
        return Err(ApiError::BadRequest);
    }
    let (ciphertext, data_key_id) = unlocked
        .seal(&aad(&body.path), &plaintext)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    write(
        &call,
        Command::PutSecret {
            path: body.path.clone(),
            ciphertext,
            data_key_id,
            cas: body.cas,
            max_versions: call.api.max_versions,
        },
    )
    .await?;
    Ok(json!({}))
}

/// Get: the values of a version (0: current).
pub async fn get(call: Call<'_>) -> Result<Value, ApiError> {
    let body: ReadBody = call.parse()?;
    call.require(Role::PilotSuperuser)?;
    if !valid_path(&body.path) {
        return Err(ApiError::BadRequest);
    }
    let unlocked = unlocked(&call)?;
    let record = read_record(&call, &body.path).await?;
    let (_, ciphertext) = record.read(body.version).map_err(|_| ApiError::NotFound)?;
    let plaintext = unlocked
        .open(&aad(&body.path), ciphertext)
        .map_err(|e| ApiError::Internal(format!("secret {} does not open: {e}", body.path)))?;
    let values: BTreeMap<String, String> = serde_json::from_slice(plaintext.expose_secret())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({ "data": values }))
}

async fn versions_command(
    call: Call<'_>,
    build: fn(String, Vec<u64>) -> Command,
) -> Result<Value, ApiError> {
    let body: VersionsBody = call.parse()?;
    call.require(Role::PilotSuperuser)?;
    if !valid_path(&body.path) {
        return Err(ApiError::BadRequest);
    }
    unlocked(&call)?;
    write(&call, build(body.path, body.versions)).await?;
    Ok(json!({}))
}

/// Delete: mark versions deleted.
pub async fn delete(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| Command::DeleteSecret {
        path,
        versions,
    })
    .await
}

/// Undelete: clear deletion marks.
pub async fn undelete(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| Command::UndeleteSecret {
        path,
        versions,
    })
    .await
}

/// Destroy (extension): drop versions' ciphertext for good.
pub async fn destroy(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| Command::DestroySecret {
        path,
        versions,
    })
    .await
}

/// List: every path with a current version, sorted.
pub async fn list(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse()?;
    call.require(Role::PilotSuperuser)?;
    unlocked(&call)?;
    read_barrier(&call).await?;
    let keys = call
        .api
        .node
        .state
        .secret_paths()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({ "keys": keys }))
}

fn rfc3339(time_ns: u64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ns))
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// Metadata get: versions and metadata, no values.
pub async fn metadata(call: Call<'_>) -> Result<Value, ApiError> {
    let body: ReadBody = call.parse()?;
    call.require(Role::PilotSuperuser)?;
    if !valid_path(&body.path) {
        return Err(ApiError::BadRequest);
    }
    unlocked(&call)?;
    let record = read_record(&call, &body.path).await?;
    let versions: serde_json::Map<String, Value> = record
        .versions
        .iter()
        .map(|(number, version)| {
            (
                number.to_string(),
                json!({
                    "createdTime": rfc3339(version.created_at),
                    "version": number,
                    "deletedTime": version.deleted_at.map_or(Value::Null, rfc3339),
                    "destroyed": version.destroyed,
                }),
            )
        })
        .collect();
    Ok(json!({
        "versions": versions,
        "metadata": {
            "currentVersion": record.current_version,
            "oldestVersion": record.oldest_version,
            "createdTime": rfc3339(record.created_at),
            "updatedTime": rfc3339(record.updated_at),
            "maxVersions": record.max_versions,
        },
    }))
}
