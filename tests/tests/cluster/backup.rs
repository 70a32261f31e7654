//! Backups of the encrypted store: saved from any replica, restored through
//! Raft into the same cluster (the keepers still hold its key) or into
//! another one (its operator restores the backup's shards).

use serde_json::json;
use spike_tests::LocalCluster;

use crate::support::{Operators, RECOVERY_LIMIT, get, phase, put, recovery_shards, value_of};
use spike_tests::save_backup;

/// 3 replicas, 3 keepers, threshold 2 (`extra`: more launcher flags).
pub fn small_cluster_with(extra: &[&str]) -> LocalCluster {
    let mut args = vec!["--keepers", "3", "--threshold", "2"];
    args.extend_from_slice(extra);
    LocalCluster::up(&args)
}

pub fn small_cluster() -> LocalCluster {
    small_cluster_with(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_the_same_cluster_and_into_another() {
    let a = small_cluster();
    let ops = Operators::of(&a).await;
    for (path, value) in [("b/1", "one"), ("b/2", "two")] {
        assert_eq!(put(&ops.superuser, a.api(1), path, value).await.status, 200);
    }
    // Custom metadata (on-disk format 3) travels in backups too; a new
    // cluster writes format 3 a few seconds after it starts.
    let custom = json!({"path": "b/1", "customMetadata": {"owner": "team-b"}});
    let began = std::time::Instant::now();
    loop {
        let reply = ops
            .superuser
            .post(
                a.api(2),
                "/v1/store/secrets/metadata?action=put",
                custom.clone(),
            )
            .await
            .expect("custom metadata");
        if reply.status == 200 {
            break;
        }
        assert!(
            reply.status == 503 && began.elapsed() < std::time::Duration::from_secs(20),
            "custom metadata put: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let policy = json!({"name": "kept", "spiffeidPattern": "^spiffe://spike\\.ist/app/x$", "pathPattern": "^b/", "permissions": ["read"]});
    assert_eq!(
        ops.superuser
            .post(a.api(1), "/v1/acl/policy", policy)
            .await
            .expect("policy")
            .status,
        200
    );

    phase("save a backup through a follower, and the shards of its key");
    let saved = save_backup(&ops.superuser, a.api(2)).await;
    assert_eq!(saved.status, 200);
    let backup = saved.bytes;
    // The cluster's format: 1 until the leader's first check switches a
    // new cluster to the newest, within about a second of forming.
    assert!(
        backup.starts_with(b"SPKSNAPV\0\0\0")
            && (1..=3).contains(&backup.get(11).copied().unwrap_or(0)),
        "magic and on-disk format 1 to 3"
    );
    assert!(
        !backup.windows(3).any(|w| w == b"one"),
        "a backup holds ciphertext only"
    );
    let shards = recovery_shards(&ops.recover, a.api(1)).await;

    phase("change things, then restore the backup into the same cluster");
    assert_eq!(
        ops.superuser
            .post(
                a.api(1),
                "/v1/store/secrets?action=delete",
                json!({"path": "b/1"})
            )
            .await
            .expect("delete")
            .status,
        200
    );
    assert_eq!(
        put(&ops.superuser, a.api(1), "b/3", "three").await.status,
        200
    );
    let restored = ops
        .superuser
        .raw(
            a.api(3),
            "POST",
            "/v1/snapshot?action=restore",
            "application/octet-stream",
            backup.clone(),
        )
        .await
        .expect("restore");
    let log =
        std::fs::read_to_string(a.dir.path().join("logs").join("nexus-3.log")).unwrap_or_default();
    let failures: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("request failed"))
        .collect();
    assert_eq!(
        restored.status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&restored.bytes),
        failures.join("\n")
    );
    for id in 1..=3 {
        a.wait_ready(id, RECOVERY_LIMIT).await;
    }
    assert_eq!(
        value_of(&get(&ops.superuser, a.api(2), "b/1").await).as_deref(),
        Some("one")
    );
    assert_eq!(get(&ops.superuser, a.api(2), "b/3").await.status, 404);
    assert_eq!(
        custom_metadata_owner(&ops.superuser, a.api(3), "b/1").await,
        "team-b"
    );
    let kept = ops
        .superuser
        .post(a.api(1), "/v1/acl/policy?action=get", json!({"id": "kept"}))
        .await
        .expect("get");
    assert_eq!(kept.status, 200);

    phase("a corrupt backup is refused and changes nothing");
    let mut corrupt = backup.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 1;
    let refused = ops
        .superuser
        .raw(
            a.api(1),
            "POST",
            "/v1/snapshot?action=restore",
            "application/octet-stream",
            corrupt,
        )
        .await
        .expect("restore");
    assert_eq!(refused.status, 400);
    assert_eq!(
        value_of(&get(&ops.superuser, a.api(2), "b/2").await).as_deref(),
        Some("two")
    );

    phase("restore into another cluster: locked until the backup's shards come");
    let b = restore_into_fresh_cluster(backup, shards, "b/1").await;
    let ops_b = Operators::of(&b).await;
    assert_eq!(
        value_of(&get(&ops_b.superuser, b.api(3), "b/2").await).as_deref(),
        Some("two")
    );
    assert_eq!(
        custom_metadata_owner(&ops_b.superuser, b.api(1), "b/1").await,
        "team-b"
    );
}

/// Restores `backup` into a new cluster: the store is locked (503 for
/// `held`, a secret the backup holds) until the operator restores the
/// backup's root key from its recovery `shards` (a threshold of them),
/// then every replica serves it.
pub async fn restore_into_fresh_cluster(
    backup: Vec<u8>,
    shards: Vec<(u64, Vec<u8>)>,
    held: &str,
) -> LocalCluster {
    let b = small_cluster();
    let ops_b = Operators::of(&b).await;
    let restored = ops_b
        .superuser
        .raw(
            b.api(1),
            "POST",
            "/v1/snapshot?action=restore",
            "application/octet-stream",
            backup,
        )
        .await
        .expect("restore");
    assert_eq!(
        restored.status,
        200,
        "{}",
        String::from_utf8_lossy(&restored.bytes)
    );
    assert_eq!(get(&ops_b.superuser, b.api(2), held).await.status, 503);
    restore_root_key(&ops_b, &b, shards).await;
    b
}

/// Gives `cluster` a restored backup's root key from a threshold of its
/// recovery `shards`, then waits until every replica serves.
pub async fn restore_root_key(
    ops: &Operators,
    cluster: &LocalCluster,
    shards: Vec<(u64, Vec<u8>)>,
) {
    for (index, shard) in shards.into_iter().take(2) {
        let reply = ops
            .restore
            .post(
                cluster.api(2),
                "/v1/operator/restore",
                json!({"id": index, "shard": shard}),
            )
            .await
            .expect("restore shard");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
    }
}

/// The `owner` custom metadata of `path`, as metadata get answers it.
async fn custom_metadata_owner(
    client: &spike_tests::ApiClient,
    api: std::net::SocketAddr,
    path: &str,
) -> String {
    let reply = client
        .post(
            api,
            "/v1/store/secrets/metadata?action=get",
            json!({"path": path}),
        )
        .await
        .expect("metadata get");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body["customMetadata"]["owner"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
