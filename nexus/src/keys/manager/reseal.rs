//! Background re-encryption: the leader moves kept secret versions sealed
//! under older data keys to the active one, at a bounded rate, so old data
//! keys stop guarding data. Every kept version moves (deleted ones too: an
//! undelete brings them back), not only the current one; destroyed
//! versions hold nothing. Policies are not re-sealed.
//!
//! Values are opened and sealed here, on the leader; the log carries a
//! compare-and-set (`SecretCommand::Reseal`) that apply refuses unless the
//! version still holds exactly the ciphertext it was built from, so a
//! write, delete or destroy in between always wins and nothing is lost.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use spike_sdk::crypto::aead::Sealed;
use spike_sdk::domain::{DataKeyId, SecretPath};

use super::{KeyError, KeyManager};
use crate::keys::{Unlocked, secret_aad};
use crate::state::command::{Command, Refusal, Response, SecretCommand};

/// Paths read per batch of a sweep (bounds what one read holds in memory).
const PATHS_PER_BATCH: usize = 64;
/// How long the loop waits when it has nothing to do (not the leader, no
/// key, or a sweep just ended).
const IDLE: Duration = Duration::from_secs(1);
/// How often the leader sweeps when the last sweep left nothing to move
/// (or re-encryption is off and it only counts versions under old keys,
/// reading headers, never opening anything): a new data key waits at most
/// this long for its first sweep.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// One sweep over the secrets table.
#[derive(Default)]
struct Sweep {
    /// The last path done; the next batch starts after it.
    after: Option<SecretPath>,
    /// Versions under an older key found and not moved so far.
    under_old_keys: u64,
}

impl KeyManager {
    /// Runs background re-encryption until the task is dropped. Only the
    /// leader re-seals; with a rate of 0 it only counts.
    pub async fn run_reencryption(self: Arc<Self>) {
        let mut sweep = Sweep::default();
        loop {
            let Some((settings, _)) = self.rotation_settings() else {
                tokio::time::sleep(IDLE).await;
                continue;
            };
            let unlocked = match self.current_record() {
                Ok((_, _, unlocked)) if self.leadership.is_leader() => unlocked,
                _ => {
                    sweep = Sweep::default();
                    tokio::time::sleep(IDLE).await;
                    continue;
                }
            };
            let rate = settings.reencrypt_per_second;
            match self.sweep_batch(&unlocked, &mut sweep, rate).await {
                Ok(true) => {}
                Ok(false) => {
                    self.metrics
                        .set_versions_under_old_keys(sweep.under_old_keys);
                    // Sweep again soon only if there is something to move:
                    // a sweep reads every secret.
                    let more_to_move = rate > 0 && sweep.under_old_keys > 0;
                    sweep = Sweep::default();
                    tokio::time::sleep(if more_to_move { IDLE } else { SWEEP_INTERVAL }).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "background re-encryption paused");
                    tokio::time::sleep(IDLE).await;
                }
            }
        }
    }

    /// Handles the next batch of paths of `sweep`; false once the sweep has
    /// reached the end of the table. A failed batch is taken again.
    async fn sweep_batch(
        &self,
        unlocked: &Unlocked,
        sweep: &mut Sweep,
        rate: u32,
    ) -> Result<bool, KeyError> {
        let versions = self
            .reader
            .sealed_versions(sweep.after.as_ref(), PATHS_PER_BATCH)
            .map_err(|error| KeyError::Proposal(error.to_string()))?;
        let Some((last, _, _)) = versions.last() else {
            return Ok(false);
        };
        let last = last.clone();
        let active = unlocked.active_data_key();
        let mut under_old_keys = 0;
        for (path, version, ciphertext) in versions {
            let key_id = match Sealed::from_bytes(&ciphertext) {
                Ok(sealed) => sealed.key_id(),
                Err(error) => {
                    tracing::error!(%path, version, %error, "a stored version does not parse");
                    continue;
                }
            };
            if key_id == DataKeyId(active) {
                continue;
            }
            if rate == 0 {
                under_old_keys += 1;
                continue;
            }
            if !self.reseal(unlocked, &path, version, &ciphertext).await? {
                under_old_keys += 1;
            }
            tokio::time::sleep(Duration::from_secs(1) / rate).await;
        }
        sweep.under_old_keys += under_old_keys;
        sweep.after = Some(last);
        Ok(true)
    }

    /// Re-seals one version under the active data key; true if it moved.
    async fn reseal(
        &self,
        unlocked: &Unlocked,
        path: &SecretPath,
        version: u64,
        ciphertext: &[u8],
    ) -> Result<bool, KeyError> {
        let aad = secret_aad(path);
        let plaintext = unlocked.open(&aad, ciphertext)?;
        // Named step: the same values, sealed under the active key.
        let (resealed, data_key_id) = unlocked.seal(&aad, plaintext.expose_secret())?;
        let command = Command::Secret(SecretCommand::Reseal {
            path: path.clone(),
            version,
            previous_digest: Sha256::digest(ciphertext).into(),
            ciphertext: resealed,
            data_key_id: DataKeyId(data_key_id),
        });
        match self.propose(command).await? {
            Response::Done => {
                self.metrics.resealed();
                Ok(true)
            }
            // Written, deleted or destroyed since: the newer change wins.
            Response::Refused(Refusal::ResealStale) => Ok(true),
            Response::Refused(refusal) => Err(KeyError::Proposal(refusal.to_string())),
            Response::Written(_) | Response::PolicyStored(_) => {
                Err(KeyError::Proposal("unexpected response".to_owned()))
            }
        }
    }
}
