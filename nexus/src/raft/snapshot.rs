//! Snapshot files: the whole state machine as a stream of rows, built from
//! one consistent read transaction and installed in one write transaction,
//! never held in memory as a whole.
//!
//! Layout: `SPKSNAPV ‖ format (u32) ‖ meta length (u32) ‖ meta ‖ tables ‖
//! sha256`, where the format is the on-disk format ([`super::format`]) of
//! everything after it, and each table is a run of `1 ‖ key length (u32) ‖
//! key ‖ value length (u32) ‖ value` rows closed by a `0` byte, in the
//! order meta, secrets, policies, sessions, session expiry (the policy id
//! index is rebuilt from the policies). Numbers are big-endian. The
//! trailing SHA-256 covers every byte before it and is checked before an
//! installation touches the tables; the format is checked before that, so
//! a file of another format is refused as such.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use redb::{ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};
use spike_sdk::crypto::aead;
use spike_sdk::domain::{PolicyName, SecretPath};

use super::codec::{decode, encode};
use super::format::{self, FORMAT_OLDEST, FormatError};
use super::{SnapshotMetaOf, TypeConfig, io_error};
use crate::state::secret::SecretRecord;
use crate::state::store::{
    self, ClusterMeta, CustomMetadataRecord, META, POLICIES, POLICIES_MAX, PolicyRecord,
    SECRET_METADATA, SECRETS, SESSION_EXPIRY, SESSIONS,
};

/// Starts every snapshot: a format number follows.
const MAGIC: &[u8; 8] = b"SPKSNAPV";
/// Started the snapshots of builds from before format stamps, whose
/// layout had no format number; recognized only to say so.
const UNSTAMPED_MAGIC: &[u8; 8] = b"SPKSNAP1";
/// Magic and format.
const HEADER_BYTES: usize = MAGIC.len() + 4;
/// Largest key or value a snapshot row may carry (a secret record holds at
/// most its versions' ciphertext).
pub const ROW_PART_MAX_BYTES: u32 = 256 * 1024 * 1024;
/// Largest snapshot metadata accepted.
const META_MAX_BYTES: u32 = 16 * 1024 * 1024;

/// A snapshot on disk, held open so it stays readable even if a newer one
/// replaces it while it is being sent.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Where it was when opened.
    pub path: PathBuf,
    /// The open file.
    pub file: File,
}

impl SnapshotFile {
    /// Opens `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            path: path.to_owned(),
            file: File::open(path)
                .map_err(|e| io_error(&format!("open snapshot {}", path.display()), e))?,
        })
    }

    /// Its size in bytes.
    pub fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// A reader from the start of the file.
    pub fn reader(&self) -> io::Result<File> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file)
    }
}

/// Hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    digest: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.digest.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a snapshot of `txn` (a consistent view) with `meta` to `path`,
/// fsynced.
pub fn write(
    txn: &redb::ReadTransaction,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
) -> io::Result<()> {
    let subject = format!("write snapshot {}", path.display());
    let file = File::create(path).map_err(|e| io_error(&subject, e))?;
    let mut out = HashingWriter {
        inner: BufWriter::new(file),
        digest: Sha256::new(),
    };
    out.write_all(MAGIC)?;
    // The cluster's format when this state was applied, so a replica of an
    // older build can take the snapshot until the cluster switched.
    let format = cluster_format_of(txn)?;
    out.write_all(&format.to_be_bytes())?;
    write_part(&mut out, &encode(meta)?)?;
    dump_str_table(txn, META, &mut out)?;
    if spike_sdk::planted!(SnapshotDropsNewestVersion) {
        dump_secrets_without_newest_version(txn, &mut out)?;
    } else {
        dump_str_table(txn, SECRETS, &mut out)?;
    }
    dump_str_table(txn, POLICIES, &mut out)?;
    // Numeric keys as big-endian bytes.
    let sessions = open_read(txn, SESSIONS)?;
    if let Some(table) = sessions {
        for row in table.iter().map_err(|e| io_error(&subject, e))? {
            let (key, value) = row.map_err(|e| io_error(&subject, e))?;
            write_row(&mut out, &key.value().to_be_bytes(), value.value())?;
        }
    }
    out.write_all(&[0])?;
    if let Some(table) = open_read(txn, SESSION_EXPIRY)? {
        for row in table.iter().map_err(|e| io_error(&subject, e))? {
            let (key, _) = row.map_err(|e| io_error(&subject, e))?;
            let (last_used, client_id) = key.value();
            let mut bytes = last_used.to_be_bytes().to_vec();
            bytes.extend_from_slice(&client_id.to_be_bytes());
            write_row(&mut out, &bytes, &[])?;
        }
    }
    out.write_all(&[0])?;
    if format >= CUSTOM_METADATA_FORMAT {
        dump_str_table(txn, SECRET_METADATA, &mut out)?;
    }
    let digest = out.digest.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&digest)?;
    let file = inner
        .into_inner()
        .map_err(|e| io_error(&subject, e.error()))?;
    file.sync_all().map_err(|e| io_error(&subject, e))
}

/// The cluster format the state in `txn` records (1 before any switch).
fn cluster_format_of(txn: &redb::ReadTransaction) -> io::Result<u32> {
    let Some(table) = open_read(txn, META)? else {
        return Ok(FORMAT_OLDEST);
    };
    store::cluster_format_in(&table).map_err(|e| io_error("read the cluster format", e))
}

fn open_read<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: TableDefinition<K, V>,
) -> io::Result<Option<redb::ReadOnlyTable<K, V>>> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io_error("open table for snapshot", e)),
    }
}

fn dump_str_table(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Some(table) = open_read(txn, table)? {
        for row in table
            .iter()
            .map_err(|e| io_error("read table for snapshot", e))?
        {
            let (key, value) = row.map_err(|e| io_error("read table for snapshot", e))?;
            write_row(out, key.value().as_bytes(), value.value())?;
        }
    }
    out.write_all(&[0])
}

/// PLANTED BUG snapshot-drops-newest-version: the secrets table with each
/// secret's newest version left out (and its current version moved back).
fn dump_secrets_without_newest_version(
    txn: &redb::ReadTransaction,
    out: &mut impl Write,
) -> io::Result<()> {
    if let Some(table) = open_read(txn, SECRETS)? {
        for row in table
            .iter()
            .map_err(|e| io_error("read table for snapshot", e))?
        {
            let (key, value) = row.map_err(|e| io_error("read table for snapshot", e))?;
            let mut record: SecretRecord = decode("secret", value.value())?;
            record.versions.pop_last();
            record.current_version = record.versions.keys().next_back().copied().unwrap_or(0);
            write_row(out, key.value().as_bytes(), &encode(&record)?)?;
        }
    }
    out.write_all(&[0])
}

