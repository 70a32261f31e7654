//! SPIKE's REST API as SPIKE's own clients see it: every route against
//! every kind of caller, the exact JSON of answers and errors, and bad
//! input that must change nothing.

mod authorization;
mod bad_input;
mod compat;
mod freshness;
mod go_client;
mod wire;

use serde_json::{Value, json};
use spike_tests::{ApiClient, LocalCluster};

/// A cluster with three workloads: billing and admin (given policies by
/// the tests) and stranger (never given one).
pub fn cluster() -> LocalCluster {
    cluster_with(&["admin=/app/admin", "stranger=/app/stranger"], &[])
}

/// A 3-replica cluster with billing and `workloads` (`NAME=PATH`), each
/// replica started with `nexus_args` too.
pub fn cluster_with(workloads: &[&str], nexus_args: &[&str]) -> LocalCluster {
    let mut args = vec![
        "--replicas",
        "3",
        "--keepers",
        "3",
        "--threshold",
        "2",
        "--workload",
        "billing=/app/billing",
    ];
    for workload in workloads {
        args.extend(["--workload", workload]);
    }
    for arg in nexus_args {
        args.extend(["--nexus-arg", arg]);
    }
    LocalCluster::up(&args)
}

/// The leader's id and the two followers', as replica 1 sees them.
pub async fn leader_and_followers(
    superuser: &ApiClient,
    cluster: &LocalCluster,
) -> (u64, [u64; 2]) {
    let status = superuser
        .post(cluster.api(1), "/v1/cluster?action=status", json!({}))
        .await
        .expect("status");
    let leader = status.body["leaderId"].as_u64().expect("a leader");
    let mut followers = (1..=3).filter(|id| *id != leader);
    let followers = [
        followers.next().expect("a follower"),
        followers.next().expect("another follower"),
    ];
    (leader, followers)
}

/// A client acting as identity `name`.
pub async fn client(cluster: &LocalCluster, name: &str) -> ApiClient {
    ApiClient::new(&cluster.identity(name).await)
}

/// A policy for billing: read and write under apps/billing/.
pub async fn grant_billing(superuser: &ApiClient, cluster: &LocalCluster) {
    let reply = superuser
        .post(
            cluster.api(1),
            "/v1/acl/policy",
            json!({
                "name": "billing",
                "spiffeidPattern": "^spiffe://spike\\.ist/app/billing$",
                "pathPattern": "^apps/billing/",
                "permissions": ["read", "write"],
            }),
        )
        .await
        .expect("policy put");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// A policy for admin: `super` under apps/billing/ (destroy included).
pub async fn grant_admin(superuser: &ApiClient, cluster: &LocalCluster) {
    let reply = superuser
        .post(
            cluster.api(1),
            "/v1/acl/policy",
            json!({
                "name": "admin",
                "spiffeidPattern": "^spiffe://spike\\.ist/app/admin$",
                "pathPattern": "^apps/billing/",
                "permissions": ["super"],
            }),
        )
        .await
        .expect("policy put");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
}

/// Marks a phase in the test output.
pub fn phase(name: &str) {
    eprintln!("--- {name}");
}

/// The body as an object, for field-by-field comparison.
pub fn object(value: &Value) -> &serde_json::Map<String, Value> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
}
