//! Identities that SPIRE stops issuing: a deleted registration entry is
//! refused everywhere once its last SVID expires; an agent or the server
//! going away leaves the processes on the SVIDs they hold.

use std::time::{Duration, Instant};

use spike_dev_cluster::probe;
use spike_sdk::api::SecretValues;
use spike_sdk::domain::{Permission, PolicyName, SecretPath};
use spike_tests::LocalCluster;

use crate::{
    Load, assert_no_failed_request, client, client_of, delete_entries, log_lines, probe_of,
    rotations, up,
};

/// Polls `check` every 200 ms until it holds; how long that took, or
/// `None` after `limit`.
async fn time_until(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if check().await {
            return Some(began.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Warnings of replica `name` that a keeper did not take its share.
fn missing_share_warnings(cluster: &LocalCluster, name: &str) -> usize {
    log_lines(cluster, name)
        .iter()
        .filter(|line| line.contains("not every keeper holds its share"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn a_deleted_entry_is_refused_on_every_port_within_its_svid_ttl() {
    let ttl = Duration::from_secs(10);
    let mut cluster = up("10s", &["--workload", "billing=/app/billing"]);
    let superuser = client(&cluster, "superuser").await;
    let path = SecretPath::try_from("app/db").expect("path");
    let values: SecretValues = [("pass", "s3cr3t")].into_iter().collect();
    superuser
        .put_secret(&path, &values, None)
        .await
        .expect("put");
    superuser
        .put_policy(
            &PolicyName::try_from("billing").expect("name"),
            "^spiffe://spike\\.ist/app/billing$",
            "^app/",
            &[Permission::Read],
        )
        .await
        .expect("policy");

    // The billing workload reads through every replica (one client each,
    // staying on its replica).
    let mut probes = Vec::new();
    for id in 1..=3 {
        let billing = probe_of(&cluster, "billing", id).await;
        billing
            .get_secret(&path, None)
            .await
            .expect("billing reads");
        probes.push(billing);
    }
    let deleted = delete_entries(&cluster, "spiffe://spike.ist/app/billing");
    assert_eq!(deleted, 2, "its own uid's entry and the operator's");
    // From the deletion on, every replica is probed until it refuses.
    let deleted_at = Instant::now();
    let path = &path;
    let refusals = probes
        .iter()
        .enumerate()
        .map(|(index, billing)| async move {
            time_until(ttl * 2, async || {
                billing.get_secret(path, None).await.is_err()
            })
            .await
            .unwrap_or_else(|| panic!("nexus-{} still serves billing", index + 1));
            deleted_at.elapsed()
        });
    let refused_after = futures_util::future::join_all(refusals).await;
    let slowest = refused_after.iter().max().copied().unwrap_or_default();
    println!(
        "billing's entry deleted: refused by every replica's API after {slowest:?} \
         (SVID TTL {ttl:?}; per replica {refused_after:?})"
    );
    assert!(slowest <= ttl + Duration::from_secs(3), "{refused_after:?}");
    // No new SVID comes for it.
    let source = cluster.file.svid_source("billing").expect("named");
    assert!(source.load(Duration::from_secs(3)).await.is_err());
    // Everyone else is untouched.
    superuser
        .get_secret(path, None)
        .await
        .expect("superuser reads");

    // A keeper's entry deleted: once its SVID expires no replica can reach
    // it (the leader warns that a keeper lacks its share); the cluster
    // keeps its root key with the other four (threshold 3): a replica
    // restarted now rebuilds the key from them.
    let before: usize = (1..=3)
        .map(|id| missing_share_warnings(&cluster, &format!("nexus-{id}")))
        .sum();
    assert_eq!(
        delete_entries(&cluster, "spiffe://spike.ist/spike/keeper/5"),
        1
    );
    let took = time_until(ttl * 3, async || {
        let now: usize = (1..=3)
            .map(|id| missing_share_warnings(&cluster, &format!("nexus-{id}")))
            .sum();
        now > before
    })
    .await
    .expect("the leader never missed keeper-5");
    println!("keeper-5's entry deleted: the leader could no longer reach it after {took:?}");
    assert!(took <= ttl + Duration::from_secs(5), "{took:?}");
    cluster.act("kill", "nexus-3");
    cluster.act("start", "nexus-3");
    cluster.wait_ready(3, Duration::from_secs(30)).await;
    let on_three = client_of(&cluster, "superuser", vec![cluster.api(3)]).await;
    let read = on_three
        .get_secret(path, None)
        .await
        .expect("nexus-3 reads");
    assert_eq!(read.get("pass"), Some("s3cr3t"));

    // A replica's entry deleted: once its SVID expires the other replicas
    // neither replicate to it nor take it as leader (cluster port), and
    // clients refuse it (API port): its applied index stops while theirs
    // goes on under a writer, and the other two keep serving.
    assert_eq!(
        delete_entries(&cluster, "spiffe://spike.ist/spike/nexus/3"),
        1
    );
    let load = Load::start(
        client_of(&cluster, "superuser", vec![cluster.api(1), cluster.api(2)]).await,
        2,
    );
    let applied = |id: u64| {
        probe::gauge(
            cluster.replica(id).health_addr,
            "spike_raft_applied_index",
            probe::PROBE_TIMEOUT,
        )
        .unwrap_or(0)
    };
    let mut last_three = (applied(3), Instant::now());
    let cut_off = time_until(ttl * 3, async || {
        let now = applied(3);
        if now != last_three.0 {
            last_three = (now, Instant::now());
        }
        // Still for 3 s while the others moved at least 20 entries past it.
        last_three.1.elapsed() >= Duration::from_secs(3) && applied(1).min(applied(2)) > now + 20
    })
    .await
    .expect("nexus-3 kept replicating");
    // When it stopped, not when that was seen.
    let took = cut_off.saturating_sub(Duration::from_secs(3));
    println!("nexus-3's entry deleted: the cluster stopped replicating to it after {took:?}");
    assert!(took <= ttl + Duration::from_secs(5), "{took:?}");
    let on_three = probe_of(&cluster, "superuser", 3).await;
    assert!(
        on_three.get_secret(path, None).await.is_err(),
        "a client still trusts nexus-3"
    );
    assert_no_failed_request(
        load,
        "writes through nexus-1 and nexus-2 while nexus-3 lost its identity",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn agents_and_the_server_going_away_leave_the_cluster_serving() {
    if !crate::namespaces_possible() {
        panic!("this test needs root and iproute2 (one agent per namespace host)");
    }
    let tag = std::process::id() % 1000;
    let prefix = format!("sa{tag}");
    let subnet = format!("10.216.{}", tag % 250 + 1);
    let mut cluster = up("20s", &["--netns", &prefix, "--netns-subnet", &subnet]);
    let load = Load::start(client(&cluster, "superuser").await, 4);
    let path = SecretPath::try_from("load/0").expect("path");

    // nexus-2's host loses its agent past nexus-2's SVID's expiry.
    let agent = "spire-agent-nexus-2";
    let before = rotations(&cluster, "nexus-2");
    cluster.act("kill", agent);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let on_two = client_of(&cluster, "superuser", vec![cluster.api(2)]).await;
    on_two
        .get_secret(&path, None)
        .await
        .expect("nexus-2 serves on the SVID it holds");
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert_eq!(
        rotations(&cluster, "nexus-2"),
        before,
        "a new SVID without an agent"
    );
    cluster.act("start", agent);
    let renewed = time_until(Duration::from_secs(30), async || {
        rotations(&cluster, "nexus-2") > before
    })
    .await
    .expect("nexus-2 never got a new SVID from its restarted agent");
    println!("nexus-2's agent restarted: a new SVID after {renewed:?}");
    time_until(Duration::from_secs(20), async || {
        on_two.get_secret(&path, None).await.is_ok()
    })
    .await
    .expect("nexus-2 serves again on its new SVID");

    // The SPIRE server goes away for a while: every process keeps its SVID
    // (agents cannot renew them until it is back).
    cluster.act("kill", "spire-server");
    tokio::time::sleep(Duration::from_secs(8)).await;
    cluster.act("start", "spire-server");
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert_no_failed_request(load, "agent and server outages under load").await;
}
