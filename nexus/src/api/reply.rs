//! Turning handler outcomes into SPIKE's responses: the route's response
//! shape with zero values plus `err` on failure, SPIKE's no-cache headers,
//! and the leader hint.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::node::NodeError;

/// SPIKE's no-cache headers, on every JSON answer.
const NO_CACHE_HEADERS: [(HeaderName, &str); 3] = [
    (
        header::CACHE_CONTROL,
        "no-store, no-cache, must-revalidate, private",
    ),
    (header::PRAGMA, "no-cache"),
    (header::EXPIRES, "0"),
];

/// Header naming the leader's API address (`https://host:port`).
pub const LEADER_HEADER: &str = "x-spike-leader";

/// Every route, by path and action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// `POST /v1/store/secrets`.
    SecretPut,
    /// `?action=get` on secrets.
    SecretGet,
    /// `?action=delete` on secrets.
    SecretDelete,
    /// `?action=undelete` on secrets.
    SecretUndelete,
    /// `?action=destroy` on secrets (extension).
    SecretDestroy,
    /// `?action=list` on secrets.
    SecretList,
    /// `/v1/store/secrets/metadata?action=get`.
    SecretMetadata,
    /// `POST /v1/acl/policy`.
    PolicyPut,
    /// `?action=get` on policies.
    PolicyGet,
    /// `?action=delete` on policies.
    PolicyDelete,
    /// `?action=list` on policies.
    PolicyList,
    /// `/v1/cipher/encrypt`.
    CipherEncrypt,
    /// `/v1/cipher/decrypt`.
    CipherDecrypt,
    /// `/v1/operator/recover`.
    Recover,
    /// `/v1/operator/restore`.
    Restore,
    /// `/v1/bootstrap/verify`.
    BootstrapVerify,
    /// `/v1/operator/rekey` (extension).
    Rekey,
    /// `/v1/operator/rotate` (extension).
    Rotate,
    /// `/v1/cluster?action=status` (extension).
    ClusterStatus,
    /// `/v1/cluster?action=members` (extension).
    ClusterMembers,
    /// `/v1/cluster?action=add` (extension).
    ClusterAdd,
    /// `/v1/cluster?action=remove` (extension).
    ClusterRemove,
    /// `/v1/cluster?action=transfer` (extension).
    ClusterTransfer,
    /// `/v1/snapshot?action=save` (extension).
    SnapshotSave,
    /// `/v1/snapshot?action=restore` (extension).
    SnapshotRestore,
    /// Anything else (400).
    Unknown,
}

impl RouteKind {
    /// The route at `path` with `action` (SPIKE matches both exactly).
    pub fn of(path: &str, action: Option<&str>) -> Self {
        match (path, action) {
            ("/v1/store/secrets", None) => Self::SecretPut,
            ("/v1/store/secrets", Some("get")) => Self::SecretGet,
            ("/v1/store/secrets", Some("delete")) => Self::SecretDelete,
            ("/v1/store/secrets", Some("undelete")) => Self::SecretUndelete,
            ("/v1/store/secrets", Some("destroy")) => Self::SecretDestroy,
            ("/v1/store/secrets", Some("list")) => Self::SecretList,
            ("/v1/store/secrets/metadata", Some("get")) => Self::SecretMetadata,
            ("/v1/acl/policy", None) => Self::PolicyPut,
            ("/v1/acl/policy", Some("get")) => Self::PolicyGet,
            ("/v1/acl/policy", Some("delete")) => Self::PolicyDelete,
            ("/v1/acl/policy", Some("list")) => Self::PolicyList,
            ("/v1/cipher/encrypt", None) => Self::CipherEncrypt,
            ("/v1/cipher/decrypt", None) => Self::CipherDecrypt,
            ("/v1/operator/recover", _) => Self::Recover,
            ("/v1/operator/restore", _) => Self::Restore,
            ("/v1/bootstrap/verify", None) => Self::BootstrapVerify,
            ("/v1/operator/rekey", None) => Self::Rekey,
            ("/v1/operator/rotate", None) => Self::Rotate,
            ("/v1/cluster", Some("status")) => Self::ClusterStatus,
            ("/v1/cluster", Some("members")) => Self::ClusterMembers,
            ("/v1/cluster", Some("add")) => Self::ClusterAdd,
            ("/v1/cluster", Some("remove")) => Self::ClusterRemove,
            ("/v1/cluster", Some("transfer")) => Self::ClusterTransfer,
            ("/v1/snapshot", Some("save")) => Self::SnapshotSave,
            ("/v1/snapshot", Some("restore")) => Self::SnapshotRestore,
            _ => Self::Unknown,
        }
    }

