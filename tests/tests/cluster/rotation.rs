//! Automatic key rotation against real processes: data keys by age (once
//! per due point, whoever leads), data keys by encryption count, the root
//! key by age (keepers hold the new shares), and background re-encryption
//! that never loses or alters a value, even with writes going on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use spike_tests::{ApiClient, LocalCluster};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{Operators, RECOVERY_LIMIT, get, leader, phase, put, value_of};

/// The default encryption count (far above what a test writes).
const OPS_DEFAULT: u64 = 1 << 30;

/// Sets the replicated rotation settings through `node`, retrying while
/// the new cluster has not switched to format 3 yet (about 2 s after start).
async fn set_rotation(client: &ApiClient, node: std::net::SocketAddr, settings: Value) -> Value {
    let began = tokio::time::Instant::now();
    loop {
        let reply = client
            .post(
                node,
                "/v1/operator/rotation?action=set",
                json!({ "settings": settings }),
            )
            .await
            .expect("rotation set reaches the node");
        if reply.status == 200 {
            assert_eq!(reply.body["replicated"], true, "{:?}", reply.body);
            return reply.body;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "rotation set refused: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn rotation(client: &ApiClient, node: std::net::SocketAddr) -> Value {
    let reply = client
        .post(node, "/v1/operator/rotation?action=get", json!({}))
        .await
        .expect("rotation get reaches the node");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    reply.body
}

/// One key change a leader audited.
#[derive(Debug)]
struct KeyChange {
    node: u64,
    at: OffsetDateTime,
    /// The new data key (rotations) or root key (rekeys).
    key: u64,
    trigger: String,
}

/// The key changes of kind `action` in every replica's audit log.
fn key_changes(cluster: &LocalCluster, ids: &[u64], action: &str) -> Vec<KeyChange> {
    let mut changes = Vec::new();
    for id in ids {
        let text =
            std::fs::read_to_string(cluster.data_dir(*id).join("audit.log")).unwrap_or_default();
        for line in text.lines() {
            let record: Value = serde_json::from_str(line).expect("an audit line is JSON");
            if record["kind"] != "key" || record["action"] != action {
                continue;
            }
            let key = if action == "rotate_data_key" {
                record["data_key"].as_u64()
            } else {
                record["root_key_id"].as_u64()
            };
            changes.push(KeyChange {
                node: *id,
                at: OffsetDateTime::parse(record["time"].as_str().expect("time"), &Rfc3339)
                    .expect("RFC 3339 time"),
                key: key.expect("the new key's id"),
                trigger: record["trigger"].as_str().unwrap_or("").to_owned(),
            });
        }
    }
    changes.sort_by_key(|change| change.key);
    changes
}

/// Every change made one step, no key twice (two leaders acting on one due
/// point would make two), and none sooner than `max_age` after the one
/// before (less a little for the audit record's own delay).
fn assert_once_per_due_point(changes: &[KeyChange], max_age: Duration) {
    for pair in changes.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert_eq!(
            after.key,
            before.key + 1,
            "keys advance one at a time, each once: {changes:#?}"
        );
        let gap = after.at - before.at;
        assert!(
            gap >= time::Duration::try_from(max_age).expect("duration")
                - time::Duration::milliseconds(500),
            "key {} came {gap} after key {}, before its due point: {changes:#?}",
            after.key,
            before.key
        );
    }
}

async fn move_leadership(client: &ApiClient, cluster: &LocalCluster, from: u64) -> u64 {
    let to = if from == 3 { 1 } else { from + 1 };
    let reply = client
        .post(
            cluster.api(from),
            "/v1/cluster?action=transfer",
            json!({ "id": to }),
        )
        .await
        .expect("transfer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let began = tokio::time::Instant::now();
    while leader(client, cluster, &[1, 2, 3]).await != to {
        assert!(began.elapsed() < RECOVERY_LIMIT, "leadership did not move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    to
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_by_age_once_per_due_point_across_leader_changes() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let mut leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    put(&ops.superuser, cluster.api(1), "before/rotation", "v0").await;

    phase("data keys age out after 2 s");
    let max_age = Duration::from_secs(2);
    let set = set_rotation(
        &ops.superuser,
        cluster.api(2),
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "dataKeyMaxAgeSeconds": 2}),
    )
    .await;
    let first_key = set["activeDataKeyId"].as_u64().expect("active data key");
    let began = tokio::time::Instant::now();

    phase("leadership moves twice while keys rotate");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        leader_id = move_leadership(&ops.superuser, &cluster, leader_id).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Stop rotating, so the audit logs hold every rotation made.
    set_rotation(
        &ops.superuser,
        cluster.api(leader_id),
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "dataKeyMaxAgeSeconds": 0}),
    )
    .await;
    let elapsed = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let changes: Vec<_> = key_changes(&cluster, &[1, 2, 3], "rotate_data_key")
        .into_iter()
        .filter(|change| change.key > first_key)
        .collect();
    eprintln!(
        "{} rotations in {elapsed:?}: {:?}",
        changes.len(),
        changes
            .iter()
            .map(|change| (change.key, change.node))
            .collect::<Vec<_>>()
    );
    assert!(
        changes.iter().all(|change| change.trigger == "age"),
        "{changes:#?}"
    );
    assert_eq!(
        changes.first().map(|change| change.key),
        Some(first_key + 1)
    );
    assert_once_per_due_point(&changes, max_age);
    let most = elapsed.as_secs() / 2 + 1;
    assert!(
        (4..=most as usize).contains(&changes.len()),
        "{} rotations in {elapsed:?} at one per 2 s",
        changes.len()
    );
    let leaders: BTreeSet<u64> = changes.iter().map(|change| change.node).collect();
    assert!(
        leaders.len() >= 2,
        "rotations by one leader only: {leaders:?}"
    );
    let state = rotation(&ops.superuser, cluster.api(leader_id)).await;
    assert_eq!(
        state["activeDataKeyId"].as_u64(),
        changes.last().map(|change| change.key),
        "every rotation is audited"
    );

    phase("the value sealed under the first data key still reads everywhere");
    for id in [1, 2, 3] {
        let read = get(&ops.superuser, cluster.api(id), "before/rotation").await;
        assert_eq!(value_of(&read).as_deref(), Some("v0"), "nexus-{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_rotate_after_the_replicated_encryption_count() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let set = set_rotation(
        &ops.superuser,
        cluster.api(1),
        json!({"dataKeyRotateAfterOps": 5, "dataKeyMaxAgeSeconds": 0}),
    )
    .await;
    let first_key = set["activeDataKeyId"].as_u64().expect("active data key");

    phase("writes use up data keys five encryptions at a time");
    for i in 0..30 {
        let reply = put(
            &ops.superuser,
            cluster.api(1 + i % 3),
            &format!("ops/{i}"),
            &format!("v{i}"),
        )
        .await;
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let began = tokio::time::Instant::now();
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    loop {
        let state = rotation(&ops.superuser, cluster.api(leader_id)).await;
        if state["activeDataKeyId"].as_u64().expect("id") >= first_key + 3 {
            break;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "no rotation by count: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let changes: Vec<_> = key_changes(&cluster, &[1, 2, 3], "rotate_data_key")
        .into_iter()
        .filter(|change| change.key > first_key)
        .collect();
    assert!(
        changes.iter().all(|change| change.trigger == "operations"),
        "{changes:#?}"
    );
    assert_once_per_due_point(&changes, Duration::ZERO);
    for i in 0..30 {
        let read = get(
            &ops.superuser,
            cluster.api(1 + (i + 1) % 3),
            &format!("ops/{i}"),
        )
        .await;
        assert_eq!(value_of(&read), Some(format!("v{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_key_is_replaced_by_age_and_keepers_hold_the_new_shares() {
    let mut cluster = LocalCluster::up(&["--keepers", "3", "--threshold", "2"]);
    let ops = Operators::of(&cluster).await;
    for i in 0..10 {
        put(
            &ops.superuser,
            cluster.api(1),
            &format!("root/{i}"),
            &format!("v{i}"),
        )
        .await;
    }

    phase("root keys age out after 3 s");
    let set = set_rotation(
        &ops.superuser,
        cluster.api(1),
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "rootKeyMaxAgeSeconds": 3}),
    )
    .await;
    let first_root = set["rootKeyId"].as_u64().expect("root key id");
    let began = tokio::time::Instant::now();
    let mut leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    loop {
        let state = rotation(&ops.superuser, cluster.api(leader_id)).await;
        if state["rootKeyId"].as_u64().expect("id") >= first_root + 3 {
            break;
        }
        assert!(
            began.elapsed() < 2 * RECOVERY_LIMIT,
            "no rekey by age: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    }
    set_rotation(
        &ops.superuser,
        cluster.api(leader_id),
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "rootKeyMaxAgeSeconds": 0}),
    )
    .await;
    let final_root = rotation(&ops.superuser, cluster.api(leader_id)).await["rootKeyId"]
        .as_u64()
        .expect("id");
    let changes: Vec<_> = key_changes(&cluster, &[1, 2, 3], "rekey")
        .into_iter()
        .filter(|change| change.key > first_root)
        .collect();
    assert!(
        changes.iter().all(|change| change.trigger == "age"),
        "{changes:#?}"
    );
    assert_eq!(changes.last().map(|change| change.key), Some(final_root));
    assert_once_per_due_point(&changes, Duration::from_secs(3));

    phase("every replica reads everything under the new root key");
    for id in [1, 2, 3] {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
        for i in 0..10 {
            let read = get(&ops.superuser, cluster.api(id), &format!("root/{i}")).await;
            assert_eq!(value_of(&read), Some(format!("v{i}")), "nexus-{id}");
        }
    }

    phase("a restarted follower rebuilds the new root key from the keepers");
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");
    cluster.act("stop", &format!("nexus-{follower}"));
    cluster.act("start", &format!("nexus-{follower}"));
    cluster.wait_ready(follower, RECOVERY_LIMIT).await;
    let status = crate::support::status(&ops.superuser, cluster.api(follower))
        .await
        .expect("status");
    assert_eq!(
        status["rootKey"]["rootKeyId"].as_u64(),
        Some(final_root),
        "{status:?}"
    );
    let read = get(&ops.superuser, cluster.api(follower), "root/9").await;
    assert_eq!(value_of(&read).as_deref(), Some("v9"));
}

async fn read_version(
    client: &ApiClient,
    node: std::net::SocketAddr,
    path: &str,
    version: u64,
) -> Option<String> {
    let reply = client
        .post(
            node,
            "/v1/store/secrets?action=get",
            json!({ "path": path, "version": version }),
        )
        .await
        .expect("get reaches the node");
    value_of(&reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_re_encryption_moves_every_version_and_loses_no_write() {
    const PATHS: usize = 40;
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let node = cluster.api(leader_id);

    phase("two versions of each secret under the first data key");
    let mut expected: BTreeMap<(String, u64), String> = BTreeMap::new();
    for version in 1..=2u64 {
        for i in 0..PATHS {
            let path = format!("re/{i}");
            let value = format!("{i}-v{version}");
            let reply = put(&ops.superuser, node, &path, &value).await;
            assert_eq!(reply.status, 200, "{:?}", reply.body);
            expected.insert((path, version), value);
        }
    }
    set_rotation(
        &ops.superuser,
        node,
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "dataKeyMaxAgeSeconds": 0}),
    )
    .await;
    let reply = ops
        .superuser
        .post(node, "/v1/operator/rotate", json!({}))
        .await
        .expect("rotate");
    assert_eq!(reply.status, 200, "{:?}", reply.body);

    phase("the leader counts the versions under the old key");
    let under_old = 2 * PATHS as u64;
    let began = tokio::time::Instant::now();
    loop {
        let state = rotation(&ops.superuser, node).await;
        if state["versionsUnderOldKeys"].as_u64() == Some(under_old) {
            break;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "never counted {under_old}: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    phase("re-encryption runs while new versions are written");
    set_rotation(
        &ops.superuser,
        node,
        json!({"dataKeyRotateAfterOps": OPS_DEFAULT, "dataKeyMaxAgeSeconds": 0, "reencryptPerSecond": 40}),
    )
    .await;
    let writer = {
        let client = ops.superuser.clone();
        let node = cluster.api(if leader_id == 1 { 2 } else { 1 });
        tokio::spawn(async move {
            // Destroyed while re-encryption runs: a re-seal built before
            // must not bring the value back.
            for i in (1..PATHS).step_by(4) {
                let reply = client
                    .post(
                        node,
                        "/v1/store/secrets?action=destroy",
                        json!({ "path": format!("re/{i}"), "versions": [1] }),
                    )
                    .await
                    .expect("destroy reaches the node");
                assert_eq!(reply.status, 200, "{:?}", reply.body);
            }
            let mut written = Vec::new();
            for round in 3..=5u64 {
                for i in (0..PATHS).step_by(4) {
                    let path = format!("re/{i}");
                    let value = format!("{i}-v{round}");
                    let reply = put(&client, node, &path, &value).await;
                    assert_eq!(reply.status, 200, "{:?}", reply.body);
                    written.push(((path, round), value));
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
            written
        })
    };
    for (key, value) in writer.await.expect("writer") {
        expected.insert(key, value);
    }
    let destroyed: Vec<(String, u64)> = (1..PATHS)
        .step_by(4)
        .map(|i| (format!("re/{i}"), 1))
        .collect();
    for key in &destroyed {
        expected.remove(key);
    }
    let began = tokio::time::Instant::now();
    loop {
        let state = rotation(&ops.superuser, node).await;
        let moved = state["reencryptedVersions"].as_u64().unwrap_or(0);
        if state["versionsUnderOldKeys"].as_u64() == Some(0) && moved > 0 {
            eprintln!("re-encrypted {moved} versions in {:?}", began.elapsed());
            assert!(
                moved <= under_old,
                "{moved} re-seals for {under_old} versions"
            );
            break;
        }
        assert!(
            began.elapsed() < 2 * RECOVERY_LIMIT,
            "re-encryption did not finish: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    phase("every version reads back its exact value on every replica");
    for id in [1, 2, 3] {
        for ((path, version), value) in &expected {
            let read = read_version(&ops.superuser, cluster.api(id), path, *version).await;
            assert_eq!(read.as_ref(), Some(value), "nexus-{id} {path} v{version}");
        }
        for (path, version) in &destroyed {
            let read = read_version(&ops.superuser, cluster.api(id), path, *version).await;
            assert_eq!(read, None, "nexus-{id} {path} v{version} stays destroyed");
        }
        for i in 0..PATHS {
            let path = format!("re/{i}");
            let newest = expected
                .iter()
                .filter(|((p, _), _)| *p == path)
                .max_by_key(|((_, version), _)| *version)
                .map(|(_, value)| value.clone());
            let read = get(&ops.superuser, cluster.api(id), &path).await;
            assert_eq!(value_of(&read), newest, "nexus-{id} {path}");
        }
    }
}
