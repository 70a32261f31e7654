//! `/v1/cipher/*`: encryption as a service, in SPIKE's two modes.
//!
//! JSON mode: `{"plaintext":b64}` in, `{"version":1,"nonce":b64,
//! "ciphertext":b64}` out, and back. Stream mode (`Content-Type:
//! application/octet-stream` exactly): raw plaintext in, `0x01 ‖ nonce(12)
//! ‖ ciphertext ‖ tag` out, and back; its errors are `text/plain`.
//!
//! Unlike SPIKE, which seals with the root key itself, we seal with the
//! keyring's active data key: ciphertexts survive rekeys and data-key
//! rotations (decryption tries every data key; the GCM tag picks the right
//! one), and the root key never touches caller data.

use axum::http::StatusCode;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, Body, Call};
use crate::cluster::LeaderOp;

/// Largest plaintext or ciphertext (SPIKE's default
/// `SPIKE_NEXUS_CRYPTO_MAX_CIPHERTEXT_SIZE`).
pub const CIPHER_SIZE_MAX_BYTES: usize = 65_536;
/// The cipher format version SPIKE defines.
const FORMAT_VERSION: u8 = 1;
/// Associated data of every cipher-route ciphertext.
const AAD: &[u8] = b"spike/cipher/v1";

fn stream_mode(call: &Call<'_>) -> bool {
    call.content_type == Some("application/octet-stream")
}

fn decode_b64(text: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD.decode(text).map_err(|_| ApiError::BadRequest)
}

#[derive(Deserialize)]
struct EncryptBody {
    #[serde(default)]
    plaintext: String,
}

#[derive(Deserialize)]
struct DecryptBody {
    #[serde(default)]
    version: u8,
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    ciphertext: String,
}

/// Encrypt.
pub async fn encrypt(call: Call<'_>) -> Result<Body, ApiError> {
    let stream = stream_mode(&call);
    let plaintext = if stream {
        zeroize::Zeroizing::new(call.body.to_vec())
    } else {
        let body: EncryptBody = call.parse(&["plaintext", "algorithm"])?;
        zeroize::Zeroizing::new(decode_b64(&body.plaintext)?)
    };
    call.authorize_cipher()?;
    if plaintext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BadRequest);
    }
    let unlocked = call.api.node.keys.unlocked().ok_or(ApiError::NotReady)?;
    let (nonce, ciphertext, due) = unlocked.seal_cipher(AAD, &plaintext).map_err(|e| {
        if stream {
            ApiError::StreamText(
                StatusCode::INTERNAL_SERVER_ERROR,
                "crypto_cipher_not_available",
            )
        } else {
            ApiError::Internal(e.to_string())
        }
    })?;
    let active = unlocked.active_data_key();
    let first_ask = call
        .api
        .rotation_requested_for
        .swap(active, std::sync::atomic::Ordering::SeqCst)
        != active;
    if due && first_ask {
        // These encryptions are not in the log, so this replica counts them
        // and asks the leader (once per key) for a fresh data key in time.
        let node = call.api.node.clone();
        tokio::spawn(async move {
            if let Err(error) = node.execute(LeaderOp::RotateDataKey).await {
                tracing::warn!(%error, "data-key rotation request failed");
            }
        });
    }
    if stream {
        let mut out = Vec::with_capacity(1 + nonce.len() + ciphertext.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(Body::Stream(out))
    } else {
        Ok(Body::Json(json!({
            "version": FORMAT_VERSION,
            "nonce": STANDARD.encode(nonce),
            "ciphertext": STANDARD.encode(&ciphertext),
        })))
    }
}

/// Decrypt.
pub async fn decrypt(call: Call<'_>) -> Result<Body, ApiError> {
    let stream = stream_mode(&call);
    // SPIKE authorizes decryption before it reads the body.
    call.authorize_cipher()?;
    let text = |status, message| ApiError::StreamText(status, message);
    let (version, nonce, ciphertext) = if stream {
        let Some((&version, rest)) = call.body.split_first() else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "crypto_failed_to_read_version",
            ));
        };
        if version != FORMAT_VERSION {
            return Err(text(StatusCode::BAD_REQUEST, "crypto_unsupported_version"));
        }
        if rest.len() < 12 {
            return Err(text(StatusCode::BAD_REQUEST, "crypto_failed_to_read_nonce"));
        }
        let (nonce, ciphertext) = rest.split_at(12);
        (version, nonce.to_vec(), ciphertext.to_vec())
    } else {
        let body: DecryptBody = call.parse(&["version", "nonce", "ciphertext", "algorithm"])?;
        (
            body.version,
            decode_b64(&body.nonce)?,
            decode_b64(&body.ciphertext)?,
        )
    };
    let nonce: [u8; 12] = nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::BadRequest)?;
    if version != FORMAT_VERSION || ciphertext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BadRequest);
    }
    let unlocked = call.api.node.keys.unlocked().ok_or(ApiError::NotReady)?;
    let plaintext = unlocked
        .open_cipher(&nonce, AAD, &ciphertext)
        .map_err(|_| {
            if stream {
                text(StatusCode::BAD_REQUEST, "decryption failed")
            } else {
                ApiError::Internal("decryption failed".to_owned())
            }
        })?;
    if stream {
        Ok(Body::Stream(plaintext.expose_secret().to_vec()))
    } else {
        Ok(Body::Json(
            json!({ "plaintext": STANDARD.encode(plaintext.expose_secret()) }),
        ))
    }
}
