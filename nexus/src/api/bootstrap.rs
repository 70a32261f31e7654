//! `/v1/bootstrap/verify`: SPIKE's bootstrap job proves the replica holds
//! the root key by having it open a random text sealed with that key and
//! return the text's SHA-256.

use sha2::{Digest, Sha256};
use spike_sdk::api::{CIPHER_SIZE_MAX_BYTES, NONCE_LEN, VerifyRequest, VerifyResponse};
use spike_sdk::crypto::aead::open_unframed;
use spike_sdk::identity::Role;

use super::{ApiError, Audited, Call};

impl Audited for VerifyRequest {}

/// Verify.
pub async fn verify(call: Call<'_>, body: VerifyRequest) -> Result<VerifyResponse, ApiError> {
    call.require(Role::Bootstrap)?;
    let nonce: [u8; NONCE_LEN] = body
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::BAD_REQUEST)?;
    if body.ciphertext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BAD_REQUEST);
    }
    let unlocked = call.api.node.keys.unlocked().ok_or(ApiError::NOT_READY)?;
    let plaintext = open_unframed(
        unlocked.root_key().expose_secret(),
        &nonce,
        &[],
        &body.ciphertext,
    )
    .map_err(|_| ApiError::Internal("bootstrap text does not open with the root key".to_owned()))?;
    Ok(VerifyResponse {
        hash: hex::encode(Sha256::digest(plaintext.expose_secret())),
        err: None,
    })
}
