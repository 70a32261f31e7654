//! Backup files in the backup directory: their names, how one is written
//! (temporary file, fsync, verify, rename, directory fsync, SHA-256
//! sidecar), and retention. Only names of the backup pattern are ever
//! touched; anything else in the directory is left alone.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use spike_sdk::domain::RootKeyId;
use time::OffsetDateTime;

use crate::raft::snapshot;
use crate::raft::state_machine::{BackupPoint, StateMachine};

/// Every backup file name starts with it.
const PREFIX: &str = "spike-backup-";
/// Every backup file name ends with it.
const SUFFIX: &str = ".snap";
/// The checksum sidecar's name is the backup's plus this.
const SIDECAR_SUFFIX: &str = ".sha256";
/// A backup being written: `.spike-backup-<slot>.tmp` (hidden, so no tool
/// that lists backups takes a partial one).
const TEMP_PREFIX: &str = ".spike-backup-";
const TEMP_SUFFIX: &str = ".tmp";

/// Why a backup could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BackupFileError {
    /// A file system operation failed (the directory is not writable, the
    /// disk is full...).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file read back is not a backup a restore would take.
    #[error("backup {path} does not verify: {reason}")]
    Unverified {
        /// The file.
        path: PathBuf,
        /// What the backup reader said.
        reason: String,
    },
    /// The cluster has no root key: there is nothing a restore could use.
    #[error("the cluster is not initialized")]
    NoRootKey,
}

fn io_at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BackupFileError {
    let path = path.to_owned();
    move |source| BackupFileError::Io {
        action,
        path,
        source,
    }
}

/// A backup written, verified and in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its file name in the backup directory.
    pub file: String,
    /// The last log index it holds.
    pub index: u64,
    /// The root key its records are sealed under.
    pub root_key_id: RootKeyId,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of the whole file.
    pub sha256: [u8; 32],
}

/// The name of the backup of the slot starting at `slot_start_ms`, holding
/// the state after `index` under root key `root_key_id`: UTC time first, so
/// names sort by time.
pub fn file_name(slot_start_ms: u128, index: u64, root_key_id: RootKeyId) -> String {
    format!(
        "{PREFIX}{}-i{index:012}-rk{}{SUFFIX}",
        utc_stamp(slot_start_ms),
        root_key_id.0
    )
}

/// `20261207T152000Z` for a time in milliseconds since the Unix epoch.
fn utc_stamp(time_ms: u128) -> String {
    let time = datetime(time_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

fn datetime(time_ms: u128) -> OffsetDateTime {
    let nanos = i128::try_from(time_ms.saturating_mul(1_000_000)).unwrap_or(i128::MAX);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 of a time in milliseconds since the Unix epoch.
pub fn rfc3339(time_ms: u128) -> String {
    datetime(time_ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What a backup file name says: (UTC stamp, log index); `None` for any
/// name that is not a backup's.
pub fn parse_name(name: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, rest) = rest.split_once("-i")?;
    let (index, root_key) = rest.split_once("-rk")?;
    let stamp_ok = stamp.len() == 16
        && stamp.as_bytes()[8] == b'T'
        && stamp.ends_with('Z')
        && stamp[..8].bytes().all(|b| b.is_ascii_digit())
        && stamp[9..15].bytes().all(|b| b.is_ascii_digit());
    let digits = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    if !stamp_ok || !digits(index) || !digits(root_key) {
        return None;
    }
    Some((stamp.to_owned(), index.parse().ok()?))
}

/// Creates `dir` as the replica's own (mode 0700).
pub fn prepare_dir(dir: &Path) -> Result<(), BackupFileError> {
    crate::private_dir(dir).map_err(io_at("create backup directory", dir))
}

/// Writes the backup of the slot starting at `slot_start_ms` into `dir`:
/// a temporary file from one read transaction, fsynced, read back and
/// checked by the backup reader a restore uses, renamed to its name, its
/// SHA-256 sidecar beside it (`sha256sum -c` reads it), the directory
/// fsynced. Nothing of a failed attempt is left behind.
pub fn write(
    machine: &StateMachine,
    dir: &Path,
    slot: u64,
    slot_start_ms: u128,
) -> Result<Written, BackupFileError> {
    prepare_dir(dir)?;
    let temp = dir.join(format!("{TEMP_PREFIX}{slot}{TEMP_SUFFIX}"));
    let written = write_at(machine, dir, &temp, slot_start_ms);
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

fn write_at(
    machine: &StateMachine,
    dir: &Path,
    temp: &Path,
    slot_start_ms: u128,
) -> Result<Written, BackupFileError> {
    let BackupPoint { index, root_key_id } = machine
        .write_backup(temp)
        .map_err(io_at("write backup", temp))?;
    let root_key_id = root_key_id.ok_or(BackupFileError::NoRootKey)?;
    // Read back from disk, streaming: what a restore will be given.
    let file = File::open(temp).map_err(io_at("read back backup", temp))?;
    let verified =
        snapshot::verify_backup_file(&file).map_err(|error| BackupFileError::Unverified {
            path: temp.to_owned(),
            reason: error.to_string(),
        })?;
    drop(file);
    let (sha256, size_bytes) = (verified.sha256, verified.size_bytes);
    let file = file_name(slot_start_ms, index, root_key_id);
    let path = dir.join(&file);
    fs::rename(temp, &path).map_err(io_at("rename backup", &path))?;
    let sidecar = dir.join(format!("{file}{SIDECAR_SUFFIX}"));
    let sidecar_temp = dir.join(format!("{TEMP_PREFIX}{file}{SIDECAR_SUFFIX}{TEMP_SUFFIX}"));
    let sidecar_written = write_synced(
        &sidecar_temp,
        format!("{}  {file}\n", hex::encode(sha256)).as_bytes(),
    )
    .and_then(|()| fs::rename(&sidecar_temp, &sidecar).map_err(io_at("rename", &sidecar)))
    .and_then(|()| sync_dir(dir));
    if let Err(error) = sidecar_written {
        let _ = fs::remove_file(&sidecar_temp);
        let _ = fs::remove_file(&sidecar);
        let _ = fs::remove_file(&path);
        return Err(error);
    }
    Ok(Written {
        file,
        index,
        root_key_id,
        size_bytes,
        sha256,
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupFileError> {
    let mut file = File::create(path).map_err(io_at("create", path))?;
    file.write_all(bytes).map_err(io_at("write", path))?;
    file.sync_all().map_err(io_at("fsync", path))
}

fn sync_dir(dir: &Path) -> Result<(), BackupFileError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_at("fsync directory", dir))
}

/// Deletes backup `file` and its sidecar from `dir`, if they are there.
pub fn remove(dir: &Path, file: &str) -> Result<(), BackupFileError> {
    for path in [dir.join(file), dir.join(format!("{file}{SIDECAR_SUFFIX}"))] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(io_at("remove backup", &path)(error)),
        }
    }
    Ok(())
}

/// The backup files in `dir`, newest first (by time, then index).
pub fn list(dir: &Path) -> Result<Vec<String>, BackupFileError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(io_at("list backup directory", dir)(error)),
    };
    let mut backups = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at("list backup directory", dir))?;
        if let Some(name) = entry.file_name().to_str()
            && let Some(key) = parse_name(name)
        {
            backups.push((key, name.to_owned()));
        }
    }
    backups.sort_unstable_by(|a, b| b.cmp(a));
    Ok(backups.into_iter().map(|(_, name)| name).collect())
}

