//! A snapshot file from a peer or the data directory, installed and read
//! back (see `spike_nexus::fuzzing::snapshot_file`). The input is the file
//! without its SHA-256 trailer, which the target appends.

fn main() {
    afl::fuzz!(|bytes: &[u8]| spike_nexus::fuzzing::snapshot_file(bytes));
}
