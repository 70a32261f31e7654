//! Membership: a replica joins as a learner then votes, leaves with its id
//! retired for good, and leadership moves on request.

use std::time::Duration;

use serde_json::json;
use spike_dev_cluster::Membership;
use spike_dev_identity::{IdentityDirectory, IdentitySpec};
use spike_tests::{ChildGuard, LocalCluster, binary, free_port};

use crate::support::{
    Operators, RECOVERY_LIMIT, get, leader, phase, put, read_until, status, value_of, voter_ids,
    voters_become,
};

fn voters(status: &serde_json::Value) -> Vec<u64> {
    voter_ids(&status["members"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joins_votes_leaves_and_its_id_is_never_reused() {
    let cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "m", "1").await.status,
        200
    );

    phase("start a fourth replica in join mode with file-based SVIDs");
    let identities = cluster.dir.path().join("identities");
    let spec = IdentitySpec::parse("nexus-4=/spike/nexus/4").expect("spec");
    let directory =
        IdentityDirectory::create(&identities, "spike.ist", &[spec], Duration::from_secs(3600))
            .expect("identity for nexus-4");
    let keepers: Vec<String> = cluster
        .file
        .keepers()
        .map(|(_, keeper)| keeper.api_addr.to_string())
        .collect();
    let (cluster_port, api_port, health_port) = (free_port(), free_port(), free_port());
    let data_dir = cluster.dir.path().join("nexus-4");
    let log =
        std::fs::File::create(cluster.dir.path().join("logs").join("nexus-4.log")).expect("log");
    let child = std::process::Command::new(binary("nexus"))
        .env_clear()
        .env("SPIKE_TRUST_ROOT", "spike.ist")
        .args(["--node-id", "4", "--join"])
        .args(["--cluster-addr", &format!("127.0.0.1:{cluster_port}")])
        .args(["--api-addr", &format!("127.0.0.1:{api_port}")])
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .args([
            "--keepers",
            &keepers.join(","),
            "--shares",
            "5",
            "--threshold",
            "3",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--svid-cert")
        .arg(directory.cert_path("nexus-4"))
        .arg("--svid-key")
        .arg(directory.key_path("nexus-4"))
        .arg("--svid-bundle")
        .arg(directory.bundle_path("nexus-4"))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start nexus-4");
    let _nexus4 = ChildGuard(Some(child));
    spike_tests::wait_for_port(([127, 0, 0, 1], api_port).into()).await;

    phase(
        "add it through a follower; it catches up, gets the key, and the autopilot makes it vote",
    );
    let add = json!({
        "id": 4,
        "clusterAddr": format!("127.0.0.1:{cluster_port}"),
        "apiAddr": format!("127.0.0.1:{api_port}"),
    });
    let reply = ops
        .superuser
        .post(cluster.api(2), "/v1/cluster?action=add", add.clone())
        .await
        .expect("add");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    voters_become(&ops.superuser, cluster.api(1), &[1, 2, 3, 4]).await;
    let api4: std::net::SocketAddr = ([127, 0, 0, 1], api_port).into();
    read_until(&ops.superuser, api4, "m", "1").await;

    phase("leadership moves on request");
    let current = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let target = [1, 2, 3]
        .into_iter()
        .find(|id| *id != current)
        .expect("another voter");
    let reply = ops
        .superuser
        .post(
            cluster.api(target),
            "/v1/cluster?action=transfer",
            json!({ "id": target }),
        )
        .await
        .expect("transfer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let began = tokio::time::Instant::now();
    while leader(&ops.superuser, &cluster, &[1, 2, 3]).await != target {
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "leadership did not move to {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    phase("remove it; its id is retired");
    let reply = ops
        .superuser
        .post(
            cluster.api(1),
            "/v1/cluster?action=remove",
            json!({ "id": 4 }),
        )
        .await
        .expect("remove");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let state = status(&ops.superuser, cluster.api(1))
        .await
        .expect("status");
    assert_eq!(voters(&state), vec![1, 2, 3]);
    let again = ops
        .superuser
        .post(cluster.api(1), "/v1/cluster?action=add", add)
        .await
        .expect("add");
    assert_eq!(
        again.status, 400,
        "a retired id comes back: {:?}",
        again.body
    );
    assert_eq!(
        put(&ops.superuser, cluster.api(3), "m", "2").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spike_cluster_spares_join_when_asked_and_retired_replicas_stay_down() {
    let mut cluster = LocalCluster::up(&["--spares", "1"]);
    let ops = Operators::of(&cluster).await;
    assert!(!cluster.ready(4), "a spare must not be started by up");
    let refused = cluster
        .try_act("start", "nexus-4")
        .expect_err("a spare is joined, not started");
    assert!(refused.contains("join"), "{refused}");

    phase("join prints the add command; adding it makes a fourth voter");
    let printed = cluster.try_act("join", "nexus-4").expect("join");
    let cluster_addr = cluster.replica(4).cluster_addr;
    let api4 = cluster.api(4);
    assert!(
        printed.contains(&format!(
            "--id 4 --cluster-addr {cluster_addr} --api-addr {api4}"
        )),
        "{printed}"
    );
    let add =
        json!({ "id": 4, "clusterAddr": cluster_addr.to_string(), "apiAddr": api4.to_string() });
    let reply = ops
        .superuser
        .post(cluster.api(1), "/v1/cluster?action=add", add)
        .await
        .expect("add");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    cluster.wait_ready(4, RECOVERY_LIMIT).await;
    voters_become(&ops.superuser, cluster.api(1), &[1, 2, 3, 4]).await;
    assert_eq!(put(&ops.superuser, api4, "spare", "1").await.status, 200);

    phase("removed and retired, it stays down");
    let reply = ops
        .superuser
        .post(
            cluster.api(4),
            "/v1/cluster?action=remove",
            json!({ "id": 4 }),
        )
        .await
        .expect("remove");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    cluster.act("retire", "nexus-4");
    assert!(!cluster.ready(4));
    assert_eq!(cluster.process("nexus-4").membership, Membership::Retired);
    let refused = cluster
        .try_act("start", "nexus-4")
        .expect_err("a retired id comes back");
    assert!(refused.contains("retired"), "{refused}");
    let state = status(&ops.superuser, cluster.api(2))
        .await
        .expect("status");
    assert_eq!(voters(&state), vec![1, 2, 3]);
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(3), "spare").await).as_deref(),
        Some("1")
    );
}
