//! Turning handler outcomes into SPIKE's responses.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::node::NodeError;

/// SPIKE's no-cache headers, on every answer.
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
    /// 500 `api_internal_error`.
    Internal(String),
    /// 503 `state_not_ready`.
    NotReady,
    /// 503 `state_not_ready` with a reason for the log (no leader, no quorum).
    Unavailable(String),
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Invalid(_) => ApiError::BadRequest,
            NodeError::NotReady => ApiError::NotReady,
            NodeError::NoLeader | NodeError::Unknown(_) => ApiError::Unavailable(error.to_string()),
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
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "api_internal_error"),
            ApiError::NotReady | ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "state_not_ready")
            }
        }
    }
}

/// Adds the common headers to the outcome of a handler.
pub fn finish(outcome: Result<serde_json::Value, ApiError>, leader: Option<&str>) -> Response {
    let mut response = match outcome {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(error) => {
            let (status, code) = error.status_and_code();
            match &error {
                ApiError::Internal(reason) | ApiError::Unavailable(reason) => {
                    tracing::warn!(%reason, code, "request failed");
                }
                _ => {}
            }
            (status, Json(serde_json::json!({ "err": code }))).into_response()
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
