//! The wall clock, read in one place. Only the leader's reading ever enters
//! the replicated state (as a request's time); apply never reads it.
//!
//! For fault injection only, the clock can be offset by a number of
//! milliseconds read from a file (`--test-clock-offset`, the file
//! `clock-offset-ms` in the data directory, re-read every 50 ms): the
//! Jepsen harness's clock-jump nemesis moves one replica's clock that way.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// How often the offset file is read again.
const OFFSET_REFRESH_NS: u64 = 50_000_000;

static SOURCE: OnceLock<fn() -> u64> = OnceLock::new();
static OFFSET_FILE: OnceLock<PathBuf> = OnceLock::new();
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);
static OFFSET_READ_AT_NS: AtomicU64 = AtomicU64::new(0);

/// Offsets this process's clock by the milliseconds in `path` (a signed
/// integer; missing or unreadable means 0). Fault-injection tests only.
pub fn offset_from(path: PathBuf) {
    let _ = OFFSET_FILE.set(path);
}

/// Reads the wall clock (nanoseconds since the Unix epoch) from `source`
/// instead of the system: the deterministic simulator's clock. Once per
/// process; later calls change nothing.
pub fn install(source: fn() -> u64) {
    let _ = SOURCE.set(source);
}

fn system_ns() -> u64 {
    if let Some(source) = SOURCE.get() {
        return source();
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

fn offset_ms(path: &std::path::Path, now_ns: u64) -> i64 {
    let read_at = OFFSET_READ_AT_NS.load(Ordering::Relaxed);
    if now_ns.saturating_sub(read_at) >= OFFSET_REFRESH_NS {
        let offset = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .unwrap_or(0);
        OFFSET_MS.store(offset, Ordering::Relaxed);
        OFFSET_READ_AT_NS.store(now_ns, Ordering::Relaxed);
    }
    OFFSET_MS.load(Ordering::Relaxed)
}

/// Nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    let now = system_ns();
    match OFFSET_FILE.get() {
        None => now,
        Some(path) => {
            let offset_ns = i128::from(offset_ms(path, now)) * 1_000_000;
            u64::try_from((i128::from(now) + offset_ns).max(0)).unwrap_or(u64::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_file_is_followed_and_reread() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("clock-offset-ms");
        let now = system_ns();
        assert_eq!(offset_ms(&path, now), 0, "no file: no offset");
        std::fs::write(&path, "-86400000").expect("write offset");
        // Within the refresh interval the cached value stands.
        assert_eq!(offset_ms(&path, now + 1), 0);
        assert_eq!(offset_ms(&path, now + OFFSET_REFRESH_NS), -86_400_000);
        std::fs::write(&path, "garbage").expect("write garbage");
        assert_eq!(offset_ms(&path, now + 2 * OFFSET_REFRESH_NS), 0);
    }
}
