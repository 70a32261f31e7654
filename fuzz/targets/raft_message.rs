//! Raft's bytes: a stored log entry or a cluster-port frame, picked by the
//! first byte (see `spike_nexus::fuzzing::raft_message`).

fn main() {
    afl::fuzz!(|bytes: &[u8]| spike_nexus::fuzzing::raft_message(bytes));
}