/// Keeps the newest `retain` backups in `dir` and deletes the rest, with
/// their sidecars, and any temporary file a crashed attempt left (only
/// called between attempts). Returns the backups deleted.
pub fn prune(dir: &Path, retain: usize) -> Result<Vec<String>, BackupFileError> {
    let backups = list(dir)?;
    let old: Vec<String> = backups.into_iter().skip(retain).collect();
    for file in &old {
        remove(dir, file)?;
    }
    for entry in fs::read_dir(dir).map_err(io_at("list backup directory", dir))? {
        let entry = entry.map_err(io_at("list backup directory", dir))?;
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX) && name.ends_with(TEMP_SUFFIX));
        if stale {
            let path = entry.path();
            fs::remove_file(&path).map_err(io_at("remove stale temporary file", &path))?;
        }
    }
    Ok(old)
}

/// The UTC stamp of the slot starting at `slot_start_ms`, as names carry it.
pub fn stamp_of_slot(slot_start_ms: u128) -> String {
    utc_stamp(slot_start_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_when_which_index_and_which_root_key() {
        // 2026-12-07T15:20:00Z
        let name = file_name(1_796_656_800_000, 1_234, RootKeyId(2));
        assert_eq!(name, "spike-backup-20261207T152000Z-i000000001234-rk2.snap");
        assert_eq!(
            parse_name(&name),
            Some(("20261207T152000Z".to_owned(), 1_234))
        );
        for other in [
            "spike-backup-20261207T152000Z-i000000001234-rk2.snap.sha256",
            ".spike-backup-7.tmp",
            "spike-backup-2026120T152000Z-i1-rk2.snap",
            "spike-backup-20261207T152000Z-i-rk2.snap",
            "spike-backup-20261207T152000Z-i12-rkx.snap",
            "notes.txt",
            "snapshot-00000000000000000012.snap",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    #[test]
    fn retention_keeps_the_newest_backups_and_touches_nothing_else() {
        let dir = tempfile::tempdir().expect("dir");
        let names: Vec<String> = (0..5u64)
            .map(|slot| file_name(u128::from(slot) * 60_000, slot * 10, RootKeyId(1)))
            .collect();
        for name in &names {
            fs::write(dir.path().join(name), b"x").expect("write");
            fs::write(dir.path().join(format!("{name}{SIDECAR_SUFFIX}")), b"x").expect("write");
        }
        for other in ["notes.txt", "spike-backup-latest.snap", "snapshot-1.snap"] {
            fs::write(dir.path().join(other), b"x").expect("write");
        }
        fs::write(dir.path().join(".spike-backup-9.tmp"), b"x").expect("write");
        let deleted = prune(dir.path(), 2).expect("prune");
        assert_eq!(
            deleted,
            vec![names[2].clone(), names[1].clone(), names[0].clone()]
        );
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .into_string()
                    .expect("utf-8")
            })
            .collect();
        left.sort();
        let mut expected = vec![
            names[3].clone(),
            format!("{}{SIDECAR_SUFFIX}", names[3]),
            names[4].clone(),
            format!("{}{SIDECAR_SUFFIX}", names[4]),
            "notes.txt".to_owned(),
            "snapshot-1.snap".to_owned(),
            "spike-backup-latest.snap".to_owned(),
        ];
        expected.sort();
        assert_eq!(left, expected);
    }
}
