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
    /// Compare-and-set lost: the current version is not the one expected.
    #[error("the current version is not the one expected")]
    Conflict,
    /// The request is larger than the server takes.
    #[error("request too large")]
    TooLarge,
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
        let code = crate::api::decode::<crate::api::EmptyResponse>(body)
            .ok()
            .and_then(|answer| answer.err);
        match ErrorCode::from_status(status) {
            Some(ErrorCode::NotReady) => {
                Self::NotReady(code.unwrap_or(ErrorCode::NotReady).as_str().to_owned())
            }
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