fn write_part(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let length =
        u32::try_from(bytes.len()).map_err(|_| io::Error::other("snapshot row part over 4 GiB"))?;
    out.write_all(&length.to_be_bytes())?;
    out.write_all(bytes)
}

fn write_row(out: &mut impl Write, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(&[1])?;
    write_part(out, key)?;
    write_part(out, value)
}

/// Checks the format and then the trailing digest of a snapshot file.
pub fn verify(file: &SnapshotFile) -> io::Result<()> {
    let mut reader = file.reader()?;
    read_format(&mut reader, || file.path.display().to_string())?;
    let length = reader.seek(SeekFrom::End(0))?;
    if length < (HEADER_BYTES + 4 + 32) as u64 {
        return Err(corrupt("shorter than its header and digest"));
    }
    reader.seek(SeekFrom::Start(0))?;
    let mut digest = Sha256::new();
    let mut remaining = length - 32;
    let mut buffer = vec![0u8; 64 * 1024];
    let mut reader = BufReader::new(reader);
    while remaining > 0 {
        let take = remaining.min(buffer.len() as u64) as usize;
        reader.read_exact(&mut buffer[..take])?;
        digest.update(&buffer[..take]);
        remaining -= take as u64;
    }
    let mut expected = [0u8; 32];
    reader.read_exact(&mut expected)?;
    if digest.finalize().as_slice() == expected {
        Ok(())
    } else {
        Err(corrupt("digest mismatch"))
    }
}

fn corrupt(reason: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("snapshot is corrupt: {reason}"),
    )
}

/// Reads the metadata at the head of a snapshot.
pub fn read_meta(file: &SnapshotFile) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let mut reader = BufReader::new(file.reader()?);
    read_header(&mut reader, || file.path.display().to_string()).map(|(_, meta)| meta)
}

/// Refuses the snapshot at `path` if this build does not read its format.
pub fn check_format(path: &Path) -> io::Result<()> {
    let mut file =
        File::open(path).map_err(|e| io_error(&format!("open snapshot {}", path.display()), e))?;
    read_format(&mut file, || path.display().to_string()).map(drop)
}

/// The first format whose snapshots carry the custom metadata table, after
/// the sessions.
const CUSTOM_METADATA_FORMAT: u32 = 3;

/// Reads the magic and the format; `subject` names the file.
fn read_format(reader: &mut impl Read, subject: impl Fn() -> String) -> io::Result<u32> {
    let mut header = [0u8; HEADER_BYTES];
    reader
        .read_exact(&mut header)
        .map_err(|_| corrupt("shorter than its header"))?;
    let (magic, found) = header.split_at(MAGIC.len());
    if magic == UNSTAMPED_MAGIC {
        return Err(FormatError::Unstamped { subject: subject() }.into());
    }
    if magic != MAGIC {
        return Err(corrupt("not a SPIKE snapshot"));
    }
    let mut version = [0u8; 4];
    version.copy_from_slice(found);
    let version = u32::from_be_bytes(version);
    format::check(version, subject)?;
    Ok(version)
}

/// The snapshot's format and metadata.
fn read_header(
    reader: &mut impl Read,
    subject: impl Fn() -> String,
) -> io::Result<(u32, SnapshotMetaOf<TypeConfig>)> {
    let format = read_format(reader, subject)?;
    let meta = read_part(reader, META_MAX_BYTES)?;
    Ok((format, decode("snapshot meta", &meta)?))
}

/// What a part's buffer starts at: a declared length is a claim, so the
/// buffer grows as the bytes arrive and a short input cannot make a reader
/// allocate what it declares.
const PART_INITIAL_BYTES: usize = 64 * 1024;

fn read_part(reader: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > max {
        return Err(corrupt("row larger than the limit"));
    }
    let mut bytes = Vec::with_capacity((length as usize).min(PART_INITIAL_BYTES));
    reader.take(u64::from(length)).read_to_end(&mut bytes)?;
    if bytes.len() != length as usize {
        return Err(corrupt("a row is cut short"));
    }
    Ok(bytes)
}

/// One row of a snapshot table; `None` at the end of the table.
fn read_row(reader: &mut impl Read) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut tag = [0u8; 1];
    reader.read_exact(&mut tag)?;
    match tag[0] {
        0 => Ok(None),
        1 => Ok(Some((
            read_part(reader, ROW_PART_MAX_BYTES)?,
            read_part(reader, ROW_PART_MAX_BYTES)?,
        ))),
        _ => Err(corrupt("bad row tag")),
    }
}

/// Reads past the rest of a table.
fn skip_table(reader: &mut impl Read) -> io::Result<()> {
    while read_row(reader)?.is_some() {}
    Ok(())
}

/// Replaces every state table inside `txn` with the rows of `file`
/// (already verified), returning the snapshot's metadata.
pub fn load(
    txn: &redb::WriteTransaction,
    file: &SnapshotFile,
) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let mut reader = BufReader::new(file.reader()?);
    load_from(txn, &mut reader, || file.path.display().to_string())
}

