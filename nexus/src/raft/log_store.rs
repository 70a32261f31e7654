//! The Raft log and vote in redb.
//!
//! Durability contract: `save_vote`, `truncate_after` and `purge` return
//! only after an fsynced redb commit, and `append` returns once its entries
//! are readable and tells Raft through its callback once they are fsynced,
//! so a vote or entry Raft was told is on disk survives a crash. The
//! committed log id is written without an fsync: it only spares a restarted
//! replica some waiting, so losing it is harmless, and the next fsynced
//! commit persists it anyway. Every write goes through one queue to the
//! log's writer ([`super::log_writer`]), which commits them in the order
//! openraft issued them, a group at a time.
//!
//! Commits are redb's one-phase kind: one fsync, with the commit slot
//! checksummed (xxhash) so a torn commit is detected and the previous one
//! used. The two-phase kind costs a second fsync per write and only guards
//! against an attacker who controls both the page flush order and crashes
//! mid-fsync; etcd's WAL makes the same trade with CRC32.
//!
//! Format ([`super::format`]): the database is stamped when created and
//! checked when opened, and every entry carries its format in front; the
//! first and last entries are checked at open, the others when read.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::codec::{decode, encode};
use super::format::{ClusterFormat, decode_stamped, encode_stamped, stamp_of};
use super::log_writer::{self, Change, LOG, Pending, Then, Write};
use super::{EntryOf, LogIdOf, TypeConfig, VoteOf, io_error};
use crate::metrics::RaftMetrics;

/// "vote", "purged", "committed" -> encoded value.
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "purged";
const KEY_COMMITTED: &str = "committed";

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    /// Where the database is, for messages.
    path: Arc<Path>,
    /// The cluster's format: what new entries are written in.
    format: ClusterFormat,
    /// The database's stamp: the newest format of any entry it holds.
    stamped: Arc<AtomicU32>,
    /// Where fsynced commits are timed.
    metrics: RaftMetrics,
    /// Appended entries the writer has not committed yet.
    pending: Pending,
    /// The writer's queue, started by the first write that goes through
    /// it (opening is synchronous and may happen outside a runtime).
    writer: Arc<OnceLock<mpsc::Sender<Write>>>,
}