    /// SPIKE answers 503 on every route but recover and restore while the
    /// root key is missing; our cluster routes stay reachable too, so an
    /// operator can see why.
    pub fn needs_root_key(self) -> bool {
        !matches!(
            self,
            Self::Recover
                | Self::Restore
                | Self::ClusterStatus
                | Self::ClusterMembers
                | Self::ClusterAdd
                | Self::ClusterRemove
                | Self::ClusterTransfer
                | Self::SnapshotRestore
        )
    }

    /// The route's response with zero values and `err` set (SPIKE's Go
    /// structs marshalled empty).
    fn error_body(self, code: &str) -> Value {
        const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
        match self {
            Self::SecretGet => json!({ "data": null, "err": code }),
            Self::SecretList => json!({ "keys": null, "err": code }),
            Self::SecretMetadata => json!({
                "metadata": {
                    "currentVersion": 0, "oldestVersion": 0, "createdTime": ZERO_TIME,
                    "updatedTime": ZERO_TIME, "maxVersions": 0,
                },
                "err": code,
            }),
            Self::PolicyGet => json!({
                "id": "", "name": "", "spiffiedPattern": "", "pathPattern": "",
                "permissions": null, "createdAt": ZERO_TIME, "updatedAt": ZERO_TIME, "err": code,
            }),
            Self::PolicyList => json!({ "policies": null, "err": code }),
            Self::CipherEncrypt => {
                json!({ "version": 0, "nonce": null, "ciphertext": null, "err": code })
            }
            Self::CipherDecrypt => json!({ "plaintext": null, "err": code }),
            Self::Recover => json!({ "shards": null, "err": code }),
            Self::Restore => {
                json!({ "collected": 0, "remaining": 0, "restored": false, "err": code })
            }
            Self::BootstrapVerify => json!({ "hash": "", "err": code }),
            _ => json!({ "err": code }),
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub enum Body {
    /// `application/json` with SPIKE's headers.
    Json(Value),
    /// `application/octet-stream` (cipher stream mode).
    Stream(Vec<u8>),
}

/// A failed request, with SPIKE's status and error code.
#[derive(Debug)]
pub enum ApiError {
    /// 400 `api_bad_request`.
    BadRequest,
    /// 401 `access_unauthorized`.
    Unauthorized,
    /// 404 `api_not_found`.
    NotFound,
    /// 409 `api_conflict` (extension: check-and-set failed).
    Conflict,
    /// 413 `api_bad_request`: the body is over the route's limit.
    TooLarge,
    /// 500 `api_internal_error`.
    Internal(String),
    /// 503 `state_not_ready`.
    NotReady,
    /// 503 `state_not_ready` with a reason for the log (no leader, no quorum).
    Unavailable(String),
    /// Cipher stream mode: a `text/plain` error as SPIKE sends it.
    StreamText(StatusCode, &'static str),
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Invalid(_) => ApiError::BadRequest,
            NodeError::NotReady => ApiError::NotReady,
            NodeError::NoLeader | NodeError::OutcomeUnknown(_) => {
                ApiError::Unavailable(error.to_string())
            }
        }
    }
}

impl ApiError {
    /// SPIKE's status and error code for this failure.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest => (StatusCode::BAD_REQUEST, "api_bad_request"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "access_unauthorized"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "api_not_found"),
            ApiError::Conflict => (StatusCode::CONFLICT, "api_conflict"),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "api_bad_request"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "api_internal_error"),
            ApiError::NotReady | ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "state_not_ready")
            }
            ApiError::StreamText(status, message) => (*status, message),
        }
    }
}

/// Builds the response for `kind` from a handler's outcome.
pub fn finish(kind: RouteKind, outcome: Result<Body, ApiError>, leader: Option<&str>) -> Response {
    let mut response = match outcome {
        Ok(Body::Json(body)) => (StatusCode::OK, Json(body)).into_response(),
        Ok(Body::Stream(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(ApiError::StreamText(status, message)) => {
            return (
                status,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                ],
                format!("{message}\n"),
            )
                .into_response();
        }
        Err(error) => {
            let (status, code) = error.status_and_code();
            if let ApiError::Internal(reason) | ApiError::Unavailable(reason) = &error {
                tracing::warn!(%reason, code, "request failed");
            }
            (status, Json(kind.error_body(code))).into_response()
        }
    };
    let headers = response.headers_mut();
    for (name, value) in NO_CACHE_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if let Some(value) =
        leader.and_then(|address| HeaderValue::from_str(&format!("https://{address}")).ok())
    {
        headers.insert(HeaderName::from_static(LEADER_HEADER), value);
    }
    response
}
