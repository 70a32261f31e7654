//! `/v1/acl/policy`: SPIKE's access policies.
//!
//! Policies are upserted by name and carry a stable id (a UUID): SPIKE's
//! release line looks policies up by id, its development line by name;
//! both send the key in the same `id` field, and both are served.

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

use super::{ApiRequest, ErrorCode, Route, Timestamp};
use crate::domain::Permission;

/// Put: create the policy `name`, or replace it (keeping its id and
/// creation time).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct PutPolicyRequest {
    /// The policy's name.
    pub name: String,
    /// Regular expression over callers' SPIFFE IDs (unanchored, as Go's).
    pub spiffeid_pattern: String,
    /// Regular expression over secret paths (unanchored).
    pub path_pattern: String,
    /// What it grants: `read`, `write`, `list`, `execute`, `super`.
    pub permissions: Vec<String>,
}

impl ApiRequest for PutPolicyRequest {
    const ROUTE: Route = Route::PolicyPut;
    type Response = PutPolicyResponse;
}

/// Put's answer: the policy's id (SPIKE's clients ignore it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PutPolicyResponse {
    /// The stored policy's id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Get: one policy, named by its id or its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetPolicyRequest {
    /// The policy's id, or its name.
    pub id: String,
}

impl ApiRequest for GetPolicyRequest {
    const ROUTE: Route = Route::PolicyGet;
    type Response = PolicyResponse;
}

/// Delete: one policy, named by its id or its name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeletePolicyRequest {
    /// The policy's id, or its name.
    pub id: String,
}

impl ApiRequest for DeletePolicyRequest {
    const ROUTE: Route = Route::PolicyDelete;
    type Response = super::EmptyResponse;
}

/// A policy as SPIKE's clients read it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Policy {
    /// Its id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its SPIFFE ID pattern, under SPIKE's misspelt key, which is the
    /// only one SPIKE's clients read.
    #[serde(rename = "spiffiedPattern")]
    pub spiffeid_pattern: String,
    /// Its path pattern.
    pub path_pattern: String,
    /// What it grants (`null` in a failed answer, as Go's nil slice).
    #[serde(serialize_with = "nil_if_empty")]
    pub permissions: Vec<Permission>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last replaced.
    pub updated_at: Timestamp,
}

/// Get's answer: the policy's fields at the top level.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, from = "PolicyResponseFields")]
pub struct PolicyResponse {
    /// The policy.
    #[serde(flatten)]
    pub policy: Policy,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// [`PolicyResponse`] as it is decoded: its fields side by side, because
/// serde's `flatten` buffers what it reads and so decodes without Go's
/// rules (`"permissions":null`, which a failed answer carries, and
/// case-variant keys were refused).
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct PolicyResponseFields {
    id: String,
    name: String,
    #[serde(rename = "spiffiedPattern")]
    spiffeid_pattern: String,
    path_pattern: String,
    permissions: Vec<Permission>,
    created_at: Timestamp,
    updated_at: Timestamp,
    err: Option<ErrorCode>,
}

impl From<PolicyResponseFields> for PolicyResponse {
    fn from(fields: PolicyResponseFields) -> Self {
        Self {
            policy: Policy {
                id: fields.id,
                name: fields.name,
                spiffeid_pattern: fields.spiffeid_pattern,
                path_pattern: fields.path_pattern,
                permissions: fields.permissions,
                created_at: fields.created_at,
                updated_at: fields.updated_at,
            },
            err: fields.err,
        }
    }
}

/// List: every policy, or those whose SPIFFE ID pattern (else path
/// pattern) is exactly the one given. SPIKE's clients always send both
/// fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListPoliciesRequest {
    /// Keep only policies with exactly this SPIFFE ID pattern (empty: any).
    pub spiffeid_pattern: String,
    /// Keep only policies with exactly this path pattern (empty: any).
    pub path_pattern: String,
}

