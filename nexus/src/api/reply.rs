//! Turning handler outcomes into SPIKE's answers: the route's answer type
//! marshalled, its zero value plus `err` on failure, SPIKE's no-cache
//! headers, and the leader hint.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use spike_sdk::api::{ApiResponse, EmptyResponse, ErrorCode, header as wire_header};
use spike_sdk::domain::InvalidValue;

use crate::node::NodeError;

/// A failed request: SPIKE's error code (and so its status), and for the
/// replica's log what went wrong where the code alone does not say.
#[derive(Debug)]
pub enum ApiError {
    /// A failure the code says all about.
    Code(ErrorCode),
    /// 500 `api_internal_error`, with the reason for the log.
    Internal(String),
    /// 503 `state_not_ready`, with the reason for the log (no leader, no
    /// quorum, or an outcome the leader could not confirm).
    Unavailable(String),
    /// Cipher stream mode: a `text/plain` error as SPIKE sends it.
    StreamText(StatusCode, &'static str),
    /// 507 `storage_quota_exceeded`, with the quota, the size and how to
    /// free space (the `X-Spike-Reason` header and the log).
    StorageQuota(String),
    /// 429 `rate_limited`, with the seconds to wait (`Retry-After`).
    RateLimited(u64),
}

impl ApiError {
    /// 400 `api_bad_request`.
    pub const BAD_REQUEST: ApiError = ApiError::Code(ErrorCode::BadRequest);
    /// 401 `access_unauthorized`.
    pub const UNAUTHORIZED: ApiError = ApiError::Code(ErrorCode::Unauthorized);
    /// 404 `api_not_found`.
    pub const NOT_FOUND: ApiError = ApiError::Code(ErrorCode::NotFound);
    /// 409 `api_conflict`.
    pub const CONFLICT: ApiError = ApiError::Code(ErrorCode::Conflict);
    /// 503 `state_not_ready`.
    pub const NOT_READY: ApiError = ApiError::Code(ErrorCode::NotReady);

    /// The code this failure answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Code(code) => *code,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::Unavailable(_) => ErrorCode::NotReady,
            ApiError::StorageQuota(_) => ErrorCode::StorageQuota,
            ApiError::RateLimited(_) => ErrorCode::RateLimited,
            ApiError::StreamText(status, _) => {
                ErrorCode::from_status(status.as_u16()).unwrap_or(ErrorCode::Internal)
            }
        }
    }

    /// Logs what the code does not say.
    fn log(&self) {
        match self {
            ApiError::Internal(reason) | ApiError::Unavailable(reason) => {
                tracing::warn!(%reason, code = %self.code(), "request failed");
            }
            ApiError::StorageQuota(reason) => {
                tracing::info!(%reason, code = %self.code(), "request refused");
            }
            _ => {}
        }
    }
}

impl From<NodeError> for ApiError {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::Invalid(_) => ApiError::BAD_REQUEST,
            NodeError::NotReady => ApiError::NOT_READY,
            NodeError::StorageQuota(exceeded) => ApiError::StorageQuota(exceeded.to_string()),
            NodeError::NoLeader | NodeError::OutcomeUnknown(_) | NodeError::NotYet(_) => {
                ApiError::Unavailable(error.to_string())
            }
        }
    }
}

impl From<InvalidValue> for ApiError {
    /// An identifier that breaks its rule is the caller's bad request.
    fn from(_: InvalidValue) -> Self {
        ApiError::BAD_REQUEST
    }
}

/// What a handler answered, before the headers every answer carries.
pub enum Answer {
    /// `application/json`.
    Json(Vec<u8>),
    /// `application/octet-stream` (cipher stream mode, backups).
    Stream(Vec<u8>),
    /// `application/octet-stream` read from an open file as it is sent
    /// (a backup of any size, never whole in memory), with its length.
    File(std::fs::File, u64),
    /// `text/plain` (cipher stream mode's errors).
    Text(&'static str),
}

/// Bytes of a file read per body chunk.
const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// The body of `file`, read chunk by chunk as the client takes it.
fn file_body(file: std::fs::File) -> axum::body::Body {
    use tokio::io::AsyncReadExt;
    let file = Some(tokio::fs::File::from_std(file));
    let chunks = futures_util::stream::unfold(file, |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; FILE_CHUNK_BYTES];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(axum::body::Bytes::from(buffer)), Some(file)))
            }
            // The client sees the body break off: never a short backup
            // that looks whole (the length was announced).
            Err(error) => Some((Err(error), None)),
        }
    });
    axum::body::Body::from_stream(chunks)
}

