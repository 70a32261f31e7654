//! `/v1/acl/policy`: SPIKE's access policies. A policy's body (patterns
//! and permissions) is sealed in the replicated state like a secret, under
//! its name; it also has a stable id. SPIKE's `id` field names a policy by
//! id (0.8's clients) or by name (the development line's).

use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde::Deserialize;
use serde_json::{Value, json};
use spike_sdk::domain::{DataKeyId, PolicyId, PolicyName, PolicyRef};
use zeroize::Zeroizing;

use super::authz::{ACL_PATH, CompiledPolicy, Permission, PolicyBody, PolicySet};
use super::secrets::rfc3339;
use super::{ApiError, Call};
use crate::keys::Unlocked;
use crate::node::Node;
use crate::state::command::{Command, PolicyCommand, Refusal, Request, Response, SessionRef};
use crate::state::store::PolicyRecord;

/// Longest path pattern (SPIKE's limit).
pub const PATH_PATTERN_LEN_MAX: usize = 500;
/// Ids drawn for a new policy before giving up: apply refuses an id another
/// policy holds, which takes a UUID collision.
const POLICY_ID_ATTEMPTS_MAX: usize = 3;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutBody {
    #[serde(default)]
    name: String,
    #[serde(default)]
    spiffeid_pattern: String,
    #[serde(default)]
    path_pattern: String,
    #[serde(default)]
    permissions: Vec<String>,
}

#[derive(Deserialize)]
struct IdBody {
    #[serde(default)]
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListBody {
    #[serde(default)]
    spiffeid_pattern: String,
    #[serde(default)]
    path_pattern: String,
}

fn aad(name: &str) -> Vec<u8> {
    format!("spike/policy/{name}").into_bytes()
}

/// SPIKE's SPIFFE ID pattern rule.
fn valid_spiffeid_pattern(pattern: &str) -> bool {
    static RULE: OnceLock<Option<Regex>> = OnceLock::new();
    RULE.get_or_init(|| {
        Regex::new(r"^\^?spiffe://[\\a-zA-Z0-9.\-*()+?\[\]]+(/[\\/a-zA-Z0-9._\-*()+?\[\]]+)*\$?$")
            .ok()
    })
    .as_ref()
    .is_some_and(|rule| rule.is_match(pattern))
}

/// SPIKE's path pattern rule: 1 to 500 of `a-zA-Z0-9._-/^$()?+*|[]{}\`.
fn valid_path_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= PATH_PATTERN_LEN_MAX
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/^$()?+*|[]{}\\".contains(&b))
}

fn permission(text: &str) -> Option<Permission> {
    match text {
        "read" => Some(Permission::Read),
        "write" => Some(Permission::Write),
        "list" => Some(Permission::List),
        "execute" => Some(Permission::Execute),
        "super" => Some(Permission::Super),
        _ => None,
    }
}

