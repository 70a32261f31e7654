//! The Raft state machine on redb: apply, snapshots, and the applied
//! watermark other parts of the replica wait on.
//!
//! A batch of entries, their effects and the last-applied log id commit in
//! one transaction; responses go out only after it.
//!
//! Durability: applied state is a cache of the log, so most apply commits
//! skip the fsync (redb `Durability::None`): an entry is already durable on
//! a quorum of logs before it is applied, and after a crash the replica
//! rolls back to its last durable commit and openraft re-applies the rest
//! from the log (up to the saved committed id at start, the remainder once
//! a leader speaks). What keeps that replay possible is that the log is
//! never purged past the durable applied id: a snapshot, the only thing
//! that lets openraft purge, makes the applied state durable as of the
//! snapshot's read view before it is handed over. A checkpoint (an fsynced
//! commit) every [`CHECKPOINT_ENTRIES`] entries or [`CHECKPOINT_INTERVAL`]
//! bounds the replay and the memory redb holds for pending commits.
//! Snapshot installation is always fsynced.
//!
//! A `DigestCheckpoint` entry ends its apply batch: the digest of the
//! state as of that entry (`state::digest`) is computed in the batch's
//! transaction, recorded in a table of this replica's own
//! ([`digest::RECORDED`]) in the same fsynced commit, and handed to the
//! corruption check ([`Integrity`]). At open, if the applied index is that
//! of the last recorded digest, the state is hashed again and compared.
//!
//! Invariants, asserted on apply and on installation: the applied log index
//! strictly grows, and the state's watermarks (keyring and policy versions,
//! log time) never go back. The database's format is stamped when it is
//! created and checked when it is opened, and so is the current snapshot's.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta,
};
use openraft::{EntryPayload, OptionalSend, StoredMembership};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::watch;
use tokio::time::Instant;

use super::codec::{decode, encode};
use super::format::{ClusterFormat, FORMAT_OLDEST};
use super::snapshot::{self, SnapshotFile};
use super::{LogIdOf, NexusSnapshot, StoredMembershipOf, TypeConfig, io_error};
use crate::integrity::{Alarm, Checkpoint, Integrity};
use crate::metrics::{RaftMetrics, SnapshotOperation};
use crate::state::command::{Command, Response, SecretCommand};
use crate::state::digest;
use crate::state::secret::SecretRecord;
use crate::state::store::{
    self, META, META_APPLIED, META_FORMAT, META_MEMBERSHIP, StateReader, Watermarks,
};

/// Most entries applied in one transaction.
const APPLY_BATCH_MAX: usize = 512;
/// Applied entries after which the next apply commit is fsynced.
pub const CHECKPOINT_ENTRIES: u64 = 10_000;
/// Time after which the next apply commit is fsynced.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The state machine; clones share the database and snapshot directory.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    path: PathBuf,
    snapshot_dir: PathBuf,
    applied: watch::Sender<Option<LogIdOf<TypeConfig>>>,
    checkpoint: Arc<Mutex<DurabilityCheckpoint>>,
    /// The cluster's on-disk format, as applied here.
    format: ClusterFormat,
    /// Where applies and snapshots are timed.
    metrics: RaftMetrics,
    /// Where digests at checkpoints go, and the alarm.
    integrity: Integrity,
}

/// The last applied index of a state machine, as a watch that wakes
/// whenever entries are applied or a snapshot is installed.
#[derive(Clone)]
pub struct AppliedIndex(watch::Receiver<Option<LogIdOf<TypeConfig>>>);

impl AppliedIndex {
    /// Resolves at the next apply or snapshot install; never, once the
    /// state machine is gone.
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The index of the last applied entry (0 before any).
    pub fn current(&self) -> u64 {
        self.0.borrow().as_ref().map_or(0, |log_id| log_id.index)
    }

    /// Whether `index` is applied by `deadline`.
    pub async fn reached(&mut self, index: u64, deadline: tokio::time::Instant) -> bool {
        let reached = self
            .0
            .wait_for(|log_id| log_id.as_ref().is_some_and(|log_id| log_id.index >= index));
        matches!(tokio::time::timeout_at(deadline, reached).await, Ok(Ok(_)))
    }
}

/// Applied entries not yet fsynced, and when the last fsync was.
#[derive(Debug)]
struct DurabilityCheckpoint {
    pending_entries: u64,
    last: Instant,
}

impl DurabilityCheckpoint {
    fn new() -> Self {
        Self {
            pending_entries: 0,
            last: Instant::now(),
        }
    }

