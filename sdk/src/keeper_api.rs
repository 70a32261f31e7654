//! The Keeper gRPC protocol (`spike.keeper.v1`), generated from
//! `sdk/proto/keeper.proto`: the keeper serves it, Nexus replicas call it.
//!
//! Shares cross this boundary as bytes; callers copy them into
//! [`crate::crypto::KeyShare`] at once and wipe the message buffers.

#![allow(missing_docs, clippy::all)]

include!(concat!(env!("OUT_DIR"), "/spike.keeper.v1.rs"));

// Every copy of a message that carries a share is wiped when dropped,
// tonic's own included (it clones nothing, but encodes from and drops the
// message it is handed), and its Debug names the key, never the share.
impl Drop for StoreShareRequest {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.share);
    }
}

impl Drop for FetchShareResponse {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.share);
    }
}

impl std::fmt::Debug for StoreShareRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreShareRequest")
            .field("root_key_id", &self.root_key_id)
            .field("index", &self.index)
            .field("committed", &self.committed)
            .field("share", &"redacted")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FetchShareResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchShareResponse")
            .field("root_key_id", &self.root_key_id)
            .field("index", &self.index)
            .field("committed", &self.committed)
            .field("share", &"redacted")
            .finish_non_exhaustive()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_messages_never_print_the_share() {
        let share: Vec<u8> = (0xa0..0xc0).collect();
        let request = StoreShareRequest {
            root_key_id: 7,
            key_check: vec![1; 32],
            index: 2,
            share: share.clone(),
            committed: true,
        };
        let response = FetchShareResponse {
            root_key_id: 7,
            key_check: vec![1; 32],
            index: 2,
            share,
            committed: false,
        };
        for printed in [format!("{request:?}"), format!("{response:?}")] {
            // prost's derived Debug prints bytes as a list of numbers.
            assert!(!printed.contains("160"), "{printed}");
            assert!(!printed.contains("a0"), "{printed}");
            assert!(printed.contains("root_key_id: 7"), "{printed}");
        }
    }
}

/// The version of this protocol. A Nexus replica sends it with every call
/// (in [`PROTOCOL_HEADER`]); a keeper refuses a version it does not speak,
/// so a message is never misread across a rolling upgrade. A call without
/// the header comes from the first release, which speaks version 1.
pub const PROTOCOL_VERSION: u32 = 1;
/// The gRPC metadata key of [`PROTOCOL_VERSION`].
pub const PROTOCOL_HEADER: &str = "spike-keeper-protocol";

/// `message` as a call that names this protocol version.
pub fn versioned<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        PROTOCOL_HEADER,
        tonic::metadata::MetadataValue::from(PROTOCOL_VERSION),
    );
    request
}

/// Refuses a call in a protocol version this build does not speak.
pub fn check_version<T>(request: &tonic::Request<T>) -> Result<(), tonic::Status> {
    let Some(value) = request.metadata().get(PROTOCOL_HEADER) else {
        return Ok(());
    };
    match value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
    {
        Some(PROTOCOL_VERSION) => Ok(()),
        Some(other) => Err(tonic::Status::failed_precondition(format!(
            "keeper protocol {other} is not spoken here; this keeper speaks version {PROTOCOL_VERSION}"
        ))),
        None => Err(tonic::Status::invalid_argument(format!(
            "{PROTOCOL_HEADER} is not a number"
        ))),
    }
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn calls_name_the_protocol_and_another_version_is_refused() {
        let call = versioned(());
        assert!(check_version(&call).is_ok());
        assert!(
            check_version(&tonic::Request::new(())).is_ok(),
            "the first release"
        );
        let mut newer = tonic::Request::new(());
        newer
            .metadata_mut()
            .insert(PROTOCOL_HEADER, tonic::metadata::MetadataValue::from(2u32));
        let refused = check_version(&newer).expect_err("version 2");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    }
}