/// [`load`] from any reader; `name` names the snapshot.
pub(crate) fn load_from(
    txn: &redb::WriteTransaction,
    reader: &mut impl Read,
    name: impl Fn() -> String,
) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let subject = "install snapshot";
    let mut reader = reader;
    let (format, meta) = read_header(&mut reader, name)?;
    for table in [META, SECRETS, POLICIES] {
        txn.delete_table(table).map_err(|e| io_error(subject, e))?;
        let mut table = txn.open_table(table).map_err(|e| io_error(subject, e))?;
        while let Some((key, value)) = read_row(&mut reader)? {
            let key = std::str::from_utf8(&key).map_err(|_| corrupt("key is not UTF-8"))?;
            table
                .insert(key, value.as_slice())
                .map_err(|e| io_error(subject, e))?;
        }
    }
    txn.delete_table(SESSIONS)
        .map_err(|e| io_error(subject, e))?;
    let mut sessions = txn.open_table(SESSIONS).map_err(|e| io_error(subject, e))?;
    while let Some((key, value)) = read_row(&mut reader)? {
        let key: [u8; 16] = key
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("session key length"))?;
        sessions
            .insert(u128::from_be_bytes(key), value.as_slice())
            .map_err(|e| io_error(subject, e))?;
    }
    txn.delete_table(SESSION_EXPIRY)
        .map_err(|e| io_error(subject, e))?;
    let mut expiry = txn
        .open_table(SESSION_EXPIRY)
        .map_err(|e| io_error(subject, e))?;
    while let Some((key, _)) = read_row(&mut reader)? {
        if key.len() != 24 {
            return Err(corrupt("session expiry key length"));
        }
        let mut last_used = [0u8; 8];
        last_used.copy_from_slice(&key[..8]);
        let mut client_id = [0u8; 16];
        client_id.copy_from_slice(&key[8..]);
        expiry
            .insert(
                (
                    u64::from_be_bytes(last_used),
                    u128::from_be_bytes(client_id),
                ),
                (),
            )
            .map_err(|e| io_error(subject, e))?;
    }
    drop((sessions, expiry));
    txn.delete_table(SECRET_METADATA)
        .map_err(|e| io_error(subject, e))?;
    if format >= CUSTOM_METADATA_FORMAT {
        let mut table = txn
            .open_table(SECRET_METADATA)
            .map_err(|e| io_error(subject, e))?;
        while let Some((key, value)) = read_row(&mut reader)? {
            let key = std::str::from_utf8(&key).map_err(|_| corrupt("key is not UTF-8"))?;
            table
                .insert(key, value.as_slice())
                .map_err(|e| io_error(subject, e))?;
        }
    }
    store::rebuild_policy_index(txn).map_err(|e| io_error(subject, e))?;
    store::rebuild_session_owners(txn).map_err(|e| io_error(subject, e))?;
    Ok(meta)
}

/// The newest snapshot file in `dir`, by log index in its name.
pub fn newest(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(index) = index_of(&path)
            && newest.as_ref().is_none_or(|(best, _)| index > *best)
        {
            newest = Some((index, path));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// The file name of the snapshot whose last entry is `index`.
pub fn file_name(index: u64) -> String {
    format!("snapshot-{index:020}.snap")
}

fn index_of(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("snapshot-")?
        .strip_suffix(".snap")?
        .parse()
        .ok()
}

/// Removes every snapshot file in `dir` but `keep`.
pub fn remove_others(dir: &Path, keep: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if index_of(&path).is_some() && path != keep {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// One record of a backup, decoded, with the bytes it took in the file.
#[derive(Debug)]
pub struct BackupRow<K, V> {
    /// Its key: a secret's path or a policy's name.
    pub key: K,
    /// The record.
    pub record: V,
    /// Key and encoded record, in bytes (to cut a restore into pieces).
    pub size_bytes: usize,
}

/// The records a backup (a snapshot file) carries, decoded and checked,
/// held in memory: for tests and the fuzz target.
#[cfg(any(test, feature = "fuzzing"))]
#[derive(Debug)]
pub struct Backup {
    /// The cluster metadata.
    pub cluster: ClusterMeta,
    /// Secrets by path.
    pub secrets: Vec<BackupRow<SecretPath, SecretRecord>>,
    /// Policies by name.
    pub policies: Vec<BackupRow<PolicyName, PolicyRecord>>,
    /// Custom metadata by secret path (format 3 and up).
    pub custom_metadata: Vec<BackupRow<SecretPath, CustomMetadataRecord>>,
}

/// One checked record of a backup, in the order of the file.
#[derive(Debug)]
pub enum BackupRecord {
    /// A secret by path.
    Secret(BackupRow<SecretPath, SecretRecord>),
    /// A policy by name.
    Policy(BackupRow<PolicyName, PolicyRecord>),
    /// Custom metadata by secret path (format 3 and up).
    CustomMetadata(BackupRow<SecretPath, CustomMetadataRecord>),
}

/// Which table of a backup a [`BackupReader`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackupTable {
    Secrets,
    Policies,
    CustomMetadata,
    /// Past the last table, the digest not yet read.
    Done,
    /// The digest read and matched.
    Verified,
}

/// Reads `remaining` bytes of `inner` through a SHA-256, then the 32-byte
/// digest that follows them.
struct DigestedReader<R> {
    inner: R,
    digest: Sha256,
    remaining: u64,
}

impl<R: Read> Read for DigestedReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let take = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        if take == 0 {
            return Ok(0);
        }
        let read = self.inner.read(&mut buffer[..take])?;
        if read == 0 {
            return Err(corrupt("a row is cut short"));
        }
        self.digest.update(&buffer[..read]);
        self.remaining -= read as u64;
        Ok(read)
    }
}

impl<R: Read> DigestedReader<R> {
    /// Reads what is left of the covered bytes and the digest after them:
    /// `Ok(true)` when they match.
    fn digest_matches(&mut self) -> io::Result<bool> {
        io::copy(self, &mut io::sink())?;
        let mut expected = [0u8; 32];
        self.inner
            .read_exact(&mut expected)
            .map_err(|_| corrupt("cut short before its digest"))?;
        Ok(self.digest.clone().finalize().as_slice() == expected)
    }
}

/// A backup read record by record from any reader, in one pass and in
/// memory bounded by one record plus the keys a duplicate is detected by:
/// its format, its digest, and every record, so a restore never stores
/// what the state could trip over: keys that are not valid paths or names,
/// a key twice, an inconsistent secret or one whose versions could not
/// count on, two policies with one id, more policies than the limit, or
/// cluster metadata no cluster could have made. A refusal names the first
/// bad record; a backup whose digest does not match is refused as such,
/// whatever its records say, and the digest is checked when the last
/// record has been read, so a caller acts on records only after
/// [`BackupReader::next_record`] has returned `None`.
pub struct BackupReader<R> {
    input: DigestedReader<R>,
    format: u32,
    cluster: ClusterMeta,
    table: BackupTable,
    paths: BTreeSet<SecretPath>,
    names: BTreeSet<PolicyName>,
    policy_ids: BTreeSet<spike_sdk::domain::PolicyId>,
    custom_metadata_paths: BTreeSet<SecretPath>,
    /// Records read so far, by kind: secrets, policies, custom metadata.
    counts: BackupCounts,
}

/// How many records of each kind a backup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupCounts {
    /// Secrets.
    pub secrets: u64,
    /// Policies.
    pub policies: u64,
    /// Custom metadata records.
    pub custom_metadata: u64,
}

