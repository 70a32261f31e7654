//! The on-disk format: one version number for
//! everything a replica keeps across restarts or hands over as bytes:
//!
//! - `log.redb`: the tables `log` and `log_meta`, their keys, and the
//!   encoding ([`super::codec`]) of entries (Raft's entry around our
//!   `Request`, so every command and response type), votes and log ids;
//! - `state.redb`: the tables `meta`, `secrets`, `policies`, `policy_ids`,
//!   `sessions` and `session_expiry`, their keys and records (not
//!   `session_owners`, which is derived and rebuilt at every open);
//! - snapshot files and backups (a backup is a snapshot file): layout,
//!   header and rows.
//!
//! Where it is written: in a `format` table of each database, stamped when
//! the database is created; in front of every stored log entry (a varint),
//! so a log that spans an upgrade says which entries are which; and in the
//! header of every snapshot and backup, after the magic. A replica checks
//! the database stamps and its current snapshot when it starts, and each
//! entry, snapshot and backup when it reads one. A format it does not read
//! is refused with one line naming the file, the format found and the
//! formats this build reads: a replica never runs on bytes it might
//! misread.
//!
//! Bumping: any change an older build would misread (a new command or
//! response variant, a field in a record, a table, a key layout, the
//! snapshot layout) raises [`FORMAT_NEWEST`] by one. The build that raises
//! it lists in [`FORMATS_READ`] every version it still decodes, and keeps
//! those decoders for as long as a rolling upgrade may bring it such bytes.
//!
//! Which format is written is the cluster's choice, not the build's: the
//! *cluster format* ([`ClusterFormat`]) is replicated through Raft and
//! starts at [`FORMAT_OLDEST`]. A build writes every entry, snapshot and
//! database stamp in the cluster format (or, for the one entry that
//! switches it, the format that entry needs), so until the switch an older
//! build still reads everything this one wrote: a replica can be rolled
//! back. The leader switches the cluster to a newer format only once every
//! member reads it (`cluster::version`); from then on the databases carry
//! the new stamp and an older build refuses them with one line naming the
//! file and the format, as above.
//!
//! Formats:
//! - 1: the first release (0.1.0).
//! - 2: adds the replicated cluster format itself: the
//!   `Membership(SwitchFormat)` command and the state's `format` key.
//! - 3: the commands of 0.3.0's self-running cluster (each says so where
//!   it is declared, and `Request::format_needed` lists them). Until the
//!   cluster writes format 3, the leader refuses them
//!   (`LeaderError::FormatNotYet`).
//!   In `state.redb`, the `meta` table's `non_voters` key (the read
//!   replicas `Membership(SetNonVoter)` records).

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CodecError};
use super::io_error;

/// The newest format this build reads and can write.
pub const FORMAT_NEWEST: u32 = 3;
/// The oldest format this build reads and can write: a new cluster starts
/// in it, so replicas of older builds can join until the switch.
pub const FORMAT_OLDEST: u32 = 1;
/// The formats this build reads (and writes, when the cluster runs them).
pub const FORMATS_READ: &[u32] = &[1, 2, 3];
const _: () = assert!(
    FORMATS_READ[0] == FORMAT_OLDEST && FORMATS_READ[FORMATS_READ.len() - 1] == FORMAT_NEWEST
);

/// The cluster's format, as this replica last applied it: shared by the
/// log store, the state machine and the network of one replica. Only goes
/// up.
#[derive(Debug, Clone)]
pub struct ClusterFormat(Arc<AtomicU32>);

impl ClusterFormat {
    /// A handle starting at `format`.
    pub fn new(format: u32) -> Self {
        Self(Arc::new(AtomicU32::new(format)))
    }

    /// The format to write now.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Raises the format to `format` (never lowers it).
    pub fn raise_to(&self, format: u32) {
        self.0.fetch_max(format, Ordering::AcqRel);
    }
}

/// The database's stamp, under [`STAMP_KEY`].
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");
const STAMP_KEY: &str = "version";

/// Bytes of a format this build does not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Written in a format this build does not know (a newer build's, or
    /// one retired since).
    #[error(
        "{subject} is in on-disk format {found}; this build reads {}",
        Readable
    )]
    Unknown {
        /// The file (and the entry in it) that was read.
        subject: String,
        /// The format it carries.
        found: u32,
    },
    /// Written by a build from before format stamps existed.
    #[error(
        "{subject} was written before on-disk format stamps existed; this build reads {}",
        Readable
    )]
    Unstamped {
        /// The file that was read.
        subject: String,
    },
}

impl From<FormatError> for io::Error {
    fn from(error: FormatError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, error)
    }
}

/// "format 1", or "formats 1, 2".
struct Readable;

impl fmt::Display for Readable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = if FORMATS_READ.len() == 1 { "" } else { "s" };
        write!(f, "format{plural} ")?;
        for (position, version) in FORMATS_READ.iter().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{version}")?;
        }
        Ok(())
    }
}

/// Accepts `found` if this build reads it; `subject` names what carried it.
pub fn check(found: u32, subject: impl FnOnce() -> String) -> Result<(), FormatError> {
    if FORMATS_READ.contains(&found) {
        Ok(())
    } else {
        Err(FormatError::Unknown {
            subject: subject(),
            found,
        })
    }
}

