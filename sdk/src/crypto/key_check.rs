//! The key check value: a public fingerprint of the root key.
//!
//! vsss-rs returns a wrong secret, without error, when given fewer shares
//! than the threshold or shares of different keys. The key check committed
//! with the root key is how a rebuilt key is told right from wrong.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::RootKey;

const KEY_CHECK_LABEL: &[u8] = b"spike/root-key-check/v1";

/// Which root key of the cluster's history is meant (public). Rekeying
/// moves to the next id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RootKeyId(pub u64);

impl fmt::Display for RootKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// HMAC-SHA256(root key, fixed label): reveals nothing about the key, and
/// matches only the key it was computed from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyCheck([u8; 32]);

impl KeyCheck {
    /// The key check of `root`.
    pub fn of(root: &RootKey) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(root.expose_secret())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(KEY_CHECK_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    /// Whether `root` is the key this check was computed from (constant time).
    pub fn matches(&self, root: &RootKey) -> bool {
        Self::of(root).0.ct_eq(&self.0).into()
    }

    /// The check's bytes (public).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A check read from storage.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyCheck({self})")
    }
}

impl fmt::Display for KeyCheck {
    /// The first 8 bytes in hex: enough for an operator to compare replicas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_its_own_key() {
        let a = RootKey::generate().expect("os rng");
        let b = RootKey::generate().expect("os rng");
        let check = KeyCheck::of(&a);
        assert!(check.matches(&a));
        assert!(!check.matches(&b));
        assert_eq!(check, KeyCheck::of(&a), "deterministic");
    }

    #[test]
    fn does_not_contain_the_key() {
        let key = RootKey::generate().expect("os rng");
        assert_ne!(KeyCheck::of(&key).as_bytes(), key.expose_secret());
    }
}
