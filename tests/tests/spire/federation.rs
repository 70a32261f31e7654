//! Two trust domains: the cluster in `spike.ist`, its clients in
//! `pilot.example`, each with a SPIRE server of its own, the bundles
//! exchanged by SPIRE federation (bundle endpoints, https_spiffe).

use std::time::Duration;

use spike_dev_cluster::spire::{Side, server_on};
use spike_tests::LocalCluster;

use crate::{Load, client, up};

/// Runs `spire-server ARGS` against the clients' (pilot) server.
fn pilot_server(cluster: &LocalCluster, args: &[&str]) -> String {
    server_on(&cluster.file, Side::Pilot, args).unwrap_or_else(|error| panic!("{error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn a_pilot_in_a_federated_trust_domain_is_served_through_its_ca_rotation() {
    let cluster = up("20s", &["--spire-pilot-domain", "pilot.example"]);

    // Our CLI, as the superuser of the other trust domain: nexus accepts
    // it because SPIKE_TRUST_ROOT_PILOT names pilot.example and SPIRE
    // federation gave nexus that domain's bundle (and the pilot ours).
    let whoami = cluster
        .spike_as("superuser")
        .envs(cluster.file.trust_roots())
        .env("SPIKE_NEXUS_API_URL", format!("https://{}", cluster.api(1)))
        .arg("whoami")
        .output()
        .await
        .expect("spike whoami");
    let said = String::from_utf8_lossy(&whoami.stdout);
    assert!(whoami.status.success(), "{whoami:?}");
    assert!(
        said.contains("spiffe://pilot.example/spike/pilot/role/superuser"),
        "{said}"
    );
    assert!(said.contains("pilot.example, spike.ist"), "{said}");

    // The pilot domain rotates its CA under load: the new CA reaches the
    // cluster only through the bundle endpoint, and the old one leaves
    // it the same way. Every request keeps being served.
    let identity = cluster.identity("superuser").await;
    assert_eq!(
        identity.spiffe_id().trust_domain().to_string(),
        "pilot.example"
    );
    let superuser = client(&cluster, "superuser").await;
    let load = Load::start(superuser, 4);
    let propagate = Duration::from_secs(20);
    let authorities = |cluster: &LocalCluster| -> serde_json::Value {
        let shown = pilot_server(
            cluster,
            &["localauthority", "x509", "show", "-output", "json"],
        );
        serde_json::from_str(&shown).expect("json")
    };
    let old = authorities(&cluster)["active"]["authority_id"]
        .as_str()
        .expect("active")
        .to_owned();
    pilot_server(&cluster, &["localauthority", "x509", "prepare"]);
    let new = authorities(&cluster)["prepared"]["authority_id"]
        .as_str()
        .expect("prepared")
        .to_owned();
    tokio::time::sleep(propagate).await;
    pilot_server(
        &cluster,
        &["localauthority", "x509", "activate", "-authorityID", &new],
    );
    tokio::time::sleep(propagate).await;
    pilot_server(
        &cluster,
        &["localauthority", "x509", "taint", "-authorityID", &old],
    );
    tokio::time::sleep(propagate).await;
    pilot_server(
        &cluster,
        &["localauthority", "x509", "revoke", "-authorityID", &old],
    );
    tokio::time::sleep(propagate).await;
    let report = load.stop().await;
    println!(
        "federated pilot, its CA rotated under load: {} requests ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.first_failures);
    assert!(report.ok > 100, "{report:?}");
    // The cluster's server holds the pilot domain's new bundle alone.
    let federated = spike_dev_cluster::spire::server(
        &cluster.file,
        &[
            "bundle",
            "list",
            "-id",
            "spiffe://pilot.example",
            "-format",
            "pem",
        ],
    )
    .expect("bundle list");
    assert_eq!(
        federated.matches("BEGIN CERTIFICATE").count(),
        1,
        "{federated}"
    );
}
