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
    LocalCluster::up(&[
        "--replicas",
        "3",
        "--keepers",
        "3",
        "--threshold",
        "2",
        "--workload",
        "billing=/app/billing",
        "--workload",
        "admin=/app/admin",
        "--workload",
        "stranger=/app/stranger",
    ])
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