/// Stamps the database at `path` with [`FORMAT_OLDEST`] if it is new
/// (holds no table at all: the cluster's format is not known yet), or
/// checks its stamp if it is not; returns the stamp.
pub fn stamp_or_check(db: &Database, path: &Path) -> io::Result<u32> {
    let subject = format!("check the format of {}", path.display());
    let txn = db.begin_read().map_err(|e| io_error(&subject, e))?;
    let stamp = match txn.open_table(FORMAT) {
        Ok(table) => table
            .get(STAMP_KEY)
            .map_err(|e| io_error(&subject, e))?
            .map(|stamp| stamp.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(io_error(&subject, e)),
    };
    if let Some(found) = stamp {
        check(found, || path.display().to_string())?;
        return Ok(found);
    }
    let created_before = txn
        .list_tables()
        .map_err(|e| io_error(&subject, e))?
        .next()
        .is_some();
    drop(txn);
    if created_before {
        return Err(FormatError::Unstamped {
            subject: path.display().to_string(),
        }
        .into());
    }
    let subject = format!("stamp the format of {}", path.display());
    let txn = db.begin_write().map_err(|e| io_error(&subject, e))?;
    restamp(&txn, FORMAT_OLDEST).map_err(|e| io_error(&subject, e))?;
    txn.commit().map_err(|e| io_error(&subject, e))?;
    Ok(FORMAT_OLDEST)
}

/// Stamps the database of `txn` with `format` (when the cluster switched to
/// it), in the transaction that first writes bytes of that format.
pub fn restamp(txn: &redb::WriteTransaction, format: u32) -> Result<(), redb::Error> {
    txn.open_table(FORMAT)?.insert(STAMP_KEY, format)?;
    Ok(())
}

/// Encodes `value` with `format` in front, as a stored log entry.
pub fn encode_stamped<T: Serialize>(format: u32, value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode_after(codec::encode(&format)?, value)
}

/// Decodes what [`encode_stamped`] wrote, refusing a format this build does
/// not read; `subject` names the value and its file.
pub fn decode_stamped<T: DeserializeOwned>(
    subject: impl Fn() -> String,
    bytes: &[u8],
) -> io::Result<T> {
    let (found, rest) = codec::decode_prefix::<u32>(&subject(), bytes)?;
    check(found, &subject)?;
    Ok(codec::decode(&subject(), rest)?)
}

/// The stamp of a value [`encode_stamped`] wrote, without decoding the rest.
pub fn stamp_of(subject: impl Fn() -> String, bytes: &[u8]) -> io::Result<u32> {
    let (found, _) = codec::decode_prefix::<u32>(&subject(), bytes)?;
    check(found, &subject)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(dir: &tempfile::TempDir) -> (Database, std::path::PathBuf) {
        let path = dir.path().join("some.redb");
        (Database::create(&path).expect("create"), path)
    }

    #[test]
    fn a_new_database_is_stamped_and_then_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, path) = database(&dir);
        stamp_or_check(&db, &path).expect("stamped");
        stamp_or_check(&db, &path).expect("accepted");
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(FORMAT).expect("format table");
        let stamp = table
            .get(STAMP_KEY)
            .expect("get")
            .map(|stamp| stamp.value());
        assert_eq!(
            stamp,
            Some(FORMAT_OLDEST),
            "a new database waits for the cluster's format"
        );
    }

    #[test]
    fn a_database_of_an_unknown_format_is_refused_naming_file_and_formats() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, path) = database(&dir);
        let txn = db.begin_write().expect("write");
        txn.open_table(FORMAT)
            .expect("table")
            .insert(STAMP_KEY, 99)
            .expect("insert");
        txn.commit().expect("commit");
        let error = stamp_or_check(&db, &path).expect_err("format 99");
        assert_eq!(
            error.to_string(),
            format!(
                "{} is in on-disk format 99; this build reads formats 1, 2, 3",
                path.display()
            )
        );
    }

    #[test]
    fn a_database_from_before_format_stamps_is_refused_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, path) = database(&dir);
        let legacy: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
        let txn = db.begin_write().expect("write");
        txn.open_table(legacy).expect("table");
        txn.commit().expect("commit");
        let error = stamp_or_check(&db, &path).expect_err("no stamp");
        assert_eq!(
            error.to_string(),
            format!(
                "{} was written before on-disk format stamps existed; this build reads formats 1, 2, 3",
                path.display()
            )
        );
    }

    #[test]
    fn a_stamped_value_of_an_unknown_format_is_refused() {
        let bytes = encode_stamped(1, &"entry".to_owned()).expect("encodes");
        assert_eq!(bytes[0], 1, "format 1 is one leading byte");
        let subject = || "log entry 3 in log.redb".to_owned();
        assert_eq!(
            decode_stamped::<String>(subject, &bytes).expect("decodes"),
            "entry"
        );
        let mut future = bytes.clone();
        future[0] = 9;
        let error = decode_stamped::<String>(subject, &future).expect_err("format 9");
        assert_eq!(
            error.to_string(),
            "log entry 3 in log.redb is in on-disk format 9; this build reads formats 1, 2, 3"
        );
        assert!(stamp_of(subject, &future).is_err());
    }
}
