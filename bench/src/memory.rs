//! The memory trial (`--memory-keys`): each peer's store grown to many
//! keys (a million for issue 17), then each member's resident memory and
//! data files on disk, one member's restart until it serves again, and a
//! new member added to the grown cluster until it has caught up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use spike_dev_cluster::Action;

use crate::etcd::{EtcdCluster, EtcdStore};
use crate::load::{self, LoadShape, Store, Workload};
use crate::nexus::{NexusCluster, NexusStore};
use crate::report::{CatchUp, Footprint, MemoryTrial};
use crate::vault::{VaultCluster, VaultStore};

/// Longest a replica or member may take to serve again after a restart on
/// a grown store.
const RESTART_LIMIT: Duration = Duration::from_secs(120);

/// Longest a new member may take to catch up with a grown store.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(600);

/// Clients writing the keys: enough to keep every peer's batching busy
/// (a million keys one at a time would take the better part of an hour).
const LOAD_CLIENTS: usize = 64;

/// How often the load reports its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the trial is asked for.
#[derive(Debug, Clone, Copy)]
pub struct Sizing {
    /// Keys the store grows to (the first `--keys` are overwritten).
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
}

/// Writes `sizing.keys` keys with [`LOAD_CLIENTS`] clients, printing the
/// progress every few seconds; how long it took.
async fn grow<S: Store>(target: &str, store: &Arc<S>, sizing: Sizing) -> anyhow::Result<Duration> {
    let shape = LoadShape {
        workload: Workload::Put,
        clients: LOAD_CLIENTS,
        duration: Duration::ZERO,
        keys: sizing.keys,
        value_size: sizing.value_size,
    };
    let written = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let load = load::preload_counted(store, &shape, &written);
    tokio::pin!(load);
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            done = &mut load => {
                done.map_err(|e| anyhow::anyhow!("{target}: growing the store: {e}"))?;
                break;
            }
            _ = ticks.tick() => {
                let count = written.load(Ordering::Relaxed);
                eprintln!(
                    "{target}: {count} of {} keys written ({:.0}/s)",
                    sizing.keys,
                    count as f64 / began.elapsed().as_secs_f64()
                );
            }
        }
    }
    let took = began.elapsed();
    eprintln!("{target}: {} keys written in {took:.1?}", sizing.keys);
    Ok(took)
}

