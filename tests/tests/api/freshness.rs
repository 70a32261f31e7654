//! What a caller's `X-Spike-Consistency: stale` may and may not relax:
//! a stale read is answered from a replica's own state only while that
//! state is provably recent, and never relaxes the authorization of a
//! write.

use std::time::{Duration, Instant};

use serde_json::json;
use spike_tests::{ApiClient, LocalCluster, Reply};

use crate::{client, cluster_with, grant_billing, leader_and_followers, phase};

const STALE: [(&str, &str); 1] = [("X-Spike-Consistency", "stale")];

async fn stale_get(caller: &ApiClient, cluster: &LocalCluster, id: u64) -> Reply {
    caller
        .post_with(
            cluster.api(id),
            "/v1/store/secrets?action=get",
            json!({"path": "apps/billing/k"}),
            &STALE,
        )
        .await
        .expect("stale get")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_leader_refuses_stale_reads_past_the_bound() {
    let cluster = cluster_with(&[], &["--stale-read-max=500ms"]);
    let superuser = client(&cluster, "superuser").await;
    let put = superuser
        .post(
            cluster.api(1),
            "/v1/store/secrets",
            json!({"path": "apps/billing/k", "values": {"k": "v"}}),
        )
        .await
        .expect("put");
    assert_eq!(put.status, 200, "{:?}", put.body);
    let (leader, [alone, other]) = leader_and_followers(&superuser, &cluster).await;
    // Wait until the follower has applied the put (a linearizable read).
    let caught_up = superuser
        .post(
            cluster.api(alone),
            "/v1/store/secrets?action=get",
            json!({"path": "apps/billing/k"}),
        )
        .await
        .expect("get");
    assert_eq!(caught_up.status, 200, "{:?}", caught_up.body);
    assert_eq!(stale_get(&superuser, &cluster, alone).await.status, 200);

    phase("the rest of the cluster freezes: past the bound, stale reads are refused");
    for id in [leader, other] {
        cluster.signal(&format!("nexus-{id}"), "STOP");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let refused = stale_get(&superuser, &cluster, alone).await;
    for id in [leader, other] {
        cluster.signal(&format!("nexus-{id}"), "CONT");
    }
    assert_eq!(
        refused.status, 503,
        "a replica that heard from no leader for 1.5 s answered a stale read: {:?}",
        refused.body
    );
    assert_eq!(refused.body["err"], "state_not_ready");

    phase("a leader is back: stale reads are answered again");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = stale_get(&superuser, &cluster, alone).await;
        if reply.status == 200 {
            assert_eq!(reply.body["data"]["k"], "v");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale reads still refused: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_for_stale_never_skips_the_policy_catch_up_of_a_write() {
    let cluster = cluster_with(&[], &[]);
    let superuser = client(&cluster, "superuser").await;
    let billing = client(&cluster, "billing").await;
    grant_billing(&superuser, &cluster).await;
    let (_, [lagging, other]) = leader_and_followers(&superuser, &cluster).await;
    let put = |stale: bool| {
        let billing = billing.clone();
        let address = cluster.api(lagging);
        async move {
            billing
                .post_with(
                    address,
                    "/v1/store/secrets",
                    json!({"path": "apps/billing/k", "values": {"k": "v"}}),
                    if stale { &STALE[..] } else { &[] },
                )
                .await
                .expect("put")
        }
    };
    assert_eq!(put(true).await.status, 200, "granted");

    phase("revoke while the follower is frozen; thawed, a 'stale' write is refused");
    cluster.signal(&format!("nexus-{lagging}"), "STOP");
    let deleted = superuser
        .post(
            cluster.api(other),
            "/v1/acl/policy?action=delete",
            json!({"id": "billing"}),
        )
        .await;
    cluster.signal(&format!("nexus-{lagging}"), "CONT");
    assert_eq!(deleted.expect("delete").status, 200);
    let refused = put(true).await;
    assert_eq!(
        refused.status, 401,
        "a write decided on the lagging replica's old policies: {:?}",
        refused.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cipher_calls_count_toward_data_key_rotation_cluster_wide() {
    let cluster = cluster_with(&[], &["--data-key-rotate-after=40"]);
    let superuser = client(&cluster, "superuser").await;
    let status = |id| {
        let superuser = superuser.clone();
        let address = cluster.api(id);
        async move {
            superuser
                .post(address, "/v1/cluster?action=status", json!({}))
                .await
                .expect("status")
                .body["rootKey"]
                .clone()
        }
    };
    let first = status(1).await["dataKeyId"].as_u64().expect("a data key");

    phase("120 encryptions spread over the three replicas");
    let plaintext = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, b"hello");
    for call in 0..120u64 {
        let reply = superuser
            .post(
                cluster.api(call % 3 + 1),
                "/v1/cipher/encrypt",
                json!({"plaintext": plaintext}),
            )
            .await
            .expect("encrypt");
        assert_eq!(reply.status, 200, "{:?}", reply.body);
    }

    phase("the leader rotated the data key on the cluster-wide count");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let root_key = status(1).await;
        let active = root_key["dataKeyId"].as_u64().expect("a data key");
        if active > first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "data key {first} never rotated after 120 encryptions (limit 40): {root_key}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A leader whose followers stopped answering stops serving linearizable
/// reads within the check-quorum window: it cannot prove that no newer
/// leader took writes since (planted bugs local-reads and
/// read-index-without-quorum answer from its own state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_followers_answers_no_linearizable_read() {
    let cluster = cluster_with(&[], &[]);
    let superuser = client(&cluster, "superuser").await;
    let put = superuser
        .post(
            cluster.api(1),
            "/v1/store/secrets",
            json!({"path": "apps/billing/k", "values": {"k": "v"}}),
        )
        .await
        .expect("put");
    assert_eq!(put.status, 200, "{:?}", put.body);
    let (leader, followers) = leader_and_followers(&superuser, &cluster).await;

    phase("the followers freeze: the leader's reads are refused, not answered stale");
    for id in followers {
        cluster.signal(&format!("nexus-{id}"), "STOP");
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let read = superuser
        .post(
            cluster.api(leader),
            "/v1/store/secrets?action=get",
            json!({"path": "apps/billing/k"}),
        )
        .await;
    for id in followers {
        cluster.signal(&format!("nexus-{id}"), "CONT");
    }
    let read = read.expect("get");
    assert_eq!(
        read.status, 503,
        "a leader without a quorum for 1.5 s answered a linearizable read: {:?}",
        read.body
    );
}
