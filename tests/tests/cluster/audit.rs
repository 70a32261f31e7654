//! The audit log: exactly one hash-chained line per API request, and a
//! verifier that finds any edited, removed or reordered line.

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
