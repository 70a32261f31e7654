//! Our adapter over openraft (pinned `=0.10.0-alpha.37`): the type
//! configuration, redb-backed log and state machine, snapshots as streamed
//! files, and the gRPC network. A later openraft bump should touch only
//! this module.

pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::state::command::{Request, Response};

/// A Nexus replica as Raft's membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NexusNode {
    /// Cluster port address (Raft RPCs, forwarding).
    pub cluster_addr: String,
    /// SPIKE API address, given to clients as the leader hint.
    pub api_addr: String,
}

impl fmt::Display for NexusNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cluster {} api {}", self.cluster_addr, self.api_addr)
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a Nexus cluster.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = NexusNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

/// The Raft handle of a replica.
pub type NexusRaft = openraft::Raft<TypeConfig, state_machine::StateMachine>;

/// Log ids, votes, entries and memberships of our configuration.
pub use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf,
};

/// A snapshot of our state machine: metadata and the open file.
pub type NexusSnapshot =
    openraft::type_config::alias::SnapshotOf<TypeConfig, snapshot::SnapshotFile>;

/// Serialization of everything Raft stores or sends: postcard (compact,
/// deterministic, no self-description needed).
pub mod codec {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    /// Encodes `value`.
    pub fn encode<T: Serialize>(value: &T) -> std::io::Result<Vec<u8>> {
        postcard::to_stdvec(value).map_err(std::io::Error::other)
    }

    /// Decodes `bytes`, naming `what` on failure.
    pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> std::io::Result<T> {
        postcard::from_bytes(bytes).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{what} does not decode: {e}"),
            )
        })
    }
}

/// A storage failure as openraft wants it: an `io::Error` that says what was
/// touched and how.
pub(crate) fn io_error(subject: &str, error: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{subject}: {error}"))
}

#[cfg(test)]
mod conformance {
    use openraft::StorageError;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::TypeConfig;
    use super::log_store::LogStore;
    use super::state_machine::StateMachine;

    struct FreshStores;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FreshStores {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir()
                .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            let log = LogStore::open(&dir.path().join("log.redb"))
                .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            let machine = StateMachine::open(
                &dir.path().join("state.redb"),
                &dir.path().join("snapshots"),
            )
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            Ok((dir, log, machine))
        }
    }

    /// openraft's own storage test suite, against our redb stores.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite_passes() {
        Suite::test_all(FreshStores).await.expect("storage suite");
    }
}
