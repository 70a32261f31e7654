//! The cluster transport: the gRPC protocol replicas speak to each other
//! (Raft RPCs, forwarded requests, digests, version stamps), its size
//! bounds, and the pool of mTLS channels to the peers. Below both Raft
//! and the cluster services, which use it and never each other for it.

pub mod peers;

use std::time::Duration;

/// Generated cluster protocol.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/spike.cluster.v1.rs"));

    // A forwarded operation may carry an operator's restore shard, so every
    // frame is wiped when dropped, on both sides (a memset, small beside the
    // network and fsync a frame costs).
    impl Drop for Frame {
        fn drop(&mut self) {
            zeroize::Zeroize::zeroize(&mut self.payload);
        }
    }
}

/// Largest cluster message either way. Raft batches are capped well below
/// it (`Config::max_payload_entries`), a forwarded request by the API body
/// limit.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;
/// Size of the data chunks a snapshot is sent in.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest snapshot a replica accepts.
pub const SNAPSHOT_SIZE_MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest one cluster call may take, a request forwarded to the leader
/// included (the channels' request timeout).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
