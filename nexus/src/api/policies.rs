//! `/v1/acl/policy`: SPIKE's access policies. A policy's body (patterns
//! and permissions) is sealed in the replicated state like a secret; its
//! name is unique, and it keeps a stable id (a UUID) from its creation.
//! SPIKE's release line names a policy by id, its development line by
//! name, both in the `id` field: both are accepted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;
use spike_sdk::api::{
    DeletePolicyRequest, EmptyResponse, GetPolicyRequest, ListPoliciesRequest,
    ListPoliciesResponse, Policy, PolicyResponse, PutPolicyRequest, PutPolicyResponse, Timestamp,
};
use spike_sdk::domain::{DataKeyId, PolicyId, PolicyName, PolicyRef};
use zeroize::Zeroizing;

use super::authz::{ACL_PATH, CompiledPolicy, Permission, PolicyBody, PolicySet};
use super::{ApiError, Audited, Call};
use crate::keys::Unlocked;
use crate::node::Node;
use crate::state::command::{Command, PolicyCommand, Refusal, Request, Response, SessionRef};
use crate::state::store::PolicyRecord;

/// Longest path pattern (SPIKE's limit).
pub const PATH_PATTERN_LEN_MAX: usize = 500;
/// Longest SPIFFE ID pattern: twice the longest SPIFFE ID (2048 bytes), for
/// escapes.
pub const SPIFFEID_PATTERN_LEN_MAX: usize = 4096;
/// Ids drawn for a new policy before giving up: apply refuses an id another
/// policy holds, which takes a UUID collision.
const POLICY_ID_ATTEMPTS_MAX: usize = 3;

impl Audited for PutPolicyRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.name)
    }
}

impl Audited for GetPolicyRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl Audited for DeletePolicyRequest {
    fn audit_target(&self) -> Option<&str> {
        Some(&self.id)
    }
}

impl Audited for ListPoliciesRequest {}

fn aad(name: &PolicyName) -> Vec<u8> {
    format!("spike/policy/{name}").into_bytes()
}