fn open_body(
    unlocked: &Unlocked,
    name: &str,
    record: &PolicyRecord,
) -> Result<PolicyBody, ApiError> {
    let plaintext = unlocked
        .open(&aad(name), &record.ciphertext)
        .map_err(|e| ApiError::Internal(format!("policy {name} does not open: {e}")))?;
    serde_json::from_slice(plaintext.expose_secret()).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Every policy, opened and compiled (once per policy change).
pub fn compile_all(node: &Node, unlocked: &Unlocked) -> Result<Arc<PolicySet>, ApiError> {
    let records = node
        .state
        .policies()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut compiled = Vec::with_capacity(records.len());
    for (name, record) in records {
        match open_body(unlocked, name.as_str(), &record).and_then(|body| {
            CompiledPolicy::compile(&body).map_err(|e| ApiError::Internal(e.to_string()))
        }) {
            Ok(policy) => compiled.push(policy),
            // Written policies compiled when written; one that no longer does
            // is ignored, as SPIKE ignores policies that fail to load.
            Err(error) => tracing::warn!(policy = %name, ?error, "policy ignored"),
        }
    }
    Ok(PolicySet::new(compiled))
}

fn unlocked(call: &Call<'_>) -> Result<Arc<Unlocked>, ApiError> {
    call.api.node.keys.unlocked().ok_or(ApiError::NotReady)
}

async fn propose(
    call: &Call<'_>,
    command: Command,
    session: Option<SessionRef>,
) -> Result<Response, ApiError> {
    let request = Request {
        command,
        session,
        time_ns: 0,
    };
    Ok(call.api.node.write(request).await?)
}

fn answer(response: Response) -> Result<(), ApiError> {
    match response {
        Response::Done | Response::Written(_) | Response::PolicyStored(_) => Ok(()),
        Response::Refused(Refusal::PolicyNotFound) => Err(ApiError::NotFound),
        Response::Refused(Refusal::PolicyLimit(_)) => Err(ApiError::BadRequest),
        Response::Refused(Refusal::NotInitialized) => Err(ApiError::NotReady),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
    }
}

/// Upsert: create or replace a policy (its creation time is kept).
pub async fn put(call: Call<'_>) -> Result<Value, ApiError> {
    let body: PutBody = call.parse(&["name", "spiffeidPattern", "pathPattern", "permissions"])?;
    call.authorize_path(ACL_PATH, &[Permission::Write])?;
    let permissions: Option<Vec<Permission>> =
        body.permissions.iter().map(|p| permission(p)).collect();
    let (Ok(name), true, true, Some(permissions)) = (
        body.name.parse::<PolicyName>(),
        valid_spiffeid_pattern(&body.spiffeid_pattern),
        valid_path_pattern(&body.path_pattern),
        permissions.filter(|permissions| !permissions.is_empty()),
    ) else {
        return Err(ApiError::BadRequest);
    };
    let policy = PolicyBody {
        spiffeid_pattern: body.spiffeid_pattern,
        path_pattern: body.path_pattern,
        permissions,
    };
    // Refused here, never stored: patterns that do not compile, and
    // policies that would reach a reserved path they may not.
    CompiledPolicy::compile(&policy).map_err(|error| {
        tracing::info!(policy = %body.name, %error, "policy refused");
        ApiError::BadRequest
    })?;
    let unlocked = unlocked(&call)?;
    let plaintext =
        Zeroizing::new(serde_json::to_vec(&policy).map_err(|e| ApiError::Internal(e.to_string()))?);
    let (ciphertext, data_key_id) = unlocked
        .seal(&aad(&body.name), &plaintext)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Only the first attempt carries the client's session: a refusal is
    // remembered under it, and a put is an upsert anyway.
    let mut session = call.session;
    for _ in 0..POLICY_ID_ATTEMPTS_MAX {
        let command = Command::Policy(PolicyCommand::Put {
            id: PolicyId::generate().map_err(|e| ApiError::Internal(e.to_string()))?,
            name: name.clone(),
            ciphertext: ciphertext.clone(),
            data_key_id: DataKeyId(data_key_id),
        });
        match propose(&call, command, session.take()).await? {
            Response::Refused(Refusal::PolicyIdTaken(id)) => {
                tracing::info!(policy = %name, %id, "proposed policy id taken; drawing another");
            }
            response => return answer(response).map(|()| json!({})),
        }
    }
    Err(ApiError::Internal("no free policy id".to_owned()))
}

fn policy_ref(text: &str) -> Result<PolicyRef, ApiError> {
    text.parse().map_err(|_| ApiError::BadRequest)
}

/// Get: one policy by id or name (SPIKE's `id`).
pub async fn get(call: Call<'_>) -> Result<Value, ApiError> {
    let body: IdBody = call.parse(&["id"])?;
    call.authorize_path(ACL_PATH, &[Permission::Read])?;
    let policy = policy_ref(&body.id)?;
    let unlocked = unlocked(&call)?;
    if !call.stale && !call.caught_up {
        call.api.node.linearize().await?;
    }
    let (name, record) = call
        .api
        .node
        .state
        .policy(&policy)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NotFound)?;
    let policy = open_body(&unlocked, name.as_str(), &record)?;
    Ok(json!({
        "id": record.id,
        "name": name,
        "spiffiedPattern": policy.spiffeid_pattern,
        "pathPattern": policy.path_pattern,
        "permissions": policy.permissions,
        "createdAt": rfc3339(record.created_at),
        "updatedAt": rfc3339(record.updated_at),
    }))
}

/// Delete: one policy by id or name.
pub async fn delete(call: Call<'_>) -> Result<Value, ApiError> {
    let body: IdBody = call.parse(&["id"])?;
    call.authorize_path(ACL_PATH, &[Permission::Write])?;
    let policy = policy_ref(&body.id)?;
    unlocked(&call)?;
    let command = Command::Policy(PolicyCommand::Delete { policy });
    answer(propose(&call, command, call.session).await?)?;
    Ok(json!({}))
}

/// List: every policy, or those whose SPIFFE ID pattern (else path pattern)
/// equals the filter exactly.
pub async fn list(call: Call<'_>) -> Result<Value, ApiError> {
    let body: ListBody = call.parse(&["spiffeidPattern", "pathPattern"])?;
    call.authorize_path(ACL_PATH, &[Permission::List])?;
    let unlocked = unlocked(&call)?;
    if !call.stale && !call.caught_up {
        call.api.node.linearize().await?;
    }
    let records = call
        .api
        .node
        .state
        .policies()
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut listed = Vec::new();
    for (name, record) in records {
        let policy = open_body(&unlocked, name.as_str(), &record)?;
        let keep = if !body.spiffeid_pattern.is_empty() {
            policy.spiffeid_pattern == body.spiffeid_pattern
        } else if !body.path_pattern.is_empty() {
            policy.path_pattern == body.path_pattern
        } else {
            true
        };
        if keep {
            listed.push(json!({ "id": record.id, "name": name }));
        }
    }
    Ok(json!({ "policies": listed }))
}