impl<R: Read> BackupReader<R> {
    /// Starts reading the backup of `length` bytes (its digest included)
    /// from `input`: checks the format and reads the header and the
    /// cluster metadata.
    pub fn new(mut input: R, length: u64) -> io::Result<Self> {
        let mut header = [0u8; HEADER_BYTES];
        input
            .read_exact(&mut header)
            .map_err(|_| corrupt("shorter than its header"))?;
        let format = read_format(&mut header.as_slice(), || "backup".to_owned())?;
        let covered = length
            .checked_sub(32)
            .filter(|covered| *covered >= (HEADER_BYTES + 4) as u64)
            .ok_or_else(|| corrupt("shorter than its header and digest"))?;
        let mut digest = Sha256::new();
        digest.update(header);
        let input = DigestedReader {
            inner: input,
            digest,
            remaining: covered - HEADER_BYTES as u64,
        };
        let mut reader = Self {
            input,
            format,
            cluster: ClusterMeta::default(),
            table: BackupTable::Secrets,
            paths: BTreeSet::new(),
            names: BTreeSet::new(),
            policy_ids: BTreeSet::new(),
            custom_metadata_paths: BTreeSet::new(),
            counts: BackupCounts::default(),
        };
        let checked = reader.read_cluster();
        reader.cluster = reader.unless_digest_mismatch(checked)?;
        Ok(reader)
    }

    /// The backup's cluster metadata, taken once every record was read.
    pub fn into_cluster(self) -> ClusterMeta {
        self.cluster
    }

    /// Records read so far.
    pub fn counts(&self) -> BackupCounts {
        self.counts
    }

    /// The next record, or `None` once the last one was read and the
    /// digest matched.
    pub fn next_record(&mut self) -> io::Result<Option<BackupRecord>> {
        let record = self.read_record();
        let record = self.unless_digest_mismatch(record)?;
        if record.is_none() && self.table == BackupTable::Done {
            if !self.input.digest_matches()? {
                return Err(corrupt("digest mismatch"));
            }
            self.table = BackupTable::Verified;
        }
        Ok(record)
    }

    /// `outcome`, unless it failed and the digest does not match: a
    /// damaged file is refused as damaged, not for what its damage reads
    /// as.
    fn unless_digest_mismatch<T>(&mut self, outcome: io::Result<T>) -> io::Result<T> {
        match outcome {
            Ok(value) => Ok(value),
            Err(error) => match self.input.digest_matches() {
                Ok(false) => Err(corrupt("digest mismatch")),
                _ => Err(error),
            },
        }
    }

    fn read_cluster(&mut self) -> io::Result<ClusterMeta> {
        let reader = &mut self.input;
        let _: SnapshotMetaOf<TypeConfig> =
            decode("snapshot meta", &read_part(reader, META_MAX_BYTES)?)?;
        let mut cluster = None;
        let mut meta_keys = BTreeSet::new();
        while let Some((key, value)) = read_row(reader)? {
            if !meta_keys.insert(key.clone()) {
                return Err(refused("metadata", "a key appears twice"));
            }
            if key == store::META_CLUSTER.as_bytes() {
                cluster = Some(decode::<ClusterMeta>("backup cluster meta", &value)?);
            }
        }
        let cluster = cluster.ok_or_else(|| corrupt("the backup has no cluster metadata"))?;
        cluster
            .check_restorable()
            .map_err(|reason| refused("cluster metadata", reason))?;
        Ok(cluster)
    }

    /// The next record, moving past the ends of tables; `None` after the
    /// last table (the digest not yet read).
    fn read_record(&mut self) -> io::Result<Option<BackupRecord>> {
        loop {
            match self.table {
                BackupTable::Secrets => match read_row(&mut self.input)? {
                    Some((key, value)) => return self.secret(&key, &value).map(Some),
                    None => self.table = BackupTable::Policies,
                },
                BackupTable::Policies => match read_row(&mut self.input)? {
                    Some((key, value)) => return self.policy(&key, &value).map(Some),
                    None => {
                        // Sessions are not restored: they belong to the
                        // clients of the cluster the backup came from.
                        skip_table(&mut self.input)?; // sessions
                        skip_table(&mut self.input)?; // session expiry
                        self.table = if self.format >= CUSTOM_METADATA_FORMAT {
                            BackupTable::CustomMetadata
                        } else {
                            BackupTable::Done
                        };
                    }
                },
                BackupTable::CustomMetadata => match read_row(&mut self.input)? {
                    Some((key, value)) => return self.custom_metadata(&key, &value).map(Some),
                    None => self.table = BackupTable::Done,
                },
                BackupTable::Done | BackupTable::Verified => return Ok(None),
            }
        }
    }

    fn secret(&mut self, key: &[u8], value: &[u8]) -> io::Result<BackupRecord> {
        let row: BackupRow<SecretPath, SecretRecord> = backup_row("secret", key, value)?;
        let record = format!("secret {:?}", row.key.as_str());
        if !self.paths.insert(row.key.clone()) {
            return Err(refused(&record, "it appears twice"));
        }
        row.record
            .check_restorable()
            .map_err(|reason| refused(&record, reason))?;
        self.counts.secrets += 1;
        Ok(BackupRecord::Secret(row))
    }

    fn policy(&mut self, key: &[u8], value: &[u8]) -> io::Result<BackupRecord> {
        let row: BackupRow<PolicyName, PolicyRecord> = backup_row("policy", key, value)?;
        let record = format!("policy {:?}", row.key.as_str());
        if !self.names.insert(row.key.clone()) {
            return Err(refused(&record, "it appears twice"));
        }
        if !self.policy_ids.insert(row.record.id) {
            return Err(refused(
                &record,
                format!("policy id {} twice", row.record.id),
            ));
        }
        if row.record.ciphertext.len() > SEALED_POLICY_MAX_BYTES {
            return Err(refused(&record, "its body is larger than a put can write"));
        }
        self.counts.policies += 1;
        if self.counts.policies > POLICIES_MAX {
            return Err(corrupt(&format!(
                "more than the {POLICIES_MAX} policies a cluster holds"
            )));
        }
        Ok(BackupRecord::Policy(row))
    }

    fn custom_metadata(&mut self, key: &[u8], value: &[u8]) -> io::Result<BackupRecord> {
        let row: BackupRow<SecretPath, CustomMetadataRecord> =
            backup_row("custom metadata", key, value)?;
        let record = format!("custom metadata {:?}", row.key.as_str());
        if !self.paths.contains(&row.key) {
            return Err(refused(&record, "the backup has no secret at its path"));
        }
        if !self.custom_metadata_paths.insert(row.key.clone()) {
            return Err(refused(&record, "it appears twice"));
        }
        if row.record.ciphertext.len() > SEALED_CUSTOM_METADATA_MAX_BYTES {
            return Err(refused(&record, "it is larger than a put can write"));
        }
        self.counts.custom_metadata += 1;
        Ok(BackupRecord::CustomMetadata(row))
    }
}

