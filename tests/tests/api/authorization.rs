//! Every route, SPIKE's and our extensions, against every identity kind:
//! allowed or refused (401), as SPIKE decides and as the README's
//! authorization table says for the extensions.

use base64::Engine;
use serde_json::{Value, json};

use crate::{client, cluster, grant_admin, grant_billing, leader_and_followers, phase};

struct Route {
    name: &'static str,
    path: &'static str,
    body: Value,
}

fn routes() -> Vec<Route> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let route = |name, path, body| Route { name, path, body };
    vec![
        route(
            "secret put",
            "/v1/store/secrets",
            json!({"path": "apps/billing/db", "values": {"k": "v"}}),
        ),
        route(
            "secret get",
            "/v1/store/secrets?action=get",
            json!({"path": "apps/billing/db"}),
        ),
        route(
            "secret metadata",
            "/v1/store/secrets/metadata?action=get",
            json!({"path": "apps/billing/db"}),
        ),
        route(
            "secret undelete",
            "/v1/store/secrets?action=undelete",
            json!({"path": "apps/billing/db", "versions": [1]}),
        ),
        route(
            "secret delete",
            "/v1/store/secrets?action=delete",
            json!({"path": "apps/billing/db", "versions": [9]}),
        ),
        route("secret list", "/v1/store/secrets?action=list", json!({})),
        route("policy list", "/v1/acl/policy?action=list", json!({})),
        route(
            "policy get",
            "/v1/acl/policy?action=get",
            json!({"id": "billing"}),
        ),
        route(
            "policy put",
            "/v1/acl/policy",
            json!({"name": "other", "spiffeidPattern": "^spiffe://spike\\.ist/app/x$", "pathPattern": "^x/", "permissions": ["read"]}),
        ),
        route(
            "policy delete",
            "/v1/acl/policy?action=delete",
            json!({"id": "other"}),
        ),
        route(
            "cipher encrypt",
            "/v1/cipher/encrypt",
            json!({"plaintext": b64(b"hello")}),
        ),
        route(
            "cipher decrypt",
            "/v1/cipher/decrypt",
            json!({"version": 1, "nonce": b64(&[0; 12]), "ciphertext": b64(&[0; 32])}),
        ),
        route("operator recover", "/v1/operator/recover", json!({})),
        route(
            "operator restore",
            "/v1/operator/restore",
            json!({"id": 1, "shard": vec![1u8; 32]}),
        ),
        route(
            "bootstrap verify",
            "/v1/bootstrap/verify",
            json!({"nonce": b64(&[0; 12]), "ciphertext": b64(&[0; 32])}),
        ),
        // Extensions. Each body is well formed but changes nothing when
        // allowed (a version that does not exist, a node id 0, n = t = 0),
        // but rotate, which rotates the data key, harmlessly.
        route(
            "secret destroy",
            "/v1/store/secrets?action=destroy",
            json!({"path": "apps/billing/db", "versions": [9]}),
        ),
        route(
            "secret put cas",
            "/v1/store/secrets",
            json!({"path": "apps/billing/db", "values": {"k": "v"}, "cas": 999}),
        ),
        route(
            "operator rekey",
            "/v1/operator/rekey",
            json!({"shares": 0, "threshold": 0}),
        ),
        route("operator rotate", "/v1/operator/rotate", json!({})),
        route(
            "rotation get",
            "/v1/operator/rotation?action=get",
            json!({}),
        ),
        // Zero operations per data key is refused: 400 when allowed.
        route(
            "rotation set",
            "/v1/operator/rotation?action=set",
            json!({"settings": {"dataKeyRotateAfterOps": 0}}),
        ),
        route("snapshot save", "/v1/snapshot?action=save", json!({})),
        route("snapshot restore", "/v1/snapshot?action=restore", json!({})),
        route("cluster status", "/v1/cluster?action=status", json!({})),
        route("cluster members", "/v1/cluster?action=members", json!({})),
        route(
            "cluster add",
            "/v1/cluster?action=add",
            json!({"id": 0, "clusterAddr": "127.0.0.1:1", "apiAddr": "127.0.0.1:2"}),
        ),
        route(
            "cluster remove",
            "/v1/cluster?action=remove",
            json!({"id": 0}),
        ),
        route(
            "cluster transfer",
            "/v1/cluster?action=transfer",
            json!({"id": 0}),
        ),
        route(
            "secret metadata put",
            "/v1/store/secrets/metadata?action=put",
            json!({"path": "apps/billing/db", "customMetadata": {"owner": "billing"}}),
        ),
        route("cluster health", "/v1/cluster?action=health", json!({})),
        route("cluster limits", "/v1/cluster?action=limits", json!({})),
        // No rules: no limits, as before.
        route(
            "cluster set limits",
            "/v1/cluster?action=set-limits",
            json!({"limits": {"rules": []}}),
        ),
    ]
}

