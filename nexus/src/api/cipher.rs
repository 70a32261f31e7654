//! `/v1/cipher/*`: encryption as a service, in SPIKE's two modes (see
//! [`spike_sdk::api::StreamFrame`] and the JSON bodies).
//!
//! Unlike SPIKE, which seals with the root key itself, we seal with the
//! keyring's active data key: ciphertexts survive rekeys and data-key
//! rotations (decryption tries every data key; the GCM tag picks the right
//! one), and the root key never touches caller data.

use std::sync::Mutex;

use axum::http::StatusCode;
use spike_sdk::api::{
    ApiResponse, CIPHER_SIZE_MAX_BYTES, DecryptRequest, DecryptResponse, EncryptRequest,
    EncryptResponse, FORMAT_VERSION, NONCE_LEN, StreamFrame, decode, header,
};
use zeroize::Zeroizing;

use spike_sdk::domain::DataKeyId;

use super::reply::Reply;
use super::{ApiError, Call};
use crate::keys::Unlocked;
use crate::node::Node;
use crate::state::command::{Command, KeyCommand, Refusal, Request, Response};

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

/// Most encryptions one replica reserves at a time (one log entry each).
const RESERVATION_MAX: u64 = 65_536;

/// The encryptions this replica has reserved in the replicated per-key
/// counter and not yet made. Cipher calls write nothing to the log, so
/// without it each replica would count its own in memory, lose the count
/// on restart, and the cluster as a whole would exceed a data key's
/// budget unseen (and never rotate it). With it, the replicated counter is
/// never below the encryptions made, the leader rotates on it, and at most
/// one unused reservation per replica is lost to a restart or rotation.
pub struct EncryptionBudget {
    /// Reservation size: a 64th of the rotation threshold, so rotation is
    /// not much late, and at most [`RESERVATION_MAX`].
    block: u64,
    /// The data key reserved for and what is left of its reservation.
    left: Mutex<(DataKeyId, u64)>,
    /// One reservation in flight at a time.
    reserving: tokio::sync::Mutex<()>,
}

impl EncryptionBudget {
    /// A budget for a cluster that rotates data keys after `rotate_at`
    /// encryptions.
    pub fn new(rotate_at: u64) -> Self {
        Self {
            block: (rotate_at / 64).clamp(1, RESERVATION_MAX),
            left: Mutex::new((DataKeyId(0), 0)),
            reserving: tokio::sync::Mutex::new(()),
        }
    }

    fn try_take(&self, key: DataKeyId) -> bool {
        let mut left = self
            .left
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if left.0 == key && left.1 > 0 {
            left.1 -= 1;
            true
        } else {
            false
        }
    }

    /// Takes one encryption under `key`, reserving a block through the
    /// leader when none is left. 503 while the key's budget is spent (the
    /// leader rotates it well before) or no leader is reachable.
    pub async fn take(&self, node: &Node, key: DataKeyId) -> Result<(), ApiError> {
        if self.try_take(key) {
            return Ok(());
        }
        let _only_one = self.reserving.lock().await;
        if self.try_take(key) {
            return Ok(());
        }
        let request = Request {
            command: Command::Keys(KeyCommand::ReserveEncryptions {
                data_key_id: key,
                count: self.block,
            }),
            session: None,
            time_ns: 0,
        };
        match node.write(request).await? {
            Response::Done => {
                *self
                    .left
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = (key, self.block - 1);
                Ok(())
            }
            Response::Refused(refusal @ Refusal::EncryptionsSpent { .. }) => {
                Err(ApiError::Unavailable(refusal.to_string()))
            }
            Response::Refused(Refusal::NotInitialized) => Err(ApiError::NOT_READY),
            other => Err(ApiError::Internal(format!(
                "unexpected answer to an encryption reservation: {other:?}"
            ))),
        }
    }
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
    call.authorize_cipher().await?;
    if plaintext.len() > CIPHER_SIZE_MAX_BYTES {
        return Err(ApiError::BAD_REQUEST);
    }
    let unlocked = unlocked(&call)?;
    call.api
        .encryptions
        .take(&call.api.node, DataKeyId(unlocked.active_data_key()))
        .await?;
    let (nonce, ciphertext) = unlocked.seal_cipher(AAD, &plaintext).map_err(|e| {
        if stream {
            ApiError::StreamText(
                StatusCode::INTERNAL_SERVER_ERROR,
                "crypto_cipher_not_available",
            )
        } else {
            ApiError::Internal(e.to_string())
        }
    })?;
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

/// Decrypt.
pub async fn decrypt(call: Call<'_>) -> Reply {
    reply::<DecryptResponse>(open(call).await)
}

async fn open(call: Call<'_>) -> Result<Reply, ApiError> {
    call.policy_barrier().await?;
    let stream = stream_mode(&call);
    // SPIKE authorizes decryption before it reads the body.
    call.authorize_cipher().await?;
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
