//! The application SDK against a real cluster: it finds and follows the
//! leader, survives kill -9 of the leader mid-stream, applies a write it
//! retried after a timeout exactly once, and reports a replica without the
//! root key as the typed, retryable not-ready error.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spike_sdk::api::SecretValues;
use spike_sdk::client::{Error, NexusClient, RetryPolicy, Settings};
use spike_sdk::domain::{Permission, PolicyName, PolicyRef, SecretPath};
use spike_sdk::identity::TrustRoots;
use spike_tests::LocalCluster;

use crate::support::{Operators, RECOVERY_LIMIT, leader, phase};

async fn sdk(
    cluster: &LocalCluster,
    ids: &[u64],
    settings: impl FnOnce(&mut Settings),
) -> NexusClient {
    let mut chosen = Settings::new(ids.iter().map(|id| cluster.api(*id)).collect());
    settings(&mut chosen);
    let roots = TrustRoots::from_environment(&[]).expect("default trust roots");
    NexusClient::new(cluster.identity("superuser").await, roots, chosen).expect("client")
}

fn value(n: u64) -> SecretValues {
    [("n", n.to_string())].into_iter().collect()
}

fn path(text: &str) -> SecretPath {
    text.parse().expect("a valid path")
}

fn policy(text: &str) -> PolicyRef {
    text.parse().expect("a valid policy name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_follows_a_transfer_and_a_killed_leader_applying_each_write_once() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let client = sdk(&cluster, &[1, 2, 3], |_| {}).await;
    client
        .put_secret(&path("sdk/stream"), &value(0), None)
        .await
        .expect("first write");
    let first = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    assert_eq!(client.known_leader(), Some(cluster.api(first)));

    phase("every operation through the SDK, errors typed");
    let conflict = client
        .put_secret(&path("sdk/stream"), &value(99), Some(7))
        .await
        .expect_err("compare-and-set against the wrong version");
    assert!(matches!(conflict, Error::Conflict), "{conflict:?}");
    assert!(matches!(
        client.get_secret(&path("sdk/absent"), None).await,
        Err(Error::NotFound)
    ));
    client
        .put_secret(&path("sdk/doomed"), &value(1), Some(0))
        .await
        .expect("create-only write");
    client
        .delete_secret(&path("sdk/doomed"), &[])
        .await
        .expect("delete");
    assert!(matches!(
        client.get_secret(&path("sdk/doomed"), None).await,
        Err(Error::NotFound)
    ));
    client
        .undelete_secret(&path("sdk/doomed"), &[1])
        .await
        .expect("undelete");
    assert_eq!(
        client
            .get_secret_stale(&path("sdk/doomed"), Some(1))
            .await
            .ok(),
        Some(value(1))
    );
    client
        .destroy_secret(&path("sdk/doomed"), &[1])
        .await
        .expect("destroy");
    assert!(
        client
            .get_secret(&path("sdk/doomed"), Some(1))
            .await
            .is_err()
    );
    let listed = client.list_secrets().await.expect("list");
    assert!(listed.contains(&path("sdk/stream")), "{listed:?}");
    client
        .put_policy(
            &"sdk-readers".parse::<PolicyName>().expect("name"),
            "^spiffe://spike.ist/app/.*$",
            "^sdk/.*$",
            &[Permission::Read],
        )
        .await
        .expect("policy put");
    let got = client
        .get_policy(&policy("sdk-readers"))
        .await
        .expect("policy get");
    assert_eq!(got.path_pattern, "^sdk/.*$", "{got:?}");
    let by_id = client.get_policy(&policy(&got.id)).await.expect("by id");
    assert_eq!(by_id.name, "sdk-readers");
    let policies = client.list_policies().await.expect("policy list");
    assert!(
        policies
            .iter()
            .any(|p| p.name == "sdk-readers" && p.id == got.id)
    );
    client
        .delete_policy(&policy(&got.id))
        .await
        .expect("policy delete");
    assert!(matches!(
        client.get_policy(&policy("sdk-readers")).await,
        Err(Error::NotFound)
    ));
    let sealed = client.encrypt(b"attack at dawn").await.expect("encrypt");
    assert!(!sealed.windows(6).any(|w| w == b"attack"));
    let opened = client.decrypt(&sealed).await.expect("decrypt");
    assert_eq!(opened.as_slice(), b"attack at dawn");
    let status = client.cluster_status().await.expect("status");
    assert_eq!(status.root_key.status, spike_sdk::api::RootKeyState::Ready);

    phase("leadership moves by transfer; the client follows without an error");
    let target = [1, 2, 3]
        .into_iter()
        .find(|id| *id != first)
        .expect("a follower");
    let moved = ops
        .superuser
        .post(
            cluster.api(first),
            "/v1/cluster?action=transfer",
            json!({ "id": target }),
        )
        .await
        .expect("transfer reaches the leader");
    assert_eq!(moved.status, 200, "transfer: {:?}", moved.body);
    let mut written = 0;
    let began = tokio::time::Instant::now();
    while client.known_leader() != Some(cluster.api(target)) {
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "the client never saw the new leader"
        );
        written += 1;
        client
            .put_secret(&path("sdk/stream"), &value(written), None)
            .await
            .expect("a write during the transfer");
    }

    phase("kill -9 the leader in the middle of a stream of writes");
    for _ in 0..40 {
        written += 1;
        if written % 40 == 20 {
            cluster.act("kill", &format!("nexus-{target}"));
        }
        client
            .put_secret(&path("sdk/stream"), &value(written), None)
            .await
            .expect("every write is acknowledged within the retry budget");
    }
    assert_ne!(client.known_leader(), Some(cluster.api(target)));

    phase("every acknowledged write made exactly one version");
    let metadata = client
        .secret_metadata(&path("sdk/stream"), None)
        .await
        .expect("metadata");
    assert_eq!(
        metadata.metadata.current_version,
        written + 1,
        "versions: {metadata:?}"
    );
    let latest = client
        .get_secret(&path("sdk/stream"), None)
        .await
        .expect("read");
    assert_eq!(latest, value(written));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_retried_after_timeouts_applies_once_and_not_ready_is_typed() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let first = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != first).collect();
    let client = Arc::new(
        sdk(&cluster, &[first], |settings| {
            settings.request_timeout = Duration::from_millis(400);
            settings.retry = RetryPolicy {
                attempts_max: 200,
                deadline: RECOVERY_LIMIT,
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(200),
            };
        })
        .await,
    );
    client
        .put_secret(&path("sdk/warm"), &value(0), None)
        .await
        .expect("warm-up write");

    phase("followers frozen: the leader cannot commit, attempts time out");
    for id in &followers {
        cluster.signal(&format!("nexus-{id}"), "STOP");
    }
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { client.put_secret(&path("sdk/once"), &value(1), None).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!writer.is_finished(), "a write committed without a quorum");
    for id in &followers {
        cluster.signal(&format!("nexus-{id}"), "CONT");
    }
    writer
        .await
        .expect("writer task")
        .expect("the write succeeds once a quorum is back");
    let metadata = client
        .secret_metadata(&path("sdk/once"), None)
        .await
        .expect("metadata");
    assert_eq!(
        metadata.metadata.current_version, 1,
        "a write sent several times was applied more than once: {metadata:?}"
    );

    phase("a replica without the root key: typed not-ready, or the leader");
    let leader_now = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let locked = [1, 2, 3]
        .into_iter()
        .find(|id| *id != leader_now)
        .expect("a follower");
    for index in 1..=3 {
        cluster.act("stop", &format!("keeper-{index}"));
    }
    cluster.act("kill", &format!("nexus-{locked}"));
    cluster.act("start", &format!("nexus-{locked}"));
    let impatient = sdk(&cluster, &[locked], |settings| {
        settings.retry = RetryPolicy {
            attempts_max: 3,
            deadline: Duration::from_secs(2),
            ..RetryPolicy::default()
        };
    })
    .await;
    let refused = impatient
        .get_secret_stale(&path("sdk/once"), None)
        .await
        .expect_err("a replica without the root key cannot decrypt");
    assert!(
        matches!(refused, Error::NotReady(_) | Error::Unreachable(_)) && refused.is_retryable(),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = impatient
        .get_secret_stale(&path("sdk/once"), None)
        .await
        .expect_err("still locked");
    assert!(matches!(refused, Error::NotReady(_)), "{refused:?}");
    let followed = impatient
        .get_secret(&path("sdk/once"), None)
        .await
        .expect("a linearizable read follows the leader hint");
    assert_eq!(followed, value(1));
    assert_eq!(impatient.known_leader(), Some(cluster.api(leader_now)));
}

