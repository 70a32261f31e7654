//! The simulation's only source of randomness for the code under test.
//!
//! The simulator is built with `getrandom_backend="custom"`
//! (.cargo/config.toml), so every `getrandom` call of the process (root
//! keys, nonces, client ids, `rand`'s thread RNG) lands here and draws from
//! a stream seeded per run: random data then has the same sizes in every
//! replay (a varint-encoded id one byte shorter would shift HTTP/2 flow
//! control, and with it the run). `ring` (TLS randoms, certificate keys)
//! keeps the operating system's randomness; it changes bytes, never sizes
//! or timing.

use std::sync::Mutex;
use std::sync::PoisonError;

static STATE: Mutex<u64> = Mutex::new(0);

/// Restarts the stream from `seed`.
pub fn reseed(seed: u64) {
    *STATE.lock().unwrap_or_else(PoisonError::into_inner) = seed ^ 0x0065_6e74_726f_7079;
}

/// Fills `buffer` from the stream (SplitMix64).
pub fn fill(buffer: &mut [u8]) {
    let mut state = STATE.lock().unwrap_or_else(PoisonError::into_inner);
    for chunk in buffer.chunks_mut(8) {
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
}

/// `getrandom`'s custom backend (versions 0.3 and 0.4 share the symbol).
///
/// # Safety
///
/// `getrandom` calls it with a pointer to `len` writable bytes.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
unsafe extern "Rust" fn __getrandom_v03_custom(
    dest: *mut u8,
    len: usize,
) -> Result<(), getrandom::Error> {
    // SAFETY: getrandom hands us `len` writable bytes at `dest`.
    let buffer = unsafe { std::slice::from_raw_parts_mut(dest, len) };
    fill(buffer);
    Ok(())
}
