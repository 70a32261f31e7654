//! An uploaded backup (`snapshot restore`): read, validated, and if
//! accepted restored and written to (see `spike_nexus::fuzzing::backup`).
//! The input is the backup without its SHA-256 trailer, which the target
//! appends.

fn main() {
    afl::fuzz!(|bytes: &[u8]| spike_nexus::fuzzing::backup(bytes));
}
