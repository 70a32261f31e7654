//! AES-256-GCM with a key id and associated data that binds a ciphertext to
//! its place.
//!
//! Sealed form: `version (1) ‖ key id (u32, big endian) ‖ nonce (12) ‖
//! ciphertext ‖ tag (16)`. The version and key id are authenticated too, so a
//! ciphertext relabelled with another key id fails to open, as does one
//! moved to another place (another path, another field) whose associated
//! data differs.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use super::{CryptoError, DataKey, Plaintext, random};

/// The only sealed-format version so far.
pub const FORMAT_VERSION: u8 = 1;
/// Nonce length (96 bits, random per message).
pub const NONCE_LEN: usize = 12;
/// Authentication tag length.
pub const TAG_LEN: usize = 16;
/// Header length: version, key id and nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;

/// Domain separation for every AAD we build, so our ciphertexts can never
/// be confused with another protocol's under the same key.
const AAD_DOMAIN: &[u8] = b"spike/aead/v1";

/// Identifies a data key within the keyring (public).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct DataKeyId(pub u32);

impl fmt::Display for DataKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A sealed message: public, safe to store and replicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    key_id: DataKeyId,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Sealed {
    /// The key the message was sealed under.
    pub fn key_id(&self) -> DataKeyId {
        self.key_id
    }

    /// The message's nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// Ciphertext followed by the tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// The framed bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_LEN + self.ciphertext.len());
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&self.key_id.0.to_be_bytes());
        bytes.extend_from_slice(&self.nonce);
        bytes.extend_from_slice(&self.ciphertext);
        bytes
    }

    /// Parses framed bytes (without authenticating them: that is `open`'s job).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(CryptoError::MalformedSealed("shorter than header and tag"));
        }
        let (header, ciphertext) = bytes.split_at(HEADER_LEN);
        if header[0] != FORMAT_VERSION {
            return Err(CryptoError::MalformedSealed("unknown format version"));
        }
        let key_id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[5..HEADER_LEN]);
        Ok(Self {
            key_id: DataKeyId(key_id),
            nonce,
            ciphertext: ciphertext.to_vec(),
        })
    }
}

/// Seals `plaintext` under `key` (known as `key_id`) with a fresh random nonce.
pub fn seal(
    key: &DataKey,
    key_id: DataKeyId,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    seal_with(key.expose_secret(), key_id, aad, plaintext)
}

/// Opens `sealed` with `key`, checking it was sealed for `aad`.
pub fn open(key: &DataKey, sealed: &Sealed, aad: &[u8]) -> Result<Plaintext, CryptoError> {
    open_with(key.expose_secret(), sealed, aad)
}

pub(super) fn seal_with(
    key: &[u8; 32],
    key_id: DataKeyId,
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    let nonce = random::array::<NONCE_LEN>()?;
    let cipher = cipher(key)?;
    let full_aad = associated_data(key_id, aad);
    let ciphertext = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &full_aad,
            },
        )
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(Sealed {
        key_id,
        nonce,
        ciphertext,
    })
}

pub(super) fn open_with(
    key: &[u8; 32],
    sealed: &Sealed,
    aad: &[u8],
) -> Result<Plaintext, CryptoError> {
    let cipher = cipher(key)?;
    let full_aad = associated_data(sealed.key_id, aad);
    cipher
        .decrypt(
            &Nonce::from(sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: &full_aad,
            },
        )
        .map(Plaintext::new)
        .map_err(|_| CryptoError::DecryptionFailed)
}

/// AES-256-GCM without our framing, for SPIKE-compatible formats that carry
/// only a nonce and the ciphertext (the cipher routes, bootstrap verify).
/// Returns the nonce and ciphertext with its tag.
pub fn seal_unframed(
    key: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
    let nonce = random::array::<NONCE_LEN>()?;
    let ciphertext = cipher(key)?
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok((nonce, ciphertext))
}

/// Opens what [`seal_unframed`] (or SPIKE) sealed.
pub fn open_unframed(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Plaintext, CryptoError> {
    cipher(key)?
        .decrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Plaintext::new)
        .map_err(|_| CryptoError::DecryptionFailed)
}

fn cipher(key: &[u8; 32]) -> Result<Aes256Gcm, CryptoError> {
    // A 32-byte slice always fits AES-256; the error arm is unreachable.
    Aes256Gcm::new_from_slice(key).map_err(|_| CryptoError::MalformedSealed("key length"))
}