    /// Counts `entries` about to commit and says whether this commit must be
    /// fsynced.
    fn durability_for(&mut self, entries: u64) -> Durability {
        self.pending_entries += entries;
        if self.pending_entries >= CHECKPOINT_ENTRIES || self.last.elapsed() >= CHECKPOINT_INTERVAL
        {
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    fn fsynced(&mut self) {
        self.pending_entries = 0;
        self.last = Instant::now();
    }
}

/// Starts the name of a restore's upload spooled to the scratch directory.
pub const SCRATCH_UPLOAD_PREFIX: &str = "upload-";
/// Starts the name of a `snapshot save` export in the scratch directory.
pub const SCRATCH_EXPORT_PREFIX: &str = "backup-";
/// Ends the name of every scratch file a request creates.
pub const SCRATCH_SUFFIX: &str = ".tmp";

/// Removes the scratch files of requests a crash interrupted (a request
/// that ends removes its own): a spooled upload can be gigabytes.
fn remove_request_leftovers(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover = [SCRATCH_UPLOAD_PREFIX, SCRATCH_EXPORT_PREFIX]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            && name.ends_with(SCRATCH_SUFFIX);
        if leftover && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

impl StateMachine {
    /// Opens (or creates) the state database at `path`, with snapshots in
    /// `snapshot_dir`; refuses a database or a current snapshot of a format
    /// this build does not read. Raises `format` to the cluster format the
    /// state records. Digests at checkpoints go to `integrity`, which
    /// gets those recorded before, and the alarm if the state no longer
    /// hashes to the last of them.
    pub fn open(
        path: &Path,
        snapshot_dir: &Path,
        format: ClusterFormat,
        integrity: Integrity,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(snapshot_dir).map_err(|e| {
            io_error(
                &format!("create snapshot dir {}", snapshot_dir.display()),
                e,
            )
        })?;
        remove_request_leftovers(snapshot_dir)
            .map_err(|e| io_error("remove scratch files left by a crash", e))?;
        let db = super::open_database(path, "state")?;
        let stamp = super::format::stamp_or_check(&db, path)?;
        if let Some(current) = snapshot::newest(snapshot_dir)? {
            snapshot::check_format(&current)?;
        }
        // Create every table up front so readers never meet a missing one.
        let subject = "create state tables";
        let txn = db.begin_write().map_err(|e| io_error(subject, e))?;
        txn.open_table(store::META)
            .map_err(|e| io_error(subject, e))?;
        txn.open_table(store::SECRETS)
            .map_err(|e| io_error(subject, e))?;
        txn.open_table(store::POLICIES)
            .map_err(|e| io_error(subject, e))?;
        txn.open_table(store::POLICY_IDS)
            .map_err(|e| io_error(subject, e))?;
        txn.open_table(store::SESSIONS)
            .map_err(|e| io_error(subject, e))?;
        txn.open_table(store::SESSION_EXPIRY)
            .map_err(|e| io_error(subject, e))?;
        // Derived, so rebuilt rather than trusted: an older build may have
        // run on these files without keeping it.
        store::rebuild_session_owners(&txn).map_err(|e| io_error(subject, e))?;
        let recorded = cluster_format_in(&txn)?;
        if recorded != stamp {
            return Err(io_error(
                subject,
                format!(
                    "{} is stamped with format {stamp} but records cluster format {recorded}",
                    path.display()
                ),
            ));
        }
        txn.commit().map_err(|e| io_error(subject, e))?;
        format.raise_to(recorded);
        let machine = Self {
            db: Arc::new(db),
            path: path.to_owned(),
            snapshot_dir: snapshot_dir.to_owned(),
            applied: watch::channel(None).0,
            checkpoint: Arc::new(Mutex::new(DurabilityCheckpoint::new())),
            format,
            metrics: RaftMetrics::default(),
            integrity,
        };
        let (applied, _) = machine.read_applied()?;
        machine.check_at_open(applied.as_ref().map(|log_id| log_id.index()))?;
        machine.applied.send_replace(applied);
        Ok(machine)
    }

    /// Times applies and snapshots in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: RaftMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Hands the recorded digests to the corruption check and, if nothing
    /// was applied since the last of them, hashes the state again and
    /// raises the alarm if it no longer matches (the files changed under
    /// us). Past that entry, the peers' comparison at the next checkpoint
    /// is what catches it.
    fn check_at_open(&self, applied: Option<u64>) -> io::Result<()> {
        let subject = "check the state digest at start-up";
        let txn = self.db.begin_read().map_err(|e| io_error(subject, e))?;
        let recorded = recorded_in(&txn)?;
        let last = recorded.last().copied();
        self.integrity.load(recorded);
        let Some(last) = last.filter(|last| Some(last.index) == applied) else {
            return Ok(());
        };
        let now = digest::of_read(&txn).map_err(|e| io_error(subject, e))?;
        if now == last.digest {
            tracing::info!(
                index = last.index,
                "start-up check: the state hashes to the digest recorded at its last checkpoint"
            );
        } else {
            self.integrity.raise(Alarm {
                index: last.index,
                reason: format!(
                    "at start-up the state no longer hashes to the digest recorded when log index {} was applied: the files changed since",
                    last.index
                ),
            });
        }
        Ok(())
    }

    /// The corruption check this state machine records digests for.
    pub fn integrity(&self) -> &Integrity {
        &self.integrity
    }

    /// TEST ONLY: whether `request` writes the secret this replica was
    /// told to diverge on.
    fn diverges_at(&self, request: &crate::state::command::Request) -> bool {
        match (&request.command, self.integrity.diverge_path()) {
            (Command::Secret(SecretCommand::Put { path, .. }), Some(diverge)) => path == diverge,
            _ => false,
        }
    }

    /// TEST ONLY: alters the stored ciphertext of the current version of
    /// the diverge secret in `txn`, as a disk or a bug might, so the
    /// corruption check has something to find.
    fn plant_divergence(&self, txn: &redb::WriteTransaction) -> io::Result<()> {
        let subject = "TEST: plant a divergent write";
        let Some(path) = self.integrity.diverge_path() else {
            return Ok(());
        };
        let mut secrets = txn
            .open_table(store::SECRETS)
            .map_err(|e| io_error(subject, e))?;
        let stored = secrets
            .get(path.as_str())
            .map_err(|e| io_error(subject, e))?
            .map(|row| row.value().to_vec());
        let Some(stored) = stored else {
            return Ok(());
        };
        let mut record: SecretRecord = decode("secret", &stored)?;
        let current = record.current_version;
        if let Some(version) = record.versions.get_mut(&current)
            && let Some(byte) = version.ciphertext.last_mut()
        {
            *byte ^= 0x01;
        }
        secrets
            .insert(path.as_str(), encode(&record)?.as_slice())
            .map_err(|e| io_error(subject, e))?;
        tracing::warn!(%path, "TEST: this replica stored a different ciphertext than the log says");
        Ok(())
    }

    /// The state database's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the state database in use: its allocated pages (free pages,
    /// which later writes reuse, excluded). Two fsyncs, then a walk of every
    /// page under a write transaction, which holds apply back meanwhile:
    /// for the storage quota only, and only while the file is over it.
    pub fn in_use_bytes(&self) -> io::Result<u64> {
        let subject = "measure state pages";
        // Pages freed by commits that were not fsynced stay allocated
        // until a durable one; an idle replica may have made none since
        // its last deletes. Two empty durable commits release them.
        self.make_durable()?;
        self.make_durable()?;
        let txn = self.db.begin_write().map_err(|e| io_error(subject, e))?;
        let stats = txn.stats().map_err(|e| io_error(subject, e))?;
        // Dropped without a commit: aborted, nothing written.
        drop(txn);
        Ok(stats.allocated_pages() * stats.page_size() as u64)
    }

    /// Read access to the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader::new(self.db.clone())
    }

    /// The index of the last applied entry, as a watch.
    pub fn applied(&self) -> AppliedIndex {
        AppliedIndex(self.applied.subscribe())
    }

    fn read_applied(
        &self,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_error("read applied state", e))?;
        applied_in(&txn)
    }

    fn checkpoint(&self) -> std::sync::MutexGuard<'_, DurabilityCheckpoint> {
        // The counters stay meaningful even if a holder panicked.
        self.checkpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes every commit so far durable: one fsynced, empty commit.
    fn make_durable(&self) -> io::Result<()> {
        let subject = "checkpoint applied state";
        let mut checkpoint = self.checkpoint();
        let mut txn = self.db.begin_write().map_err(|e| io_error(subject, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| io_error(subject, e))?;
        txn.commit().map_err(|e| io_error(subject, e))?;
        checkpoint.fsynced();
        Ok(())
    }

    /// Applies `entries` in one transaction (fsynced only at checkpoints)
    /// and returns a response per entry.
    fn apply_batch(&self, entries: Vec<super::EntryOf<TypeConfig>>) -> io::Result<Vec<Response>> {
        let subject = "apply entries";
        let started = std::time::Instant::now();
        // A digest checkpoint ends its batch (see `apply`), and its digest
        // is recorded durably: it is what the start-up check compares.
        let digest_at = entries.last().and_then(|entry| match &entry.payload {
            EntryPayload::Normal(request) if request.is_digest_checkpoint() => {
                Some(entry.log_id().index())
            }
            _ => None,
        });
        let mut checkpoint = self.checkpoint();
        let mut durability = checkpoint.durability_for(entries.len() as u64);
        if digest_at.is_some() {
            durability = Durability::Immediate;
        }
        let mut txn = self.db.begin_write().map_err(|e| io_error(subject, e))?;
        txn.set_durability(durability)
            .map_err(|e| io_error(subject, e))?;
        let mut last_applied = applied_in_write(&txn)?;
        let mut store_batch =
            store::Batch::begin(&txn).map_err(|e| io_error("begin applying entries", e))?;
        let mut responses = Vec::with_capacity(entries.len());
        let mut membership = None;
        let mut switched_to = None;
        let mut diverge = false;
        for entry in entries {
            let log_id = entry.log_id();
            if let Some(previous) = &last_applied {
                assert!(
                    log_id.index() > previous.index(),
                    "entry {log_id} applied after entry {previous}"
                );
            }
            let response = match entry.payload {
                EntryPayload::Blank => Response::Done,
                EntryPayload::Normal(request) => {
                    if let Some(format) = request.switches_format_to() {
                        switched_to = switched_to.max(Some(format));
                    }
                    diverge |= self.diverges_at(&request);
                    store_batch
                        .apply(log_id.index(), &request)
                        .map_err(|e| io_error(&format!("apply entry {log_id}"), e))?
                }
                EntryPayload::Membership(change) => {
                    membership = Some(StoredMembership::new(Some(log_id), change));
                    Response::Done
                }
            };
            last_applied = Some(log_id);
            responses.push(response);
        }
        store_batch
            .finish()
            .map_err(|e| io_error("finish applying entries", e))?;
        if diverge {
            self.plant_divergence(&txn)?;
        }
        {
            let mut meta = txn.open_table(META).map_err(|e| io_error(subject, e))?;
            meta.insert(META_APPLIED, encode(&last_applied)?.as_slice())
                .map_err(|e| io_error(subject, e))?;
            if let Some(membership) = &membership {
                meta.insert(META_MEMBERSHIP, encode(membership)?.as_slice())
                    .map_err(|e| io_error(subject, e))?;
            }
        }
        let switched_to = switched_to.filter(|format| *format > self.format.get());
        if let Some(format) = switched_to {
            record_cluster_format(&txn, format)?;
        }
        let digested = match digest_at {
            Some(index) => {
                let began = std::time::Instant::now();
                let digest = digest::of_write(&txn)
                    .map_err(|e| io_error(&format!("hash the state at entry {index}"), e))?;
                record_digest(&txn, Checkpoint { index, digest })?;
                Some((Checkpoint { index, digest }, began.elapsed()))
            }
            None => None,
        };
        txn.commit().map_err(|e| io_error(subject, e))?;
        if let Some((checkpoint, took)) = digested {
            self.integrity.record(checkpoint, took);
        }
        if matches!(durability, Durability::Immediate) {
            checkpoint.fsynced();
        }
        drop(checkpoint);
        if let Some(format) = switched_to {
            self.format.raise_to(format);
            tracing::info!(format, "the cluster switched its on-disk format");
        }
        self.applied.send_replace(last_applied);
        self.metrics.applied(started.elapsed());
        Ok(responses)
    }

    fn build(&self) -> io::Result<NexusSnapshot> {
        let subject = "build snapshot";
        let started = std::time::Instant::now();
        let txn = self.db.begin_read().map_err(|e| io_error(subject, e))?;
        // openraft purges the log up to the snapshot once it has it: make
        // the state this view sees durable first, so a crash never leaves
        // the durable applied id behind the purged log.
        self.make_durable()?;
        let (last_log_id, last_membership) = applied_in(&txn)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        let index = last_log_id.as_ref().map_or(0, |log_id| log_id.index());
        let partial = self.snapshot_dir.join("building.tmp");
        snapshot::write(&txn, &meta, &partial)?;
        let path = self.snapshot_dir.join(snapshot::file_name(index));
        std::fs::rename(&partial, &path).map_err(|e| io_error(subject, e))?;
        sync_dir(&self.snapshot_dir)?;
        snapshot::remove_others(&self.snapshot_dir, &path)?;
        let snapshot = SnapshotFile::open(&path)?;
        self.metrics.snapshot(
            SnapshotOperation::Build,
            started.elapsed(),
            snapshot.size_bytes().unwrap_or(0),
        );
        tracing::info!(last_log_index = index, "built snapshot");
        Ok(Snapshot { meta, snapshot })
    }

    fn install(&self, file: SnapshotFile) -> io::Result<()> {
        let subject = "install snapshot";
        let started = std::time::Instant::now();
        let bytes = file.size_bytes().unwrap_or(0);
        snapshot::verify(&file)?;
        let mut checkpoint = self.checkpoint();
        let mut txn = self.db.begin_write().map_err(|e| io_error(subject, e))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| io_error(subject, e))?;
        let applied_before = applied_in_write(&txn)?;
        let state_before = store::read_cluster_meta(&txn).map_err(|e| io_error(subject, e))?;
        let meta = snapshot::load(&txn, &file)?;
        // openraft installs only a snapshot past everything committed here,
        // so past everything applied: the state only moves forward.
        if let (Some(before), Some(installed)) = (&applied_before, &meta.last_log_id) {
            assert!(
                installed.index() > before.index(),
                "snapshot up to {installed} installed over applied entry {before}"
            );
        }
        let state_after = store::read_cluster_meta(&txn).map_err(|e| io_error(subject, e))?;
        Watermarks::of(&state_before).assert_not_behind(&state_after);
        // A snapshot carries the format its state was in; the format never
        // goes back (a snapshot is always past the switch it follows).
        let format = cluster_format_in(&txn)?.max(self.format.get());
        record_cluster_format(&txn, format)?;
        {
            let mut table = txn.open_table(META).map_err(|e| io_error(subject, e))?;
            table
                .insert(META_APPLIED, encode(&meta.last_log_id)?.as_slice())
                .map_err(|e| io_error(subject, e))?;
            table
                .insert(META_MEMBERSHIP, encode(&meta.last_membership)?.as_slice())
                .map_err(|e| io_error(subject, e))?;
        }
        txn.commit().map_err(|e| io_error(subject, e))?;
        checkpoint.fsynced();
        drop(checkpoint);
        // Keep the installed file as our current snapshot.
        let index = meta.last_log_id.as_ref().map_or(0, |log_id| log_id.index());
        let path = self.snapshot_dir.join(snapshot::file_name(index));
        if file.path != path {
            std::fs::rename(&file.path, &path).map_err(|e| io_error(subject, e))?;
        }
        sync_dir(&self.snapshot_dir)?;
        snapshot::remove_others(&self.snapshot_dir, &path)?;
        self.format.raise_to(format);
        self.applied.send_replace(meta.last_log_id);
        self.metrics
            .snapshot(SnapshotOperation::Install, started.elapsed(), bytes);
        tracing::info!(last_log_index = index, "installed snapshot from the leader");
        Ok(())
    }

    /// Writes a consistent copy of the applied state to `path` (the snapshot
    /// format, fsynced): a backup.
    pub fn export(&self, path: &Path) -> io::Result<()> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_error("export state", e))?;
        let (last_log_id, last_membership) = applied_in(&txn)?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        snapshot::write(&txn, &meta, path)
    }

    /// Writes a consistent copy of the applied state to `path` (the
    /// snapshot format, fsynced) from one redb read transaction: MVCC, so
    /// apply keeps committing while it runs. Returns the last log index
    /// and the root key id the copy holds.
    pub fn write_backup(&self, path: &Path) -> io::Result<BackupPoint> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_error("begin backup read", e))?;
        let (last_log_id, last_membership) = applied_in(&txn)?;
        let root_key_id = match txn.open_table(META) {
            Ok(table) => match table
                .get(crate::state::store::META_CLUSTER)
                .map_err(|e| io_error("read cluster meta for backup", e))?
            {
                Some(bytes) => {
                    decode::<crate::state::store::ClusterMeta>("cluster meta", bytes.value())?
                        .root_key_id()
                }
                None => None,
            },
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(io_error("open meta for backup", e)),
        };
        let index = last_log_id.as_ref().map_or(0, |log_id| log_id.index());
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        snapshot::write(&txn, &meta, path)?;
        Ok(BackupPoint { index, root_key_id })
    }

    /// A directory for temporary files next to the snapshots.
    pub fn scratch_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// Where received snapshots are written before installation.
    pub fn incoming_path(&self, name: &str) -> PathBuf {
        self.snapshot_dir.join(format!("incoming-{name}.tmp"))
    }
}

