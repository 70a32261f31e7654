//! Keeper protocol messages served by one keeper in order (see
//! `spike_keeper::fuzzing::messages`).

fn main() {
    afl::fuzz!(|bytes: &[u8]| spike_keeper::fuzzing::messages(bytes));
}