/// Checks the backup of `length` bytes in `input` whole, in one streaming
/// pass ([`BackupReader`]), holding no record longer than it takes to
/// check it: its counts once every record and the digest passed.
pub fn verify_backup(input: impl Read, length: u64) -> io::Result<BackupCounts> {
    let mut reader = BackupReader::new(input, length)?;
    while reader.next_record()?.is_some() {}
    Ok(reader.counts())
}

/// A backup file that passed [`verify_backup_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedBackup {
    /// Its records, by kind.
    pub counts: BackupCounts,
    /// Its length in bytes.
    pub size_bytes: u64,
    /// The SHA-256 of the whole file (its digest included), as
    /// `sha256sum` prints it.
    pub sha256: [u8; 32],
}

/// Hashes everything read through it.
struct HashingReader<R> {
    inner: R,
    digest: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buffer)?;
        self.digest.update(&buffer[..read]);
        Ok(read)
    }
}

/// Checks the backup in `file` (from its start) in one streaming pass,
/// as [`verify_backup`] does, and hashes the whole file on the way.
pub fn verify_backup_file(file: &File) -> io::Result<VerifiedBackup> {
    let size_bytes = file.metadata()?.len();
    let mut file = file;
    file.seek(SeekFrom::Start(0))?;
    let mut hashing = HashingReader {
        inner: BufReader::with_capacity(256 * 1024, file),
        digest: Sha256::new(),
    };
    let counts = verify_backup(&mut hashing, size_bytes)?;
    // Past the digest: anything after it would make a different file.
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(VerifiedBackup {
        counts,
        size_bytes,
        sha256: hashing.digest.finalize().into(),
    })
}

/// Checks and reads a backup held in memory, as [`BackupReader`] does
/// (tests and the fuzz target).
#[cfg(any(test, feature = "fuzzing"))]
pub fn read_backup(bytes: &[u8]) -> io::Result<Backup> {
    let mut reader = BackupReader::new(bytes, bytes.len() as u64)?;
    let (mut secrets, mut policies, mut custom_metadata) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(record) = reader.next_record()? {
        match record {
            BackupRecord::Secret(row) => secrets.push(row),
            BackupRecord::Policy(row) => policies.push(row),
            BackupRecord::CustomMetadata(row) => custom_metadata.push(row),
        }
    }
    Ok(Backup {
        cluster: reader.into_cluster(),
        secrets,
        policies,
        custom_metadata,
    })
}

/// The largest sealed policy body a put can write (a request body, sealed).
const SEALED_POLICY_MAX_BYTES: usize =
    spike_sdk::api::BODY_SIZE_MAX_BYTES + aead::HEADER_LEN + aead::TAG_LEN;

/// The largest sealed custom metadata a put can write: every key and value
/// at its limit, as JSON (each character escaped at most to six bytes, plus
/// quotes, colon and comma), sealed.
const SEALED_CUSTOM_METADATA_MAX_BYTES: usize = 2
    + spike_sdk::api::CUSTOM_METADATA_KEYS_MAX
        * (6 * (spike_sdk::api::CUSTOM_METADATA_KEY_MAX_BYTES
            + spike_sdk::api::CUSTOM_METADATA_VALUE_MAX_BYTES)
            + 6)
    + aead::HEADER_LEN
    + aead::TAG_LEN;

/// A backup refused for one of its records.
fn refused(record: &str, reason: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("backup record {record}: {reason}"),
    )
}

fn backup_row<K, V>(kind: &str, key: &[u8], value: &[u8]) -> io::Result<BackupRow<K, V>>
where
    K: std::str::FromStr<Err = spike_sdk::domain::InvalidValue>,
    V: serde::de::DeserializeOwned,
{
    let text = std::str::from_utf8(key).map_err(|_| {
        refused(
            &format!("{kind} {}", String::from_utf8_lossy(key).escape_debug()),
            "its key is not UTF-8",
        )
    })?;
    let parsed = text
        .parse()
        .map_err(|e| refused(&format!("{kind} {text:?}"), e))?;
    Ok(BackupRow {
        key: parsed,
        record: decode(&format!("backup record {kind} {text:?}"), value)?,
        size_bytes: key.len() + value.len(),
    })
}

