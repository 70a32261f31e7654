//! `/v1/bootstrap/verify`: SPIKE Bootstrap proves the replica holds the
//! root key by having it open a random text sealed with that key (no
//! associated data) and return the text's SHA-256.

use serde::{Deserialize, Serialize};

use super::encoding::base64_bytes;
use super::{ApiRequest, ErrorCode, Route};

/// Verify.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyRequest {
    /// The 12-byte nonce.
    #[serde(with = "base64_bytes")]
    pub nonce: Vec<u8>,
    /// The sealed text.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
}

impl ApiRequest for VerifyRequest {
    const ROUTE: Route = Route::BootstrapVerify;
    type Response = VerifyResponse;
}

/// Verify's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyResponse {
    /// Lowercase hex SHA-256 of the opened text.
    pub hash: String,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

super::responses!(VerifyResponse);
