//! Crashes, restarts and keeper loss: the cluster keeps its data and every
//! replica gets the root key back by itself, or, after a total loss, from
//! an operator's restore.

use std::time::Duration;

use serde_json::json;
use spike_tests::LocalCluster;

use crate::support::{
    Operators, RECOVERY_LIMIT, get, leader, phase, put, put_until_ok, recovery_shards, status,
    value_of,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_read_through_another_node() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3]
        .into_iter()
        .filter(|id| *id != leader_id)
        .collect();

    phase("write through a follower");
    let written = put(
        &ops.superuser,
        cluster.api(followers[0]),
        "apps/db",
        "s3cret",
    )
    .await;
    assert_eq!(written.status, 200, "{:?}", written.body);
    let leader_api = cluster.api(leader_id).to_string();
    assert_eq!(
        written.leader.as_deref(),
        Some(format!("https://{leader_api}").as_str())
    );

    phase("read through the other follower and the leader");
    for id in [followers[1], leader_id] {
        let read = get(&ops.superuser, cluster.api(id), "apps/db").await;
        assert_eq!(
            value_of(&read).as_deref(),
            Some("s3cret"),
            "node {id}: {:?}",
            read.body
        );
    }
    let stale = ops
        .superuser
        .post_with(
            cluster.api(followers[1]),
            "/v1/store/secrets?action=get",
            json!({ "path": "apps/db" }),
            &[("x-spike-consistency", "stale")],
        )
        .await
        .expect("stale read");
    assert!(
        stale.status == 200 || stale.status == 404,
        "a stale read answers from local state: {:?}",
        stale.body
    );
    let missing = get(&ops.superuser, cluster.api(followers[1]), "apps/none").await;
    assert_eq!(
        (missing.status, missing.body["err"].as_str()),
        (404, Some("api_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_a_new_one_and_the_old_leader_rejoins() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let old = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    assert_eq!(
        put(&ops.superuser, cluster.api(others[0]), "k", "before")
            .await
            .status,
        200
    );

    phase("kill -9 the leader; writes resume through a survivor");
    cluster.act("kill", &format!("nexus-{old}"));
    let gap = put_until_ok(&ops.superuser, cluster.api(others[0]), "k", "after").await;
    eprintln!("failover: next acknowledged write {gap:?} after kill -9 of the leader");
    let new = leader(&ops.superuser, &cluster, &others).await;
    assert_ne!(new, old);

    phase("the old leader restarts, rebuilds the key from keepers, catches up");
    cluster.act("start", &format!("nexus-{old}"));
    let took = cluster.wait_ready(old, RECOVERY_LIMIT).await;
    eprintln!("restart: nexus-{old} ready {took:?} after start");
    let read = get(&ops.superuser, cluster.api(old), "k").await;
    assert_eq!(value_of(&read).as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_every_replica_loses_nothing() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    for i in 0..20 {
        let reply = put(
            &ops.superuser,
            cluster.api(1 + i % 3),
            &format!("bulk/{i}"),
            &format!("v{i}"),
        )
        .await;
        assert_eq!(reply.status, 200);
    }

    phase("kill every replica, start them again");
    for id in 1..=3 {
        cluster.act("kill", &format!("nexus-{id}"));
    }
    for id in 1..=3 {
        cluster.act("start", &format!("nexus-{id}"));
    }
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
    }

    phase("every secret, through every replica");
    for i in 0..20u64 {
        let read = get(
            &ops.superuser,
            cluster.api(1 + (i + 1) % 3),
            &format!("bulk/{i}"),
        )
        .await;
        assert_eq!(value_of(&read), Some(format!("v{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepers_restarted_empty_get_their_shares_back_from_the_leader() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "kept", "yes")
            .await
            .status,
        200
    );

    phase("every keeper dies and comes back empty");
    for name in cluster.keeper_names() {
        cluster.act("kill", &name);
    }
    for name in cluster.keeper_names() {
        cluster.act("start", &name);
    }

    phase("a replica restarted afterwards still recovers the key");
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");
    cluster.act("kill", &format!("nexus-{follower}"));
    cluster.act("start", &format!("nexus-{follower}"));
    cluster.wait_ready(follower, RECOVERY_LIMIT).await;
    let read = get(&ops.superuser, cluster.api(follower), "kept").await;
    assert_eq!(value_of(&read).as_deref(), Some("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_keepers_than_the_threshold_keep_a_replica_not_ready() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "p", "v").await.status,
        200
    );
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let follower = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");

    phase("three of five keepers down (threshold 3), then a replica restarts");
    for index in 1..=3 {
        cluster.act("stop", &format!("keeper-{index}"));
    }
    cluster.act("kill", &format!("nexus-{follower}"));
    cluster.act("start", &format!("nexus-{follower}"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !cluster.ready(follower),
        "a replica became ready with two shares"
    );
    let refused = get(&ops.superuser, cluster.api(follower), "p").await;
    assert_eq!(
        (refused.status, refused.body["err"].as_str()),
        (503, Some("state_not_ready"))
    );
    let state = status(&ops.superuser, cluster.api(follower))
        .await
        .expect("status stays reachable");
    assert_eq!(state["rootKey"]["status"], "locked");

    phase("keepers come back (empty); the leader re-pushes; the replica serves");
    for index in 1..=3 {
        cluster.act("start", &format!("keeper-{index}"));
    }
    cluster.wait_ready(follower, RECOVERY_LIMIT).await;
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(follower), "p").await).as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_total_loss_only_an_operator_restore_brings_the_cluster_back() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    for i in 0..5 {
        assert_eq!(
            put(
                &ops.superuser,
                cluster.api(1),
                &format!("t/{i}"),
                &format!("v{i}")
            )
            .await
            .status,
            200
        );
    }
    let shards = recovery_shards(&ops.recover, cluster.api(2)).await;
    assert_eq!(shards.len(), 5);
    let superuser_recover = ops
        .superuser
        .post(cluster.api(2), "/v1/operator/recover", json!({}))
        .await
        .expect("reachable");
    assert_eq!(
        superuser_recover.status, 401,
        "recover is for the recover role only"
    );

    phase("every replica and every keeper restarts: nothing holds the key");
    for name in cluster
        .replica_names()
        .into_iter()
        .chain(cluster.keeper_names())
    {
        cluster.act("kill", &name);
    }
    for name in cluster
        .keeper_names()
        .into_iter()
        .chain(cluster.replica_names())
    {
        cluster.act("start", &name);
    }
    leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in 1..=3 {
        let read = get(&ops.superuser, cluster.api(id), "t/0").await;
        assert_eq!(read.status, 503, "nexus-{id} serves without the key");
    }

    phase("shards of another key are refused and change nothing");
    let restore = |index: u64, shard: Vec<u8>| json!({ "id": index, "shard": shard });
    for index in 1..=3u64 {
        let reply = ops
            .restore
            .post(
                cluster.api(3),
                "/v1/operator/restore",
                restore(index, vec![index as u8; 32]),
            )
            .await
            .expect("reachable");
        let expected = if index < 3 { 200 } else { 400 };
        assert_eq!(
            reply.status, expected,
            "bogus shard {index}: {:?}",
            reply.body
        );
    }
    let short = ops
        .restore
        .post(
            cluster.api(3),
            "/v1/operator/restore",
            restore(1, vec![1; 31]),
        )
        .await
        .expect("reachable");
    assert_eq!(short.status, 400, "a 31-byte shard is refused");

    phase("the saved shards, one at a time, through a follower");
    let mut last = serde_json::Value::Null;
    for (index, shard) in shards.into_iter().take(3) {
        let reply = ops
            .restore
            .post(
                cluster.api(3),
                "/v1/operator/restore",
                restore(index, shard),
            )
            .await
            .expect("reachable");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        last = reply.body;
    }
    assert_eq!(last["restored"], true);
    assert_eq!(last["remaining"], 0);
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
        for i in 0..5 {
            let read = get(&ops.superuser, cluster.api(id), &format!("t/{i}")).await;
            assert_eq!(value_of(&read), Some(format!("v{i}")));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_far_behind_catches_up_from_a_snapshot() {
    let mut cluster = LocalCluster::up(&[
        "--nexus-arg=--snapshot-every=20",
        "--nexus-arg=--logs-kept=5",
    ]);
    let ops = Operators::of(&cluster).await;
    let leader_id = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let lagging = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id)
        .expect("a follower");

    phase("a follower stops while 80 writes go in (logs are compacted)");
    cluster.act("stop", &format!("nexus-{lagging}"));
    for i in 0..80 {
        assert_eq!(
            put(
                &ops.superuser,
                cluster.api(leader_id),
                &format!("s/{i}"),
                &format!("v{i}")
            )
            .await
            .status,
            200
        );
    }

    phase("leadership moves to the other follower, which compacted its log");
    // A leader keeps logs a lagging follower still needs; a follower purges
    // behind its snapshots at once. So after this move, the new leader no
    // longer has the entries the stopped replica lacks.
    let compacted = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_id && *id != lagging)
        .expect("the other follower");
    let reply = ops
        .superuser
        .post(
            cluster.api(leader_id),
            "/v1/cluster?action=transfer",
            serde_json::json!({ "id": compacted }),
        )
        .await
        .expect("transfer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let began = tokio::time::Instant::now();
    while leader(&ops.superuser, &cluster, &[leader_id, compacted]).await != compacted {
        assert!(began.elapsed() < RECOVERY_LIMIT, "leadership did not move");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    phase("the stopped replica restarts and installs a snapshot");
    cluster.act("start", &format!("nexus-{lagging}"));
    cluster.wait_ready(lagging, RECOVERY_LIMIT).await;
    let read = get(&ops.superuser, cluster.api(lagging), "s/79").await;
    assert_eq!(value_of(&read).as_deref(), Some("v79"));
    let snapshots: Vec<_> = std::fs::read_dir(cluster.data_dir(lagging).join("snapshots"))
        .expect("snapshot dir")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".snap"))
        .collect();
    assert!(
        !snapshots.is_empty(),
        "the lagging replica holds the installed snapshot"
    );
    let log = std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join("logs")
            .join(format!("nexus-{lagging}.log")),
    )
    .expect("log");
    let leader_log = std::fs::read_to_string(
        cluster
            .dir
            .path()
            .join("logs")
            .join(format!("nexus-{leader_id}.log")),
    )
    .unwrap_or_default();
    let interesting = |text: &str| -> String {
        text.lines()
            .filter(|line| line.contains("snapshot") || line.contains("purge"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        log.contains("installed snapshot"),
        "no snapshot installation in the log:\n{}\nleader:\n{}",
        interesting(&log),
        interesting(&leader_log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_replaces_the_root_key_and_every_replica_follows() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "old", "data")
            .await
            .status,
        200
    );
    let before = status(&ops.superuser, cluster.api(1))
        .await
        .expect("status");

    // Asked before the rekey: right after it, a follower answers 503
    // `state_not_ready` to everything that needs the root key until it has
    // fetched the new key's shares from the keepers.
    phase("an impossible rekey (t > n) is refused by a follower");
    let refused = ops
        .superuser
        .post(
            cluster.api(3),
            "/v1/operator/rekey",
            json!({ "shares": 2, "threshold": 3 }),
        )
        .await
        .expect("rekey");
    assert_eq!(refused.status, 400, "t > n is refused");

    phase("n other than the number of keepers, or t = 1, is refused too");
    for (shares, threshold, why) in [
        (3, 2, "3 shares for 5 keepers"),
        (7, 3, "7 shares for 5 keepers"),
        (5, 1, "t = 1 without --allow-insecure-threshold"),
    ] {
        let refused = ops
            .superuser
            .post(
                cluster.api(3),
                "/v1/operator/rekey",
                json!({ "shares": shares, "threshold": threshold }),
            )
            .await
            .expect("rekey");
        assert_eq!(refused.status, 400, "{why}: {:?}", refused.body);
    }

    phase("rekey through a follower, to 5 shares with threshold 2");
    let reply = ops
        .superuser
        .post(
            cluster.api(3),
            "/v1/operator/rekey",
            json!({ "shares": 5, "threshold": 2 }),
        )
        .await
        .expect("rekey");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.body["rootKeyId"], 2);

    phase("every replica ends on the new key; old data still opens");
    let began = tokio::time::Instant::now();
    loop {
        let mut checks = Vec::new();
        for id in 1..=3 {
            let state = status(&ops.superuser, cluster.api(id))
                .await
                .expect("status");
            checks.push((
                state["rootKey"]["rootKeyId"].clone(),
                state["rootKey"]["keyCheck"].clone(),
            ));
        }
        if checks
            .iter()
            .all(|check| check.0 == 2 && check == &checks[0])
        {
            assert_ne!(checks[0].1, before["rootKey"]["keyCheck"]);
            break;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "replicas did not converge: {checks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(2), "old").await).as_deref(),
        Some("data")
    );

    phase("a replica restarted with only two keepers up recovers the new key (t = 2)");
    for index in 1..=3 {
        cluster.act("stop", &format!("keeper-{index}"));
    }
    cluster.act("kill", "nexus-2");
    cluster.act("start", "nexus-2");
    cluster.wait_ready(2, RECOVERY_LIMIT).await;
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(2), "old").await).as_deref(),
        Some("data")
    );
}

/// A root key is committed only after t keepers hold its shares: with
/// fewer keepers up a rekey is refused, commits nothing, and the cluster
/// keeps the key the keepers hold (planted bug shares-pushed-after-commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_fewer_than_t_keepers_can_take_commits_nothing() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "old", "data")
            .await
            .status,
        200
    );

    phase("three of five keepers down (threshold 3): a rekey is refused");
    for index in 1..=3 {
        cluster.act("stop", &format!("keeper-{index}"));
    }
    let refused = ops
        .superuser
        .post(
            cluster.api(1),
            "/v1/operator/rekey",
            json!({ "shares": 5, "threshold": 3 }),
        )
        .await
        .expect("rekey");
    assert_ne!(
        refused.status, 200,
        "a rekey committed with two keepers up: {:?}",
        refused.body
    );
    for id in 1..=3 {
        let state = status(&ops.superuser, cluster.api(id))
            .await
            .expect("status");
        assert_eq!(state["rootKey"]["rootKeyId"], 1, "replica {id}: {state}");
    }

    phase("keepers back: a restarted replica rebuilds the key they hold");
    for index in 1..=3 {
        cluster.act("start", &format!("keeper-{index}"));
    }
    cluster.act("kill", "nexus-2");
    cluster.act("start", "nexus-2");
    cluster.wait_ready(2, RECOVERY_LIMIT).await;
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(2), "old").await).as_deref(),
        Some("data")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_a_deep_directory_serves_identities_from_a_short_one() {
    // A unix socket path holds at most 107 bytes; a CI workspace or a long
    // --dir can leave `identities/sockets/lite-workload.sock` over it.
    let parent = tempfile::tempdir().expect("temporary directory");
    let deep = parent.path().join("d".repeat(60)).join("e".repeat(20));
    std::fs::create_dir_all(&deep).expect("deep directory");
    let dir = tempfile::tempdir_in(&deep).expect("cluster directory");
    let cluster = LocalCluster::up_in(
        dir,
        &["--replicas", "1", "--keepers", "1", "--threshold", "1"],
    );
    let sockets = cluster.file.sockets_dir.clone();
    assert!(
        !sockets.starts_with(cluster.dir.path()),
        "{} would hold sockets past the limit",
        sockets.display()
    );
    assert!(cluster.socket("lite-workload").as_os_str().len() <= 107);

    phase("the replica got its identity there and serves");
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "deep/path", "v")
            .await
            .status,
        200
    );

    phase("down leaves nothing in the temporary directory");
    drop(cluster);
    assert!(!sockets.exists(), "{} left behind", sockets.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_down_and_up_the_launcher_waits_for_an_operator_unless_told_to_keep_shards() {
    let small = ["--replicas", "1", "--keepers", "2", "--threshold", "2"];
    let mut cluster = LocalCluster::up(&small);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "k", "v").await.status,
        200
    );
    let recovery = cluster.dir.path().join("recovery");
    assert!(
        !recovery.exists(),
        "the launcher keeps shards on disk without being asked"
    );
    let shards = recovery_shards(&ops.recover, cluster.api(1)).await;

    phase("down, then up: the keepers are empty and the replica waits");
    cluster.try_spike("down", &[]).expect("down");
    let said = cluster.try_spike("up", &[]).expect("up");
    cluster.reload();
    assert!(said.contains("spike operator restore"), "{said}");
    assert!(!cluster.ready(1));
    assert_eq!(get(&ops.superuser, cluster.api(1), "k").await.status, 503);

    phase("an operator restore brings it back");
    for (index, shard) in shards.into_iter().take(2) {
        let reply = ops
            .restore
            .post(
                cluster.api(1),
                "/v1/operator/restore",
                json!({ "id": index, "shard": shard }),
            )
            .await
            .expect("reachable");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }
    cluster.wait_ready(1, RECOVERY_LIMIT).await;
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(1), "k").await).as_deref(),
        Some("v")
    );

    phase("with --auto-restore-from-disk-shards the launcher warns, saves and restores");
    let mut all = small.to_vec();
    all.push("--auto-restore-from-disk-shards");
    let mut kept = LocalCluster::up(&all);
    let ops = Operators::of(&kept).await;
    assert_eq!(
        put(&ops.superuser, kept.api(1), "k", "kept").await.status,
        200
    );
    assert!(
        kept.dir
            .path()
            .join("recovery/spike.recovery.2.txt")
            .exists()
    );
    kept.try_spike("down", &[]).expect("down");
    let said = kept.try_spike("up", &[]).expect("up restores by itself");
    kept.reload();
    assert!(
        said.contains("WARNING: --auto-restore-from-disk-shards"),
        "{said}"
    );
    assert!(kept.ready(1));
    assert_eq!(
        value_of(&get(&ops.superuser, kept.api(1), "k").await).as_deref(),
        Some("kept")
    );
}
