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
use spike_sdk::domain::{PolicyName, SecretPath};

use super::codec::{decode, encode};
use super::format::{self, FORMAT_VERSION, FormatError};
use super::{SnapshotMetaOf, TypeConfig, io_error};
use crate::state::secret::SecretRecord;
use crate::state::store::{
    self, ClusterMeta, META, POLICIES, POLICIES_MAX, PolicyRecord, SECRETS, SESSION_EXPIRY,
    SESSIONS,
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
    out.write_all(&FORMAT_VERSION.to_be_bytes())?;
    write_part(&mut out, &encode(meta)?)?;
    dump_str_table(txn, META, &mut out)?;
    dump_str_table(txn, SECRETS, &mut out)?;
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
    let digest = out.digest.clone().finalize();
    let mut inner = out.inner;
    inner.write_all(&digest)?;
    let file = inner
        .into_inner()
        .map_err(|e| io_error(&subject, e.error()))?;
    file.sync_all().map_err(|e| io_error(&subject, e))
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
    read_header(&mut reader, || file.path.display().to_string())
}

/// Refuses the snapshot at `path` if this build does not read its format.
pub fn check_format(path: &Path) -> io::Result<()> {
    let mut file =
        File::open(path).map_err(|e| io_error(&format!("open snapshot {}", path.display()), e))?;
    read_format(&mut file, || path.display().to_string())
}

/// Reads the magic and the format; `subject` names the file.
fn read_format(reader: &mut impl Read, subject: impl Fn() -> String) -> io::Result<()> {
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
    Ok(format::check(u32::from_be_bytes(version), subject)?)
}

fn read_header(
    reader: &mut impl Read,
    subject: impl Fn() -> String,
) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    read_format(reader, subject)?;
    let meta = read_part(reader, META_MAX_BYTES)?;
    Ok(decode("snapshot meta", &meta)?)
}

fn read_part(reader: &mut impl Read, max: u32) -> io::Result<Vec<u8>> {
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length);
    if length > max {
        return Err(corrupt("row larger than the limit"));
    }
    let mut bytes = vec![0u8; length as usize];
    reader.read_exact(&mut bytes)?;
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

/// Replaces every state table inside `txn` with the rows of `file`
/// (already verified), returning the snapshot's metadata.
pub fn load(
    txn: &redb::WriteTransaction,
    file: &SnapshotFile,
) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let subject = "install snapshot";
    let mut reader = BufReader::new(file.reader()?);
    let meta = read_header(&mut reader, || file.path.display().to_string())?;
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

/// The records a backup (a snapshot file) carries, decoded and checked.
#[derive(Debug)]
pub struct Backup {
    /// The cluster metadata.
    pub cluster: ClusterMeta,
    /// Secrets by path.
    pub secrets: Vec<BackupRow<SecretPath, SecretRecord>>,
    /// Policies by name.
    pub policies: Vec<BackupRow<PolicyName, PolicyRecord>>,
}

/// Checks and reads a backup held in memory (an uploaded snapshot file):
/// its format, its digest, and every record, so a restore never stores
/// what the state could trip over (an inconsistent secret, two policies
/// with one id, more policies than the limit).
pub fn read_backup(bytes: &[u8]) -> io::Result<Backup> {
    let subject = || "backup".to_owned();
    read_format(&mut io::Cursor::new(bytes), subject)?;
    if bytes.len() < HEADER_BYTES + 4 + 32 {
        return Err(corrupt("shorter than its header and digest"));
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(corrupt("digest mismatch"));
    }
    let mut reader = io::Cursor::new(body);
    read_header(&mut reader, subject)?;
    let mut cluster = None;
    while let Some((key, value)) = read_row(&mut reader)? {
        if key == store::META_CLUSTER.as_bytes() {
            cluster = Some(decode::<ClusterMeta>("backup cluster meta", &value)?);
        }
    }
    let cluster = cluster.ok_or_else(|| corrupt("the backup has no cluster metadata"))?;
    let mut secrets = Vec::new();
    while let Some((key, value)) = read_row(&mut reader)? {
        let row: BackupRow<SecretPath, SecretRecord> = backup_row(&key, &value)?;
        if !row.record.is_consistent() {
            return Err(corrupt(&format!("secret {} is inconsistent", row.key)));
        }
        secrets.push(row);
    }
    let mut policies = Vec::new();
    let mut ids = BTreeSet::new();
    while let Some((key, value)) = read_row(&mut reader)? {
        let row: BackupRow<PolicyName, PolicyRecord> = backup_row(&key, &value)?;
        if !ids.insert(row.record.id) {
            return Err(corrupt(&format!("policy id {} twice", row.record.id)));
        }
        policies.push(row);
    }
    if policies.len() as u64 > POLICIES_MAX {
        return Err(corrupt(&format!(
            "{} policies, more than the {POLICIES_MAX} a cluster holds",
            policies.len()
        )));
    }
    // Sessions are not restored: they belong to the clients of the cluster
    // the backup came from.
    Ok(Backup {
        cluster,
        secrets,
        policies,
    })
}

fn backup_row<K, V>(key: &[u8], value: &[u8]) -> io::Result<BackupRow<K, V>>
where
    K: std::str::FromStr<Err = spike_sdk::domain::InvalidValue>,
    V: serde::de::DeserializeOwned,
{
    let text = std::str::from_utf8(key).map_err(|_| corrupt("key is not UTF-8"))?;
    let parsed = text
        .parse()
        .map_err(|e| corrupt(&format!("backup key: {e}")))?;
    Ok(BackupRow {
        key: parsed,
        record: decode(&format!("backup record {text:?}"), value)?,
        size_bytes: key.len() + value.len(),
    })
}

#[cfg(test)]
mod tests {
    use redb::ReadableDatabase;
    use spike_sdk::domain::{DataKeyId, PolicyId, RootKeyId};

    use super::*;
    use crate::state::command::{
        Command, KeyCommand, PolicyCommand, Request, RootKeyRecord, SecretCommand,
    };
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

    #[test]
    fn a_backup_of_another_format_is_refused_as_such() {
        let mut future = backup(|_| {});
        future[MAGIC.len()..HEADER_BYTES].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            refusal(&future),
            "backup is in on-disk format 7; this build reads format 1"
        );
        let mut unstamped = backup(|_| {});
        unstamped[..MAGIC.len()].copy_from_slice(UNSTAMPED_MAGIC);
        assert_eq!(
            refusal(&unstamped),
            "backup was written before on-disk format stamps existed; this build reads format 1"
        );
        assert_eq!(
            refusal(b"not a snapshot at all, not even close, no"),
            "snapshot is corrupt: not a SPIKE snapshot"
        );
    }

    #[test]
    fn a_backup_whose_records_the_state_would_trip_over_is_refused() {
        let twice = backup(|txn| copy_row(txn, POLICIES, "readers", "writers"));
        assert!(refusal(&twice).contains("policy id 03030303-0303-0303-0303-030303030303 twice"));

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
        assert!(refusal(&inconsistent).contains("secret broken is inconsistent"));

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
}