impl ApiRequest for ListPoliciesRequest {
    const ROUTE: Route = Route::PolicyList;
    type Response = ListPoliciesResponse;
}

/// List's answer: whole policies (SPIKE's release reads every field; its
/// development line reads `id` and `name`), sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListPoliciesResponse {
    /// The policies (`null` on failure).
    pub policies: Option<Vec<Policy>>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Writes an empty list as `null`, as Go writes a nil slice.
fn nil_if_empty<S: Serializer, T: Serialize>(
    items: &[T],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    if items.is_empty() {
        return serializer.serialize_none();
    }
    let mut sequence = serializer.serialize_seq(Some(items.len()))?;
    for item in items {
        sequence.serialize_element(item)?;
    }
    sequence.end()
}

super::responses!(PutPolicyResponse, PolicyResponse, ListPoliciesResponse);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ApiResponse, decode};

    #[test]
    fn requests_are_written_byte_for_byte_as_spikes_go_sdk_writes_them() {
        let put = PutPolicyRequest {
            name: "db-access".into(),
            spiffeid_pattern: "^spiffe://example\\.org/service/.*$".into(),
            path_pattern: "^apps/db/.*$".into(),
            permissions: vec!["read".into(), "write".into()],
        };
        assert_eq!(
            serde_json::to_string(&put).expect("json"),
            r#"{"name":"db-access","spiffeidPattern":"^spiffe://example\\.org/service/.*$","pathPattern":"^apps/db/.*$","permissions":["read","write"]}"#
        );
        assert_eq!(
            serde_json::to_string(&ListPoliciesRequest::default()).expect("json"),
            r#"{"spiffeidPattern":"","pathPattern":""}"#
        );
    }

    #[test]
    fn a_policy_is_written_as_spikes_go_sdk_writes_it() {
        let policy = Policy {
            id: "7d9c5e2a-1b3c-4d5e-8f90-123456789abc".into(),
            name: "db-access".into(),
            spiffeid_pattern: "^spiffe://x$".into(),
            path_pattern: "^apps/.*$".into(),
            permissions: vec![Permission::Read],
            created_at: Timestamp::from_unix_nanos(1_735_787_045_123_456_789),
            updated_at: Timestamp::ZERO,
        };
        let response = PolicyResponse { policy, err: None };
        assert_eq!(
            serde_json::to_string(&response).expect("json"),
            r#"{"id":"7d9c5e2a-1b3c-4d5e-8f90-123456789abc","name":"db-access","spiffiedPattern":"^spiffe://x$","pathPattern":"^apps/.*$","permissions":["read"],"createdAt":"2025-01-02T03:04:05.123456789Z","updatedAt":"0001-01-01T00:00:00Z"}"#
        );
        assert_eq!(
            serde_json::to_string(&PolicyResponse::failed(ErrorCode::NotFound)).expect("json"),
            r#"{"id":"","name":"","spiffiedPattern":"","pathPattern":"","permissions":null,"createdAt":"0001-01-01T00:00:00Z","updatedAt":"0001-01-01T00:00:00Z","err":"api_not_found"}"#
        );
    }

    /// Regression (found by the `api_json` fuzz target): Go's rules did
    /// not reach through `flatten`, so the failed answer the server writes
    /// (`"permissions":null`) and case-variant keys did not decode.
    #[test]
    fn a_policy_answer_decodes_by_gos_rules() {
        let failed = PolicyResponse::failed(ErrorCode::NotFound);
        let written = serde_json::to_vec(&failed).expect("json");
        assert_eq!(decode::<PolicyResponse>(&written), Ok(failed));
        let answer: PolicyResponse = decode(
            br#"{"ID":"x","NAME":"y","Permissions":["read"],"permissions":null,"err":null}"#,
        )
        .expect("Go decodes it");
        assert_eq!(answer.policy.id, "x");
        assert_eq!(answer.policy.name, "y");
        assert!(answer.policy.permissions.is_empty());
    }
}
