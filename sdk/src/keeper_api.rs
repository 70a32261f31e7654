//! The Keeper gRPC protocol (`spike.keeper.v1`), generated from
//! `sdk/proto/keeper.proto`: the keeper serves it, Nexus replicas call it.
//!
//! Shares cross this boundary as bytes; callers copy them into
//! [`crate::crypto::KeyShare`] at once and wipe the message buffers.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/spike.keeper.v1.rs"));

/// Largest keeper message, either way: a share and a few integers.
pub const MESSAGE_SIZE_MAX_BYTES: usize = 1024;

/// Whether a share belongs to a committed root key or to one a leader is
/// proposing. On the wire it is `StoreShareRequest.committed` and
/// `FetchShareResponse.committed` (a bool, as the protocol has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// The cluster committed the key: keepers keep it over pending ones.
    Committed,
    /// A proposed key, not (yet) committed: it never displaces a committed one.
    Pending,
}

impl ShareKind {
    /// The kind a wire message's `committed` flag names.
    pub fn from_committed_flag(committed: bool) -> Self {
        if committed {
            Self::Committed
        } else {
            Self::Pending
        }
    }

    /// The wire message's `committed` flag for this kind.
    pub fn committed_flag(self) -> bool {
        self == Self::Committed
    }
}