/// A finished request: its status, the code the audit log records, and
/// the answer.
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// `ok`, or the error code.
    pub code: &'static str,
    /// The body.
    pub answer: Answer,
    /// Headers the failure adds (`Retry-After`, `X-Spike-Reason`).
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// 200 with `answer` as JSON.
    pub fn json<T: serde::Serialize>(answer: &T) -> Self {
        match serde_json::to_vec(answer) {
            Ok(body) => Self {
                status: StatusCode::OK,
                code: "ok",
                answer: Answer::Json(body),
                extra_headers: Vec::new(),
            },
            Err(error) => Self::failed::<EmptyResponse>(ApiError::Internal(format!(
                "answer does not serialize: {error}"
            ))),
        }
    }

    /// 200 with raw bytes.
    pub fn stream(bytes: Vec<u8>) -> Self {
        Self {
            status: StatusCode::OK,
            code: "ok",
            answer: Answer::Stream(bytes),
            extra_headers: Vec::new(),
        }
    }

    /// 200 with the bytes of `file` (from its current position, `length`
    /// of them), streamed.
    pub fn file(file: std::fs::File, length: u64) -> Self {
        Self {
            status: StatusCode::OK,
            code: "ok",
            answer: Answer::File(file, length),
            extra_headers: Vec::new(),
        }
    }

    /// `error` in the shape of answer `R`: its zero value with `err` set,
    /// as SPIKE marshals an empty response struct.
    pub fn failed<R: ApiResponse>(error: ApiError) -> Self {
        error.log();
        if let ApiError::StreamText(status, message) = error {
            return Self {
                status,
                code: message,
                answer: Answer::Text(message),
                extra_headers: Vec::new(),
            };
        }
        let code = error.code();
        let extra_headers = match error {
            ApiError::StorageQuota(reason) => vec![(wire_header::REASON, reason)],
            ApiError::RateLimited(seconds) => {
                vec![(wire_header::RETRY_AFTER, seconds.to_string())]
            }
            _ => Vec::new(),
        };
        Self {
            extra_headers,
            status: StatusCode::from_u16(code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: code.as_str(),
            answer: Answer::Json(serde_json::to_vec(&R::failed(code)).unwrap_or_default()),
        }
    }

    /// The HTTP response, with SPIKE's headers and the leader hint.
    pub fn into_response(self, leader: Option<&std::net::SocketAddr>) -> Response {
        let mut response = match self.answer {
            Answer::Json(body) => (
                self.status,
                [(header::CONTENT_TYPE, wire_header::JSON)],
                body,
            )
                .into_response(),
            Answer::Stream(bytes) => (
                self.status,
                [(header::CONTENT_TYPE, wire_header::OCTET_STREAM)],
                bytes,
            )
                .into_response(),
            Answer::File(file, length) => (
                self.status,
                [
                    (header::CONTENT_TYPE, wire_header::OCTET_STREAM.to_owned()),
                    (header::CONTENT_LENGTH, length.to_string()),
                ],
                file_body(file),
            )
                .into_response(),
            Answer::Text(message) => {
                // SPIKE's plain-text errors carry no other header.
                return (
                    self.status,
                    [
                        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    ],
                    format!("{message}\n"),
                )
                    .into_response();
            }
        };
        let headers = response.headers_mut();
        for (name, value) in self.extra_headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        for (name, value) in wire_header::NO_CACHE {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        if let Some(value) = leader
            .and_then(|address| HeaderValue::from_str(&wire_header::leader_hint(address)).ok())
        {
            headers.insert(HeaderName::from_static(wire_header::LEADER), value);
        }
        response
    }
}
