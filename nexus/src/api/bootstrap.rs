//! `/v1/bootstrap/verify`: SPIKE's bootstrap job proves the replica holds
//! the root key by having it open a random text sealed with that key and
//! return the text's SHA-256.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spike_sdk::crypto::aead::open_unframed;
use spike_sdk::identity::Role;

use super::cipher::CIPHER_SIZE_MAX_BYTES;
use super::{ApiError, Call};

#[derive(Deserialize)]
struct VerifyBody {
    #[serde(default)]
    nonce: String,
    #[serde(default)]
    ciphertext: String,
}

/// Verify.
pub async fn verify(call: Call<'_>) -> Result<Value, ApiError> {
    let body: VerifyBody = call.parse(&["nonce", "ciphertext"])?;
    call.require(Role::Bootstrap)?;
    let nonce = STANDARD
        .decode(&body.nonce)
        .map_err(|_| ApiError::BadRequest)?;
    let ciphertext = STANDARD
        .decode(&body.ciphertext)
        .map_err(|_| ApiError::BadRequest)?;
    let nonce: [u8; 12] = nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::BadRequest)?;
    if ciphertext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BadRequest);
    }
    let unlocked = call.api.node.keys.unlocked().ok_or(ApiError::NotReady)?;
    let plaintext = open_unframed(
        unlocked.root_key().expose_secret(),
        &nonce,
        &[],
        &ciphertext,
    )
    .map_err(|_| ApiError::Internal("bootstrap text does not open with the root key".to_owned()))?;
    Ok(json!({ "hash": hex::encode(Sha256::digest(plaintext.expose_secret())) }))
}
