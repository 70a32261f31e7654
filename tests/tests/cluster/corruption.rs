//! Corruption checks on real processes: a replica whose state differs from
//! the cluster's (its data file changed on disk, or its apply wrote
//! something else than the log says) is caught within a few check
//! intervals, answers 503 `state_corrupt` and fails `/readyz`, while the
//! others keep serving; a healthy cluster, a replica that caught up from a
//! snapshot included, never raises the alarm.

use std::time::Duration;

use serde_json::Value;
use spike_tests::{ApiClient, LocalCluster};

use super::support::{
    Operators, RECOVERY_LIMIT, get, leader, phase, put, read_until, status, value_of,
};

/// The check every second, so a test sees several.
const CHECK_EVERY_SECOND: &str = "--nexus-arg=--corruption-check-interval=1s";

fn corrupt_in(status: &Value) -> bool {
    status["corrupt"] == true
}

/// Waits until replica `id` says it raised the corruption alarm; returns
/// its status.
async fn wait_for_alarm(client: &ApiClient, cluster: &LocalCluster, id: u64) -> Value {
    let began = tokio::time::Instant::now();
    loop {
        if let Some(status) = status(client, cluster.api(id)).await
            && corrupt_in(&status)
        {
            return status;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "nexus-{id} raised no alarm within {RECOVERY_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every replica in `ids` says a majority of the voters held
/// its digest at a checkpoint past `index`, failing if any raises the
/// alarm meanwhile.
async fn wait_for_agreement_past(
    client: &ApiClient,
    cluster: &LocalCluster,
    ids: &[u64],
    index: u64,
) {
    let began = tokio::time::Instant::now();
    for id in ids {
        loop {
            let status = status(client, cluster.api(*id)).await;
            if let Some(status) = &status {
                assert!(
                    !corrupt_in(status),
                    "nexus-{id} raised a false alarm: {}",
                    status["corruption"]
                );
                if status["digestAgreedIndex"].as_u64().unwrap_or(0) > index {
                    break;
                }
            }
            assert!(
                began.elapsed() < RECOVERY_LIMIT,
                "nexus-{id} compared no checkpoint past index {index}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sets custom metadata on `path` through `node`, retrying while the
/// cluster has not switched to the format that carries it (503).
async fn put_metadata(client: &ApiClient, node: std::net::SocketAddr, path: &str, owner: &str) {
    let began = tokio::time::Instant::now();
    loop {
        let reply = client
            .post(
                node,
                "/v1/store/secrets/metadata?action=put",
                serde_json::json!({ "path": path, "customMetadata": { "owner": owner } }),
            )
            .await
            .expect("metadata put reaches the node");
        if reply.status == 200 {
            return;
        }
        assert!(
            reply.status == 503 && began.elapsed() < RECOVERY_LIMIT,
            "metadata put on {path}: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn applied_index(status: &Value) -> u64 {
    status["appliedIndex"].as_u64().unwrap_or(0)
}

/// Every secret in `written`, read through every replica in `ids`: a
/// replica answers the value written or an error, never another value.
async fn no_read_differs(
    client: &ApiClient,
    cluster: &LocalCluster,
    ids: &[u64],
    written: &[(String, String)],
) {
    for id in ids {
        for (path, value) in written {
            // A replica that cannot be reached answers no value either.
            let Ok(read) = client
                .post(
                    cluster.api(*id),
                    "/v1/store/secrets?action=get",
                    serde_json::json!({ "path": path }),
                )
                .await
            else {
                continue;
            };
            if read.status == 200 {
                assert_eq!(
                    value_of(&read).as_deref(),
                    Some(value.as_str()),
                    "nexus-{id} answered another value for {path}"
                );
            }
        }
    }
}

/// Replaces every occurrence of `from` in `file` by `to` (same length);
/// returns how many there were.
fn rewrite_bytes(file: &std::path::Path, from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(file).expect("read the state file");
    let mut found = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..]
        .windows(from.len())
        .position(|window| window == from)
    {
        let start = at + offset;
        bytes[start..start + to.len()].copy_from_slice(to);
        found += 1;
        at = start + to.len();
    }
    std::fs::write(file, &bytes).expect("write the state file");
    found
}

/// How the replica with a changed state file is meant to find out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caught {
    /// At start-up: its state no longer hashes to its last recorded digest.
    AtStartUp,
    /// By the voters' digests at the next checkpoint: the test also hides
    /// the digests it recorded (renames their table in the file), so the
    /// start-up check has nothing to compare with.
    ByThePeers,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_changed_on_disk_is_caught_at_start_up_and_its_replica_stops_serving() {
    state_file_changed_on_disk(Caught::AtStartUp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_file_changed_on_disk_is_caught_by_the_peers_digests_within_a_check_interval() {
    state_file_changed_on_disk(Caught::ByThePeers).await;
}

async fn state_file_changed_on_disk(caught: Caught) {
    let mut cluster = LocalCluster::up(&[CHECK_EVERY_SECOND]);
    let ops = Operators::of(&cluster).await;
    let client = &ops.superuser;
    let leader_id = leader(client, &cluster, &[1, 2, 3]).await;
    let victim = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");
    let healthy: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != victim).collect();

    phase("secrets go in; every replica's digest agrees past them");
    // The victim's path sorts after every other, and the changed one
    // still does, so the file stays a valid b-tree redb opens.
    let mut written: Vec<(String, String)> = (0..10)
        .map(|i| (format!("apps/s{i}"), format!("v{i}")))
        .collect();
    written.push(("zz/victim".to_owned(), "original".to_owned()));
    for (path, value) in &written {
        assert_eq!(
            put(client, cluster.api(leader_id), path, value)
                .await
                .status,
            200
        );
    }
    read_until(client, cluster.api(victim), "zz/victim", "original").await;
    let after_writes = applied_index(
        &status(client, cluster.api(leader_id))
            .await
            .expect("leader status"),
    );
    wait_for_agreement_past(client, &cluster, &[1, 2, 3], after_writes).await;

    phase("the victim stops; one secret's path changes in its state file");
    cluster.act("stop", &format!("nexus-{victim}"));
    let file = cluster.data_dir(victim).join("state.redb");
    let changed = rewrite_bytes(&file, b"zz/victim", b"zz/victin");
    assert!(changed > 0, "the path is stored in plain text in {file:?}");
    if caught == Caught::ByThePeers {
        // Still the last table name in order, so redb opens the file and
        // the replica finds no recorded digests (a new, empty table).
        let renamed = rewrite_bytes(&file, b"state_digests", b"state_digestz");
        assert!(renamed > 0, "the digests' table is named in {file:?}");
    }

    phase("it starts again and raises the alarm");
    let started = tokio::time::Instant::now();
    cluster.act("start", &format!("nexus-{victim}"));
    let alarm = wait_for_alarm(client, &cluster, victim).await;
    let reason = alarm["corruption"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "nexus-{victim}, alarm {:?} after its start: {reason}",
        started.elapsed()
    );
    match caught {
        Caught::AtStartUp => assert!(reason.contains("at start-up"), "{reason}"),
        Caught::ByThePeers => assert!(reason.contains("voters hold"), "{reason}"),
    }

    phase("it answers 503 state_corrupt and fails /readyz; the others serve");
    for path in ["zz/victim", "zz/victin", "apps/s1"] {
        let read = get(client, cluster.api(victim), path).await;
        assert_eq!(read.status, 503, "{path}: {:?}", read.body);
        assert_eq!(read.body["err"], "state_corrupt", "{path}: {:?}", read.body);
    }
    assert!(!cluster.ready(victim), "/readyz of a corrupt replica fails");
    let reply = put(client, cluster.api(victim), "apps/new", "x").await;
    assert_eq!(reply.status, 503, "a write through it: {:?}", reply.body);
    for id in &healthy {
        read_until(client, cluster.api(*id), "zz/victim", "original").await;
        let status = status(client, cluster.api(*id)).await.expect("status");
        assert!(!corrupt_in(&status), "nexus-{id}: {status}");
    }
    let writer = leader(client, &cluster, &healthy).await;
    assert_eq!(
        put(client, cluster.api(writer), "apps/after", "later")
            .await
            .status,
        200
    );
    written.push(("apps/after".to_owned(), "later".to_owned()));
    no_read_differs(client, &cluster, &[1, 2, 3], &written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_apply_diverged_is_caught_and_stops_serving() {
    let cluster = LocalCluster::up(&[
        CHECK_EVERY_SECOND,
        "--nexus-arg=--unsafe-test-diverge=2:apps/diverge",
    ]);
    let ops = Operators::of(&cluster).await;
    let client = &ops.superuser;
    let leader_id = leader(client, &cluster, &[1, 2, 3]).await;

    phase("a write that replica 2 stores altered");
    let before = applied_index(
        &status(client, cluster.api(leader_id))
            .await
            .expect("leader status"),
    );
    wait_for_agreement_past(client, &cluster, &[1, 2, 3], before).await;
    assert_eq!(
        put(client, cluster.api(leader_id), "apps/diverge", "value")
            .await
            .status,
        200
    );

    phase("replica 2 raises the alarm at the next checkpoint; the others do not");
    let alarm = wait_for_alarm(client, &cluster, 2).await;
    eprintln!("nexus-2: {}", alarm["corruption"]);
    let read = get(client, cluster.api(2), "apps/diverge").await;
    assert_eq!(read.status, 503, "{:?}", read.body);
    assert_eq!(read.body["err"], "state_corrupt");
    assert!(!cluster.ready(2));
    let after = applied_index(&alarm);
    wait_for_agreement_past(client, &cluster, &[1, 3], after).await;
    for id in [1, 3] {
        read_until(client, cluster.api(id), "apps/diverge", "value").await;
    }

    phase("a corrupt replica does not stay the leader");
    let began = tokio::time::Instant::now();
    while leader(client, &cluster, &[1, 3]).await == 2 {
        assert!(began.elapsed() < RECOVERY_LIMIT, "replica 2 still leads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_under_writes_never_raises_the_alarm_even_after_a_snapshot_install() {
    let mut cluster = LocalCluster::up(&[
        CHECK_EVERY_SECOND,
        "--nexus-arg=--snapshot-every=20",
        "--nexus-arg=--logs-kept=5",
    ]);
    let ops = Operators::of(&cluster).await;
    let client = &ops.superuser;
    let leader_id = leader(client, &cluster, &[1, 2, 3]).await;
    let lagging = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");
    let other = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id && *id != lagging)
        .expect("the other follower");

    phase("the cluster writes format 3 (checkpoints and custom metadata) and checks");
    wait_for_agreement_past(client, &cluster, &[1, 2, 3], 0).await;

    phase("a follower stops while 80 writes go in (logs are compacted)");
    cluster.act("stop", &format!("nexus-{lagging}"));
    for i in 0..80 {
        let path = format!("s/{i}");
        assert_eq!(
            put(client, cluster.api(leader_id), &path, &format!("v{i}"))
                .await
                .status,
            200
        );
        if i % 10 == 0 {
            put_metadata(client, cluster.api(leader_id), &path, &format!("o{i}")).await;
        }
    }

    phase("leadership moves to the other follower, which compacted its log");
    let reply = client
        .post(
            cluster.api(leader_id),
            "/v1/cluster?action=transfer",
            serde_json::json!({ "id": other }),
        )
        .await
        .expect("transfer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let began = tokio::time::Instant::now();
    while leader(client, &cluster, &[leader_id, other]).await != other {
        assert!(began.elapsed() < RECOVERY_LIMIT, "leadership did not move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    phase("the stopped replica restarts and installs a snapshot; writes go on");
    cluster.act("start", &format!("nexus-{lagging}"));
    cluster.wait_ready(lagging, RECOVERY_LIMIT).await;
    for i in 80..140 {
        let path = format!("s/{i}");
        let writer = leader(client, &cluster, &[1, 2, 3]).await;
        assert_eq!(
            put(client, cluster.api(writer), &path, &format!("v{i}"))
                .await
                .status,
            200
        );
        if i % 10 == 0 {
            put_metadata(client, cluster.api(writer), &path, &format!("o{i}")).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join("logs")
            .join(format!("nexus-{lagging}.log")),
    )
    .expect("log");
    assert!(
        log.contains("installed snapshot"),
        "nexus-{lagging} caught up without installing a snapshot"
    );

    phase("every replica's digest agrees at checkpoints after all of it");
    let writer = leader(client, &cluster, &[1, 2, 3]).await;
    let after = applied_index(
        &status(client, cluster.api(writer))
            .await
            .expect("leader status"),
    );
    wait_for_agreement_past(client, &cluster, &[1, 2, 3], after).await;
    for id in [1, 2, 3] {
        assert!(cluster.ready(id), "nexus-{id} is ready");
    }
}
