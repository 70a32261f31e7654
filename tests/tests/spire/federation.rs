//! Two trust domains: the cluster in `spike.ist`, its clients in
//! `pilot.example`, each with a SPIRE server of its own, the bundles
//! exchanged by SPIRE federation (bundle endpoints, https_spiffe).

use std::time::Duration;

use spike_dev_cluster::spire::Side;

use crate::{Load, assert_no_failed_request, client, rotate_ca, up};

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
    rotate_ca(&cluster, Side::Pilot, Duration::from_secs(20)).await;
    assert_no_failed_request(load, "federated pilot, its CA rotated under load").await;
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
