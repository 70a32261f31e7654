//! SPIKE's error codes and the HTTP status each comes with.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a request failed, as the `err` field names it and the HTTP status
/// says it. SPIKE's Go clients look only at the status of a failed answer,
/// so the status is what must be right; the code is for people and for
/// clients that read bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400 `api_bad_request`: the request is malformed or breaks a rule;
    /// nothing changed.
    BadRequest,
    /// 413 `api_bad_request`: the body is over the route's limit (SPIKE
    /// sets none; we do).
    TooLarge,
    /// 401 `access_unauthorized`: the caller's SPIFFE ID may not do this.
    Unauthorized,
    /// 404 `api_not_found`: no such secret, version or policy.
    NotFound,
    /// 409 `api_conflict` (extension): a check-and-set lost.
    Conflict,
    /// 500 `api_internal_error`: the replica failed; the request may or
    /// may not have taken effect only where the route says so.
    Internal,
    /// 503 `state_not_ready`: no root key, no leader or no quorum yet; try
    /// again later.
    NotReady,
    /// 503 `audit_unavailable` (extension): the replica cannot make audit
    /// records durable. Refused before it ran, unless the request was
    /// already running when the audit log broke: then its outcome is
    /// unknown (its record is written once the log takes writes again).
    /// Try again later or elsewhere.
    AuditUnavailable,
    /// 503 `state_corrupt` (extension): this replica's state differs from
    /// the one a majority of the replicas holds (the corruption alarm), so
    /// it serves no data. Try another replica; the operator replaces it.
    StateCorrupt,
    /// 429 `rate_limited` (extension): the caller sent more requests to
    /// this route than its rate limit allows (`spike cluster limits`).
    /// Nothing ran; the `Retry-After` header says when to try again.
    RateLimited,
    /// 507 `storage_quota_exceeded` (extension): the store is past its
    /// storage quota (`SPIKE_NEXUS_STORAGE_QUOTA`), so writes that add data
    /// are refused until space is freed; nothing changed. Reads, deletes,
    /// destroys and key operations still work. The `X-Spike-Reason` header
    /// names the quota and the size.
    StorageQuota,
}

impl ErrorCode {
    /// The code as the `err` field carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest | ErrorCode::TooLarge => "api_bad_request",
            ErrorCode::Unauthorized => "access_unauthorized",
            ErrorCode::NotFound => "api_not_found",
            ErrorCode::Conflict => "api_conflict",
            ErrorCode::Internal => "api_internal_error",
            ErrorCode::NotReady => "state_not_ready",
            ErrorCode::AuditUnavailable => "audit_unavailable",
            ErrorCode::StateCorrupt => "state_corrupt",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StorageQuota => "storage_quota_exceeded",
        }
    }

    /// The HTTP status that comes with it.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::Internal => 500,
            ErrorCode::RateLimited => 429,
            ErrorCode::NotReady | ErrorCode::AuditUnavailable | ErrorCode::StateCorrupt => 503,
            ErrorCode::StorageQuota => 507,
        }
    }

    /// The failure an HTTP status means, as a client reads it (403 is
    /// taken as 401). `None` for 200 and for statuses the API never sends.
    pub fn from_status(status: u16) -> Option<ErrorCode> {
        match status {
            400 => Some(ErrorCode::BadRequest),
            401 | 403 => Some(ErrorCode::Unauthorized),
            404 => Some(ErrorCode::NotFound),
            409 => Some(ErrorCode::Conflict),
            413 => Some(ErrorCode::TooLarge),
            429 => Some(ErrorCode::RateLimited),
            507 => Some(ErrorCode::StorageQuota),
            500 => Some(ErrorCode::Internal),
            503 => Some(ErrorCode::NotReady),
            _ => None,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    /// Reads a code back; `api_bad_request` is [`ErrorCode::BadRequest`]
    /// (only the status tells a 413 apart).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        [
            ErrorCode::BadRequest,
            ErrorCode::Unauthorized,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::Internal,
            ErrorCode::NotReady,
            ErrorCode::AuditUnavailable,
            ErrorCode::StateCorrupt,
            ErrorCode::RateLimited,
            ErrorCode::StorageQuota,
        ]
        .into_iter()
        .find(|code| code.as_str() == text)
        .ok_or_else(|| serde::de::Error::custom("unknown error code"))
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses_are_spikes() {
        for (code, status, text) in [
            (ErrorCode::BadRequest, 400, "api_bad_request"),
            (ErrorCode::TooLarge, 413, "api_bad_request"),
            (ErrorCode::Unauthorized, 401, "access_unauthorized"),
            (ErrorCode::NotFound, 404, "api_not_found"),
            (ErrorCode::Conflict, 409, "api_conflict"),
            (ErrorCode::Internal, 500, "api_internal_error"),
            (ErrorCode::NotReady, 503, "state_not_ready"),
            (ErrorCode::RateLimited, 429, "rate_limited"),
            (ErrorCode::StorageQuota, 507, "storage_quota_exceeded"),
        ] {
            assert_eq!((code.status(), code.as_str()), (status, text));
            assert_eq!(ErrorCode::from_status(status), Some(code));
        }
        assert_eq!(
            serde_json::to_string(&ErrorCode::NotReady).expect("json"),
            "\"state_not_ready\""
        );
        assert_eq!(ErrorCode::from_status(200), None);
        // A 503 is "not ready" by status; the code says why.
        assert_eq!(ErrorCode::AuditUnavailable.status(), 503);
        assert_eq!(
            (
                ErrorCode::StateCorrupt.status(),
                ErrorCode::StateCorrupt.as_str()
            ),
            (503, "state_corrupt")
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"state_corrupt\"").expect("a known code"),
            ErrorCode::StateCorrupt
        );
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"audit_unavailable\"").expect("code"),
            ErrorCode::AuditUnavailable
        );
    }
}
