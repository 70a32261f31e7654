//! Faulted links. `spike-dev-cluster --netns` makes every process a host of
//! its own, whose links the fault-injection harness cuts and impairs
//! (needs root, iproute2 and iptables; without them that test says so and
//! checks nothing). Without root, replicas dial through the harness's
//! per-link proxies (`nexus --connect-proxy`).

use std::process::Command;
use std::time::Duration;

use spike_jepsen::proxy::{Impairment, LinkProxies};
use spike_tests::LocalCluster;

use crate::support::{Operators, RECOVERY_LIMIT, phase, put, read_until};

/// Whether this process may make network namespaces and drop packets.
fn namespaces_possible() -> bool {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|output| output.status.success())
    };
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0");
    root && works("ip", &["netns", "list"]) && works("iptables", &["--version"])
}

fn root_queue(namespace: &str) -> String {
    let output = Command::new("tc")
        .args(["-n", namespace, "qdisc", "show", "dev", "eth0", "root"])
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impaired_links_lose_packets_and_slow_down_until_healed() {
    if !namespaces_possible() {
        eprintln!("SKIPPED: network namespaces need root, iproute2 and iptables");
        return;
    }
    let tag = std::process::id() % 1000;
    let prefix = format!("st{tag}");
    let subnet = format!("10.215.{}", tag % 250 + 1);
    let cluster = LocalCluster::up(&["--netns", &prefix, "--netns-subnet", &subnet]);
    let namespace = format!("{prefix}-nexus-2");
    assert!(cluster.ready(2));

    phase("every packet of nexus-2 lost: it is out of reach until healed");
    cluster.impair("nexus-2", &["--loss", "100"]);
    for _ in 0..5 {
        assert!(!cluster.ready(2), "nexus-2 answered through 100 % loss");
    }
    cluster.heal();
    cluster.wait_ready(2, RECOVERY_LIMIT).await;

    phase("a bandwidth cap queues its packets; healing lifts it");
    cluster.impair("nexus-2", &["--rate", "64"]);
    let queue = root_queue(&namespace);
    assert!(queue.contains("tbf") && queue.contains("64Kbit"), "{queue}");
    cluster.wait_ready(2, RECOVERY_LIMIT).await;
    cluster.heal();
    assert!(!root_queue(&namespace).contains("tbf"));

    phase("bad input is refused and changes nothing");
    let refused = cluster
        .try_spike("impair", &["nexus-2", "--loss", "0"])
        .expect_err("0 % loss");
    assert!(refused.contains("1 to 100"), "{refused}");
    let refused = cluster
        .try_spike("impair", &["nexus-2"])
        .expect_err("nothing to impair");
    assert!(refused.contains("--loss"), "{refused}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cluster.ready(2));
}

/// Proxies for nexus-1 to nexus-3 on three free consecutive ports; returns
/// them and the base to give `--connect-proxy-base`.
fn proxies_for_three(cluster_dir: &std::path::Path) -> (LinkProxies, u16) {
    for _ in 0..20 {
        let base = spike_tests::free_port() - 1;
        let sources = (1..=3u16)
            .map(|id| (format!("nexus-{id}"), base + id))
            .collect();
        if let Ok(proxies) = LinkProxies::start(sources, cluster_dir.to_owned()) {
            return (proxies, base);
        }
    }
    panic!("no three free consecutive ports for the proxies")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_25ms_apart_through_proxies_still_commit() {
    let dir = tempfile::tempdir().expect("cluster directory");
    let (proxies, base) = proxies_for_three(dir.path());
    let cluster = LocalCluster::up_in(dir, &["--connect-proxy-base", &base.to_string()]);
    let ops = Operators::of(&cluster).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "far", "0").await.status,
        200
    );

    // openraft gives an append one heartbeat (50 ms) for the round trip:
    // before appends got a floor of their own, no write committed here.
    phase("every replica 25 ms away from the others, each way");
    let late = Impairment {
        delay: Duration::from_millis(25),
        ..Impairment::default()
    };
    for id in 1..=3 {
        proxies.impair(&format!("nexus-{id}"), late);
    }
    for round in 1..=10 {
        let reply = put(
            &ops.superuser,
            cluster.api(1 + round % 3),
            "far",
            &round.to_string(),
        )
        .await;
        assert_eq!(
            reply.status, 200,
            "write {round} across slow links: {:?}",
            reply.body
        );
    }

    phase("a cut link stalls; healed, the replica catches up");
    proxies.heal();
    proxies.cut("nexus-3", "nexus-1");
    proxies.cut("nexus-3", "nexus-2");
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "far", "cut")
            .await
            .status,
        200
    );
    proxies.heal();
    read_until(&ops.superuser, cluster.api(3), "far", "cut").await;
}
