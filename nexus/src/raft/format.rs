//! The on-disk format: one version number, [`FORMAT_VERSION`], for
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
//! snapshot layout) raises [`FORMAT_VERSION`] by one. The build that raises
//! it lists in [`FORMATS_READ`] every version it still decodes, and keeps
//! those decoders for as long as a rolling upgrade may bring it such bytes.

use std::fmt;
use std::io;
use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{self, CodecError};
use super::io_error;

/// The format this build writes.
pub const FORMAT_VERSION: u32 = 1;
/// The formats this build reads.
pub const FORMATS_READ: &[u32] = &[FORMAT_VERSION];

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

/// Stamps the database at `path` with [`FORMAT_VERSION`] if it is new
/// (holds no table at all), or checks its stamp if it is not.
pub fn stamp_or_check(db: &Database, path: &Path) -> io::Result<()> {
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
        return Ok(check(found, || path.display().to_string())?);
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
    txn.open_table(FORMAT)
        .map_err(|e| io_error(&subject, e))?
        .insert(STAMP_KEY, FORMAT_VERSION)
        .map_err(|e| io_error(&subject, e))?;
    txn.commit().map_err(|e| io_error(&subject, e))
}

/// Encodes `value` with [`FORMAT_VERSION`] in front, as a stored log entry.
pub fn encode_stamped<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode_after(codec::encode(&FORMAT_VERSION)?, value)
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
        assert_eq!(stamp, Some(FORMAT_VERSION));
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
                "{} is in on-disk format 99; this build reads format 1",
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
                "{} was written before on-disk format stamps existed; this build reads format 1",
                path.display()
            )
        );
    }

    #[test]
    fn a_stamped_value_of_an_unknown_format_is_refused() {
        let bytes = encode_stamped(&"entry".to_owned()).expect("encodes");
        assert_eq!(bytes[0], 1, "format 1 is one leading byte");
        let subject = || "log entry 3 in log.redb".to_owned();
        assert_eq!(
            decode_stamped::<String>(subject, &bytes).expect("decodes"),
            "entry"
        );
        let mut future = bytes.clone();
        future[0] = 2;
        let error = decode_stamped::<String>(subject, &future).expect_err("format 2");
        assert_eq!(
            error.to_string(),
            "log entry 3 in log.redb is in on-disk format 2; this build reads format 1"
        );
        assert!(stamp_of(subject, &future).is_err());
    }
}
