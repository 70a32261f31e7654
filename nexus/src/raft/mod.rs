//! Our adapter over openraft (pinned `=0.10.0-alpha.37`): the type
//! configuration, redb-backed log and state machine, snapshots as streamed
//! files, the gRPC network and its receiving side ([`Inbound`]), start-up
//! ([`start`]), and [`Leadership`]: who leads, the membership, and the
//! work only a leader does. The rest of Nexus uses these and never names
//! openraft, so a later openraft bump touches only this module.

pub mod codec;
mod contact;
pub mod disk;
pub mod format;
mod inbound;
mod leadership;
pub mod log_store;
mod log_writer;
pub mod network;
pub mod runtime;
pub mod snapshot;
mod start;
pub mod state_machine;

pub use inbound::{Inbound, InboundError};
pub use leadership::{ClusterView, Leader, LeaderError, Leadership, Replication};
pub use start::{RaftSettings, StartError, Started, start};

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::state::command::{Request, Response};

/// A Nexus replica as Raft's membership records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NexusNode {
    /// Cluster port address (Raft RPCs, forwarding).
    pub cluster_addr: SocketAddr,
    /// SPIKE API address, given to clients as the leader hint.
    pub api_addr: SocketAddr,
}

/// openraft's storage suite builds nodes with `Default`; nothing else may.
#[cfg(test)]
impl Default for NexusNode {
    fn default() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Self {
            cluster_addr: unspecified,
            api_addr: unspecified,
        }
    }
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
        // A plain number inside the adapter: openraft's conformance suite
        // builds node ids from any u64, 0 included. The rest of Nexus
        // speaks `spike_sdk::domain::NodeId` (never 0) and converts here.
        NodeId = u64,
        Node = NexusNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        AsyncRuntime = runtime::NexusRuntime,
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

/// A storage failure as openraft wants it: an `io::Error` that says what was
/// touched and how.
pub(crate) fn io_error(subject: &str, error: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{subject}: {error}"))
}

/// Longest a replica waits at start for its previous process to let go of
/// a database: after kill -9 a multi-threaded process may still be tearing
/// down (holding the file lock) when its supervisor starts the next one.
pub const DATABASE_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens (or creates) the redb database at `path`, waiting up to
/// [`DATABASE_LOCK_WAIT`] while another process still holds it. Under a
/// simulator's disk ([`disk::install`]) it opens there instead.
pub(crate) fn open_database(path: &std::path::Path, what: &str) -> std::io::Result<redb::Database> {
    let failed = |e: &dyn fmt::Display| io_error(&format!("open {what} {}", path.display()), e);
    if let Some(backend) = disk::backend_for(path) {
        return redb::Database::builder()
            .create_with_backend(backend.map_err(|e| failed(&e))?)
            .map_err(|e| failed(&e));
    }
    let deadline = std::time::Instant::now() + DATABASE_LOCK_WAIT;
    loop {
        match redb::Database::create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened.map_err(|e| failed(&e)),
        }
    }
}

/// Compacts the databases under `data_dir` (state.redb, log.redb) before
/// Raft opens them: redb gives the space of freed pages back to the file
/// system only then. Returns each file's length before and after.
pub fn compact_databases(data_dir: &std::path::Path) -> std::io::Result<Vec<(String, u64, u64)>> {
    let mut done = Vec::new();
    for name in ["state.redb", "log.redb"] {
        let path = data_dir.join(name);
        let length = |path: &std::path::Path| std::fs::metadata(path).map(|meta| meta.len());
        let Ok(before) = length(&path) else {
            continue;
        };
        let mut db = open_database(&path, name)?;
        // One call runs redb's passes until none moves a page.
        db.compact()
            .map_err(|e| io_error(&format!("compact {}", path.display()), e))?;
        drop(db);
        done.push((name.to_owned(), before, length(&path)?));
    }
    Ok(done)
}

/// Runs storage work that blocks (redb commits and their fsyncs): on a
/// blocking thread under the multi-threaded runtime of a real replica, so
/// the async workers go on; inline under a current-thread runtime (the
/// simulator, unit tests), where a second thread would make the order of
/// events depend on the operating system's scheduler.
pub(crate) async fn run_blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::CurrentThread => Ok(work()),
        _ => tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| io_error(what, e)),
    }
}

#[cfg(test)]
mod opening {
    use std::time::{Duration, Instant};

    #[test]
    fn compaction_gives_the_space_of_deleted_data_back() {
        const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.redb");
        let db = redb::Database::create(&path).expect("create");
        for step in 0..2 {
            let txn = db.begin_write().expect("write");
            {
                let mut table = txn.open_table(TABLE).expect("table");
                for key in 0..2_000u64 {
                    if step == 0 {
                        table.insert(key, [7u8; 1024].as_slice()).expect("insert");
                    } else {
                        table.remove(key).expect("remove");
                    }
                }
            }
            txn.commit().expect("commit");
        }
        drop(db);
        let compacted = super::compact_databases(dir.path()).expect("compact");
        let [(file, before, after)] = compacted.as_slice() else {
            panic!("state.redb only (no log.redb here): {compacted:?}");
        };
        assert_eq!(file, "state.redb");
        assert!(*before > 2_000 * 1024, "{before}");
        assert!(*after < before / 4, "{before} -> {after}");
        // Still a database, and still empty.
        let db = redb::Database::create(&path).expect("reopen");
        let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
        let table = txn.open_table(TABLE).expect("table");
        assert_eq!(redb::ReadableTableMetadata::len(&table).expect("len"), 0);
    }

    #[test]
    fn a_database_still_held_by_a_dying_process_is_waited_for() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("held.redb");
        let held = redb::Database::create(&path).expect("first open");
        let began = Instant::now();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        let opened = super::open_database(&path, "test");
        release.join().expect("release thread");
        assert!(opened.is_ok(), "{:?}", opened.err());
        assert!(began.elapsed() >= Duration::from_millis(300));
    }
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
            let format = super::format::ClusterFormat::new(super::format::FORMAT_OLDEST);
            let log = LogStore::open(&dir.path().join("log.redb"), format.clone())
                .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
            let machine = StateMachine::open(
                &dir.path().join("state.redb"),
                &dir.path().join("snapshots"),
                format,
                crate::integrity::Integrity::default(),
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