/// Restores `backup` into a fresh store as the leader would propose it,
/// then writes to every restored secret and policy, in memory: what the
/// unit tests and the fuzz target hold the validation to (nothing may
/// panic).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn restore_and_write(backup: Backup) -> Result<(), crate::state::store::StoreError> {
    use crate::state::command::{Command, PolicyCommand, Request, RestoreCommand, SecretCommand};
    use crate::state::store::{Batch, storage};
    use spike_sdk::domain::{DataKeyId, PolicyId};

    let db = redb::Database::builder()
        .create_with_backend(redb::backends::InMemoryBackend::new())
        .map_err(|e| storage("create")(e.into()))?;
    let paths: Vec<SecretPath> = backup.secrets.iter().map(|row| row.key.clone()).collect();
    let names: Vec<PolicyName> = backup.policies.iter().map(|row| row.key.clone()).collect();
    let mut commands = vec![
        Command::Restore(RestoreCommand::Begin { restore_id: 1 }),
        Command::Restore(RestoreCommand::Rows {
            restore_id: 1,
            secrets: backup
                .secrets
                .into_iter()
                .map(|row| (row.key, row.record))
                .collect(),
            policies: backup
                .policies
                .into_iter()
                .map(|row| (row.key, row.record))
                .collect(),
        }),
        Command::Restore(RestoreCommand::CustomMetadataRows {
            restore_id: 1,
            rows: backup
                .custom_metadata
                .into_iter()
                .map(|row| (row.key, row.record))
                .collect(),
        }),
        Command::Restore(RestoreCommand::Finish {
            restore_id: 1,
            cluster: Box::new(backup.cluster),
        }),
    ];
    for path in paths {
        commands.push(Command::Secret(SecretCommand::Put {
            path: path.clone(),
            ciphertext: vec![5],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 10,
        }));
        for versions in [vec![], vec![0]] {
            commands.push(Command::Secret(SecretCommand::Delete {
                path: path.clone(),
                versions: versions.clone(),
            }));
            commands.push(Command::Secret(SecretCommand::Undelete {
                path: path.clone(),
                versions: versions.clone(),
            }));
            commands.push(Command::Secret(SecretCommand::Destroy {
                path: path.clone(),
                versions,
            }));
        }
    }
    for name in names {
        commands.push(Command::Policy(PolicyCommand::Put {
            id: PolicyId::from_bytes([0xee; 16]),
            name,
            ciphertext: vec![6],
            data_key_id: DataKeyId(1),
        }));
    }
    let txn = db.begin_write().map_err(|e| storage("begin")(e.into()))?;
    let mut batch = Batch::begin(&txn)?;
    for (index, command) in (1..).zip(commands) {
        let request = Request {
            command,
            session: None,
            time_ns: index,
        };
        batch.apply(index, &request)?;
    }
    batch.finish()?;
    txn.commit().map_err(|e| storage("commit")(e.into()))
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use spike_sdk::domain::{DataKeyId, PolicyId, RootKeyId};

    use super::*;
    use crate::state::command::{
        Command, KeyCommand, PolicyCommand, Request, RootKeyRecord, SecretCommand,
    };
    use crate::state::secret::{COUNTER_MAX, SEALED_VERSION_MAX_BYTES};
    use crate::state::store::Batch;

    /// A backup of a store holding one secret and one policy, after
    /// `tamper` has had its way with the tables.
    fn backup(tamper: impl FnOnce(&redb::WriteTransaction)) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("state.redb")).expect("create");
        let commands = [
            Command::Keys(KeyCommand::Initialize(RootKeyRecord {
                root_key_id: RootKeyId(1),
                key_check: [1; 32],
                wrapped_keyring: vec![1],
                shares: 1,
                threshold: 1,
            })),
            Command::Secret(SecretCommand::Put {
                path: "apps/db".parse().expect("a path"),
                ciphertext: vec![2],
                data_key_id: DataKeyId(1),
                cas: None,
                max_versions: 10,
            }),
            Command::Policy(PolicyCommand::Put {
                id: PolicyId::from_bytes([3; 16]),
                name: "readers".parse().expect("a name"),
                ciphertext: vec![3],
                data_key_id: DataKeyId(1),
            }),
        ];
        let txn = db.begin_write().expect("write");
        let mut batch = Batch::begin(&txn).expect("batch");
        for (index, command) in (1..).zip(commands) {
            let request = Request {
                command,
                session: None,
                time_ns: index,
            };
            batch.apply(index, &request).expect("apply");
        }
        batch.finish().expect("finish");
        tamper(&txn);
        txn.commit().expect("commit");
        let path = dir.path().join("backup");
        let read = db.begin_read().expect("read");
        write(&read, &SnapshotMetaOf::<TypeConfig>::default(), &path).expect("write");
        fs::read(&path).expect("read backup")
    }

    /// Copies the row `from` of `table` to the key `to`.
    fn copy_row(
        txn: &redb::WriteTransaction,
        table: TableDefinition<&str, &[u8]>,
        from: &str,
        to: &str,
    ) {
        let mut table = txn.open_table(table).expect("table");
        let value = table.get(from).expect("get").expect("row").value().to_vec();
        table.insert(to, value.as_slice()).expect("insert");
    }

    fn refusal(bytes: &[u8]) -> String {
        read_backup(bytes).expect_err("refused").to_string()
    }

    #[test]
    fn a_backup_reads_back_as_typed_records() {
        let backup = read_backup(&backup(|_| {})).expect("reads");
        assert_eq!(backup.cluster.root_key_id(), Some(RootKeyId(1)));
        let secrets: Vec<&str> = backup.secrets.iter().map(|row| row.key.as_str()).collect();
        assert_eq!(secrets, vec!["apps/db"]);
        let policies: Vec<(&str, PolicyId)> = backup
            .policies
            .iter()
            .map(|row| (row.key.as_str(), row.record.id))
            .collect();
        assert_eq!(policies, vec![("readers", PolicyId::from_bytes([3; 16]))]);
    }

    /// A backup of a store in format 3 with custom metadata on `apps/db`,
    /// after `tamper`.
    fn backup_with_custom_metadata(tamper: impl FnOnce(&redb::WriteTransaction)) -> Vec<u8> {
        backup(|txn| {
            let mut batch = Batch::begin(txn).expect("batch");
            let request = Request {
                command: Command::Secret(SecretCommand::PutCustomMetadata {
                    path: "apps/db".parse().expect("a path"),
                    ciphertext: vec![4, 4],
                    data_key_id: DataKeyId(1),
                }),
                session: None,
                time_ns: 9,
            };
            assert_eq!(
                batch.apply(9, &request).expect("apply"),
                crate::state::command::Response::Done
            );
            batch.finish().expect("finish");
            txn.open_table(META)
                .expect("meta")
                .insert(
                    store::META_FORMAT,
                    encode(&3u32).expect("format").as_slice(),
                )
                .expect("format 3");
            tamper(txn);
        })
    }

    #[test]
    fn custom_metadata_travels_in_format_3_backups_and_restores() {
        let bytes = backup_with_custom_metadata(|_| {});
        assert_eq!(&bytes[8..12], &3u32.to_be_bytes(), "format 3");
        let read = read_backup(&bytes).expect("reads");
        let custom: Vec<(&str, &[u8])> = read
            .custom_metadata
            .iter()
            .map(|row| (row.key.as_str(), row.record.ciphertext.as_slice()))
            .collect();
        assert_eq!(custom, vec![("apps/db", &[4u8, 4][..])]);
        restore_and_write(read).expect("restored");

        // A format-3 snapshot installs the table; an older one clears it.
        let dir = tempfile::tempdir().expect("tempdir");
        let db = redb::Database::create(dir.path().join("installed.redb")).expect("create");
        let txn = db.begin_write().expect("write");
        load_from(&txn, &mut io::Cursor::new(&bytes), || "snapshot".to_owned()).expect("load");
        txn.commit().expect("commit");
        let reader = store::StateReader::new(std::sync::Arc::new(db));
        let (_, installed) = reader
            .secret_and_custom_metadata(&"apps/db".parse().expect("a path"))
            .expect("read")
            .expect("the secret");
        assert_eq!(installed.expect("custom metadata").ciphertext, vec![4, 4]);

        let without = backup(|_| {});
        assert_eq!(&without[8..12], &1u32.to_be_bytes(), "format 1");
        assert!(
            read_backup(&without)
                .expect("reads")
                .custom_metadata
                .is_empty()
        );
    }

    #[test]
    fn custom_metadata_without_its_secret_is_refused_in_a_backup() {
        let bytes = backup_with_custom_metadata(|txn| {
            copy_row(txn, SECRET_METADATA, "apps/db", "apps/gone");
        });
        assert_eq!(
            refusal(&bytes),
            r#"backup record custom metadata "apps/gone": the backup has no secret at its path"#
        );
    }

    #[test]
    fn a_backup_of_another_format_is_refused_as_such() {
        let mut future = backup(|_| {});
        future[MAGIC.len()..HEADER_BYTES].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            refusal(&future),
            "backup is in on-disk format 7; this build reads formats 1, 2, 3"
        );
        let mut unstamped = backup(|_| {});
        unstamped[..MAGIC.len()].copy_from_slice(UNSTAMPED_MAGIC);
        assert_eq!(
            refusal(&unstamped),
            "backup was written before on-disk format stamps existed; this build reads formats 1, 2, 3"
        );
        assert_eq!(
            refusal(b"not a snapshot at all, not even close, no"),
            "snapshot is corrupt: not a SPIKE snapshot"
        );
    }

    #[test]
    fn a_backup_whose_records_the_state_would_trip_over_is_refused() {
        let twice = backup(|txn| copy_row(txn, POLICIES, "readers", "writers"));
        assert!(
            refusal(&twice).contains("policy id 03030303-0303-0303-0303-030303030303 twice"),
            "{}",
            refusal(&twice)
        );

        let inconsistent = backup(|txn| {
            let mut record = SecretRecord::put(None, vec![1], None, 10, 1)
                .expect("put")
                .0;
            record.max_versions = 0;
            txn.open_table(SECRETS)
                .expect("secrets")
                .insert("broken", encode(&record).expect("encodes").as_slice())
                .expect("insert");
        });
        assert_eq!(
            refusal(&inconsistent),
            "backup record secret \"broken\": max_versions is not in 1..=1000"
        );

        let bad_path = backup(|txn| copy_row(txn, SECRETS, "apps/db", "a b"));
        assert!(
            refusal(&bad_path).contains("invalid secret path"),
            "{}",
            refusal(&bad_path)
        );

        let mut flipped = backup(|_| {});
        let last = flipped.len() - 40;
        flipped[last] ^= 1;
        assert!(refusal(&flipped).contains("digest mismatch"));
    }

    /// A backup written row by row, as a hostile uploader can: the
    /// cluster metadata, then secret and policy rows as given (encoded
    /// records), then the digest.
    fn raw_backup(
        cluster: &ClusterMeta,
        secrets: &[(&str, Vec<u8>)],
        policies: &[(&str, Vec<u8>)],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_OLDEST.to_be_bytes());
        let meta = encode(&SnapshotMetaOf::<TypeConfig>::default()).expect("meta");
        write_part(&mut out, &meta).expect("meta");
        let cluster = encode(cluster).expect("cluster");
        write_row(&mut out, store::META_CLUSTER.as_bytes(), &cluster).expect("row");
        out.push(0);
        for rows in [secrets, policies] {
            for (key, value) in rows {
                write_row(&mut out, key.as_bytes(), value).expect("row");
            }
            out.push(0);
        }
        out.extend_from_slice(&[0, 0]);
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    fn good_cluster() -> ClusterMeta {
        ClusterMeta {
            root_key: Some(RootKeyRecord {
                root_key_id: RootKeyId(1),
                key_check: [1; 32],
                wrapped_keyring: vec![1],
                shares: 3,
                threshold: 2,
            }),
            ..ClusterMeta::default()
        }
    }

    fn good_secret() -> SecretRecord {
        SecretRecord::put(None, vec![1], None, 10, 1)
            .expect("put")
            .0
    }

    fn policy(id: u8) -> Vec<u8> {
        encode(&PolicyRecord {
            id: PolicyId::from_bytes([id; 16]),
            ciphertext: vec![id],
            created_at: 1,
            updated_at: 1,
        })
        .expect("policy")
    }

    /// A secret whose versions count up to `highest`.
    fn secret_at(highest: u64) -> SecretRecord {
        let mut record = good_secret();
        let version = record.versions.remove(&1).expect("version 1");
        record.versions.insert(highest, version);
        record.current_version = highest;
        record.oldest_version = highest;
        record.highest_version = highest;
        record
    }

    /// Regression (security review finding 13): records that decode but
    /// that no cluster could have made were restored, and the next write
    /// overflowed a counter (a panic of apply on every replica in a debug
    /// build, a wrapped version number in a release one).
    #[test]
    fn a_backup_with_a_record_no_cluster_makes_is_refused_naming_it() {
        let secret = |record: &SecretRecord| encode(record).expect("secret");
        let with = |change: fn(&mut ClusterMeta)| {
            let mut cluster = good_cluster();
            change(&mut cluster);
            raw_backup(&cluster, &[("apps/db", secret(&good_secret()))], &[])
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                raw_backup(
                    &good_cluster(),
                    &[("apps/db", secret(&secret_at(u64::MAX)))],
                    &[],
                ),
                "backup record secret \"apps/db\": its highest version is above 2^63 - 1",
            ),
            (
                with(|cluster| cluster.keyring_version = u64::MAX),
                "backup record cluster metadata: its keyring version 18446744073709551615 is above 2^63 - 1",
            ),
            (
                with(|cluster| cluster.policies_version = u64::MAX),
                "backup record cluster metadata: its policies version 18446744073709551615 is above 2^63 - 1",
            ),
            (
                with(|cluster| cluster.root_key = None),
                "backup record cluster metadata: it has no root key (its cluster was never initialized)",
            ),
            (
                with(|cluster| {
                    if let Some(root_key) = cluster.root_key.as_mut() {
                        root_key.threshold = 0;
                    }
                }),
                "backup record cluster metadata: root key: ",
            ),
            (
                with(|cluster| {
                    if let Some(root_key) = cluster.root_key.as_mut() {
                        root_key.threshold = 4;
                    }
                }),
                "backup record cluster metadata: root key: ",
            ),
            (
                with(|cluster| {
                    if let Some(root_key) = cluster.root_key.as_mut() {
                        root_key.root_key_id = RootKeyId(0);
                    }
                }),
                "backup record cluster metadata: root key id 0 is not in 1..=2^63-1",
            ),
            (
                with(|cluster| cluster.restoring = Some(5)),
                "backup record cluster metadata: it was saved while restore 5 was in progress",
            ),
            (
                with(|cluster| {
                    cluster.encryptions.insert(DataKeyId(1), u64::MAX);
                }),
                "backup record cluster metadata: its encryption count 18446744073709551615 of data key 1 is above 2^63 - 1",
            ),
            (
                raw_backup(
                    &good_cluster(),
                    &[
                        ("apps/db", secret(&good_secret())),
                        ("apps/db", secret(&secret_at(7))),
                    ],
                    &[],
                ),
                "backup record secret \"apps/db\": it appears twice",
            ),
            (
                raw_backup(
                    &good_cluster(),
                    &[],
                    &[("readers", policy(1)), ("readers", policy(2))],
                ),
                "backup record policy \"readers\": it appears twice",
            ),
            (
                raw_backup(
                    &good_cluster(),
                    &[("apps/db", {
                        let mut record = good_secret();
                        if let Some(version) = record.versions.get_mut(&1) {
                            version.ciphertext = vec![0; SEALED_VERSION_MAX_BYTES + 1];
                        }
                        secret(&record)
                    })],
                    &[],
                ),
                "backup record secret \"apps/db\": a version's ciphertext is larger than a put can write",
            ),
        ];
        for (bytes, expected) in cases {
            match read_backup(&bytes) {
                Ok(backup) => {
                    // Today's gap: show what accepting it does.
                    restore_and_write(backup).expect("restored");
                    panic!("accepted a backup that should be refused with {expected:?}");
                }
                Err(error) => assert!(
                    error.to_string().starts_with(expected),
                    "{error} does not start with {expected:?}"
                ),
            }
        }
    }

    #[test]
    fn a_backup_that_is_read_restores_and_takes_writes() {
        let backup = raw_backup(
            &good_cluster(),
            &[
                ("apps/db", encode(&good_secret()).expect("secret")),
                (
                    "apps/high",
                    encode(&secret_at(COUNTER_MAX)).expect("secret"),
                ),
            ],
            &[("readers", policy(1)), ("writers", policy(2))],
        );
        restore_and_write(read_backup(&backup).expect("a good backup")).expect("restored");
    }

    /// Hands out one byte per read: a streaming reader must not depend on
    /// how its input is chunked.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
            let take = buffer.len().min(1).min(self.0.len());
            buffer[..take].copy_from_slice(&self.0[..take]);
            self.0 = &self.0[take..];
            Ok(take)
        }
    }

    #[test]
    fn the_streaming_reader_reads_what_the_whole_reader_reads() {
        let bytes = backup_with_custom_metadata(|_| {});
        let counts = verify_backup(Trickle(&bytes), bytes.len() as u64).expect("verifies");
        assert_eq!(
            counts,
            BackupCounts {
                secrets: 1,
                policies: 1,
                custom_metadata: 1
            }
        );
        let whole = read_backup(&bytes).expect("reads");
        assert_eq!(whole.secrets.len(), 1);
        assert_eq!(whole.custom_metadata.len(), 1);

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("backup.snap");
        fs::write(&path, &bytes).expect("write");
        let verified = verify_backup_file(&File::open(&path).expect("open")).expect("verifies");
        assert_eq!(verified.counts, counts);
        assert_eq!(verified.size_bytes, bytes.len() as u64);
        assert_eq!(verified.sha256, <[u8; 32]>::from(Sha256::digest(&bytes)));
    }

    /// Every byte flipped and every length cut short is refused by the
    /// streaming reader: as damaged (digest mismatch, or the header it hit),
    /// never for what the damage reads as.
    #[test]
    fn the_streaming_reader_refuses_corruption_at_every_offset() {
        let bytes = backup_with_custom_metadata(|_| {});
        let refusal = |input: &[u8]| {
            verify_backup(Trickle(input), input.len() as u64)
                .expect_err("refused")
                .to_string()
        };
        for offset in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[offset] ^= 0x40;
            let reason = refusal(&flipped);
            let expected = if offset < MAGIC.len() {
                "not a SPIKE snapshot"
            } else if offset < HEADER_BYTES {
                "on-disk format"
            } else {
                "digest mismatch"
            };
            assert!(reason.contains(expected), "byte {offset} flipped: {reason}");
        }
        for length in 0..bytes.len() {
            let reason = refusal(&bytes[..length]);
            let expected = if length < HEADER_BYTES {
                "shorter than its header"
            } else if length < HEADER_BYTES + 4 + 32 {
                "shorter than its header and digest"
            } else {
                "digest mismatch"
            };
            assert!(reason.contains(expected), "cut at {length}: {reason}");
        }
        // A length that claims more than the input holds.
        let reason = verify_backup(Trickle(&bytes), bytes.len() as u64 + 1)
            .expect_err("refused")
            .to_string();
        assert!(reason.contains("cut short"), "{reason}");
    }

    /// A bad record under a good digest is named; the same record in a
    /// file whose digest does not match is refused as damaged.
    #[test]
    fn a_bad_record_is_named_only_when_the_digest_matches() {
        let bad = raw_backup(
            &good_cluster(),
            &[("apps/db", encode(&secret_at(u64::MAX)).expect("secret"))],
            &[],
        );
        assert!(
            refusal(&bad).starts_with("backup record secret \"apps/db\""),
            "{}",
            refusal(&bad)
        );
        let mut damaged = bad.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert_eq!(refusal(&damaged), "snapshot is corrupt: digest mismatch");
    }

    /// Regression (security review finding 13): a part's declared length
    /// was allocated before a byte of it was read, so 40 bytes could ask
    /// for 256 MiB.
    #[test]
    fn a_declared_length_is_not_allocated_before_its_bytes_arrive() {
        /// Records the largest buffer a read was asked to fill.
        struct Spy<'a> {
            bytes: &'a [u8],
            largest: usize,
        }
        impl Read for Spy<'_> {
            fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
                self.largest = self.largest.max(buffer.len());
                self.bytes.read(buffer)
            }
        }
        let mut claim = ROW_PART_MAX_BYTES.to_be_bytes().to_vec();
        claim.extend_from_slice(&[7; 36]);
        let mut spy = Spy {
            bytes: &claim,
            largest: 0,
        };
        let error = read_part(&mut spy, ROW_PART_MAX_BYTES).expect_err("cut short");
        assert!(
            spy.largest <= PART_INITIAL_BYTES,
            "a read into {} bytes",
            spy.largest
        );
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }
}
