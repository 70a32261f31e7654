//! The keyring: data keys that seal everything, wrapped by the root key.
//!
//! New data is sealed under the active key; rotating adds a key and makes it
//! active while older keys stay to open older data. Each key counts its
//! encryptions: with random 96-bit nonces, NIST SP 800-38D allows at most
//! 2^32 messages per key, so the keyring asks for rotation at
//! [`ENCRYPTIONS_ROTATE_AT`] and refuses at [`ENCRYPTIONS_MAX`], both far
//! below that bound.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

use super::aead::{self, DataKeyId, Sealed};
use super::key_check::RootKeyId;
use super::{CryptoError, DataKey, Plaintext, RootKey, SecretBytes};

/// Encryptions under one key after which [`Keyring::needs_rotation`] is true.
pub const ENCRYPTIONS_ROTATE_AT: u64 = 1 << 30;
/// Encryptions under one key after which sealing fails until rotation.
pub const ENCRYPTIONS_MAX: u64 = 1 << 31;
/// Most data keys a keyring holds (each rotation adds one).
pub const KEYS_MAX: usize = 4096;

/// Key id used in the sealed frame of a wrapped keyring; data keys start at 1.
const ROOT_KEY_FRAME_ID: DataKeyId = DataKeyId(0);
const SERIAL_MAGIC: &[u8; 4] = b"SKR1";
const SERIAL_ENTRY_LEN: usize = 4 + 8 + 32;

struct Entry {
    key: DataKey,
    encryptions: u64,
}

/// The data keys, in memory only, zeroized on drop.
pub struct Keyring {
    keys: BTreeMap<DataKeyId, Entry>,
    active: DataKeyId,
}

/// A keyring sealed under the root key: public, safe to replicate and store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKeyring(Vec<u8>);

impl WrappedKeyring {
    /// The sealed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Wraps sealed bytes read from storage (authenticated when unwrapped).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl Keyring {
    /// A keyring with one fresh key, id 1.
    pub fn generate() -> Result<Self, CryptoError> {
        let first = DataKeyId(1);
        let mut keys = BTreeMap::new();
        keys.insert(
            first,
            Entry {
                key: DataKey::generate()?,
                encryptions: 0,
            },
        );
        Ok(Self {
            keys,
            active: first,
        })
    }

    /// The key new data is sealed under.
    pub fn active_key_id(&self) -> DataKeyId {
        self.active
    }

