/// Failures of the crypto core. Messages name the constraint and public
/// values (key ids, lengths, counts), never key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Environment: the operating system's random source failed.
    #[error("the operating system's random number generator is unavailable")]
    RandomUnavailable,
    /// Input: sealed bytes are not in our framing (short, wrong version).
    #[error("sealed data is malformed: {0}")]
    MalformedSealed(&'static str),
    /// Input or tampering: authentication failed (wrong key, wrong
    /// associated data, modified or truncated ciphertext). Deliberately says
    /// no more.
    #[error("decryption failed: wrong key, wrong associated data, or modified ciphertext")]
    DecryptionFailed,
    /// Input: the data was sealed under a key the keyring does not hold.
    #[error("data key {0} is not in the keyring")]
    UnknownDataKey(u32),
    /// Limit: the active data key reached its encryption limit; rotate first.
    #[error("data key {key_id} has sealed {count} messages, its limit; rotate the keyring")]
    DataKeyExhausted {
        /// The exhausted key.
        key_id: u32,
        /// Encryptions done under it.
        count: u64,
    },
    /// Limit: the keyring already holds its maximum number of keys.
    #[error("the keyring holds {0} data keys, its maximum")]
    KeyringFull(usize),
    /// Input: Shamir parameters out of range.
    #[error("invalid Shamir parameters: {0}")]
    InvalidShamirParams(String),
    /// Input: a share is malformed (index 0, wrong length, duplicate index).
    #[error("invalid key share: {0}")]
    InvalidShare(String),
    /// Input: no shares were given.
    #[error("no key shares to combine")]
    NoShares,
    /// The rebuilt key does not match the committed key check: too few
    /// shares, shares of another key, or corrupted shares.
    #[error("rebuilt root key does not match the key check (too few, mixed or corrupted shares)")]
    KeyCheckMismatch,
    /// Input: a recovery line is malformed.
    #[error("invalid recovery line: {0}")]
    InvalidRecoveryLine(String),
}