impl LogStore {
    /// Opens (or creates) the log database at `path`, writing entries in
    /// the cluster's `format`; refuses a database of a format this build
    /// does not read.
    pub fn open(path: &Path, format: ClusterFormat) -> io::Result<Self> {
        let db = super::open_database(path, "log")?;
        let stamped = super::format::stamp_or_check(&db, path)?;
        let store = Self {
            db: Arc::new(db),
            path: path.into(),
            format,
            stamped: Arc::new(AtomicU32::new(stamped)),
            metrics: RaftMetrics::default(),
            pending: Pending::default(),
            writer: Arc::new(OnceLock::new()),
        };
        // Create the tables so readers never meet a missing one.
        store.write("create log tables", Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(LOG_META)?;
            Ok(())
        })?;
        store.check_entry_formats()?;
        Ok(store)
    }

    /// Times every fsynced commit in `metrics` from now on.
    pub fn with_metrics(mut self, metrics: RaftMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Checks the format of the first and the last entry: a build writes
    /// entries in its own format and refuses to start on a newer one, so
    /// the formats in between lie within theirs.
    fn check_entry_formats(&self) -> io::Result<()> {
        let subject = "check log entry formats";
        let txn = self.db.begin_read().map_err(|e| io_error(subject, e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error(subject, e))?;
        for end in [
            table.first().map_err(|e| io_error(subject, e))?,
            table.last().map_err(|e| io_error(subject, e))?,
        ]
        .into_iter()
        .flatten()
        {
            let (index, bytes) = end;
            stamp_of(|| self.entry_subject(index.value()), bytes.value())?;
        }
        Ok(())
    }

    /// Names entry `index` in messages.
    fn entry_subject(&self, index: u64) -> String {
        format!("log entry {index} in {}", self.path.display())
    }

    /// Runs `body` in one write transaction, committed with `durability`.
    fn write<T>(
        &self,
        subject: &str,
        durability: Durability,
        body: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> io::Result<T> {
        let mut txn = self.db.begin_write().map_err(|e| io_error(subject, e))?;
        txn.set_durability(durability)
            .map_err(|e| io_error(subject, e))?;
        let value = body(&txn).map_err(|e| io_error(subject, e))?;
        let started = std::time::Instant::now();
        txn.commit().map_err(|e| io_error(subject, e))?;
        if matches!(durability, Durability::Immediate) {
            self.metrics.log_synced(started.elapsed());
        }
        Ok(value)
    }

    /// Queues `write` for the log's writer, started on first use. Only
    /// Raft writes, one call at a time (`&mut self`), so the first use
    /// starts one writer.
    async fn queue(&self, write: Write) -> io::Result<()> {
        let writer = match self.writer.get() {
            Some(writer) => writer,
            None => {
                let started = log_writer::spawn(log_writer::Target {
                    db: Arc::downgrade(&self.db),
                    pending: self.pending.clone(),
                    stamped: self.stamped.clone(),
                    metrics: self.metrics.clone(),
                })
                .map_err(|e| io_error("start the log's writer", e))?;
                self.writer.get_or_init(|| started)
            }
        };
        writer
            .send(write)
            .await
            .map_err(|_| io_error("queue a log write", "the log's writer has stopped"))
    }

    /// Queues `change` and, if `durable`, waits until it is fsynced.
    async fn change(
        &self,
        subject: &'static str,
        durable: bool,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send + 'static,
    ) -> io::Result<()> {
        let (done, committed) = if durable {
            let (done, committed) = oneshot::channel();
            (Some(done), Some(committed))
        } else {
            (None, None)
        };
        self.queue(Write {
            change: Change::Other {
                subject,
                change: Box::new(change),
            },
            durable,
            then: Then::Done(done),
        })
        .await?;
        match committed {
            Some(committed) => committed
                .await
                .map_err(|_| io_error(subject, "the log's writer has stopped"))?,
            None => Ok(()),
        }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let subject = format!("read log {key}");
        let txn = self.db.begin_read().map_err(|e| io_error(&subject, e))?;
        let table = txn
            .open_table(LOG_META)
            .map_err(|e| io_error(&subject, e))?;
        match table.get(key).map_err(|e| io_error(&subject, e))? {
            Some(bytes) => Ok(Some(decode(&format!("log {key}"), bytes.value())?)),
            None => Ok(None),
        }
    }
}

/// The oldest format that carries `entry` (see `Request::format_needed`).
fn format_needed(entry: &EntryOf<TypeConfig>) -> u32 {
    match &entry.payload {
        openraft::EntryPayload::Normal(request) => request.format_needed(),
        _ => super::format::FORMAT_OLDEST,
    }
}

fn range_bounds(range: &impl RangeBounds<u64>) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let subject = format!("read log entries {range:?}");
        // Pending entries first, then the database: an entry the writer
        // commits in between is then in one or the other (it leaves the
        // pending ones only once committed).
        let pending = self.pending.range(range_bounds(&range));
        let on_disk_end = match pending.first() {
            Some(first) => Bound::Excluded(first.index()),
            None => range.end_bound().cloned(),
        };
        let txn = self.db.begin_read().map_err(|e| io_error(&subject, e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error(&subject, e))?;
        let mut entries = Vec::new();
        for row in table
            .range::<u64>((range.start_bound().cloned(), on_disk_end))
            .map_err(|e| io_error(&subject, e))?
        {
            let (index, bytes) = row.map_err(|e| io_error(&subject, e))?;
            entries.push(decode_stamped(
                || self.entry_subject(index.value()),
                bytes.value(),
            )?);
        }
        entries.extend(pending);
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.read_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogIdOf<TypeConfig>> = self.read_meta(KEY_PURGED)?;
        if let Some(last) = self.pending.last() {
            return Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: Some(last),
            });
        }
        let subject = "read last log entry";
        let txn = self.db.begin_read().map_err(|e| io_error(subject, e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error(subject, e))?;
        let last = match table.last().map_err(|e| io_error(subject, e))? {
            Some((index, bytes)) => {
                let entry: EntryOf<TypeConfig> =
                    decode_stamped(|| self.entry_subject(index.value()), bytes.value())?;
                Some(entry.log_id())
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = encode(vote)?;
        self.change("write vote", true, move |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_VOTE, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let bytes = encode(&committed)?;
        // Not fsynced, nor waited for: see the module comment.
        self.change("write committed log id", false, move |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_COMMITTED, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .read_meta::<Option<LogIdOf<TypeConfig>>>(KEY_COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cluster_format = self.format.get();
        let mut newest = 0;
        let mut last = None;
        let (encoded, kept): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .map(|entry| {
                let format = cluster_format.max(format_needed(&entry));
                newest = newest.max(format);
                last = Some(entry.log_id());
                Ok(((entry.index(), encode_stamped(format, &entry)?), entry))
            })
            .collect::<io::Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let Some(last) = last else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        let restamp = (newest > self.stamped.load(Ordering::Acquire)).then_some(newest);
        // Readable from now on; on disk once the writer says so.
        self.pending.insert(kept);
        self.queue(Write {
            change: Change::Append {
                entries: encoded,
                restamp,
            },
            // PLANTED BUG ack-before-fsync: the append is acknowledged unsynced.
            durable: !spike_sdk::planted!(AckBeforeFsync),
            then: Then::Flushed {
                last,
                restamp,
                flushed: callback,
            },
        })
        .await
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index() + 1);
        self.pending.cut_from(first_removed);
        self.change("truncate log", true, move |txn| {
            let mut table = txn.open_table(LOG)?;
            table.retain_in(first_removed.., |_, _| false)?;
            Ok(())
        })
        .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        let last_removed = log_id.index();
        self.pending.cut_through(last_removed);
        // One transaction: the purge mark and the deletion land together.
        self.change("purge log", true, move |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=last_removed, |_, _| false)?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::blank_ent;

    use super::*;

    /// Writes `entries` (index, stored bytes) straight into the log table.
    fn put_raw(store: &LogStore, entries: &[(u64, Vec<u8>)]) {
        store
            .write("test entries", Durability::Immediate, |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in entries {
                    table.insert(*index, bytes.as_slice())?;
                }
                Ok(())
            })
            .expect("write entries");
    }

    fn stored(index: u64) -> Vec<u8> {
        encode_stamped(1, &blank_ent::<TypeConfig>(1, 1, index)).expect("encodes")
    }

    /// `stored(index)` as a build of format 99 would have stamped it.
    fn stored_as_format_99(index: u64) -> Vec<u8> {
        let mut bytes = stored(index);
        bytes[0] = 99;
        bytes
    }

    #[tokio::test]
    async fn an_entry_of_an_unknown_format_is_refused_when_read_and_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.redb");
        let mut store = LogStore::open(&path, ClusterFormat::new(1)).expect("open");

        tracing::info!("--- a format-99 entry between two of ours: open passes, reading it fails");
        put_raw(
            &store,
            &[(1, stored(1)), (2, stored_as_format_99(2)), (3, stored(3))],
        );
        assert_eq!(
            store.try_get_log_entries(1..2).await.expect("ours").len(),
            1
        );
        let error = store
            .try_get_log_entries(1..4)
            .await
            .expect_err("format 99");
        assert_eq!(
            error.to_string(),
            format!(
                "log entry 2 in {} is in on-disk format 99; this build reads formats 1, 2, 3",
                path.display()
            )
        );
        drop(store);
        let store = LogStore::open(&path, ClusterFormat::new(1)).expect("first and last are ours");

        tracing::info!("--- a format-99 last entry: the log is refused at open");
        put_raw(&store, &[(4, stored_as_format_99(4))]);
        drop(store);
        let error = LogStore::open(&path, ClusterFormat::new(1))
            .err()
            .expect("refused");
        assert!(
            error.to_string().starts_with(&format!(
                "log entry 4 in {} is in on-disk format 99",
                path.display()
            )),
            "{error}"
        );
    }

    /// Appends `entries` and returns the wait for their flush.
    async fn append(
        store: &mut LogStore,
        entries: Vec<EntryOf<TypeConfig>>,
    ) -> impl std::future::Future<Output = io::Result<()>> + use<> {
        use openraft::type_config::TypeConfigExt;
        let (flushed, on_disk) = TypeConfig::oneshot();
        store
            .append(entries, IOFlushed::signal(flushed))
            .await
            .expect("queued");
        async move { on_disk.await.expect("the writer answers") }
    }

    fn terms(entries: &[EntryOf<TypeConfig>]) -> Vec<(u64, u64)> {
        entries
            .iter()
            .map(|entry| (entry.index(), entry.log_id().leader_id.term))
            .collect()
    }

    /// On the multi-threaded runtime of a real replica, where the writer
    /// commits on a blocking thread while Raft goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appended_entries_are_readable_at_once_and_on_disk_once_flushed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.redb");
        let mut store = LogStore::open(&path, ClusterFormat::new(1)).expect("open");

        tracing::info!("--- 200 appends queued without waiting: all readable at once, in order");
        let mut flushes = Vec::new();
        for index in 1..=200 {
            flushes.push(append(&mut store, vec![blank_ent::<TypeConfig>(1, 1, index)]).await);
        }
        let read = store.try_get_log_entries(1..=200).await.expect("read");
        assert_eq!(
            read.iter().map(|entry| entry.index()).collect::<Vec<_>>(),
            (1..=200).collect::<Vec<_>>()
        );
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|id| id.index()), Some(200));
        for flushed in flushes {
            flushed.await.expect("flushed");
        }
        assert_eq!(
            store.pending.last(),
            None,
            "flushed entries leave the pending set"
        );

        tracing::info!(
            "--- truncation cuts pending entries at once; a new term's entries replace them"
        );
        let old = append(&mut store, vec![blank_ent::<TypeConfig>(1, 1, 201)]).await;
        store
            .truncate_after(Some(blank_ent::<TypeConfig>(1, 1, 199).log_id()))
            .await
            .expect("truncate");
        old.await
            .expect("the older append still lands, then is cut");
        let new = append(
            &mut store,
            vec![
                blank_ent::<TypeConfig>(2, 1, 200),
                blank_ent::<TypeConfig>(2, 1, 201),
            ],
        )
        .await;
        assert_eq!(
            terms(&store.try_get_log_entries(199..).await.expect("read")),
            vec![(199, 1), (200, 2), (201, 2)]
        );
        new.await.expect("flushed");
        store
            .save_committed(Some(blank_ent::<TypeConfig>(2, 1, 201).log_id()))
            .await
            .expect("committed");
        store
            .purge(blank_ent::<TypeConfig>(1, 1, 100).log_id())
            .await
            .expect("purge");

        tracing::info!("--- reopened: what was flushed is on disk");
        drop(store);
        let mut store = LogStore::open(&path, ClusterFormat::new(1)).expect("reopen");
        assert_eq!(
            terms(&store.try_get_log_entries(..).await.expect("read"))[..2],
            [(101, 1), (102, 1)]
        );
        assert_eq!(
            terms(&store.try_get_log_entries(199..).await.expect("read")),
            vec![(199, 1), (200, 2), (201, 2)]
        );
        assert_eq!(
            store
                .read_committed()
                .await
                .expect("committed")
                .map(|id| id.index()),
            Some(201)
        );
    }

    #[test]
    fn a_log_from_before_format_stamps_is_refused_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.redb");
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("write");
        txn.open_table(LOG)
            .expect("log")
            .insert(1, [0u8, 1].as_slice())
            .expect("insert");
        txn.commit().expect("commit");
        drop(db);
        let error = LogStore::open(&path, ClusterFormat::new(1))
            .err()
            .expect("refused");
        assert_eq!(
            error.to_string(),
            format!(
                "{} was written before on-disk format stamps existed; this build reads formats 1, 2, 3",
                path.display()
            )
        );
    }
}
