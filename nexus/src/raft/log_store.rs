//! The Raft log and vote in redb.
//!
//! Durability contract: `save_vote`, `append`, `truncate_after` and `purge`
//! return (and `append` signals its flush) only after an fsynced redb
//! commit, so a vote or entry Raft was told about survives a crash. The
//! committed log id is written without an fsync: it only spares a restarted
//! replica some waiting, so losing it is harmless, and the next fsynced
//! commit persists it anyway. All writes go through `&mut self`, so they
//! land in the order openraft issued them.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{decode, encode};
use super::format::{ClusterFormat, decode_stamped, encode_stamped, stamp_of};
use super::{EntryOf, LogIdOf, TypeConfig, VoteOf, io_error};
use crate::metrics::RaftMetrics;

/// Log index -> encoded entry.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
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
        let txn = self.db.begin_read().map_err(|e| io_error(&subject, e))?;
        let table = txn.open_table(LOG).map_err(|e| io_error(&subject, e))?;
        let mut entries = Vec::new();
        for row in table
            .range::<u64>(range_bounds(&range))
            .map_err(|e| io_error(&subject, e))?
        {
            let (index, bytes) = row.map_err(|e| io_error(&subject, e))?;
            entries.push(decode_stamped(
                || self.entry_subject(index.value()),
                bytes.value(),
            )?);
        }
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
        self.write("write vote", Durability::Immediate, |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_VOTE, bytes.as_slice())?;
            Ok(())
        })
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let bytes = encode(&committed)?;
        // Not fsynced: see the module comment.
        self.write("write committed log id", Durability::None, |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_COMMITTED, bytes.as_slice())?;
            Ok(())
        })
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
        let encoded = entries
            .into_iter()
            .map(|entry| {
                let format = cluster_format.max(format_needed(&entry));
                newest = newest.max(format);
                Ok((entry.index(), encode_stamped(format, &entry)?))
            })
            .collect::<io::Result<Vec<_>>>()?;
        // The first entry of a newer format stamps the database with it,
        // in the same commit: an older build then refuses the whole log
        // at start rather than at that entry.
        let restamp = (newest > self.stamped.load(Ordering::Acquire)).then_some(newest);
        let store = self.clone();
        // redb blocks on fsync; keep it off the async workers.
        // PLANTED BUG ack-before-fsync: the append is acknowledged unsynced.
        let durability = if spike_sdk::planted!(AckBeforeFsync) {
            Durability::None
        } else {
            Durability::Immediate
        };
        let outcome = super::run_blocking("append log entries", move || {
            store.write("append log entries", durability, |txn| {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
                if let Some(format) = restamp {
                    super::format::restamp(txn, format)?;
                }
                Ok(())
            })
        })
        .await?;
        if let (Ok(()), Some(format)) = (&outcome, restamp) {
            self.stamped.fetch_max(format, Ordering::AcqRel);
        }
        match outcome {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.io_completed(Err(io::Error::new(error.kind(), error.to_string())));
                Err(error)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let first_removed = last_log_id.map_or(0, |log_id| log_id.index() + 1);
        self.write("truncate log", Durability::Immediate, |txn| {
            let mut table = txn.open_table(LOG)?;
            table.retain_in(first_removed.., |_, _| false)?;
            Ok(())
        })
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        let last_removed = log_id.index();
        // One transaction: the purge mark and the deletion land together.
        self.write("purge log", Durability::Immediate, |txn| {
            txn.open_table(LOG_META)?
                .insert(KEY_PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=last_removed, |_, _| false)?;
            Ok(())
        })
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