/// What a backup holds: the state after log entry `index`, sealed under
/// root key `root_key_id` (none before initialization).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPoint {
    /// The last log index applied in it.
    pub index: u64,
    /// The root key its records are sealed under.
    pub root_key_id: Option<spike_sdk::domain::RootKeyId>,
}

/// Whether the last entry of `batch` is a digest checkpoint.
fn ends_batch(batch: &[EntryResponder<TypeConfig>]) -> bool {
    batch.last().is_some_and(|(entry, _)| {
        matches!(&entry.payload, EntryPayload::Normal(request) if request.is_digest_checkpoint())
    })
}

/// Records `checkpoint` in `txn`, keeping the newest
/// [`crate::integrity::CHECKPOINTS_KEPT`].
fn record_digest(txn: &redb::WriteTransaction, checkpoint: Checkpoint) -> io::Result<()> {
    let subject = "record the state digest";
    let mut table = txn
        .open_table(digest::RECORDED)
        .map_err(|e| io_error(subject, e))?;
    table
        .insert(checkpoint.index, checkpoint.digest.as_slice())
        .map_err(|e| io_error(subject, e))?;
    while table.len().map_err(|e| io_error(subject, e))? > crate::integrity::CHECKPOINTS_KEPT as u64
    {
        table.pop_first().map_err(|e| io_error(subject, e))?;
    }
    Ok(())
}