    /// Every key id, oldest first.
    pub fn key_ids(&self) -> impl Iterator<Item = DataKeyId> + '_ {
        self.keys.keys().copied()
    }

    /// Encryptions done under `key_id` (as of the last wrap, plus this
    /// process's since then).
    pub fn encryptions(&self, key_id: DataKeyId) -> Option<u64> {
        self.keys.get(&key_id).map(|entry| entry.encryptions)
    }

    /// Whether the active key is due for rotation.
    pub fn needs_rotation(&self) -> bool {
        self.encryptions(self.active)
            .is_some_and(|count| count >= ENCRYPTIONS_ROTATE_AT)
    }

    /// Adds a fresh key and makes it active; older keys stay for opening.
    pub fn rotate(&mut self) -> Result<DataKeyId, CryptoError> {
        if self.keys.len() >= KEYS_MAX {
            return Err(CryptoError::KeyringFull(self.keys.len()));
        }
        let newest = self
            .keys
            .keys()
            .next_back()
            .copied()
            .unwrap_or(DataKeyId(0));
        let next = DataKeyId(
            newest
                .0
                .checked_add(1)
                .ok_or(CryptoError::KeyringFull(self.keys.len()))?,
        );
        self.keys.insert(
            next,
            Entry {
                key: DataKey::generate()?,
                encryptions: 0,
            },
        );
        self.active = next;
        Ok(next)
    }

    /// The active key, if it may seal one more message.
    fn active_for_sealing(&mut self) -> Result<(DataKeyId, &mut Entry), CryptoError> {
        let key_id = self.active;
        let entry = self
            .keys
            .get_mut(&key_id)
            .ok_or(CryptoError::UnknownDataKey(key_id.0))?;
        if entry.encryptions >= ENCRYPTIONS_MAX {
            return Err(CryptoError::DataKeyExhausted {
                key_id: key_id.0,
                count: entry.encryptions,
            });
        }
        Ok((key_id, entry))
    }

    /// Seals under the active key.
    pub fn seal(&mut self, aad: &[u8], plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let (key_id, entry) = self.active_for_sealing()?;
        let sealed = aead::seal(&entry.key, key_id, aad, plaintext)?;
        entry.encryptions += 1;
        Ok(sealed)
    }

    /// Opens data sealed under any key of the ring.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Plaintext, CryptoError> {
        let entry = self
            .keys
            .get(&sealed.key_id())
            .ok_or(CryptoError::UnknownDataKey(sealed.key_id().0))?;
        aead::open(&entry.key, sealed, aad)
    }

    /// Seals without a key id in the output (SPIKE's cipher format), under
    /// the active key; counts the encryption like [`Keyring::seal`].
    pub fn seal_unframed(
        &mut self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; aead::NONCE_LEN], Vec<u8>), CryptoError> {
        let (_, entry) = self.active_for_sealing()?;
        let sealed = aead::seal_unframed(entry.key.expose_secret(), aad, plaintext)?;
        entry.encryptions += 1;
        Ok(sealed)
    }

    /// Opens what [`Keyring::seal_unframed`] sealed: with no key id to go
    /// by, every key is tried, newest first; GCM's tag tells the right one.
    pub fn open_unframed(
        &self,
        nonce: &[u8; aead::NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        self.keys
            .values()
            .rev()
            .find_map(|entry| {
                aead::open_unframed(entry.key.expose_secret(), nonce, aad, ciphertext).ok()
            })
            .ok_or(CryptoError::DecryptionFailed)
    }

    /// Seals the whole keyring under the root key; the associated data names
    /// the root key id so a keyring cannot be passed off under another root.
    pub fn wrap(
        &self,
        root: &RootKey,
        root_key_id: RootKeyId,
    ) -> Result<WrappedKeyring, CryptoError> {
        let serial = self.serialize();
        let sealed = aead::seal_with(
            root.expose_secret(),
            ROOT_KEY_FRAME_ID,
            &wrap_aad(root_key_id),
            &serial,
        )?;
        Ok(WrappedKeyring(sealed.to_bytes()))
    }

    /// Opens a wrapped keyring.
    pub fn unwrap(
        wrapped: &WrappedKeyring,
        root: &RootKey,
        root_key_id: RootKeyId,
    ) -> Result<Self, CryptoError> {
        let sealed = Sealed::from_bytes(&wrapped.0)?;
        let serial = aead::open_with(root.expose_secret(), &sealed, &wrap_aad(root_key_id))?;
        Self::deserialize(serial.expose_secret())
    }

    fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(12 + self.keys.len() * SERIAL_ENTRY_LEN));
        out.extend_from_slice(SERIAL_MAGIC);
        out.extend_from_slice(&self.active.0.to_be_bytes());
        out.extend_from_slice(&(self.keys.len() as u32).to_be_bytes());
        for (id, entry) in &self.keys {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&entry.encryptions.to_be_bytes());
            out.extend_from_slice(entry.key.expose_secret());
        }
        out
    }

    fn deserialize(bytes: &[u8]) -> Result<Self, CryptoError> {
        // Authenticated bytes that still fail here mean a writer bug.
        let malformed = || CryptoError::MalformedSealed("keyring contents");
        let header = bytes.get(..12).ok_or_else(malformed)?;
        if &header[..4] != SERIAL_MAGIC {
            return Err(malformed());
        }
        let active = DataKeyId(u32::from_be_bytes([
            header[4], header[5], header[6], header[7],
        ]));
        let count = u32::from_be_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let body = &bytes[12..];
        if count == 0 || count > KEYS_MAX || body.len() != count * SERIAL_ENTRY_LEN {
            return Err(malformed());
        }
        let mut keys = BTreeMap::new();
        for chunk in body.chunks_exact(SERIAL_ENTRY_LEN) {
            let id = DataKeyId(u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&chunk[4..12]);
            let key = SecretBytes::from_slice(&chunk[12..]).map_err(|_| malformed())?;
            let entry = Entry {
                key: DataKey::from_secret(key),
                encryptions: u64::from_be_bytes(counter),
            };
            if keys.insert(id, entry).is_some() {
                return Err(malformed());
            }
        }
        if !keys.contains_key(&active) {
            return Err(malformed());
        }
        Ok(Self { keys, active })
    }
}

