//! The crypto core: envelope encryption and root-key sharing.
//!
//! - [`RootKey`] (32 bytes, never on disk) wraps a [`Keyring`] of data keys.
//! - Data is sealed with AES-256-GCM under the keyring's active key with a
//!   fresh random 96-bit nonce; the associated data binds each ciphertext to
//!   its place and key id ([`aead`]).
//! - The root key is split with Shamir over GF(256) into shares that are a
//!   deterministic function of (key, n, t) ([`shamir`]); a rebuilt key is
//!   accepted only if it matches the [`KeyCheck`] committed with it.
//! - SPIKE's recovery-file lines `spike:<i>:<64 hex>` ([`recovery_line`]).
//!
//! Secret material lives in [`secret`] types: zeroized on drop, redacted in
//! `Debug`, no `Display`, and turned into bytes only by a method named
//! `expose_secret`.

pub mod aead;
mod error;
pub mod key_check;
pub mod keyring;
pub mod random;
pub mod recovery_line;
pub mod secret;
pub mod shamir;

pub use aead::{DataKeyId, Sealed};
pub use error::CryptoError;
pub use key_check::KeyCheck;
pub use keyring::{Keyring, WrappedKeyring};
pub use secret::{DataKey, Plaintext, RootKey, SecretBytes};
pub use shamir::{KeyShare, ShamirParams, ShareIndex};