/// Which routes each identity may use (all others: 401).
fn allowed(identity: &str) -> &'static [&'static str] {
    const EVERY_ROUTE_BUT_THE_OTHER_ROLES: &[&str] = &[
        "secret put",
        "secret get",
        "secret metadata",
        "secret undelete",
        "secret delete",
        "secret list",
        "policy list",
        "policy get",
        "policy put",
        "policy delete",
        "cipher encrypt",
        "cipher decrypt",
        "secret destroy",
        "secret put cas",
        "operator rekey",
        "operator rotate",
        "rotation get",
        "rotation set",
        "snapshot save",
        "snapshot restore",
        "cluster status",
        "cluster members",
        "cluster add",
        "cluster remove",
        "cluster transfer",
        "secret metadata put",
        "cluster health",
        "cluster limits",
        "cluster set limits",
    ];
    // `write` lets billing delete (reversible) and put with cas (a put
    // that may do less), not destroy.
    const BILLING: &[&str] = &[
        "secret put",
        "secret get",
        "secret metadata",
        "secret undelete",
        "secret delete",
        "secret put cas",
        "secret metadata put",
    ];
    match identity {
        "superuser" => EVERY_ROUTE_BUT_THE_OTHER_ROLES,
        "recover" => &["operator recover"],
        "restore" => &["operator restore"],
        "bootstrap" => &["bootstrap verify"],
        "lite-workload" => &["cipher encrypt", "cipher decrypt"],
        "billing" => BILLING,
        // `super` on apps/billing/ adds destroy there, and nothing else.
        "admin" => &[
            "secret put",
            "secret get",
            "secret metadata",
            "secret undelete",
            "secret delete",
            "secret put cas",
            "secret destroy",
            "secret metadata put",
        ],
        _ => &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_against_every_identity() {
    let cluster = cluster();
    let superuser = client(&cluster, "superuser").await;
    grant_billing(&superuser, &cluster).await;
    grant_admin(&superuser, &cluster).await;
    let identities = [
        "superuser",
        "recover",
        "restore",
        "bootstrap",
        "lite-workload",
        "keeper-1",
        "nexus-2",
        "billing",
        "admin",
        "stranger",
    ];
    let mut table = Vec::new();
    for identity in identities {
        phase(identity);
        let caller = client(&cluster, identity).await;
        for route in routes() {
            let reply = caller
                .post(cluster.api(2), route.path, route.body.clone())
                .await
                .unwrap_or_else(|error| panic!("{identity} {}: {error}", route.name));
            let expected_allowed = allowed(identity).contains(&route.name);
            let was_allowed = reply.status != 401;
            table.push(format!(
                "{identity:<14} {:<18} {} ({})",
                route.name,
                if was_allowed { "allow" } else { "deny " },
                reply.status
            ));
            assert_eq!(
                was_allowed, expected_allowed,
                "{identity} on {}: status {} {:?}",
                route.name, reply.status, reply.body
            );
            if !was_allowed {
                assert_eq!(reply.body["err"], "access_unauthorized");
            }
        }
    }
    eprintln!("{}", table.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_trust_domain_cannot_even_connect() {
    use spike_dev_identity::{DevCa, IdentityDirectory};
    let cluster = cluster();
    let home = IdentityDirectory::at(cluster.dir.path().join("identities"))
        .load_ca()
        .expect("cluster CA");
    let ca = DevCa::generate("evil.example").expect("CA");
    let svid = ca
        .mint(
            "spiffe://evil.example/spike/pilot/role/superuser",
            std::time::Duration::from_secs(600),
        )
        .expect("mint");
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(svid.key_pkcs8_der.clone().into());
    let chain = svid
        .chain_der
        .iter()
        .cloned()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    // It trusts the cluster's CA (so it accepts the server); the cluster
    // does not trust its CA, so the server must refuse it.
    let bundle = [
        (
            ca.trust_domain().clone(),
            vec![rustls_pki_types::CertificateDer::from(
                ca.cert_der().to_vec(),
            )],
        ),
        (
            home.trust_domain().clone(),
            vec![rustls_pki_types::CertificateDer::from(
                home.cert_der().to_vec(),
            )],
        ),
    ];
    let foreign = spike_sdk::svid::Identity::fixed(
        spike_sdk::svid::SvidMaterial::new(chain, key, bundle).expect("material"),
    );
    let client = spike_tests::ApiClient::new(&foreign);
    let outcome = client
        .post(cluster.api(1), "/v1/store/secrets?action=list", json!({}))
        .await;
    assert!(
        outcome.is_err(),
        "a foreign trust domain got an answer: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_or_deleting_a_policy_changes_access_at_once() {
    let cluster = cluster();
    let superuser = client(&cluster, "superuser").await;
    let billing = client(&cluster, "billing").await;
    grant_billing(&superuser, &cluster).await;
    let read = |node| {
        let billing = billing.clone();
        async move {
            billing
                .post(
                    node,
                    "/v1/store/secrets",
                    json!({"path": "apps/billing/k", "values": {"k": "v"}}),
                )
                .await
                .expect("reply")
                .status
        }
    };
    for id in 1..=3 {
        assert_eq!(read(cluster.api(id)).await, 200, "granted on nexus-{id}");
    }

    phase("narrow the policy to read only: writes are refused on every replica");
    let narrower = json!({
        "name": "billing",
        "spiffeidPattern": "^spiffe://spike\\.ist/app/billing$",
        "pathPattern": "^apps/billing/",
        "permissions": ["read"],
    });
    assert_eq!(
        superuser
            .post(cluster.api(1), "/v1/acl/policy", narrower)
            .await
            .expect("put")
            .status,
        200
    );
    for id in 1..=3 {
        assert_eq!(read(cluster.api(id)).await, 401, "revoked on nexus-{id}");
    }

    phase("delete it while a follower is frozen: thawed, it refuses at once");
    let (_, [lagging, other]) = leader_and_followers(&superuser, &cluster).await;
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
    // The thawed replica has not applied the deletion yet; it must still
    // refuse, because it catches up before consulting its policies.
    let get = billing
        .post(
            cluster.api(lagging),
            "/v1/store/secrets?action=get",
            json!({"path": "apps/billing/k"}),
        )
        .await
        .expect("get");
    assert_eq!(get.status, 401);
}
