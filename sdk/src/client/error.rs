//! What went wrong with an operation, said so the caller knows what to do.

use crate::api::ErrorCode;
use crate::tls::TlsConfigError;

use super::ClientError;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cluster has no leader, no quorum or no root key yet: retry later.
    #[error("SPIKE Nexus is not ready: {0}")]
    NotReady(String),
    /// No node could be reached within the retry budget: retry later.
    #[error("no SPIKE Nexus node answered: {0}")]
    Unreachable(#[source] ClientError),
    /// The caller's SPIFFE ID may not do this.
    #[error("access denied")]
    Denied,
    /// No such secret, version or policy.
    #[error("not found")]
    NotFound,
    /// The request was malformed or broke a rule; nothing changed.
    #[error("bad request")]
    BadRequest,
    /// A backup restore was refused before anything was replaced (400):
    /// why, naming the first bad record or the damage.
    #[error("backup refused: {0}")]
    BackupRefused(String),
    /// Compare-and-set lost: the current version is not the one expected.
    #[error("the current version is not the one expected")]
    Conflict,
    /// The request is larger than the server takes.
    #[error("request too large")]
    TooLarge,
    /// The caller's rate limit on this route is spent on the node asked;
    /// nothing ran. Try again after `retry_after_secs`.
    #[error("rate limited: try again in {retry_after_secs} s")]
    RateLimited {
        /// Seconds to wait (the answer's `Retry-After`).
        retry_after_secs: u64,
    },
    /// The cluster is past its storage quota: writes that add data are
    /// refused until space is freed; nothing changed.
    #[error("storage quota exceeded: {0}")]
    StorageQuota(String),
    /// Any other answer.
    #[error("SPIKE Nexus answered {status} {code}")]
    Server {
        /// HTTP status.
        status: u16,
        /// SPIKE's error code, if the answer named one.
        code: String,
    },
    /// The answer did not have the expected shape.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The settings cannot work.
    #[error("invalid client settings: {0}")]
    Settings(String),
    /// The request breaks a rule the client checks before sending it;
    /// nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NotReady(_) | Self::Unreachable(_))
    }

    /// The failure an answer's status says, with the `err` code its body
    /// names (SPIKE's clients decide by the status alone; so do we).
    pub fn from_answer(status: u16, body: &[u8]) -> Self {
        Self::from_reply(status, body, |_| None)
    }

    /// [`Error::from_answer`], with the answer's headers for what the body
    /// cannot carry: a 429's `Retry-After` and a refusal's reason.
    pub fn from_reply<'h>(
        status: u16,
        body: &[u8],
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Self {
        match Self::from_body(status, body) {
            Self::RateLimited { .. } => Self::RateLimited {
                retry_after_secs: header(crate::api::header::RETRY_AFTER)
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(1),
            },
            Self::StorageQuota(code) => {
                Self::StorageQuota(header(crate::api::header::REASON).map_or(code, str::to_owned))
            }
            other => other,
        }
    }

    fn from_body(status: u16, body: &[u8]) -> Self {
        if status == 400
            && let Ok(answer) = crate::api::decode::<crate::api::SnapshotRestoreResponse>(body)
            && let Some(reason) = answer.refused
        {
            return Self::BackupRefused(reason);
        }
        let code = crate::api::decode::<crate::api::EmptyResponse>(body)
            .ok()
            .and_then(|answer| answer.err);
        match ErrorCode::from_status(status) {
            Some(ErrorCode::NotReady) => {
                Self::NotReady(code.unwrap_or(ErrorCode::NotReady).as_str().to_owned())
            }
            Some(ErrorCode::RateLimited) => Self::RateLimited {
                retry_after_secs: 1,
            },
            Some(known) => Self::from(known),
            None => Self::Server {
                status,
                code: code
                    .map(|code| code.as_str().to_owned())
                    .unwrap_or_default(),
            },
        }
    }
}

impl From<ErrorCode> for Error {
    /// The failure `code` means (a 200 answer carrying `err` included).
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::BadRequest => Self::BadRequest,
            ErrorCode::TooLarge => Self::TooLarge,
            ErrorCode::Unauthorized => Self::Denied,
            ErrorCode::NotFound => Self::NotFound,
            ErrorCode::Conflict => Self::Conflict,
            ErrorCode::NotReady | ErrorCode::AuditUnavailable | ErrorCode::StateCorrupt => {
                Self::NotReady(code.as_str().to_owned())
            }
            ErrorCode::RateLimited => Self::RateLimited {
                retry_after_secs: 1,
            },
            ErrorCode::StorageQuota => Self::StorageQuota(code.as_str().to_owned()),
            _ => Self::Server {
                status: code.status(),
                code: code.as_str().to_owned(),
            },
        }
    }
}

impl From<TlsConfigError> for Error {
    fn from(error: TlsConfigError) -> Self {
        Self::Settings(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errors_that_say_what_to_do() {
        assert!(matches!(Error::from_answer(401, b""), Error::Denied));
        assert!(matches!(Error::from_answer(404, b"{}"), Error::NotFound));
        assert!(matches!(Error::from_answer(409, b"null"), Error::Conflict));
        assert!(matches!(Error::from_answer(413, b""), Error::TooLarge));
        assert!(matches!(
            Error::from_reply(429, b"{}", |name| (name == "retry-after").then_some("3")),
            Error::RateLimited {
                retry_after_secs: 3
            }
        ));
        assert!(matches!(
            Error::from_reply(507, b"{}", |name| (name == "x-spike-reason").then_some("full")),
            Error::StorageQuota(ref reason) if reason == "full"
        ));
        assert!(matches!(
            Error::from_answer(
                400,
                br#"{"err":"api_bad_request","refused":"snapshot is corrupt: digest mismatch"}"#
            ),
            Error::BackupRefused(ref reason) if reason == "snapshot is corrupt: digest mismatch"
        ));
        assert!(matches!(
            Error::from_answer(400, br#"{"err":"api_bad_request"}"#),
            Error::BadRequest
        ));
        let not_ready = Error::from_answer(503, br#"{"err":"state_not_ready"}"#);
        assert!(not_ready.is_retryable(), "{not_ready}");
        assert!(!Error::Denied.is_retryable());
        assert!(matches!(
            Error::from_answer(500, br#"{"err":"api_internal_error"}"#),
            Error::Server { status: 500, ref code } if code == "api_internal_error"
        ));
        assert!(matches!(
            Error::from_answer(502, b"<html>"),
            Error::Server { status: 502, ref code } if code.is_empty()
        ));
    }
}