/// The digests recorded in `txn`, oldest first.
fn recorded_in(txn: &redb::ReadTransaction) -> io::Result<Vec<Checkpoint>> {
    let subject = "read the recorded state digests";
    // Made by the first checkpoint, not at open: a replica rolled back to
    // a build from before the check finds its files as that build left them.
    let table = match txn.open_table(digest::RECORDED) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(io_error(subject, e)),
    };
    let mut recorded = Vec::new();
    for row in table.iter().map_err(|e| io_error(subject, e))? {
        let (index, digest) = row.map_err(|e| io_error(subject, e))?;
        let digest = digest
            .value()
            .try_into()
            .map_err(|_| io_error(subject, "a recorded digest is not 32 bytes"))?;
        recorded.push(Checkpoint {
            index: index.value(),
            digest,
        });
    }
    Ok(recorded)
}

/// The last applied log id as the write transaction `txn` sees it.
fn applied_in_write(txn: &redb::WriteTransaction) -> io::Result<Option<LogIdOf<TypeConfig>>> {
    let subject = "read applied log id";
    let table = txn.open_table(META).map_err(|e| io_error(subject, e))?;
    match table.get(META_APPLIED).map_err(|e| io_error(subject, e))? {
        Some(bytes) => Ok(decode("applied log id", bytes.value())?),
        None => Ok(None),
    }
}