/// Applied state is fsynced only at checkpoints (about once a second) and
/// before snapshots; a crash of every replica at once must still lose no
/// acknowledged write: each comes back from the log, applied once. Small
/// snapshots make the crash land among snapshot builds and log purges too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_replica_mid_stream_loses_no_acknowledged_write() {
    const WRITERS: u64 = 6;
    let mut cluster = LocalCluster::up(&[
        "--nexus-arg=--snapshot-every=40",
        "--nexus-arg=--logs-kept=1",
    ]);
    let client = Arc::new(
        sdk(&cluster, &[1, 2, 3], |settings| {
            settings.request_timeout = Duration::from_millis(500);
            settings.retry = RetryPolicy {
                attempts_max: 3,
                deadline: Duration::from_secs(1),
                ..RetryPolicy::default()
            };
        })
        .await,
    );
    client
        .put_secret(&path("crash/warm"), &value(0), None)
        .await
        .expect("warm-up write");

    phase("writers stream unique keys; every replica is killed under them");
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0.. {
                    let path = path(&format!("crash/{writer}/{n}"));
                    match client.put_secret(&path, &value(n), None).await {
                        Ok(_) => acknowledged.push((path, n)),
                        Err(_) => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in 1..=3 {
        cluster.act("kill", &format!("nexus-{id}"));
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer task"));
    }
    assert!(
        acknowledged.len() > 40,
        "too few writes before the crash to cover a snapshot: {}",
        acknowledged.len()
    );

    phase("restart: every acknowledged write is there, applied once");
    for id in 1..=3 {
        cluster.act("start", &format!("nexus-{id}"));
    }
    for id in 1..=3 {
        cluster.wait_ready(id, RECOVERY_LIMIT).await;
    }
    let reader = sdk(&cluster, &[1, 2, 3], |_| {}).await;
    for (path, n) in &acknowledged {
        let read = reader
            .get_secret(path, None)
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {path} lost: {e:?}"));
        assert_eq!(&read, &value(*n), "{path}");
        let metadata = reader.secret_metadata(path, None).await.expect("metadata");
        assert_eq!(metadata.metadata.current_version, 1, "{path} applied twice");
    }
    eprintln!(
        "crash: {} acknowledged writes all present after kill -9 of every replica",
        acknowledged.len()
    );
}