fn associated_data(key_id: DataKeyId, aad: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(AAD_DOMAIN.len() + 1 + 4 + 8 + aad.len());
    full.extend_from_slice(AAD_DOMAIN);
    full.push(FORMAT_VERSION);
    full.extend_from_slice(&key_id.0.to_be_bytes());
    full.extend_from_slice(&(aad.len() as u64).to_be_bytes());
    full.extend_from_slice(aad);
    full
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> DataKey {
        DataKey::generate().expect("os rng")
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let key = key();
        let a = seal(&key, DataKeyId(7), b"secrets/db", b"hunter2").expect("seal");
        let b = seal(&key, DataKeyId(7), b"secrets/db", b"hunter2").expect("seal");
        assert_ne!(a.nonce(), b.nonce(), "every message gets its own nonce");
        assert_ne!(a.ciphertext(), b.ciphertext());
        let opened = open(
            &key,
            &Sealed::from_bytes(&a.to_bytes()).expect("parse"),
            b"secrets/db",
        )
        .expect("open");
        assert_eq!(opened.expose_secret(), b"hunter2");
    }

    #[test]
    fn wrong_associated_data_fails() {
        let key = key();
        let sealed = seal(&key, DataKeyId(1), b"secrets/a", b"v").expect("seal");
        assert_eq!(
            open(&key, &sealed, b"secrets/b"),
            Err(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = seal(&key(), DataKeyId(1), b"p", b"v").expect("seal");
        assert_eq!(
            open(&key(), &sealed, b"p"),
            Err(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn relabelled_key_id_fails() {
        let key = key();
        let sealed = seal(&key, DataKeyId(1), b"p", b"v").expect("seal");
        let mut bytes = sealed.to_bytes();
        bytes[4] ^= 0x02; // key id 1 -> 3
        let relabelled = Sealed::from_bytes(&bytes).expect("still well-formed");
        assert_eq!(relabelled.key_id(), DataKeyId(3));
        assert_eq!(
            open(&key, &relabelled, b"p"),
            Err(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn every_flipped_bit_fails() {
        let key = key();
        let bytes = seal(&key, DataKeyId(9), b"p", b"some plaintext")
            .expect("seal")
            .to_bytes();
        for bit in 0..bytes.len() * 8 {
            let mut tampered = bytes.clone();
            tampered[bit / 8] ^= 1 << (bit % 8);
            let outcome = Sealed::from_bytes(&tampered).and_then(|s| open(&key, &s, b"p"));
            assert!(outcome.is_err(), "flipping bit {bit} went unnoticed");
        }
    }

    #[test]
    fn truncation_fails() {
        let key = key();
        let bytes = seal(&key, DataKeyId(2), b"p", b"some plaintext")
            .expect("seal")
            .to_bytes();
        for len in 0..bytes.len() {
            let outcome = Sealed::from_bytes(&bytes[..len]).and_then(|s| open(&key, &s, b"p"));
            assert!(outcome.is_err(), "truncation to {len} bytes went unnoticed");
        }
        assert!(matches!(
            Sealed::from_bytes(&bytes[..HEADER_LEN + TAG_LEN - 1]),
            Err(CryptoError::MalformedSealed(_))
        ));
    }

    #[test]
    fn unknown_version_is_malformed() {
        let key = key();
        let mut bytes = seal(&key, DataKeyId(2), b"p", b"x")
            .expect("seal")
            .to_bytes();
        bytes[0] = 2;
        assert_eq!(
            Sealed::from_bytes(&bytes),
            Err(CryptoError::MalformedSealed("unknown format version"))
        );
    }

    #[test]
    fn unframed_round_trip_and_tamper() {
        let key = key();
        let (nonce, ciphertext) =
            seal_unframed(key.expose_secret(), b"ctx", b"hello").expect("seal");
        assert_eq!(
            open_unframed(key.expose_secret(), &nonce, b"ctx", &ciphertext)
                .expect("open")
                .expose_secret(),
            b"hello"
        );
        assert!(open_unframed(key.expose_secret(), &nonce, b"other", &ciphertext).is_err());
        let mut flipped = ciphertext.clone();
        flipped[0] ^= 1;
        assert!(open_unframed(key.expose_secret(), &nonce, b"ctx", &flipped).is_err());
    }

    proptest! {
        #[test]
        fn framing_round_trips(key_id: u32, nonce: [u8; 12], ciphertext in proptest::collection::vec(any::<u8>(), TAG_LEN..512)) {
            let sealed = Sealed { key_id: DataKeyId(key_id), nonce, ciphertext };
            prop_assert_eq!(Sealed::from_bytes(&sealed.to_bytes()), Ok(sealed));
        }

        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Sealed::from_bytes(&bytes);
        }

        #[test]
        fn seal_open_round_trips(aad in proptest::collection::vec(any::<u8>(), 0..64), plaintext in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let key = key();
            let sealed = seal(&key, DataKeyId(1), &aad, &plaintext).expect("seal");
            let opened = open(&key, &sealed, &aad).expect("open");
            prop_assert_eq!(opened.expose_secret(), plaintext.as_slice());
        }
    }
}
