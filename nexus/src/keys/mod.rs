//! The root key of this replica: held in memory only, obtained from the
//! keepers (or, after a total loss, from an operator's restore shards), and
//! checked against the key check the cluster committed.
//!
//! [`lifecycle`] decides the lifecycle's next step and [`manager`] runs it;
//! [`KeyState`] is what request handlers consult: without the key, secret,
//! policy and cipher routes answer 503 `state_not_ready`.

pub mod keepers;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod restore;

use std::sync::{Arc, Mutex, RwLock};

use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::{CryptoError, KeyCheck, Keyring, Plaintext, RootKey, Sealed, ShamirParams};
use tokio::sync::watch;

use crate::state::command::RootKeyRecord;

/// The unlocked key material of the committed root key.
pub struct Unlocked {
    /// Which root key.
    pub root_key_id: RootKeyId,
    /// Its key check.
    pub key_check: KeyCheck,
    /// Shamir parameters it is shared with.
    pub params: ShamirParams,
    root_key: RootKey,
    keyring: Mutex<Keyring>,
    keyring_version: u64,
}

impl Unlocked {
    /// Unwraps `record`'s keyring with `root_key` (already checked against
    /// `record`'s key check).
    pub fn new(
        root_key: RootKey,
        record: &RootKeyRecord,
        keyring_version: u64,
    ) -> Result<Self, CryptoError> {
        let root_key_id = record.root_key_id;
        let key_check = KeyCheck::from_bytes(record.key_check);
        if !key_check.matches(&root_key) {
            return Err(CryptoError::KeyCheckMismatch);
        }
        let wrapped = spike_sdk::crypto::WrappedKeyring::from_bytes(record.wrapped_keyring.clone());
        let keyring = Keyring::unwrap(&wrapped, &root_key, root_key_id)?;
        Ok(Self {
            root_key_id,
            key_check,
            params: ShamirParams::new(record.shares, record.threshold)?,
            root_key,
            keyring: Mutex::new(keyring),
            keyring_version,
        })
    }

    /// Which committed key and keyring this is.
    pub fn version(&self) -> lifecycle::KeyVersion {
        lifecycle::KeyVersion {
            root_key_id: self.root_key_id.0,
            key_check: *self.key_check.as_bytes(),
            keyring_version: self.keyring_version,
        }
    }

    /// The root key (for splitting into shares and wrapping keyrings).
    pub fn root_key(&self) -> &RootKey {
        &self.root_key
    }

    /// Seals `plaintext` for `aad` under the active data key; returns the
    /// sealed bytes and the data key id.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<(Vec<u8>, u32), CryptoError> {
        let mut keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let sealed = keyring.seal(aad, plaintext)?;
        Ok((sealed.to_bytes(), sealed.key_id().0))
    }

    /// Opens bytes sealed for `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Plaintext, CryptoError> {
        let sealed = Sealed::from_bytes(sealed)?;
        let keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keyring.open(&sealed, aad)
    }

    /// Seals for the cipher routes (SPIKE's format: no key id); returns the
    /// nonce and the ciphertext.
    pub fn seal_cipher(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; 12], Vec<u8>), CryptoError> {
        self.keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .seal_unframed(aad, plaintext)
    }

    /// Opens what [`Unlocked::seal_cipher`] sealed, under any data key.
    pub fn open_cipher(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        let keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        keyring.open_unframed(nonce, aad, ciphertext)
    }

    /// A copy of the keyring with a new active data key, wrapped under the
    /// root key, for a `ReplaceKeyring` proposal.
    pub fn rotated_keyring(&self) -> Result<Vec<u8>, CryptoError> {
        let keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let wrapped = keyring.wrap(&self.root_key, self.root_key_id)?;
        drop(keyring);
        let mut copy = Keyring::unwrap(&wrapped, &self.root_key, self.root_key_id)?;
        copy.rotate()?;
        Ok(copy
            .wrap(&self.root_key, self.root_key_id)?
            .as_bytes()
            .to_vec())
    }

    /// The keyring wrapped under `root_key` with id `root_key_id` (rekey).
    pub fn keyring_wrapped_under(
        &self,
        root_key: &RootKey,
        root_key_id: RootKeyId,
    ) -> Result<Vec<u8>, CryptoError> {
        let keyring = self
            .keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(keyring.wrap(root_key, root_key_id)?.as_bytes().to_vec())
    }

    /// The data key new data is sealed under.
    pub fn active_data_key(&self) -> u32 {
        self.keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .active_key_id()
            .0
    }
}

/// The associated data a secret's values are sealed for: its path, so a
/// ciphertext moved to another path does not open.
pub fn secret_aad(path: &spike_sdk::domain::SecretPath) -> Vec<u8> {
    format!("spike/secret/{path}").into_bytes()
}

/// Whether this replica can serve, as health checks and status report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// The cluster has no root key yet.
    Uninitialized,
    /// The cluster has a root key this replica does not hold.
    Locked {
        /// The committed root key id.
        root_key_id: u64,
    },
    /// This replica holds the committed root key.
    Ready {
        /// The committed root key id.
        root_key_id: u64,
    },
}

/// The root key as request handlers see it.
pub struct KeyState {
    unlocked: RwLock<Option<Arc<Unlocked>>>,
    status: watch::Sender<KeyStatus>,
}

impl Default for KeyState {
    fn default() -> Self {
        Self {
            unlocked: RwLock::new(None),
            status: watch::channel(KeyStatus::Uninitialized).0,
        }
    }
}

impl KeyState {
    /// The unlocked key, if this replica holds the committed one.
    pub fn unlocked(&self) -> Option<Arc<Unlocked>> {
        self.unlocked
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The status now.
    pub fn status(&self) -> KeyStatus {
        *self.status.borrow()
    }

    fn set(&self, unlocked: Option<Arc<Unlocked>>, status: KeyStatus) {
        *self
            .unlocked
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = unlocked;
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            if changed {
                tracing::info!(from = ?*current, to = ?status, "root key status");
            }
            *current = status;
            changed
        });
    }

    /// Whether the held key is the committed one with this keyring version.
    fn holds(&self, record: &RootKeyRecord, keyring_version: u64) -> bool {
        self.unlocked().is_some_and(|unlocked| {
            unlocked.root_key_id == record.root_key_id
                && unlocked.key_check.as_bytes() == &record.key_check
                && unlocked.keyring_version == keyring_version
        })
    }
}