/// Bytes under `path`: a file's length, or everything in a directory.
fn bytes_of(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| bytes_of(&entry.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Member `member`'s data directory `root`: its total and each of `parts`
/// that exists.
pub fn footprint(member: &str, root: &Path, parts: &[&str]) -> Footprint {
    Footprint {
        member: member.to_owned(),
        total_bytes: bytes_of(root),
        parts: parts
            .iter()
            .filter(|part| root.join(part).exists())
            .map(|part| ((*part).to_owned(), bytes_of(&root.join(part))))
            .collect(),
    }
}

/// What of our data directory the table shows.
const NEXUS_PARTS: [&str; 3] = ["state.redb", "log.redb", "snapshots"];
/// What of etcd's: its bbolt database (what it sends as a snapshot), its
/// Raft snapshots and its write-ahead log.
const ETCD_PARTS: [&str; 3] = ["member/snap/db", "member/snap", "member/wal"];
/// What of Vault's: its state (BoltDB), its Raft log and its snapshots.
const VAULT_PARTS: [&str; 3] = ["vault.db", "raft/raft.db", "raft/snapshots"];

fn footprints(dirs: &[(String, std::path::PathBuf)], parts: &[&str]) -> Vec<Footprint> {
    dirs.iter()
        .map(|(member, dir)| footprint(member, dir, parts))
        .collect()
}

pub async fn nexus(
    cluster: &mut NexusCluster,
    store: &Arc<NexusStore>,
    sizing: Sizing,
) -> anyhow::Result<MemoryTrial> {
    let load = grow("nexus", store, sizing).await?;
    let resident_kib = cluster.resident_kib();
    let disk = footprints(&cluster.data_dirs(), &NEXUS_PARTS);
    // A follower: the leader's restart would time an election too.
    let (leader, _) = cluster.leader_applied()?;
    let restarted = resident_kib
        .iter()
        .map(|(name, _)| name.clone())
        .find(|name| *name != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower to restart"))?;
    cluster.act(Action::Kill, &restarted)?;
    let took = cluster.restart_and_wait(&restarted, RESTART_LIMIT)?;
    let catch_up = match cluster.spare() {
        Some(spare) => {
            eprintln!("nexus: {spare} joins and catches up");
            let joined = cluster.join_and_wait(&spare, CATCH_UP_LIMIT).await?;
            let dir = cluster
                .data_dirs()
                .into_iter()
                .find(|(name, _)| *name == spare)
                .map(|(_, dir)| dir);
            Some(CatchUp {
                member: spare.clone(),
                caught_up_ms: joined.caught_up.as_secs_f64() * 1000.0,
                target_index: Some(joined.target_index),
                snapshot_bytes: joined.installed_bytes,
                disk: dir.map(|dir| footprint(&spare, &dir, &NEXUS_PARTS)),
            })
        }
        None => None,
    };
    Ok(MemoryTrial {
        keys: sizing.keys,
        load_s: Some(load.as_secs_f64()),
        resident_kib,
        disk,
        restarted: Some(restarted),
        restart_to_serving_ms: took.as_secs_f64() * 1000.0,
        catch_up,
    })
}

pub async fn etcd(
    cluster: &mut EtcdCluster,
    store: &Arc<EtcdStore>,
    sizing: Sizing,
) -> anyhow::Result<MemoryTrial> {
    let load = grow("etcd", store, sizing).await?;
    let resident_kib = cluster.resident_kib();
    let disk = footprints(&cluster.data_dirs(), &ETCD_PARTS);
    let leader = cluster.leader().await?;
    let restarted = usize::from(leader == 0);
    cluster.kill(restarted);
    let took = cluster.restart_and_wait(restarted, RESTART_LIMIT).await?;
    eprintln!("etcd: a new member joins and catches up");
    let added = cluster.add_member_and_wait(CATCH_UP_LIMIT).await?;
    let dir = cluster
        .data_dirs()
        .into_iter()
        .find(|(name, _)| *name == added.name)
        .map(|(_, dir)| dir);
    let names = cluster.data_dirs();
    Ok(MemoryTrial {
        keys: sizing.keys,
        load_s: Some(load.as_secs_f64()),
        resident_kib,
        disk,
        restarted: names.get(restarted).map(|(name, _)| name.clone()),
        restart_to_serving_ms: took.as_secs_f64() * 1000.0,
        catch_up: Some(CatchUp {
            member: added.name.clone(),
            caught_up_ms: added.serving.as_secs_f64() * 1000.0,
            target_index: Some(added.leader_index),
            snapshot_bytes: added.snapshot_bytes,
            disk: dir.map(|dir| footprint(&added.name, &dir, &ETCD_PARTS)),
        }),
    })
}

/// Vault: no new node is added (its join is an unseal dance of its own
/// that the benchmark does not time).
pub async fn vault(
    cluster: &mut VaultCluster,
    store: &Arc<VaultStore>,
    sizing: Sizing,
) -> anyhow::Result<MemoryTrial> {
    let load = grow("vault", store, sizing).await?;
    let resident_kib = cluster.resident_kib();
    let disk = footprints(&cluster.data_dirs(), &VAULT_PARTS);
    let active = cluster.active().await?;
    let restarted = usize::from(active == 0);
    cluster.kill(restarted);
    let took = cluster.restart_and_wait(restarted, RESTART_LIMIT).await?;
    Ok(MemoryTrial {
        keys: sizing.keys,
        load_s: Some(load.as_secs_f64()),
        restarted: cluster
            .data_dirs()
            .get(restarted)
            .map(|(name, _)| name.clone()),
        resident_kib,
        disk,
        restart_to_serving_ms: took.as_secs_f64() * 1000.0,
        catch_up: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_footprint_adds_up_files_and_directories_and_skips_what_is_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("state.redb"), vec![0u8; 3000]).expect("write");
        std::fs::create_dir_all(root.join("snapshots/deeper")).expect("mkdir");
        std::fs::write(root.join("snapshots/a.snap"), vec![0u8; 100]).expect("write");
        std::fs::write(root.join("snapshots/deeper/b.snap"), vec![0u8; 20]).expect("write");
        std::fs::write(root.join("audit.log"), vec![0u8; 7]).expect("write");
        let footprint = footprint("nexus-1", root, &NEXUS_PARTS);
        assert_eq!(footprint.member, "nexus-1");
        assert_eq!(footprint.total_bytes, 3127);
        assert_eq!(
            footprint.parts,
            vec![
                ("state.redb".to_owned(), 3000),
                ("snapshots".to_owned(), 120)
            ],
            "log.redb is missing, so not shown"
        );
    }
}
