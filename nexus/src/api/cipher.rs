//! `/v1/cipher/*`: encryption as a service, in SPIKE's two modes (see
//! [`spike_sdk::api::StreamFrame`] and the JSON bodies).
//!
//! Unlike SPIKE, which seals with the root key itself, we seal with the
//! keyring's active data key: ciphertexts survive rekeys and data-key
//! rotations (decryption tries every data key; the GCM tag picks the right
//! one), and the root key never touches caller data.

use axum::http::StatusCode;
use spike_sdk::api::{
    ApiResponse, CIPHER_SIZE_MAX_BYTES, DecryptRequest, DecryptResponse, EncryptRequest,
    EncryptResponse, FORMAT_VERSION, NONCE_LEN, StreamFrame, decode, header,
};
use zeroize::Zeroizing;

use super::reply::Reply;
use super::{ApiError, Call};
use crate::cluster::LeaderOp;
use crate::keys::Unlocked;

/// Associated data of every cipher-route ciphertext.
const AAD: &[u8] = b"spike/cipher/v1";

fn stream_mode(call: &Call<'_>) -> bool {
    call.content_type == Some(header::OCTET_STREAM)
}

/// The reply of a cipher route: JSON mode answers its answer type, stream
/// mode raw bytes (and SPIKE's `text/plain` errors).
fn reply<R: ApiResponse>(outcome: Result<Reply, ApiError>) -> Reply {
    outcome.unwrap_or_else(Reply::failed::<R>)
}

fn unlocked(call: &Call<'_>) -> Result<std::sync::Arc<Unlocked>, ApiError> {
    call.api.node.keys.unlocked().ok_or(ApiError::NOT_READY)
}

/// Encrypt.
pub async fn encrypt(call: Call<'_>) -> Reply {
    reply::<EncryptResponse>(seal(call).await)
}

async fn seal(call: Call<'_>) -> Result<Reply, ApiError> {
    call.policy_barrier().await?;
    let stream = stream_mode(&call);
    let plaintext = if stream {
        Zeroizing::new(call.body.to_vec())
    } else {
        decode::<EncryptRequest>(call.body)
            .map_err(|_| ApiError::BAD_REQUEST)?
            .plaintext
    };
    call.authorize_cipher()?;
    if plaintext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BAD_REQUEST);
    }
    let unlocked = unlocked(&call)?;
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
    ask_rotation_once(&call, &unlocked, due);
    Ok(if stream {
        Reply::stream(
            StreamFrame {
                version: FORMAT_VERSION,
                nonce,
                ciphertext,
            }
            .to_bytes(),
        )
    } else {
        Reply::json(&EncryptResponse {
            version: FORMAT_VERSION,
            nonce: nonce.to_vec(),
            ciphertext,
            err: None,
        })
    })
}

/// These encryptions are not in the log, so this replica counts them and
/// asks the leader (once per data key) for a fresh one in time.
fn ask_rotation_once(call: &Call<'_>, unlocked: &Unlocked, due: bool) {
    let active = unlocked.active_data_key();
    let first_ask = call
        .api
        .rotation_requested_for
        .swap(active, std::sync::atomic::Ordering::SeqCst)
        != active;
    if due && first_ask {
        let node = call.api.node.clone();
        tokio::spawn(async move {
            if let Err(error) = node.execute(LeaderOp::RotateDataKey).await {
                tracing::warn!(%error, "data-key rotation request failed");
            }
        });
    }
}

/// Decrypt.
pub async fn decrypt(call: Call<'_>) -> Reply {
    reply::<DecryptResponse>(open(call).await)
}

async fn open(call: Call<'_>) -> Result<Reply, ApiError> {
    call.policy_barrier().await?;
    let stream = stream_mode(&call);
    // SPIKE authorizes decryption before it reads the body.
    call.authorize_cipher()?;
    let (version, nonce, ciphertext) = if stream {
        let frame = StreamFrame::parse(call.body)
            .map_err(|error| ApiError::StreamText(StatusCode::BAD_REQUEST, error.code()))?;
        (frame.version, frame.nonce.to_vec(), frame.ciphertext)
    } else {
        let body: DecryptRequest = decode(call.body).map_err(|_| ApiError::BAD_REQUEST)?;
        (body.version, body.nonce, body.ciphertext)
    };
    let nonce: [u8; NONCE_LEN] = nonce
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::BAD_REQUEST)?;
    if version != FORMAT_VERSION || ciphertext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BAD_REQUEST);
    }
    let unlocked = unlocked(&call)?;
    let plaintext = unlocked
        .open_cipher(&nonce, AAD, &ciphertext)
        .map_err(|_| {
            if stream {
                ApiError::StreamText(StatusCode::BAD_REQUEST, "decryption failed")
            } else {
                ApiError::Internal("decryption failed".to_owned())
            }
        })?;
    Ok(if stream {
        Reply::stream(plaintext.expose_secret().to_vec())
    } else {
        Reply::json(&DecryptResponse {
            plaintext: Zeroizing::new(plaintext.expose_secret().to_vec()),
            err: None,
        })
    })
}
