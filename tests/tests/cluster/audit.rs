//! The audit log: a genesis record at the head of every replica's file,
//! exactly one hash-chained line per API request, a verifier that finds
//! any edited, removed or reordered line and a cut-off head, and a replica
//! that refuses to run requests it cannot audit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use spike_tests::{ApiClient, LocalCluster, binary};

use crate::support::{Operators, RECOVERY_LIMIT, get, phase, put};

fn audit_lines(cluster: &LocalCluster, id: u64) -> Vec<String> {
    std::fs::read_to_string(cluster.data_dir(id).join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn spike_audit_verify(file: &std::path::Path) -> (bool, String) {
    let output = tokio::process::Command::new(binary("spike"))
        .env_clear()
        .arg("audit")
        .arg("verify")
        .arg(file)
        .output()
        .await
        .expect("run spike");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_audited_once_and_tampering_is_detected() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let stranger = ApiClient::new(&cluster.identity("lite-workload").await);
    let node = cluster.api(1);
    let before = audit_lines(&cluster, 1).len();

    phase("twelve requests of every outcome through one replica");
    for i in 0..5 {
        assert_eq!(
            put(&ops.superuser, node, &format!("a/{i}"), "v")
                .await
                .status,
            200
        );
    }
    for i in 0..5 {
        get(&ops.superuser, node, &format!("a/{i}")).await;
    }
    assert_eq!(get(&ops.superuser, node, "a/none").await.status, 404);
    let denied = stranger
        .post(node, "/v1/store/secrets?action=list", json!({}))
        .await
        .expect("reply");
    assert_eq!(denied.status, 401);

    let began = tokio::time::Instant::now();
    let lines = loop {
        let lines = audit_lines(&cluster, 1);
        if lines.len() >= before + 12 || began.elapsed() > RECOVERY_LIMIT {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        audit_lines(&cluster, 1).len(),
        before + 12,
        "one line per request, no more"
    );
    let new: Vec<serde_json::Value> = lines[before..]
        .iter()
        .map(|line| serde_json::from_str(line).expect("json line"))
        .collect();
    assert_eq!(new[0]["path"], "a/0");
    assert_eq!(new[10]["result"], "api_not_found");
    assert_eq!(new[11]["result"], "access_unauthorized");
    assert_eq!(
        new[11]["caller"],
        "spiffe://spike.ist/spike/workload/role/lite"
    );
    let raw = lines.join("\n");
    assert!(!raw.contains("\"v\""), "values never reach the audit log");

    phase("the verifier accepts the log and finds each kind of tampering");
    let intact = cluster.dir.path().join("audit-intact.log");
    std::fs::write(&intact, format!("{raw}\n")).expect("copy");
    let (ok, stderr) = spike_audit_verify(&intact).await;
    assert!(ok, "{stderr}");
    let head = cluster.dir.path().join("audit-head-cut.log");
    std::fs::write(&head, lines[1..].join("\n") + "\n").expect("copy");
    let (ok, stderr) = spike_audit_verify(&head).await;
    assert!(!ok, "a log without its head passed verification");
    assert!(
        stderr
            .contains("line 1: the log starts mid-chain at sequence 2, without its genesis record"),
        "{stderr}"
    );
    let tamper = |name: &str, lines: Vec<String>| {
        let path = cluster.dir.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        path
    };
    let mut edited = lines.clone();
    edited[before + 3] = edited[before + 3].replace("a/3", "a/9");
    let mut removed = lines.clone();
    removed.remove(before + 3);
    let mut reordered = lines.clone();
    reordered.swap(before + 3, before + 4);
    // The break shows on the first line whose `prev` no longer matches.
    let cases = [
        ("edited", edited, before + 5),
        ("removed", removed, before + 4),
        ("reordered", reordered, before + 4),
    ];
    for (name, copy, broken_at) in cases {
        let (ok, stderr) = spike_audit_verify(&tamper(name, copy)).await;
        assert!(!ok, "{name} log passed verification");
        assert!(
            stderr.contains(&format!("line {broken_at}: chain broken")),
            "{name}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_names_its_replica_and_the_leader_audits_key_changes() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let leader = crate::support::leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let rotated = ops
        .superuser
        .post(cluster.api(leader), "/v1/operator/rotate", json!({}))
        .await
        .expect("reply");
    assert_eq!(rotated.status, 200, "{:?}", rotated.body);

    phase("each file starts with its replica's genesis record");
    let mut initialized = 0;
    for id in 1..=3 {
        let lines = audit_lines(&cluster, id);
        let genesis: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(genesis["kind"], "genesis");
        assert_eq!(genesis["seq"], 1);
        assert_eq!(genesis["node"], id);
        assert_eq!(genesis["root_key_id"], "none", "made before initialization");
        assert!(
            genesis["spiffe_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("spiffe://spike.ist/spike/nexus")),
            "{genesis}"
        );
        let keys: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).expect("json"))
            .filter(|record: &serde_json::Value| record["kind"] == "key")
            .collect();
        initialized += keys
            .iter()
            .filter(|record| record["action"] == "initialize")
            .count();
        if id == leader {
            assert!(
                keys.iter()
                    .any(|record| record["action"] == "rotate_data_key"),
                "the leader's rotation is in its log: {keys:?}"
            );
        }
        let (ok, stderr) = spike_audit_verify(&cluster.data_dir(id).join("audit.log")).await;
        assert!(ok, "{stderr}");
    }
    assert_eq!(initialized, 1, "one leader initialized the cluster, once");
}

/// A 1 MiB tmpfs of the test's own (needs root), unmounted when dropped.
struct TinyDisk {
    path: PathBuf,
}

impl TinyDisk {
    fn mount(path: &Path) -> Option<Self> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "spike-audit-test"])
            .arg(path)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Self {
            path: path.to_owned(),
        })
    }

    fn filler(&self) -> PathBuf {
        self.path.join("filler")
    }

    /// Fills every free block.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.filler()).expect("filler");
        for chunk in [64 * 1024, 4096, 1] {
            while filler.write_all(&vec![0; chunk]).is_ok() {}
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.filler()).expect("remove filler");
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazily: the replica may still hold the log open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_write_its_audit_log_refuses_every_request_and_runs_none() {
    let mut cluster = LocalCluster::up(&[]);
    let Some(disk) = TinyDisk::mount(&cluster.dir.path().join("audit-disk")) else {
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let ops = Operators::of(&cluster).await;

    phase("replica 1's audit log moves onto a 1 MiB disk of its own");
    cluster.act("stop", "nexus-1");
    let log = cluster.data_dir(1).join("audit.log");
    let moved = disk.path.join("audit.log");
    std::fs::copy(&log, &moved).expect("move the log");
    std::fs::remove_file(&log).expect("move the log");
    std::os::unix::fs::symlink(&moved, &log).expect("link the log");
    cluster.act("start", "nexus-1");
    cluster.wait_ready(1, RECOVERY_LIMIT).await;
    let node = cluster.api(1);
    assert_eq!(put(&ops.superuser, node, "before", "v").await.status, 200);

    phase("the disk fills up: the first write its record does not fit is answered 503");
    disk.fill();
    // The log's last page may still take a few lines.
    let mut boundary = None;
    for i in 0..200 {
        let reply = put(&ops.superuser, node, &format!("fill/{i}"), "v").await;
        if reply.status == 200 {
            continue;
        }
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["err"], "audit_unavailable");
        boundary = Some(i);
        break;
    }
    let boundary = boundary.expect("replica 1 kept answering 200 with its audit disk full");

    phase("while the log cannot be written, nothing runs");
    for i in 0..5 {
        let reply = put(&ops.superuser, node, &format!("refused/{i}"), "v").await;
        assert_eq!(reply.status, 503, "{:?}", reply.body);
        assert_eq!(reply.body["err"], "audit_unavailable");
    }
    let read = get(&ops.superuser, node, "before").await;
    assert_eq!(read.status, 503, "reads are refused too: {:?}", read.body);

    phase("space comes back, and so does the replica");
    disk.free();
    let began = tokio::time::Instant::now();
    while put(&ops.superuser, node, "after", "v").await.status != 200 {
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "replica 1 still refuses after its disk has room"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    phase("none of the refused writes ran, and the log is whole");
    for i in 0..5 {
        let read = get(&ops.superuser, cluster.api(2), &format!("refused/{i}")).await;
        assert_eq!(read.status, 404, "refused/{i} was written: {:?}", read.body);
    }
    let (ok, stderr) = spike_audit_verify(&moved).await;
    assert!(ok, "{stderr}");
    let lines = audit_lines(&cluster, 1);
    let has = |path: &str| {
        lines
            .iter()
            .any(|line| line.contains(&format!("\"path\":\"{path}\"")))
    };
    // The write that was running when the disk filled did run; its record
    // waited in memory and was written first when space came back.
    assert!(
        has(&format!("fill/{boundary}")),
        "the running write's record was lost"
    );
    assert!(has("after"));
    assert!(!(0..5).any(|i| has(&format!("refused/{i}"))));
}
