//! `/v1/cipher/*`: encryption as a service, in SPIKE's two modes.
//!
//! JSON mode: `{"plaintext":b64}` in, `{"version":1,"nonce":b64,
//! "ciphertext":b64}` out, and back. Stream mode (`Content-Type:
//! application/octet-stream`): raw plaintext in, a [`StreamFrame`] out,
//! and back; its errors are `text/plain` bodies.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::encoding::base64_bytes;
use super::{ApiRequest, ErrorCode, Route};

/// Largest plaintext or ciphertext (SPIKE's default
/// `SPIKE_NEXUS_CRYPTO_MAX_CIPHERTEXT_SIZE`).
pub const CIPHER_SIZE_MAX_BYTES: usize = 65_536;
/// The one format version SPIKE defines.
pub const FORMAT_VERSION: u8 = 1;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Encrypt, JSON mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncryptRequest {
    /// What to encrypt (secret: wiped on drop).
    #[serde(with = "base64_bytes")]
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Ignored: there is one algorithm (AES-256-GCM).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub algorithm: String,
}

impl ApiRequest for EncryptRequest {
    const ROUTE: Route = Route::CipherEncrypt;
    type Response = EncryptResponse;
}

/// Encrypt's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EncryptResponse {
    /// [`FORMAT_VERSION`].
    pub version: u8,
    /// The nonce.
    #[serde(with = "base64_bytes")]
    pub nonce: Vec<u8>,
    /// The ciphertext and its tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// Decrypt, JSON mode: what encrypt returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecryptRequest {
    /// [`FORMAT_VERSION`] (always written, even 0, as Go's clients do).
    pub version: u8,
    /// The nonce.
    #[serde(with = "base64_bytes")]
    pub nonce: Vec<u8>,
    /// The ciphertext and its tag.
    #[serde(with = "base64_bytes")]
    pub ciphertext: Vec<u8>,
    /// Ignored: there is one algorithm.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub algorithm: String,
}

impl ApiRequest for DecryptRequest {
    const ROUTE: Route = Route::CipherDecrypt;
    type Response = DecryptResponse;
}

/// Decrypt's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DecryptResponse {
    /// The plaintext (secret: wiped on drop).
    #[serde(with = "base64_bytes")]
    pub plaintext: Zeroizing<Vec<u8>>,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
}

/// A stream-mode ciphertext: `version ‖ nonce(12) ‖ ciphertext and tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    /// The format version (only [`FORMAT_VERSION`] opens).
    pub version: u8,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The ciphertext and its tag.
    pub ciphertext: Vec<u8>,
}

/// A stream-mode body that is no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.code())]
pub enum FrameError {
    /// The body is empty.
    NoVersion,
    /// The version is not [`FORMAT_VERSION`].
    UnsupportedVersion,
    /// The body ends inside the nonce.
    NoNonce,
}

impl FrameError {
    /// SPIKE's `text/plain` error body for it.
    pub fn code(self) -> &'static str {
        match self {
            FrameError::NoVersion => "crypto_failed_to_read_version",
            FrameError::UnsupportedVersion => "crypto_unsupported_version",
            FrameError::NoNonce => "crypto_failed_to_read_nonce",
        }
    }
}

impl StreamFrame {
    /// The frame's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(1 + NONCE_LEN + self.ciphertext.len());
        bytes.push(self.version);
        bytes.extend_from_slice(&self.nonce);
        bytes.extend_from_slice(&self.ciphertext);
        bytes
    }

    /// Reads a frame, as SPIKE reads one: version first, then the nonce.
    pub fn parse(bytes: &[u8]) -> Result<Self, FrameError> {
        let (&version, rest) = bytes.split_first().ok_or(FrameError::NoVersion)?;
        if version != FORMAT_VERSION {
            return Err(FrameError::UnsupportedVersion);
        }
        let nonce = rest
            .get(..NONCE_LEN)
            .and_then(|nonce| <[u8; NONCE_LEN]>::try_from(nonce).ok())
            .ok_or(FrameError::NoNonce)?;
        Ok(Self {
            version,
            nonce,
            ciphertext: rest[NONCE_LEN..].to_vec(),
        })
    }
}

super::responses!(EncryptResponse, DecryptResponse);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_mode_bodies_are_spikes() {
        let encrypt = EncryptRequest {
            plaintext: Zeroizing::new(b"hello".to_vec()),
            algorithm: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&encrypt).expect("json"),
            r#"{"plaintext":"aGVsbG8="}"#
        );
        let decrypt = DecryptRequest {
            version: 1,
            nonce: b"123456789012".to_vec(),
            ciphertext: b"cipher-bytes".to_vec(),
            algorithm: String::new(),
        };
        assert_eq!(
            serde_json::to_string(&decrypt).expect("json"),
            r#"{"version":1,"nonce":"MTIzNDU2Nzg5MDEy","ciphertext":"Y2lwaGVyLWJ5dGVz"}"#
        );
    }

    #[test]
    fn stream_frames_round_trip_and_short_ones_say_what_is_missing() {
        let frame = StreamFrame {
            version: FORMAT_VERSION,
            nonce: [7; NONCE_LEN],
            ciphertext: vec![1, 2, 3],
        };
        assert_eq!(StreamFrame::parse(&frame.to_bytes()), Ok(frame));
        assert_eq!(StreamFrame::parse(&[]), Err(FrameError::NoVersion));
        assert_eq!(
            StreamFrame::parse(&[2; 20]),
            Err(FrameError::UnsupportedVersion)
        );
        assert_eq!(StreamFrame::parse(&[1; 12]), Err(FrameError::NoNonce));
    }
}
