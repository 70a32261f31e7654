//! The self-running workload: the settings its replicas start with, and the
//! checks it adds to the root-key workload's, run after healing.
//!
//! - Scheduled backups: every slot a leader completed, by every replica's
//!   audit log (`kind: backup`, `outcome: completed`), appears once, even
//!   across leader changes, kills and partitions; and every backup file
//!   still on disk matches the checksum written beside it. A run in which
//!   no backup completed at all is not a recovered cluster.
//! - Corruption checks: no replica raised the alarm (there is no corruption
//!   to find, so an alarm is a false positive, or a real divergence).
//! - Rotation: the root-key workload's checks (every acknowledged secret
//!   decrypts on every replica, one root key everywhere).
//! - Autopilot: the membership nemesis adds replicas as learners, which the
//!   leader promotes after the stabilization time; the run's convergence
//!   checks cover the replicas it promoted.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::check::Anomaly;
use crate::converge::Replica;

/// What every replica of a self-running run is started with (the rotation
/// schedule is set through the replicated settings by the workload).
pub const NEXUS_ARGS: &[&str] = &[
    "--backup-interval=1s",
    "--backup-retain=5",
    "--corruption-check-interval=2s",
    "--autopilot-stabilization-time=1s",
];

/// What the checks saw.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Backup slots completed, by every replica's audit log.
    pub backups_completed: u64,
    /// Replicas whose audit logs recorded completions (leaders that took
    /// backups).
    pub backup_writers: u64,
    /// Backup files on disk checked against their checksum.
    pub backup_files_verified: u64,
    /// Replicas asked whether they raised the corruption alarm.
    pub replicas_checked: u64,
}

/// Runs the checks over the cluster directory (`nexus-*/audit.log`,
/// `nexus-*/backups/`) and the replicas.
pub async fn check(cluster_dir: &Path, replicas: &[Replica]) -> (Report, Vec<Anomaly>) {
    let mut report = Report::default();
    let mut anomalies = Vec::new();
    let mut completions: BTreeMap<u64, u64> = BTreeMap::new();
    for replica_dir in replica_dirs(cluster_dir) {
        let slots = completed_slots(&replica_dir.join("audit.log"));
        if !slots.is_empty() {
            report.backup_writers += 1;
        }
        for slot in slots {
            *completions.entry(slot).or_default() += 1;
        }
        let (verified, corrupt) = verify_backups(&replica_dir.join("backups"));
        report.backup_files_verified += verified;
        anomalies.extend(corrupt);
    }
    report.backups_completed = completions.len() as u64;
    anomalies.extend(
        completions
            .iter()
            .filter(|(_, count)| **count > 1)
            .map(|(slot, count)| Anomaly::BackupSlotTwice {
                slot: *slot,
                completions: *count,
            }),
    );
    if completions.is_empty() {
        anomalies.push(Anomaly::NotRecovered {
            detail: "no scheduled backup completed during the run".to_owned(),
        });
    }
    for replica in replicas {
        report.replicas_checked += 1;
        match replica.nexus.cluster_status().await {
            Ok(status) if status.corrupt => anomalies.push(Anomaly::CorruptionAlarm {
                replica: replica.name.clone(),
                reason: status.corruption.unwrap_or_default(),
            }),
            Ok(_) => {}
            Err(error) => anomalies.push(Anomaly::NotRecovered {
                detail: format!("{}: no status after healing: {error}", replica.name),
            }),
        }
    }
    (report, anomalies)
}

/// Every replica's directory (`nexus-N`, spares and replaced ones too).
fn replica_dirs(cluster_dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(cluster_dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_dir()
                && path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("nexus-"))
        })
        .collect();
    dirs.sort();
    dirs
}

/// The slots of the completed backups an audit log records. A line cut
/// short by a kill -9 is skipped.
fn completed_slots(audit_log: &Path) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(audit_log) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["kind"] == "backup" && record["outcome"] == "completed")
        .filter_map(|record| record["slot"].as_u64())
        .collect()
}

/// Checks every backup file that has its checksum beside it; the files
/// verified and the anomalies.
fn verify_backups(dir: &Path) -> (u64, Vec<Anomaly>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, Vec::new());
    };
    let mut verified = 0;
    let mut anomalies = Vec::new();
    for path in entries.filter_map(Result::ok).map(|entry| entry.path()) {
        if path.extension().is_none_or(|extension| extension != "snap") {
            continue;
        }
        let mut sidecar = path.clone().into_os_string();
        sidecar.push(".sha256");
        // A file renamed into place just before a kill has no checksum yet.
        let Ok(expected) = std::fs::read_to_string(&sidecar) else {
            continue;
        };
        let expected = expected.split_whitespace().next().unwrap_or_default();
        match sha256_hex(&path) {
            Ok(actual) if actual == expected => verified += 1,
            Ok(actual) => anomalies.push(Anomaly::BackupFileCorrupt {
                file: path.display().to_string(),
                detail: format!("sha256 {actual}, its checksum file says {expected}"),
            }),
            // Pruned by the retention between the listing and now.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => anomalies.push(Anomaly::BackupFileCorrupt {
                file: path.display().to_string(),
                detail: format!("cannot read it: {error}"),
            }),
        }
    }
    (verified, anomalies)
}

fn sha256_hex(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
    }
    Ok(hex::encode(digest.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_backup_slots_are_read_from_an_audit_log_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("audit.log");
        std::fs::write(
            &log,
            concat!(
                r#"{"kind":"request","route":"/v1/store/secrets"}"#,
                "\n",
                r#"{"kind":"backup","outcome":"completed","slot":7}"#,
                "\n",
                r#"{"kind":"backup","outcome":"failed","slot":8}"#,
                "\n",
                r#"{"kind":"backup","outcome":"completed","slot":9}"#,
                "\n",
                r#"{"kind":"backup","outcome":"compl"#,
            ),
        )
        .expect("write");
        assert_eq!(completed_slots(&log), vec![7, 9]);
    }

    #[test]
    fn a_backup_file_that_does_not_match_its_checksum_is_an_anomaly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("a.snap");
        std::fs::write(&good, b"backup").expect("write");
        let digest = hex::encode(Sha256::digest(b"backup"));
        std::fs::write(
            dir.path().join("a.snap.sha256"),
            format!("{digest}  a.snap\n"),
        )
        .expect("write");
        let bad = dir.path().join("b.snap");
        std::fs::write(&bad, b"changed").expect("write");
        std::fs::write(
            dir.path().join("b.snap.sha256"),
            format!("{digest}  b.snap\n"),
        )
        .expect("write");
        let (verified, anomalies) = verify_backups(dir.path());
        assert_eq!(verified, 1);
        assert!(
            matches!(&anomalies[..], [Anomaly::BackupFileCorrupt { file, .. }] if file.ends_with("b.snap")),
            "{anomalies:?}"
        );
    }
}
