//! The operating system's random number generator.

use super::CryptoError;

/// Fills `buffer` from the OS random source.
pub fn fill(buffer: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buffer).map_err(|_| CryptoError::RandomUnavailable)
}

/// `N` random bytes.
pub fn array<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    fill(&mut bytes)?;
    Ok(bytes)
}
