//! Types for secret material: zeroized on drop, never printed.
//!
//! None of them implements `Display`; their `Debug` prints only the type
//! name, so a stray `{:?}` in a log or error cannot leak them. Getting at the
//! bytes is an explicit `expose_secret()` call, easy to find in review.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{CryptoError, random};

/// A fixed-size secret kept on the heap, so moving the owner never leaves
/// copies of the bytes behind on the stack.
#[derive(Clone)]
pub struct SecretBytes<const N: usize>(Box<[u8; N]>);

impl<const N: usize> SecretBytes<N> {
    /// Takes ownership of `bytes` and wipes the caller's copy.
    pub fn from_array(bytes: &mut [u8; N]) -> Self {
        let secret = Self(Box::new(*bytes));
        bytes.zeroize();
        secret
    }

    /// Copies `bytes` in, failing unless it has exactly `N` bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, usize> {
        if bytes.len() != N {
            return Err(bytes.len());
        }
        let mut boxed = Box::new([0u8; N]);
        boxed.copy_from_slice(bytes);
        Ok(Self(boxed))
    }

    /// Fresh random bytes from the OS.
    pub fn random() -> Result<Self, CryptoError> {
        let mut boxed = Box::new([0u8; N]);
        random::fill(boxed.as_mut_slice())?;
        Ok(Self(boxed))
    }

    /// The secret bytes. Every call site is a place where the secret leaves
    /// its wrapper; keep them few.
    pub fn expose_secret(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> Drop for SecretBytes<N> {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl<const N: usize> ZeroizeOnDrop for SecretBytes<N> {}

impl<const N: usize> PartialEq for SecretBytes<N> {
    /// Constant time, so comparing secrets leaks nothing through timing.
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl<const N: usize> Eq for SecretBytes<N> {}

impl<const N: usize> fmt::Debug for SecretBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes<{N}>(redacted)")
    }
}

macro_rules! secret_key {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(SecretBytes<32>);

        impl $name {
            /// Length of the key in bytes.
            pub const LEN: usize = 32;

            /// A fresh random key.
            pub fn generate() -> Result<Self, CryptoError> {
                SecretBytes::random().map(Self)
            }

            /// Wraps existing key bytes.
            pub fn from_secret(bytes: SecretBytes<32>) -> Self {
                Self(bytes)
            }

            /// The key bytes (see [`SecretBytes::expose_secret`]).
            pub fn expose_secret(&self) -> &[u8; 32] {
                self.0.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "(redacted)"))
            }
        }
    };
}

secret_key!(
    /// The cluster's root key: held in memory only, rebuilt from keepers,
    /// and used only to wrap the keyring.
    RootKey
);

secret_key!(
    /// A data key of the keyring: seals secrets, policies and cipher data.
    DataKey
);

/// Decrypted data: wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The plaintext bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext({} bytes, redacted)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_the_bytes() {
        let mut bytes = [0xABu8; 32];
        let root = RootKey::from_secret(SecretBytes::from_array(&mut bytes));
        assert_eq!(bytes, [0u8; 32], "the caller's copy is wiped");
        let printed = format!("{root:?} {:?}", Plaintext::new(b"hunter2".to_vec()));
        assert_eq!(printed, "RootKey(redacted) Plaintext(7 bytes, redacted)");
        assert!(!printed.to_lowercase().contains("ab"));
    }

    #[test]
    fn from_slice_demands_the_exact_length() {
        assert_eq!(SecretBytes::<32>::from_slice(&[1; 31]).err(), Some(31));
        assert_eq!(SecretBytes::<32>::from_slice(&[1; 33]).err(), Some(33));
        assert!(SecretBytes::<32>::from_slice(&[1; 32]).is_ok());
    }

    #[test]
    fn generated_keys_differ() {
        let a = DataKey::generate().expect("os rng");
        let b = DataKey::generate().expect("os rng");
        assert_ne!(a, b);
    }
}