/// SPIKE's SPIFFE ID pattern rule, and at most
/// [`SPIFFEID_PATTERN_LEN_MAX`] bytes.
fn valid_spiffeid_pattern(pattern: &str) -> bool {
    if pattern.len() > SPIFFEID_PATTERN_LEN_MAX {
        return false;
    }
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

fn open_body(
    unlocked: &Unlocked,
    name: &PolicyName,
    record: &PolicyRecord,
) -> Result<PolicyBody, ApiError> {
    let plaintext = unlocked
        .open(&aad(name), &record.ciphertext)
        .map_err(|e| ApiError::Internal(format!("policy {name} does not open: {e}")))?;
    serde_json::from_slice(plaintext.expose_secret()).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Every stored policy with its name, sorted by name.
fn stored(node: &Node) -> Result<Vec<(PolicyName, PolicyRecord)>, ApiError> {
    node.state
        .policies()
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// The stored policy `reference` names: by id first, then by name.
fn find(node: &Node, reference: &PolicyRef) -> Result<(PolicyName, PolicyRecord), ApiError> {
    node.state
        .policy(reference)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .ok_or(ApiError::NOT_FOUND)
}

/// A stored policy as the API shows it.
fn shown(
    unlocked: &Unlocked,
    name: &PolicyName,
    record: &PolicyRecord,
) -> Result<(Policy, PolicyBody), ApiError> {
    let body = open_body(unlocked, name, record)?;
    let policy = Policy {
        id: record.id.to_string(),
        name: name.to_string(),
        spiffeid_pattern: body.spiffeid_pattern.clone(),
        path_pattern: body.path_pattern.clone(),
        permissions: body.permissions.clone(),
        created_at: Timestamp::from_unix_nanos(record.created_at),
        updated_at: Timestamp::from_unix_nanos(record.updated_at),
    };
    Ok((policy, body))
}

/// Each policy compiled, by name, with the sealed body it was compiled
/// from.
type Compiled = BTreeMap<PolicyName, (Vec<u8>, Arc<CompiledPolicy>)>;

/// This replica's compiled policies, rebuilt when the replicated policy
/// version moves. A rebuild compiles only the policies that changed, runs
/// on a blocking thread (compiling is CPU work), and one at a time: the
/// requests that find the set out of date wait for that one rebuild, and
/// no request ever holds a lock while a regex compiles.
#[derive(Default)]
pub struct PolicyCache {
    /// The set and the policy version it was built at (or later).
    current: Mutex<Option<(u64, Arc<PolicySet>)>>,
    /// Each policy compiled.
    compiled: tokio::sync::Mutex<Compiled>,
}

impl PolicyCache {
    fn at(&self, version: u64) -> Option<Arc<PolicySet>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .filter(|(built_at, _)| *built_at == version)
            .map(|(_, set)| set.clone())
    }

    /// The policies as of this replica's applied state.
    pub async fn get(&self, node: &Node) -> Result<Arc<PolicySet>, ApiError> {
        let version = policies_version(node)?;
        if let Some(set) = self.at(version) {
            return Ok(set);
        }
        let mut compiled = self.compiled.lock().await;
        // The version is read before the policies, so the set is never
        // older than the version it is filed under.
        let version = policies_version(node)?;
        if let Some(set) = self.at(version) {
            return Ok(set);
        }
        let unlocked = node.keys.unlocked().ok_or(ApiError::NOT_READY)?;
        let stored = stored(node)?;
        let previous = std::mem::take(&mut *compiled);
        // Off the async workers in a real replica; inline under a
        // current-thread runtime, where a blocking thread would let the OS
        // scheduler steer the simulator (a policy seed did not replay).
        let (set, next) = crate::raft::run_blocking("policy compilation", move || {
            compile_changed(previous, stored, &unlocked)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("policy compilation failed: {e}")))?;
        *compiled = next;
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((version, set.clone()));
        Ok(set)
    }
}

fn policies_version(node: &Node) -> Result<u64, ApiError> {
    Ok(node
        .state
        .cluster_meta()
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .policies_version)
}

/// Every stored policy compiled, reusing `previous` where the sealed body
/// is the same.
fn compile_changed(
    mut previous: Compiled,
    stored: Vec<(PolicyName, PolicyRecord)>,
    unlocked: &Unlocked,
) -> (Arc<PolicySet>, Compiled) {
    let mut next = Compiled::new();
    for (name, record) in stored {
        if let Some((sealed, policy)) = previous.remove(&name)
            && sealed == record.ciphertext
        {
            next.insert(name, (sealed, policy));
            continue;
        }
        match open_body(unlocked, &name, &record).and_then(|body| {
            CompiledPolicy::compile(&body).map_err(|e| ApiError::Internal(e.to_string()))
        }) {
            Ok(policy) => {
                next.insert(name, (record.ciphertext, Arc::new(policy)));
            }
            // Written policies compiled when written; one that no longer does
            // is ignored, as SPIKE ignores policies that fail to load.
            Err(error) => tracing::warn!(policy = %name, ?error, "policy ignored"),
        }
    }
    // PLANTED BUG policy-cache-ignores-revocation: deleted policies stay.
    if spike_sdk::planted!(PolicyCacheIgnoresRevocation) {
        next.append(&mut previous);
    }
    let set = PolicySet::from_shared(next.values().map(|(_, policy)| policy.clone()).collect());
    (set, next)
}

fn unlocked(call: &Call<'_>) -> Result<Arc<Unlocked>, ApiError> {
    call.api.node.keys.unlocked().ok_or(ApiError::NOT_READY)
}

async fn write(
    call: &Call<'_>,
    command: PolicyCommand,
    session: Option<SessionRef>,
) -> Result<Response, ApiError> {
    let request = Request {
        command: Command::Policy(command),
        session,
        time_ns: 0,
    };
    match call.api.node.write(request).await? {
        Response::Refused(Refusal::PolicyNotFound) => Err(ApiError::NOT_FOUND),
        Response::Refused(Refusal::PolicyLimit(_)) => Err(ApiError::BAD_REQUEST),
        Response::Refused(Refusal::NotInitialized) => Err(ApiError::NOT_READY),
        Response::Refused(taken @ Refusal::PolicyIdTaken(_)) => Ok(Response::Refused(taken)),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        response => Ok(response),
    }
}

/// Upsert: create or replace a policy (its id and creation time are kept).
pub async fn put(call: Call<'_>, body: PutPolicyRequest) -> Result<PutPolicyResponse, ApiError> {
    call.authorize_path(ACL_PATH, &[Permission::Write]).await?;
    let name = PolicyName::try_from(body.name.as_str())?;
    let permissions: Vec<Permission> = body
        .permissions
        .iter()
        .map(|permission| permission.parse())
        .collect::<Result<_, _>>()?;
    if permissions.is_empty()
        || !valid_spiffeid_pattern(&body.spiffeid_pattern)
        || !valid_path_pattern(&body.path_pattern)
    {
        return Err(ApiError::BAD_REQUEST);
    }
    let policy = PolicyBody {
        spiffeid_pattern: body.spiffeid_pattern,
        path_pattern: body.path_pattern,
        permissions,
    };
    // Refused here, never stored: patterns that do not compile, and
    // policies that would reach a reserved path they may not.
    CompiledPolicy::compile(&policy).map_err(|error| {
        tracing::info!(policy = %name, %error, "policy refused");
        ApiError::BAD_REQUEST
    })?;
    let unlocked = unlocked(&call)?;
    // Named step: the body becomes the plaintext that is sealed.
    let plaintext =
        Zeroizing::new(serde_json::to_vec(&policy).map_err(|e| ApiError::Internal(e.to_string()))?);
    let (ciphertext, data_key_id) = unlocked
        .seal(&aad(&name), &plaintext)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    // Only the first attempt carries the client's session: a refusal is
    // remembered under it, and a put is an upsert anyway.
    let mut session = call.session;
    for _ in 0..POLICY_ID_ATTEMPTS_MAX {
        let command = PolicyCommand::Put {
            id: PolicyId::generate().map_err(|e| ApiError::Internal(e.to_string()))?,
            name: name.clone(),
            ciphertext: ciphertext.clone(),
            data_key_id: DataKeyId(data_key_id),
        };
        match write(&call, command, session.take()).await? {
            Response::PolicyStored(id) => {
                return Ok(PutPolicyResponse {
                    id: id.to_string(),
                    err: None,
                });
            }
            Response::Refused(Refusal::PolicyIdTaken(id)) => {
                tracing::info!(policy = %name, %id, "proposed policy id taken; drawing another");
            }
            other => return Err(ApiError::Internal(format!("unexpected answer {other:?}"))),
        }
    }
    Err(ApiError::Internal("no free policy id".to_owned()))
}

/// Get: one policy, by id or name (SPIKE's `id` field).
pub async fn get(call: Call<'_>, body: GetPolicyRequest) -> Result<PolicyResponse, ApiError> {
    call.authorize_path(ACL_PATH, &[Permission::Read]).await?;
    let reference = PolicyRef::try_from(body.id)?;
    let unlocked = unlocked(&call)?;
    call.read_barrier().await?;
    let (name, record) = find(&call.api.node, &reference)?;
    let (policy, _) = shown(&unlocked, &name, &record)?;
    Ok(PolicyResponse { policy, err: None })
}

/// Delete: one policy, by id or name.
pub async fn delete(call: Call<'_>, body: DeletePolicyRequest) -> Result<EmptyResponse, ApiError> {
    call.authorize_path(ACL_PATH, &[Permission::Write]).await?;
    let reference = PolicyRef::try_from(body.id)?;
    unlocked(&call)?;
    let command = PolicyCommand::Delete { policy: reference };
    write(&call, command, call.session).await?;
    Ok(EmptyResponse::default())
}

/// List: every policy, whole, or those whose SPIFFE ID pattern (else path
/// pattern) equals the filter exactly.
pub async fn list(
    call: Call<'_>,
    body: ListPoliciesRequest,
) -> Result<ListPoliciesResponse, ApiError> {
    call.authorize_path(ACL_PATH, &[Permission::List]).await?;
    let unlocked = unlocked(&call)?;
    call.read_barrier().await?;
    let mut listed = Vec::new();
    for (name, record) in stored(&call.api.node)? {
        let (policy, body_of) = shown(&unlocked, &name, &record)?;
        let keep = if !body.spiffeid_pattern.is_empty() {
            body_of.spiffeid_pattern == body.spiffeid_pattern
        } else if !body.path_pattern.is_empty() {
            body_of.path_pattern == body.path_pattern
        } else {
            true
        };
        if keep {
            listed.push(policy);
        }
    }
    Ok(ListPoliciesResponse {
        policies: Some(listed),
        err: None,
    })
}
