//! SVIDs and the SPIRE CA rotate under a steady SDK load: no request fails,
//! every process takes its new SVIDs, and connections made on old ones are
//! renewed.

use std::time::Duration;

use spike_dev_cluster::spire::Side;

use crate::{
    Load, assert_no_failed_request, client, log_lines, rotate_ca, rotations, spire_server, up,
};

/// Every keeper and replica of the default cluster.
const PROCESSES: [&str; 8] = [
    "keeper-1", "keeper-2", "keeper-3", "keeper-4", "keeper-5", "nexus-1", "nexus-2", "nexus-3",
];

/// Connections a process's listener ended because the peer's SVID expired
/// (the peer then reconnected on its new one).
fn expired_connections(cluster: &spike_tests::LocalCluster, name: &str) -> usize {
    log_lines(cluster, name)
        .iter()
        .filter(|line| line.contains("connection ended") && line.contains("expired"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn svids_rotate_under_load_and_no_request_fails() {
    let cluster = up("10s", &[]);
    let before: Vec<usize> = PROCESSES
        .iter()
        .map(|name| rotations(&cluster, name))
        .collect();
    let load = Load::start(client(&cluster, "superuser").await, 4);
    tokio::time::sleep(Duration::from_secs(45)).await;
    let report = load.stop().await;

    let seen: Vec<(&str, usize)> = PROCESSES
        .iter()
        .zip(before)
        .map(|(name, before)| (*name, rotations(&cluster, name) - before))
        .collect();
    let renewed: Vec<(&str, usize)> = PROCESSES
        .iter()
        .map(|name| (*name, expired_connections(&cluster, name)))
        .collect();
    println!(
        "SVID TTL 10s, 45 s of load: {} requests ok, {} failed; SVID rotations per process: \
         {seen:?}; connections ended on an expired peer SVID (renewed): {renewed:?}",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{:?}", report.first_failures);
    assert!(report.ok > 100, "{report:?}");
    for (name, count) in &seen {
        assert!(*count >= 3, "{name} rotated only {count} times in 45 s");
    }
    // The load's own connections (and the replicas' to each other and to
    // the keepers) outlived the SVIDs they were made with, were ended by
    // the servers, and were made again on the new SVIDs without a failed
    // request.
    let replicas: usize = renewed
        .iter()
        .filter(|(name, _)| name.starts_with("nexus"))
        .map(|(_, count)| count)
        .sum();
    let keepers: usize = renewed
        .iter()
        .filter(|(name, _)| name.starts_with("keeper"))
        .map(|(_, count)| count)
        .sum();
    assert!(replicas > 0 && keepers > 0, "{renewed:?}");
}

/// The authority ids `spire-server localauthority x509 show` reports.
fn authorities(cluster: &spike_tests::LocalCluster) -> serde_json::Value {
    let shown = spire_server(
        cluster,
        &["localauthority", "x509", "show", "-output", "json"],
    );
    serde_json::from_str(&shown).expect("localauthority x509 show -output json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn a_ca_rotation_fails_no_request_and_retires_the_old_bundle() {
    let cluster = up("20s", &[]);
    let load = Load::start(client(&cluster, "superuser").await, 4);
    let new = rotate_ca(&cluster, Side::Cluster, Duration::from_secs(12)).await;
    assert_no_failed_request(load, "CA rotation under load").await;

    // Only the new CA is left, in SPIRE and in what a workload is given.
    let after = authorities(&cluster);
    assert_eq!(after["active"]["authority_id"].as_str(), Some(new.as_str()));
    let bundle = spire_server(&cluster, &["bundle", "show", "-format", "pem"]);
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "{bundle}");
    let material = cluster.identity("superuser").await.current();
    let roots = material.roots_for("spike.ist").expect("own bundle");
    assert_eq!(roots.len(), 1, "the old CA is still trusted");
    // And every process went on: each has an SVID from the new CA and
    // serves (a write through every replica in turn).
    for id in 1..=3 {
        let pinned = crate::client_of(&cluster, "superuser", vec![cluster.api(id)]).await;
        pinned
            .get_secret(
                &spike_sdk::domain::SecretPath::try_from("load/0").expect("path"),
                None,
            )
            .await
            .unwrap_or_else(|error| panic!("nexus-{id} after the CA rotation: {error}"));
    }
    for name in PROCESSES {
        assert!(
            log_lines(&cluster, name)
                .iter()
                .any(|line| line.contains("updated the trust bundles")),
            "{name} never took a new bundle"
        );
    }
}