/// The last applied log id and membership as `txn` sees them.
fn applied_in(
    txn: &redb::ReadTransaction,
) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
    let subject = "read applied state";
    let table = match txn.open_table(META) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok((None, StoredMembership::default()));
        }
        Err(e) => return Err(io_error(subject, e)),
    };
    let applied = match table.get(META_APPLIED).map_err(|e| io_error(subject, e))? {
        Some(bytes) => decode("applied log id", bytes.value())?,
        None => None,
    };
    let membership = match table
        .get(META_MEMBERSHIP)
        .map_err(|e| io_error(subject, e))?
    {
        Some(bytes) => decode("applied membership", bytes.value())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// The cluster format the state in `txn` records (1 before any switch).
fn cluster_format_in(txn: &redb::WriteTransaction) -> io::Result<u32> {
    let subject = "read the cluster format";
    let table = txn.open_table(META).map_err(|e| io_error(subject, e))?;
    store::cluster_format_in(&table).map_err(|e| io_error(subject, e))
}

/// Records `format` as the cluster's and stamps the database with it, in
/// `txn`: the commit that first holds bytes of a format also says so.
fn record_cluster_format(txn: &redb::WriteTransaction, format: u32) -> io::Result<()> {
    let subject = "record the cluster format";
    if format > FORMAT_OLDEST {
        txn.open_table(META)
            .map_err(|e| io_error(subject, e))?
            .insert(META_FORMAT, encode(&format)?.as_slice())
            .map_err(|e| io_error(subject, e))?;
    }
    super::format::restamp(txn, format).map_err(|e| io_error(subject, e))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| io_error(&format!("sync {}", dir.display()), e))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<NexusSnapshot, io::Error> {
        let machine = self.clone();
        super::run_blocking("build snapshot", move || machine.build()).await?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(first) = entries.next().await {
            // Take whatever else is ready now, so one fsync covers a batch;
            // a digest checkpoint ends the batch, so its digest is of the
            // state exactly as of that entry.
            let mut batch = vec![first?];
            while batch.len() < APPLY_BATCH_MAX && !ends_batch(&batch) {
                match entries.next().now_or_never() {
                    Some(Some(next)) => batch.push(next?),
                    _ => break,
                }
            }
            let (batch_entries, responders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let machine = self.clone();
            let responses =
                super::run_blocking("apply entries", move || machine.apply_batch(batch_entries))
                    .await??;
            for (responder, response) in responders.into_iter().zip(responses) {
                if let Some(responder) = responder {
                    responder.send(response);
                }
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        _meta: &super::SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let machine = self.clone();
        super::run_blocking("install snapshot", move || machine.install(snapshot)).await?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<NexusSnapshot>, io::Error> {
        let Some(path) = snapshot::newest(&self.snapshot_dir)? else {
            return Ok(None);
        };
        let file = SnapshotFile::open(&path)?;
        let meta = snapshot::read_meta(&file)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: file,
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::{blank_ent, log_id};
    use spike_sdk::domain::{DataKeyId, PolicyId, PolicyRef, RootKeyId, SecretPath};

    use super::*;
    use crate::raft::EntryOf;
    use crate::state::command::{Command, KeyCommand, PolicyCommand, Request, RootKeyRecord};

    fn machine(dir: &Path) -> io::Result<StateMachine> {
        StateMachine::open(
            &dir.join("state.redb"),
            &dir.join("snapshots"),
            ClusterFormat::new(FORMAT_OLDEST),
            Integrity::default(),
        )
    }

    #[test]
    fn opening_removes_what_crashed_requests_left_in_the_scratch_dir_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scratch = dir.path().join("snapshots");
        std::fs::create_dir_all(&scratch).expect("scratch");
        let left = ["upload-x1.tmp", "backup-17.tmp"];
        let kept = [
            "snapshot-00000000000000000001.snap.keep",
            "upload-notes.txt",
            "building.tmp",
        ];
        for name in left.iter().chain(&kept) {
            std::fs::write(scratch.join(name), b"x").expect("write");
        }
        drop(machine(dir.path()).expect("opens"));
        for name in left {
            assert!(!scratch.join(name).exists(), "{name} removed");
        }
        for name in kept {
            assert!(scratch.join(name).exists(), "{name} kept");
        }
    }

    fn normal(index: u64, command: Command) -> EntryOf<TypeConfig> {
        EntryOf::<TypeConfig>::new_normal(
            log_id::<TypeConfig>(1, 1, index),
            Request {
                command,
                session: None,
                time_ns: index,
            },
        )
    }

    #[test]
    fn pages_freed_by_destroys_no_longer_count_as_in_use() {
        use crate::state::command::SecretCommand;
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = machine(dir.path()).expect("open");
        let secret = |index: u64| -> SecretPath { format!("big/{index}").parse().expect("a path") };
        let mut entries = vec![normal(1, initialize())];
        for index in 0..20 {
            entries.push(normal(
                index + 2,
                Command::Secret(SecretCommand::Put {
                    path: secret(index),
                    ciphertext: vec![7; 400 * 1024],
                    data_key_id: DataKeyId(1),
                    cas: None,
                    max_versions: 10,
                }),
            ));
        }
        machine.apply_batch(entries).expect("apply");
        let full = machine.in_use_bytes().expect("measure");
        assert!(full > 8 * 1024 * 1024, "{full}");
        let destroys = (0..20)
            .map(|index| {
                normal(
                    index + 22,
                    Command::Secret(SecretCommand::Destroy {
                        path: secret(index),
                        versions: vec![],
                    }),
                )
            })
            .collect();
        machine.apply_batch(destroys).expect("apply");
        let freed = machine.in_use_bytes().expect("measure");
        assert!(freed < full / 4, "{full} -> {freed}");
        assert!(
            file_len(machine.path()) >= full,
            "the file itself does not shrink"
        );
    }

    /// A number from the environment variable `name`, or `default`.
    fn env_or(name: &str, default: u64) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or(default)
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |meta| meta.len())
    }

    /// Data-file growth under churn, printed: `SPIKE_CHURN_WRITES` puts
    /// (default 1,000,000) over `SPIKE_CHURN_KEYS` secrets (default 10,000)
    /// of 256-byte values, through the real apply path (batches of
    /// [`APPLY_BATCH_MAX`], fsynced at checkpoints) and the real log store
    /// (appended per batch, purged as a snapshot every 100,000 entries
    /// with 5,000 kept would), then both files compacted as
    /// `SPIKE_NEXUS_COMPACT_ON_START` does. `SPIKE_CHURN_DIR` sets where
    /// the files go (default: the system's temporary directory).
    ///
    /// ```sh
    /// cargo test -p spike-nexus --lib -- --ignored --nocapture churn
    /// ```
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a benchmark: run explicitly with --ignored --nocapture"]
    async fn churn_file_growth_and_compaction() {
        use crate::state::command::SecretCommand;
        use openraft::storage::{IOFlushed, RaftLogStorage};
        let writes = env_or("SPIKE_CHURN_WRITES", 1_000_000);
        let keys = env_or("SPIKE_CHURN_KEYS", 10_000).max(1);
        let dir = match std::env::var_os("SPIKE_CHURN_DIR") {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let state_path = dir.path().join("state.redb");
        let log_path = dir.path().join("log.redb");
        let machine = machine(dir.path()).expect("open state");
        let mut log =
            super::super::log_store::LogStore::open(&log_path, ClusterFormat::new(FORMAT_OLDEST))
                .expect("open log");
        let mut index = 1;
        let first = vec![normal(index, initialize())];
        log.append(first.clone(), IOFlushed::noop())
            .await
            .expect("append");
        machine.apply_batch(first).expect("initialize");
        let began = Instant::now();
        let mut written = 0;
        let mut peak_state = 0;
        while written < writes {
            let count = (writes - written).min(APPLY_BATCH_MAX as u64);
            let batch: Vec<_> = (0..count)
                .map(|offset| {
                    index += 1;
                    let key = (written + offset) % keys;
                    let mut ciphertext = vec![0u8; 256 + 28];
                    ciphertext[..8].copy_from_slice(&index.to_be_bytes());
                    normal(
                        index,
                        Command::Secret(SecretCommand::Put {
                            path: format!("churn/{key}").parse().expect("a path"),
                            ciphertext,
                            data_key_id: DataKeyId(1),
                            cas: None,
                            max_versions: 10,
                        }),
                    )
                })
                .collect();
            written += count;
            log.append(batch.clone(), IOFlushed::noop())
                .await
                .expect("append");
            for response in machine.apply_batch(batch).expect("apply") {
                assert!(matches!(response, Response::Written(_)), "{response:?}");
            }
            if index % 100_000 < APPLY_BATCH_MAX as u64 && index > 5_000 {
                log.purge(log_id::<TypeConfig>(1, 1, index - 5_000))
                    .await
                    .expect("purge");
            }
            peak_state = peak_state.max(file_len(&state_path));
        }
        let elapsed = began.elapsed();
        let (state_before, log_before) = (file_len(&state_path), file_len(&log_path));
        let in_use = machine.in_use_bytes().expect("pages in use");
        drop(machine);
        drop(log);
        let began_compaction = Instant::now();
        let compacted = super::super::compact_databases(dir.path()).expect("compact");
        let compaction = began_compaction.elapsed();
        let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
        eprintln!(
            "churn: {writes} puts over {keys} secrets (256-byte values, 10 versions kept) in {:.1} s ({:.0}/s)",
            elapsed.as_secs_f64(),
            writes as f64 / elapsed.as_secs_f64()
        );
        eprintln!(
            "open: state.redb {:.1} MiB (peak {:.1} MiB; {:.1} MiB of pages in use), log.redb {:.1} MiB",
            mib(state_before),
            mib(peak_state),
            mib(in_use),
            mib(log_before)
        );
        // redb trims trailing free space when a database closes, so the
        // lengths before compaction are those after closing.
        for (file, before, after) in &compacted {
            eprintln!(
                "{file}: {:.1} MiB once closed -> {:.1} MiB compacted ({:.1} s for both files)",
                mib(*before),
                mib(*after),
                compaction.as_secs_f64()
            );
            assert!(after <= before, "{file} grew: {before} -> {after}");
        }
        assert_eq!(compacted.len(), 2, "both files compacted");
    }

    fn initialize() -> Command {
        Command::Keys(KeyCommand::Initialize(RootKeyRecord {
            root_key_id: RootKeyId(1),
            key_check: [1; 32],
            wrapped_keyring: vec![1],
            shares: 1,
            threshold: 1,
        }))
    }

    fn put_policy(id: PolicyId) -> Command {
        Command::Policy(PolicyCommand::Put {
            id,
            name: "readers".parse().expect("a name"),
            ciphertext: vec![1],
            data_key_id: DataKeyId(1),
        })
    }

    #[test]
    fn a_state_database_from_before_format_stamps_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(META).expect("meta");
        txn.commit().expect("commit");
        drop(db);
        let error = machine(dir.path()).err().expect("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{} was written before on-disk format stamps existed; this build reads formats 1, 2, 3",
                path.display()
            )
        );
    }

    #[test]
    fn a_current_snapshot_of_another_format_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshots = dir.path().join("snapshots");
        std::fs::create_dir_all(&snapshots).expect("snapshot dir");
        let path = snapshots.join(snapshot::file_name(7));

        let mut future = b"SPKSNAPV".to_vec();
        future.extend_from_slice(&99u32.to_be_bytes());
        future.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &future).expect("write");
        let error = machine(dir.path()).err().expect("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{} is in on-disk format 99; this build reads formats 1, 2, 3",
                path.display()
            )
        );

        let mut unstamped = b"SPKSNAP1".to_vec();
        unstamped.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &unstamped).expect("write");
        let error = machine(dir.path()).err().expect("refused");
        assert!(
            error.to_string().ends_with(
                "was written before on-disk format stamps existed; this build reads formats 1, 2, 3"
            ),
            "{error}"
        );
    }

    fn put_secret(index: u64, bytes: usize) -> EntryOf<TypeConfig> {
        normal(
            index,
            Command::Secret(crate::state::command::SecretCommand::Put {
                path: format!("bulk/{index}").parse().expect("a path"),
                ciphertext: vec![7; bytes],
                data_key_id: DataKeyId(1),
                cas: None,
                max_versions: 10,
            }),
        )
    }

    /// A backup reads one MVCC read transaction: apply keeps committing
    /// while it is written, and the backup holds the state it began with.
    /// Prints the longest apply during the backup against the longest
    /// before it (the figure ARCHITECTURE.md's bound rests on).
    #[test]
    fn apply_commits_while_a_backup_is_written_and_the_backup_holds_the_state_it_began_with() {
        const SECRETS: u64 = 20_000;
        const SECRET_BYTES: usize = 1_024;
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = machine(dir.path()).expect("open");
        machine
            .apply_batch(vec![normal(1, initialize())])
            .expect("apply");
        let mut next = 2;
        while next < SECRETS + 2 {
            let batch: Vec<_> = (next..(next + 500).min(SECRETS + 2))
                .map(|index| put_secret(index, SECRET_BYTES))
                .collect();
            next += batch.len() as u64;
            machine.apply_batch(batch).expect("apply");
        }
        let single = |machine: &StateMachine, index| {
            let began = std::time::Instant::now();
            machine
                .apply_batch(vec![put_secret(index, SECRET_BYTES)])
                .expect("apply");
            began.elapsed()
        };
        let before_max = (0..50)
            .map(|offset| single(&machine, next + offset))
            .max()
            .expect("applies");
        next += 50;
        let started_at = next - 1;

        let path = dir.path().join("backup.snap");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let backup = {
            let machine = machine.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let began = std::time::Instant::now();
                let point = machine.write_backup(&path).expect("backup");
                done_tx.send(()).expect("signal");
                (point, began.elapsed())
            })
        };
        let mut during = Vec::new();
        while done_rx.try_recv().is_err() {
            during.push(single(&machine, next));
            next += 1;
        }
        let (point, took) = backup.join().expect("backup thread");
        let during_max = during.iter().max().copied().unwrap_or_default();
        eprintln!(
            "backup of {SECRETS} secrets of {SECRET_BYTES} bytes took {took:?}; {} applies committed meanwhile, longest {during_max:?} (longest before: {before_max:?})",
            during.len()
        );
        assert!(
            during.len() > 1,
            "apply committed while the backup was being written"
        );
        assert!(
            point.index >= started_at && point.index < next - 1,
            "the backup holds the state it began with: index {} (began after {started_at}, {} applied by the end)",
            point.index,
            next - 1
        );
        let bytes = std::fs::read(&path).expect("read backup");
        let backup = snapshot::read_backup(&bytes).expect("a valid backup");
        assert_eq!(
            backup.secrets.len() as u64,
            point.index - 1,
            "one secret per entry after initialize, up to its index"
        );
    }

    fn switch_format(format: u32) -> Command {
        Command::Membership(crate::state::command::MembershipCommand::SwitchFormat { format })
    }

    fn stamp_of_database(machine: &StateMachine) -> u32 {
        let txn = machine.db.begin_read().expect("read");
        let table = txn
            .open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .expect("format table");
        table.get("version").expect("get").expect("stamped").value()
    }

    #[test]
    fn the_cluster_format_switches_at_its_entry_and_survives_a_restart_and_a_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        let format = ClusterFormat::new(FORMAT_OLDEST);
        let open = |format: ClusterFormat| {
            StateMachine::open(
                &dir.path().join("state.redb"),
                &dir.path().join("snapshots"),
                format,
                Integrity::default(),
            )
        };
        let machine = open(format.clone()).expect("open");
        machine
            .apply_batch(vec![normal(1, initialize())])
            .expect("apply");
        assert_eq!((format.get(), stamp_of_database(&machine)), (1, 1));
        let before = machine.build().expect("snapshot before the switch");
        assert_eq!(
            snapshot_format(&before),
            1,
            "an older build can still take it"
        );

        machine
            .apply_batch(vec![
                normal(2, switch_format(2)),
                normal(3, switch_format(1)),
            ])
            .expect("apply");
        assert_eq!(
            format.get(),
            2,
            "the switch applied; the format never goes back"
        );
        assert_eq!(stamp_of_database(&machine), 2);
        assert_eq!(machine.reader().cluster_format().expect("read"), 2);
        let after = machine.build().expect("snapshot after the switch");
        assert_eq!(snapshot_format(&after), 2);
        drop((machine, after, before));

        let reopened = ClusterFormat::new(FORMAT_OLDEST);
        let machine = open(reopened.clone()).expect("reopen");
        assert_eq!(reopened.get(), 2, "the format is read back at open");

        // A replica that installs the snapshot takes the format with it.
        let other = tempfile::tempdir().expect("tempdir");
        let installed = ClusterFormat::new(FORMAT_OLDEST);
        let follower = StateMachine::open(
            &other.path().join("state.redb"),
            &other.path().join("snapshots"),
            installed.clone(),
            Integrity::default(),
        )
        .expect("open");
        let snapshot = machine.build().expect("snapshot");
        let copy = other.path().join("incoming");
        std::fs::copy(&snapshot.snapshot.path, &copy).expect("copy");
        follower
            .install(SnapshotFile::open(&copy).expect("open"))
            .expect("install");
        assert_eq!(installed.get(), 2);
        assert_eq!(stamp_of_database(&follower), 2);
    }

    fn snapshot_format(snapshot: &NexusSnapshot) -> u32 {
        let bytes = std::fs::read(&snapshot.snapshot.path).expect("read snapshot");
        u32::from_be_bytes(bytes[8..12].try_into().expect("four bytes"))
    }

    #[test]
    #[should_panic(expected = "applied after entry")]
    fn an_entry_applied_twice_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = machine(dir.path()).expect("open");
        machine
            .apply_batch(vec![blank_ent::<TypeConfig>(1, 1, 5)])
            .expect("apply");
        let _ = machine.apply_batch(vec![blank_ent::<TypeConfig>(1, 1, 5)]);
    }

    /// Builds a snapshot on `dir` after `entries` and copies it to where
    /// `to` receives snapshots.
    fn snapshot_of(
        dir: &Path,
        entries: Vec<EntryOf<TypeConfig>>,
        to: &StateMachine,
    ) -> SnapshotFile {
        let leader = machine(dir).expect("open");
        leader.apply_batch(entries).expect("apply");
        let built = leader.build().expect("build");
        let incoming = to.incoming_path("test");
        std::fs::copy(&built.snapshot.path, &incoming).expect("copy");
        SnapshotFile::open(&incoming).expect("open snapshot")
    }

    #[test]
    fn an_installed_snapshot_brings_policies_with_their_id_index() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let follower = machine(follower_dir.path()).expect("open");
        let id = PolicyId::from_bytes([4; 16]);
        let file = snapshot_of(
            leader_dir.path(),
            vec![normal(1, initialize()), normal(2, put_policy(id))],
            &follower,
        );
        let mut header = [0u8; 12];
        std::io::Read::read_exact(&mut file.reader().expect("reader"), &mut header)
            .expect("header");
        assert_eq!(&header, b"SPKSNAPV\0\0\0\x01", "magic and format 1");
        follower.install(file).expect("install");
        let (name, record) = follower
            .reader()
            .policy(&PolicyRef::from(id))
            .expect("read")
            .expect("found by id");
        assert_eq!((name.as_str(), record.id), ("readers", id));
    }

    #[test]
    #[should_panic(expected = "installed over applied entry")]
    fn a_snapshot_behind_the_applied_state_is_never_installed() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let follower = machine(follower_dir.path()).expect("open");
        follower
            .apply_batch(
                (1..=5)
                    .map(|index| blank_ent::<TypeConfig>(1, 1, index))
                    .collect(),
            )
            .expect("apply");
        let file = snapshot_of(
            leader_dir.path(),
            vec![blank_ent::<TypeConfig>(1, 1, 3)],
            &follower,
        );
        let _ = follower.install(file);
    }

    fn checkpoint() -> Command {
        Command::Membership(crate::state::command::MembershipCommand::DigestCheckpoint)
    }

    fn put_secret_at(path: &str, byte: u8) -> Command {
        Command::Secret(SecretCommand::Put {
            path: path.parse().expect("a path"),
            ciphertext: vec![byte; 48],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 10,
        })
    }

    fn open_checked(dir: &Path) -> (StateMachine, Integrity) {
        let integrity = Integrity::default();
        let machine = StateMachine::open(
            &dir.join("state.redb"),
            &dir.join("snapshots"),
            ClusterFormat::new(FORMAT_OLDEST),
            integrity.clone(),
        )
        .expect("open");
        (machine, integrity)
    }

    #[test]
    fn a_replica_that_installs_a_snapshot_digests_a_checkpoint_like_one_that_applied_it_all() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let follower_dir = tempfile::tempdir().expect("tempdir");
        let (leader, leader_checks) = open_checked(leader_dir.path());
        let (follower, follower_checks) = open_checked(follower_dir.path());
        leader
            .apply_batch(vec![
                normal(1, initialize()),
                // Custom metadata exists only in format 3, and so do
                // digest checkpoints; snapshots carry it from then on.
                normal(2, switch_format(3)),
                normal(3, put_secret_at("apps/db", 1)),
                normal(4, put_policy(PolicyId::from_bytes([4; 16]))),
                normal(
                    5,
                    Command::Secret(SecretCommand::PutCustomMetadata {
                        path: "apps/db".parse().expect("a path"),
                        ciphertext: vec![5; 24],
                        data_key_id: DataKeyId(1),
                    }),
                ),
            ])
            .expect("apply");
        let has_metadata = leader
            .db
            .begin_read()
            .expect("read")
            .open_table(store::SECRET_METADATA)
            .expect("metadata table")
            .get("apps/db")
            .expect("get")
            .is_some();
        assert!(has_metadata, "the snapshot carries custom metadata");
        let built = leader.build().expect("build");
        let incoming = follower.incoming_path("test");
        std::fs::copy(&built.snapshot.path, &incoming).expect("copy");
        follower
            .install(SnapshotFile::open(&incoming).expect("open snapshot"))
            .expect("install");
        for machine in [&leader, &follower] {
            machine
                .apply_batch(vec![
                    normal(6, put_secret_at("apps/db", 2)),
                    normal(7, checkpoint()),
                ])
                .expect("apply");
        }
        let recorded = leader_checks.checkpoints();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].index, 7);
        assert_eq!(recorded, follower_checks.checkpoints());
    }

    #[test]
    fn a_state_file_changed_while_the_replica_was_down_raises_the_alarm_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (machine, _) = open_checked(dir.path());
        machine
            .apply_batch(vec![
                normal(1, initialize()),
                normal(2, put_secret_at("apps/db", 1)),
                normal(3, checkpoint()),
            ])
            .expect("apply");
        drop(machine);
        let (machine, integrity) = open_checked(dir.path());
        assert!(!integrity.is_corrupt(), "unchanged files pass");
        assert_eq!(
            integrity.checkpoints().len(),
            1,
            "recorded digests come back"
        );

        let txn = machine.db.begin_write().expect("write");
        {
            let mut secrets = txn.open_table(store::SECRETS).expect("secrets");
            let row = secrets
                .get("apps/db")
                .expect("get")
                .expect("exists")
                .value()
                .to_vec();
            secrets.insert("apps/dc", row.as_slice()).expect("insert");
        }
        txn.commit().expect("commit");
        drop(machine);
        let (_machine, integrity) = open_checked(dir.path());
        assert!(integrity.is_corrupt(), "the changed row is caught");
    }

    #[test]
    fn the_test_hook_alters_only_the_named_secret_and_the_digest_shows_it() {
        let honest_dir = tempfile::tempdir().expect("tempdir");
        let diverged_dir = tempfile::tempdir().expect("tempdir");
        let (honest, honest_checks) = open_checked(honest_dir.path());
        let diverging = Integrity::new(Some("apps/db".parse().expect("a path")));
        let diverged = StateMachine::open(
            &diverged_dir.path().join("state.redb"),
            &diverged_dir.path().join("snapshots"),
            ClusterFormat::new(FORMAT_OLDEST),
            diverging.clone(),
        )
        .expect("open");
        for machine in [&honest, &diverged] {
            machine
                .apply_batch(vec![
                    normal(1, initialize()),
                    normal(2, put_secret_at("apps/other", 1)),
                    normal(3, checkpoint()),
                ])
                .expect("apply");
        }
        assert_eq!(honest_checks.checkpoints(), diverging.checkpoints());
        for machine in [&honest, &diverged] {
            machine
                .apply_batch(vec![
                    normal(4, put_secret_at("apps/db", 1)),
                    normal(5, checkpoint()),
                ])
                .expect("apply");
        }
        assert_ne!(honest_checks.checkpoints()[1], diverging.checkpoints()[1]);
    }

    /// The cost of a digest checkpoint, which holds up apply while it
    /// hashes: run with `--ignored --nocapture` (in release for figures).
    #[test]
    #[ignore = "prints a measurement"]
    fn digest_cost_with_10000_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (machine, integrity) = open_checked(dir.path());
        machine
            .apply_batch(vec![normal(1, initialize())])
            .expect("apply");
        let mut index = 2;
        for chunk in 0..20 {
            let entries = (0..500)
                .map(|n| {
                    index += 1;
                    normal(index - 1, put_secret_at(&format!("apps/s{chunk}-{n}"), 7))
                })
                .collect();
            machine.apply_batch(entries).expect("apply");
        }
        let began = std::time::Instant::now();
        machine
            .apply_batch(vec![normal(index, checkpoint())])
            .expect("apply");
        let with_digest = began.elapsed();
        let began = std::time::Instant::now();
        machine
            .apply_batch(vec![normal(index + 1, put_secret_at("apps/one-more", 7))])
            .expect("apply");
        let plain = began.elapsed();
        let size = std::fs::metadata(dir.path().join("state.redb")).map_or(0, |m| m.len());
        eprintln!(
            "10,000 secrets ({size} bytes of state.redb): a checkpoint entry applies in {with_digest:?} \
             (hash, record, fsync), a plain one-entry batch in {plain:?}; digest recorded: {:?}",
            integrity.checkpoints().last().map(|c| c.index)
        );
    }
}
