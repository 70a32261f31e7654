//! `spike-cluster --netns`: every process a host of its own, whose links
//! the fault-injection harness cuts and impairs. Needs root and iproute2
//! (and iptables for packet loss); without them the test says so and
//! checks nothing.

use std::process::Command;
use std::time::Duration;

use spike_tests::LocalCluster;

use crate::support::{RECOVERY_LIMIT, phase};

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
