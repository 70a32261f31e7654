//! `/v1/store/secrets`: SPIKE's versioned secrets, plus destroy and
//! check-and-set.
//!
//! Values are sealed on the replica that takes the request, before they
//! enter the Raft log, with the path in the associated data: a ciphertext
//! copied to another path does not open.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};
use spike_sdk::domain::{DataKeyId, SecretPath};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::authz::{Permission, SECRET_LIST_PATH};
use super::{ApiError, Call};
use crate::keys::Unlocked;
use crate::state::command::{Command, Refusal, Request, Response, SecretCommand};
use crate::state::secret::{SecretError, SecretRecord};

/// Longest value key (SPIKE's name rule).
pub const KEY_LEN_MAX: usize = 250;
/// Largest secret: its values serialized as JSON.
pub const SECRET_SIZE_MAX_BYTES: usize = 512 * 1024;

#[derive(Deserialize)]
struct PutBody {
    #[serde(default)]
    path: String,
    #[serde(default)]
    values: BTreeMap<String, String>,
    /// Extension: write only if the current version is this one.
    #[serde(default)]
    cas: Option<u64>,
}

const PUT_FIELDS: &[&str] = &["path", "values", "cas"];
const READ_FIELDS: &[&str] = &["path", "version"];
const VERSIONS_FIELDS: &[&str] = &["path", "versions"];

impl Drop for PutBody {
    fn drop(&mut self) {
        for value in self.values.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

#[derive(Deserialize)]
struct ReadBody {
    #[serde(default)]
    path: String,
    /// Go's int: negative versions parse and are simply never found.
    #[serde(default)]
    version: i64,
}

#[derive(Deserialize)]
struct VersionsBody {
    #[serde(default)]
    path: String,
    #[serde(default)]
    versions: Vec<i64>,
}

/// Versions as the state machine takes them: negative ones exist nowhere,
/// so they are dropped (SPIKE ignores them).
fn known_versions(versions: &[i64]) -> Vec<u64> {
    versions
        .iter()
        .filter_map(|version| u64::try_from(*version).ok())
        .collect()
}

/// A path under SPIKE's rule: 1 to 500 of `a-zA-Z0-9._-/()?+*|[]{}\`.
fn secret_path(text: &str) -> Result<SecretPath, ApiError> {
    text.parse().map_err(|_| ApiError::BadRequest)
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
    if call.stale || call.caught_up {
        return Ok(());
    }
    call.api.node.linearize().await.map_err(ApiError::from)
}

/// The record of `path` after the read barrier; 404 when there is none.
async fn read_record(call: &Call<'_>, path: &SecretPath) -> Result<SecretRecord, ApiError> {
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
    let body: PutBody = call.parse(PUT_FIELDS)?;
    call.authorize_path(&body.path, &[Permission::Write])?;
    let path = secret_path(&body.path)?;
    if !body.values.keys().all(|key| valid_key(key)) {
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
        Command::Secret(SecretCommand::Put {
            path,
            ciphertext,
            data_key_id: DataKeyId(data_key_id),
            cas: body.cas,
            max_versions: call.api.max_versions,
        }),
    )
    .await?;
    Ok(json!({}))
}

/// Get: the values of a version (0: current).
pub async fn get(call: Call<'_>) -> Result<Value, ApiError> {
    let body: ReadBody = call.parse(READ_FIELDS)?;
    call.authorize_path(&body.path, &[Permission::Read])?;
    let path = secret_path(&body.path)?;
    let unlocked = unlocked(&call)?;
    let record = read_record(&call, &path).await?;
    let version = u64::try_from(body.version).map_err(|_| ApiError::NotFound)?;
    let (_, ciphertext) = record.read(version).map_err(|_| ApiError::NotFound)?;
    let plaintext = unlocked
        .open(&aad(&body.path), ciphertext)
        .map_err(|e| ApiError::Internal(format!("secret {} does not open: {e}", body.path)))?;
    let values: BTreeMap<String, String> = serde_json::from_slice(plaintext.expose_secret())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({ "data": values }))
}

async fn versions_command(
    call: Call<'_>,
    build: fn(SecretPath, Vec<u64>) -> SecretCommand,
) -> Result<Value, ApiError> {
    let body: VersionsBody = call.parse(VERSIONS_FIELDS)?;
    call.authorize_path(&body.path, &[Permission::Write])?;
    let path = secret_path(&body.path)?;
    unlocked(&call)?;
    let versions = known_versions(&body.versions);
    if versions.is_empty() && !body.versions.is_empty() {
        // Only negative versions: nothing to act on, like SPIKE.
        return Ok(json!({}));
    }
    write(&call, Command::Secret(build(path, versions))).await?;
    Ok(json!({}))
}

/// Delete: mark versions deleted.
pub async fn delete(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| SecretCommand::Delete {
        path,
        versions,
    })
    .await
}

/// Undelete: clear deletion marks.
pub async fn undelete(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| SecretCommand::Undelete {
        path,
        versions,
    })
    .await
}

/// Destroy (extension): drop versions' ciphertext for good.
pub async fn destroy(call: Call<'_>) -> Result<Value, ApiError> {
    versions_command(call, |path, versions| SecretCommand::Destroy {
        path,
        versions,
    })
    .await
}

/// List: every path with a current version, sorted.
pub async fn list(call: Call<'_>) -> Result<Value, ApiError> {
    let _: serde_json::Map<String, Value> = call.parse(&[])?;
    call.authorize_path(SECRET_LIST_PATH, &[Permission::List])?;
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

/// A log time as SPIKE's RFC 3339 timestamp.
pub fn rfc3339(time_ns: u64) -> Value {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(time_ns))
        .ok()
        .and_then(|time| time.format(&Rfc3339).ok())
        .map_or(Value::Null, Value::String)
}

/// Metadata get: versions and metadata, no values.
pub async fn metadata(call: Call<'_>) -> Result<Value, ApiError> {
    let body: ReadBody = call.parse(READ_FIELDS)?;
    call.authorize_path(&body.path, &[Permission::Read])?;
    let path = secret_path(&body.path)?;
    unlocked(&call)?;
    let record = read_record(&call, &path).await?;
    let version = u64::try_from(body.version).map_err(|_| ApiError::NotFound)?;
    record.read(version).map_err(|_| ApiError::NotFound)?;
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
