//! Helpers shared by the cluster tests.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spike_tests::{ApiClient, LocalCluster};
pub use spike_tests::{get, put, value_of};

/// Longest a cluster may take to elect a leader or serve again after a fault.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(20);

/// The operator's three clients.
pub struct Operators {
    pub superuser: ApiClient,
    pub recover: ApiClient,
    pub restore: ApiClient,
}

impl Operators {
    pub async fn of(cluster: &LocalCluster) -> Self {
        Self {
            superuser: ApiClient::new(&cluster.identity("superuser").await),
            recover: ApiClient::new(&cluster.identity("recover").await),
            restore: ApiClient::new(&cluster.identity("restore").await),
        }
    }
}

/// Reads `path` on `node` until it holds `expected`; fails the test after
/// [`RECOVERY_LIMIT`].
pub async fn read_until(client: &ApiClient, node: SocketAddr, path: &str, expected: &str) {
    let began = tokio::time::Instant::now();
    loop {
        let read = get(client, node, path).await;
        if value_of(&read).as_deref() == Some(expected) {
            return;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "{node} never served {path}={expected}: {:?}",
            read.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn status(client: &ApiClient, node: SocketAddr) -> Option<Value> {
    let reply = client
        .post(node, "/v1/cluster?action=status", json!({}))
        .await
        .ok()?;
    (reply.status == 200).then_some(reply.body)
}

/// The current leader's id, asked of the replicas in `ids` until one knows.
pub async fn leader(client: &ApiClient, cluster: &LocalCluster, ids: &[u64]) -> u64 {
    let began = tokio::time::Instant::now();
    loop {
        for id in ids {
            if let Some(status) = status(client, cluster.api(*id)).await
                && let Some(leader) = status["leaderId"].as_u64()
            {
                return leader;
            }
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "no leader after {RECOVERY_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries a put through `node` until it succeeds; returns how long it took.
pub async fn put_until_ok(
    client: &ApiClient,
    node: SocketAddr,
    path: &str,
    value: &str,
) -> Duration {
    let began = tokio::time::Instant::now();
    loop {
        let attempt = client
            .post(
                node,
                "/v1/store/secrets",
                json!({ "path": path, "values": { "v": value } }),
            )
            .await;
        if attempt.is_ok_and(|reply| reply.status == 200) {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "writes did not resume in {RECOVERY_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The shards `operator recover` returns, by index.
pub async fn recovery_shards(client: &ApiClient, node: SocketAddr) -> Vec<(u64, Vec<u8>)> {
    let reply = client
        .post(node, "/v1/operator/recover", json!({}))
        .await
        .expect("recover reaches the node");
    assert_eq!(reply.status, 200, "recover: {:?}", reply.body);
    let shards = reply.body["shards"].as_object().expect("shards object");
    shards
        .iter()
        .map(|(index, bytes)| {
            let bytes: Vec<u8> = bytes
                .as_array()
                .expect("array")
                .iter()
                .map(|b| b.as_u64().expect("byte") as u8)
                .collect();
            (index.parse().expect("numeric index"), bytes)
        })
        .collect()
}

/// The ids of the voters in a list of members (status's `members`, or
/// `spike cluster members -f json`), in order.
pub fn voter_ids(members: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = members
        .as_array()
        .expect("a list of members")
        .iter()
        .filter(|member| member["voter"] == true)
        .filter_map(|member| member["id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// Waits until `node`'s status lists exactly `expected` as voters (the
/// leader's autopilot promotes an added replica after the stabilization
/// time); fails the test after [`RECOVERY_LIMIT`].
pub async fn voters_become(client: &ApiClient, node: SocketAddr, expected: &[u64]) {
    let began = tokio::time::Instant::now();
    loop {
        let state = status(client, node).await;
        let voters = state
            .as_ref()
            .map(|state| voter_ids(&state["members"]))
            .unwrap_or_default();
        if voters == expected {
            return;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "voters stay {voters:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn phase(name: &str) {
    eprintln!("--- {name}");
}
