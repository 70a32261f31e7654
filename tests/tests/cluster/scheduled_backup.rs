//! Scheduled backups: the leader writes one verified backup per interval
//! slot, whoever leads; the replicated record's slots go up by one with no
//! gap and no slot has two files across the replicas; old files are
//! pruned; a backup restores into a fresh cluster; a backup directory that
//! cannot be written fails the backup, not the cluster.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use spike_tests::LocalCluster;

use crate::backup::{restore_into_fresh_cluster, small_cluster_with};
use crate::support::{
    Operators, RECOVERY_LIMIT, leader, phase, put, put_until_ok, read_until, recovery_shards,
    status,
};

const INTERVAL_MS: u64 = 2_000;
const RETAIN: usize = 3;

/// Every backup record (`kind` backup) in replica `id`'s audit log.
fn backup_records(cluster: &LocalCluster, id: u64) -> Vec<Value> {
    std::fs::read_to_string(cluster.data_dir(id).join("audit.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["kind"] == "backup")
        .collect()
}

/// Replica `id`'s log lines about backups, for a failure's message.
fn backup_log(cluster: &LocalCluster, id: u64) -> String {
    std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join("logs")
            .join(format!("nexus-{id}.log")),
    )
    .unwrap_or_default()
    .lines()
    .filter(|line| line.contains("backup"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Backup file names in `dir` (not sidecars).
fn backup_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .filter(|name| name.starts_with("spike-backup-") && name.ends_with(".snap"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The UTC stamp in a backup's name: it names the slot.
fn stamp(name: &str) -> &str {
    &name["spike-backup-".len().."spike-backup-".len() + 16]
}

async fn last_backup(cluster: &LocalCluster, ops: &Operators, id: u64) -> Option<Value> {
    let status = status(&ops.superuser, cluster.api(id)).await?;
    status.get("lastBackup").cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_backs_up_once_per_slot_whoever_leads_and_a_backup_restores() {
    let interval = format!("--nexus-arg=--backup-interval={INTERVAL_MS}ms");
    let retain = format!("--nexus-arg=--backup-retain={RETAIN}");
    let a = small_cluster_with(&[&interval, &retain]);
    let ops = Operators::of(&a).await;
    let ids = [1, 2, 3];
    for (path, value) in [("sched/1", "one"), ("sched/2", "two")] {
        assert_eq!(put(&ops.superuser, a.api(1), path, value).await.status, 200);
    }

    phase("backups appear on schedule; leadership moves twice mid-schedule");
    let mut seen: BTreeMap<u64, Value> = BTreeMap::new();
    let began = tokio::time::Instant::now();
    let mut transfers = 0;
    let mut first_leader = None;
    while began.elapsed() < Duration::from_secs(18) {
        for id in ids {
            if let Some(last) = last_backup(&a, &ops, id).await
                && let Some(slot) = last["slot"].as_u64()
            {
                seen.insert(slot, last);
            }
        }
        let due = (began.elapsed() > Duration::from_secs(6) && transfers == 0)
            || (began.elapsed() > Duration::from_secs(10) && transfers == 1);
        if due && seen.len() >= 2 {
            let from = leader(&ops.superuser, &a, &ids).await;
            // Away and back, so the first leader writes more than it keeps.
            let to = match first_leader {
                None => {
                    first_leader = Some(from);
                    ids.into_iter()
                        .find(|id| *id != from)
                        .expect("another voter")
                }
                Some(first) => first,
            };
            let reply = ops
                .superuser
                .post(
                    a.api(from),
                    "/v1/cluster?action=transfer",
                    json!({ "id": to }),
                )
                .await
                .expect("transfer");
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            transfers += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(transfers, 2, "leadership moved twice: {seen:?}");
    // The last record's audit line follows its commit.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(seen.len() >= 5, "a backup about every 2 s: {seen:?}");

    phase("the recorded slots go up by one, taken by more than one leader");
    let mut completed: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    for id in ids {
        for record in backup_records(&a, id) {
            assert_ne!(
                record["outcome"],
                "failed",
                "{record}\n{}",
                backup_log(&a, id)
            );
            if record["outcome"] == "completed" {
                let slot = record["slot"].as_u64().expect("slot");
                let file = record["file"].as_str().expect("file").to_owned();
                assert!(
                    completed.insert(slot, (id, file)).is_none(),
                    "slot {slot} completed twice"
                );
            }
        }
    }
    let slots: Vec<u64> = completed.keys().copied().collect();
    assert!(
        slots.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "no gap while a leader exists: {slots:?}"
    );
    for (slot, last) in &seen {
        let (node, file) = &completed[slot];
        assert_eq!(last["node"].as_u64(), Some(*node), "{last}");
        assert_eq!(last["file"].as_str(), Some(file.as_str()), "{last}");
    }
    let writers: std::collections::BTreeSet<u64> =
        completed.values().map(|(node, _)| *node).collect();
    assert!(
        writers.len() >= 2,
        "more than one leader wrote: {completed:?}"
    );

    phase("names, verification, retention; no slot has two files anywhere");
    let mut stamps: BTreeMap<String, String> = BTreeMap::new();
    for id in ids {
        let dir = a.data_dir(id).join("backups");
        let files = backup_files(&dir);
        assert!(files.len() <= RETAIN, "node {id} keeps {RETAIN}: {files:?}");
        for file in files {
            let (_, rest) = file.split_at("spike-backup-".len() + 16);
            assert!(
                rest.starts_with("-i") && rest.contains("-rk1.snap"),
                "{file}"
            );
            let bytes = std::fs::read(dir.join(&file)).expect("read backup");
            let sidecar =
                std::fs::read_to_string(dir.join(format!("{file}.sha256"))).expect("sidecar");
            assert_eq!(
                sidecar,
                format!("{}  {file}\n", hex::encode(Sha256::digest(&bytes)))
            );
            if let Some(other) = stamps.insert(stamp(&file).to_owned(), file.clone()) {
                panic!("two files of one slot: {other} and {file}");
            }
        }
    }
    let writer_dirs = writers
        .iter()
        .filter(|id| !backup_files(&a.data_dir(**id).join("backups")).is_empty())
        .count();
    assert_eq!(writer_dirs, writers.len(), "every leader kept its backups");
    let mut pruned = false;
    for id in ids {
        let wrote = completed.values().filter(|(node, _)| *node == id).count();
        let kept = backup_files(&a.data_dir(id).join("backups")).len();
        if wrote > RETAIN {
            assert_eq!(kept, RETAIN, "node {id} wrote {wrote} and keeps {RETAIN}");
            pruned = true;
        }
    }
    assert!(pruned, "a leader wrote more than it keeps: {completed:?}");

    phase("the newest backup restores into a fresh cluster with its key's shards");
    let newest = completed.values().next_back().expect("a backup");
    let path = a.data_dir(newest.0).join("backups").join(&newest.1);
    let backup = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        // Pruned or superseded meanwhile? The record's file is the newest.
        Err(error) => panic!("{}: {error}", path.display()),
    };
    let shards = recovery_shards(&ops.recover, a.api(1)).await;
    let b = restore_into_fresh_cluster(backup, shards, "sched/1").await;
    let ops_b = Operators::of(&b).await;
    read_until(&ops_b.superuser, b.api(3), "sched/1", "one").await;
    read_until(&ops_b.superuser, b.api(2), "sched/2", "two").await;
    drop(b);

    phase("a backup directory that cannot be written fails backups, not the cluster");
    let leader_id = leader(&ops.superuser, &a, &ids).await;
    let dir = a.data_dir(leader_id).join("backups");
    std::fs::rename(&dir, a.data_dir(leader_id).join("backups.moved")).expect("move away");
    std::fs::write(&dir, b"not a directory").expect("block the directory");
    let failed_before = backup_records(&a, leader_id)
        .iter()
        .filter(|record| record["outcome"] == "failed")
        .count();
    let began = tokio::time::Instant::now();
    let failure = loop {
        let failures: Vec<Value> = backup_records(&a, leader_id)
            .into_iter()
            .filter(|record| record["outcome"] == "failed")
            .collect();
        if failures.len() > failed_before {
            break failures.last().cloned().expect("a failure");
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "no failure was audited on node {leader_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failure["reason"]
            .as_str()
            .is_some_and(|r| r.contains("backup")),
        "{failure}"
    );
    let status = status(&ops.superuser, a.api(leader_id))
        .await
        .expect("status");
    assert!(
        status["backupSchedule"]["failed"].as_u64() >= Some(1),
        "{status}"
    );
    put_until_ok(&ops.superuser, a.api(leader_id), "sched/3", "three").await;
    read_until(&ops.superuser, a.api(2), "sched/3", "three").await;
}