fn wrap_aad(root_key_id: RootKeyId) -> Vec<u8> {
    let mut aad = b"spike/keyring/root-key/".to_vec();
    aad.extend_from_slice(&root_key_id.0.to_be_bytes());
    aad
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> RootKey {
        RootKey::generate().expect("os rng")
    }

    #[test]
    fn rotation_seals_with_the_new_key_and_still_opens_old_data() {
        let mut ring = Keyring::generate().expect("generate");
        let old = ring.seal(b"a", b"old").expect("seal");
        let new_id = ring.rotate().expect("rotate");
        assert_eq!(new_id, DataKeyId(2));
        let new = ring.seal(b"a", b"new").expect("seal");
        assert_eq!(old.key_id(), DataKeyId(1));
        assert_eq!(new.key_id(), DataKeyId(2));
        assert_eq!(
            ring.open(&old, b"a").expect("old opens").expose_secret(),
            b"old"
        );
        assert_eq!(
            ring.open(&new, b"a").expect("new opens").expose_secret(),
            b"new"
        );
        assert_eq!(ring.encryptions(DataKeyId(1)), Some(1));
        assert_eq!(ring.encryptions(DataKeyId(2)), Some(1));
    }

    #[test]
    fn wrap_round_trip_keeps_keys_counters_and_active_id() {
        let root = root();
        let mut ring = Keyring::generate().expect("generate");
        let sealed = ring.seal(b"p", b"v").expect("seal");
        ring.rotate().expect("rotate");
        ring.seal(b"p", b"w").expect("seal");
        let wrapped = ring.wrap(&root, RootKeyId(3)).expect("wrap");
        let back = Keyring::unwrap(&wrapped, &root, RootKeyId(3)).expect("unwrap");
        assert_eq!(back.active_key_id(), DataKeyId(2));
        assert_eq!(back.encryptions(DataKeyId(1)), Some(1));
        assert_eq!(
            back.open(&sealed, b"p").expect("open").expose_secret(),
            b"v"
        );
    }

    #[test]
    fn unwrap_fails_under_another_root_key_or_root_key_id() {
        let root = root();
        let wrapped = Keyring::generate()
            .expect("g")
            .wrap(&root, RootKeyId(1))
            .expect("wrap");
        assert_eq!(
            Keyring::unwrap(&wrapped, &self::root(), RootKeyId(1)).err(),
            Some(CryptoError::DecryptionFailed)
        );
        assert_eq!(
            Keyring::unwrap(&wrapped, &root, RootKeyId(2)).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn the_wrapped_form_does_not_contain_the_data_keys() {
        let root = root();
        let ring = Keyring::generate().expect("g");
        let wrapped = ring.wrap(&root, RootKeyId(1)).expect("wrap");
        let key = ring.keys[&DataKeyId(1)].key.expose_secret();
        assert!(!wrapped.as_bytes().windows(32).any(|window| window == key));
    }

    #[test]
    fn exhausted_key_refuses_to_seal_and_asks_for_rotation() {
        let mut ring = Keyring::generate().expect("g");
        ring.keys.get_mut(&DataKeyId(1)).expect("key 1").encryptions = ENCRYPTIONS_ROTATE_AT;
        assert!(ring.needs_rotation());
        ring.keys.get_mut(&DataKeyId(1)).expect("key 1").encryptions = ENCRYPTIONS_MAX;
        assert!(matches!(
            ring.seal(b"p", b"v"),
            Err(CryptoError::DataKeyExhausted { key_id: 1, .. })
        ));
        ring.rotate().expect("rotate");
        assert!(!ring.needs_rotation());
        assert!(ring.seal(b"p", b"v").is_ok());
    }

    #[test]
    fn unframed_data_opens_after_rotation_by_trying_every_key() {
        let mut ring = Keyring::generate().expect("g");
        let (nonce, old) = ring.seal_unframed(b"c", b"old").expect("seal");
        ring.rotate().expect("rotate");
        let (new_nonce, new) = ring.seal_unframed(b"c", b"new").expect("seal");
        assert_eq!(
            ring.open_unframed(&nonce, b"c", &old)
                .expect("old")
                .expose_secret(),
            b"old"
        );
        assert_eq!(
            ring.open_unframed(&new_nonce, b"c", &new)
                .expect("new")
                .expose_secret(),
            b"new"
        );
        assert_eq!(
            ring.open_unframed(&nonce, b"x", &old),
            Err(CryptoError::DecryptionFailed)
        );
        assert_eq!(ring.encryptions(DataKeyId(1)), Some(1));
    }

    #[test]
    fn data_sealed_under_a_key_not_in_the_ring_names_the_key() {
        let mut other = Keyring::generate().expect("g");
        other.rotate().expect("rotate");
        other.rotate().expect("rotate");
        let sealed = other.seal(b"p", b"v").expect("seal");
        let ring = Keyring::generate().expect("g");
        assert_eq!(
            ring.open(&sealed, b"p"),
            Err(CryptoError::UnknownDataKey(3))
        );
    }
}
