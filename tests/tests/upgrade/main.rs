//! A rolling upgrade from the previous release to this build, under load,
//! as an operator does it (docs/operations.md, "Upgrade and roll back").
//!
//! tests/run builds the previous release from the repository's history
//! (dev/release/build-previous) and passes its binaries in
//! `SPIKE_PREVIOUS_RELEASE_BIN_DIR`. A 3-replica cluster starts on them; a
//! writer puts secrets the whole time, through whichever replica answers;
//! each replica is stopped and started again on this build, followers
//! first and the leader last (the first one is also rolled back and
//! forward again), then each keeper. Required: every
//! acknowledged write is readable at the end; no write fails for longer
//! than one election; the cluster keeps writing the old on-disk format
//! until the last voter runs this build and switches right after; and once
//! it has switched, a replica started on the previous release refuses its
//! data directory. When this build adds no format over the previous
//! release, the format must never move and a rollback stays possible to
//! the end instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use spike_tests::{ApiClient, LocalCluster, binary, get, value_of};
use tokio::time::Instant;

/// The variable tests/run sets to the previous release's binaries.
const PREVIOUS_BIN_DIR: &str = "SPIKE_PREVIOUS_RELEASE_BIN_DIR";
/// Longest a replica may take to serve again after a restart.
const RESTART_LIMIT: Duration = Duration::from_secs(30);
/// Longest writes may fail in a row. One election takes 0.3-0.6 s here
/// (150-300 ms election timeouts, the old leader's lease honoured first);
/// the rest is the client finding a replica that forwards to the new
/// leader, on a 2-core machine under a writer and a replica starting.
const ONE_ELECTION: Duration = Duration::from_secs(2);
/// The leader looks whether the cluster may switch formats every 2 s
/// (`cluster::version::SWITCH_CHECK_INTERVAL`): the switch follows the
/// last voter's upgrade within a few of those.
const SWITCH_LIMIT: Duration = Duration::from_secs(15);

fn previous_bin_dir() -> PathBuf {
    let dir = std::env::var_os(PREVIOUS_BIN_DIR).unwrap_or_else(|| {
        panic!("{PREVIOUS_BIN_DIR} is not set: tests/run sets it to the output of dev/release/build-previous")
    });
    PathBuf::from(dir)
}

fn release_of(bin_dir: &Path) -> String {
    let output = std::process::Command::new(bin_dir.join("nexus"))
        .arg("--version")
        .output()
        .expect("run nexus --version");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("nexus --version printed {text:?}"))
        .to_owned()
}

/// The newest on-disk format the build in `bin_dir` writes, as its
/// `nexus --version` states it ("on-disk formats 1 to 2"); 1 for 0.1.0,
/// which states none.
fn newest_format_of(bin_dir: &Path) -> u64 {
    let output = std::process::Command::new(bin_dir.join("nexus"))
        .arg("--version")
        .output()
        .expect("run nexus --version");
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_once("on-disk formats ")
        .and_then(|(_, range)| range.split_once(" to "))
        .and_then(|(_, newest)| {
            let digits: String = newest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(1)
}

async fn status(client: &ApiClient, node: SocketAddr) -> Option<Value> {
    let reply = client
        .post(node, "/v1/cluster?action=status", json!({}))
        .await
        .ok()?;
    (reply.status == 200).then_some(reply.body)
}

/// Each replica's view: its release (a replica of 0.1.0 names none) and
/// the cluster format it applied (0.1.0 knows only format 1).
async fn versions(client: &ApiClient, cluster: &LocalCluster) -> BTreeMap<u64, (String, u64)> {
    let mut seen = BTreeMap::new();
    for id in 1..=3 {
        if let Some(status) = status(client, cluster.api(id)).await {
            let release = status["release"].as_str().unwrap_or("0.1.0").to_owned();
            let format = status["clusterFormat"].as_u64().unwrap_or(1);
            seen.insert(id, (release, format));
        }
    }
    seen
}

async fn leader_id(client: &ApiClient, cluster: &LocalCluster) -> u64 {
    let began = Instant::now();
    loop {
        for id in 1..=3 {
            if let Some(status) = status(client, cluster.api(id)).await
                && let Some(leader) = status["leaderId"].as_u64()
            {
                return leader;
            }
        }
        assert!(began.elapsed() < RESTART_LIMIT, "no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the writer saw: every acknowledged write, and the longest stretch
/// in which writes failed.
#[derive(Default)]
struct Written {
    acknowledged: Vec<(String, String)>,
    attempts: u64,
    failures: u64,
    longest_outage: Duration,
}

/// Puts `upgrade/N` = `value-N`, one after another, through each replica in
/// turn; a failed put is retried on the next replica until it is
/// acknowledged (a put that did apply and is retried only adds a version of
/// the same value).
async fn write_until(stop: Arc<AtomicBool>, client: ApiClient, nodes: Vec<SocketAddr>) -> Written {
    let mut written = Written::default();
    let mut turn = 0usize;
    let mut number = 0u64;
    while !stop.load(Ordering::Relaxed) {
        number += 1;
        let (path, value) = (format!("upgrade/{number}"), format!("value-{number}"));
        let mut failing_since = None;
        loop {
            let node = nodes[turn % nodes.len()];
            written.attempts += 1;
            let reply = client
                .post(
                    node,
                    "/v1/store/secrets",
                    json!({ "path": path, "values": { "v": value } }),
                )
                .await;
            if reply.is_ok_and(|reply| reply.status == 200) {
                if let Some(since) = failing_since {
                    let outage = Instant::now().duration_since(since);
                    written.longest_outage = written.longest_outage.max(outage);
                }
                break;
            }
            written.failures += 1;
            failing_since.get_or_insert_with(Instant::now);
            turn += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        written.acknowledged.push((path, value));
        turn += 1;
    }
    written
}

/// Stops `name` and starts it again from the binaries in `bin_dir`.
fn replace(cluster: &mut LocalCluster, name: &str, bin_dir: &Path) -> Result<String, String> {
    cluster.act("stop", name);
    let bin_dir = bin_dir.to_str().expect("UTF-8 path");
    let outcome = cluster.try_spike("start", &[name, "--bin-dir", bin_dir]);
    cluster.reload();
    outcome
}

/// Waits until replica `id` holds the root key and has applied what the
/// leader had committed when it came back.
async fn wait_caught_up(client: &ApiClient, cluster: &LocalCluster, id: u64) {
    cluster.wait_ready(id, RESTART_LIMIT).await;
    let leader = leader_id(client, cluster).await;
    let committed = status(client, cluster.api(leader))
        .await
        .and_then(|status| status["commitIndex"].as_u64())
        .unwrap_or(0);
    let began = Instant::now();
    loop {
        let applied = status(client, cluster.api(id))
            .await
            .and_then(|status| status["appliedIndex"].as_u64())
            .unwrap_or(0);
        if applied >= committed {
            return;
        }
        assert!(
            began.elapsed() < RESTART_LIMIT,
            "nexus-{id} applied {applied}, behind {committed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(cluster: &LocalCluster, name: &str) -> String {
    std::fs::read_to_string(&cluster.process(name).log).unwrap_or_default()
}

/// The on-disk format that brought custom metadata on secrets.
const CUSTOM_METADATA_FORMAT: u64 = 3;

/// Sets custom metadata on `upgrade/marker` (written first) through `node`.
async fn custom_metadata_put(client: &ApiClient, node: SocketAddr) -> spike_tests::Reply {
    let put = client
        .post(
            node,
            "/v1/store/secrets",
            json!({"path": "upgrade/marker", "values": {"v": "1"}}),
        )
        .await
        .expect("put reaches the replica");
    assert_eq!(put.status, 200, "{:?}", put.body);
    client
        .post(
            node,
            "/v1/store/secrets/metadata?action=put",
            json!({"path": "upgrade/marker", "customMetadata": {"owner": "upgrade"}}),
        )
        .await
        .expect("metadata put reaches the replica")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the previous release's binaries: tests/run builds them (dev/release/build-previous)"]
async fn rolling_upgrade_from_the_previous_release() {
    let previous = previous_bin_dir();
    let current = binary("nexus")
        .parent()
        .expect("binaries in a directory")
        .to_owned();
    let (from, to) = (release_of(&previous), release_of(&current));
    let (old_format, new_format) = (newest_format_of(&previous), newest_format_of(&current));
    // A release that adds no format upgrades without a switch: then the
    // format stays put and a rollback stays possible to the end.
    let switches = new_format > old_format;
    eprintln!("--- upgrading {from} (format {old_format}) -> {to} (format {new_format})");
    let previous_arg = previous.to_str().expect("UTF-8 path").to_owned();
    let mut cluster = LocalCluster::up(&["--bin-dir", &previous_arg, "--spares", "1"]);
    let superuser = ApiClient::new(&cluster.identity("superuser").await);

    // A cluster of the previous release settles in its newest format.
    let began = Instant::now();
    loop {
        let before = versions(&superuser, &cluster).await;
        if before.len() == 3
            && before
                .values()
                .all(|(release, format)| *release == from && *format == old_format)
        {
            break;
        }
        assert!(
            began.elapsed() < SWITCH_LIMIT,
            "the replicas of {from} did not settle in format {old_format}: {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<SocketAddr> = (1..=3).map(|id| cluster.api(id)).collect();
    let writer = tokio::spawn(write_until(
        stop.clone(),
        ApiClient::new(&cluster.identity("superuser").await),
        nodes,
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Followers first, the leader last: one election, at the end.
    let leader = leader_id(&superuser, &cluster).await;
    let mut order: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    order.push(leader);
    for (step, id) in order.iter().enumerate() {
        let name = format!("nexus-{id}");
        eprintln!("--- {name} -> {to}");
        replace(&mut cluster, &name, &current).unwrap_or_else(|e| panic!("start {name}: {e}"));
        wait_caught_up(&superuser, &cluster, *id).await;
        if step == 0 {
            // Before the switch, an upgraded replica can be rolled back:
            // it wrote nothing the previous release cannot read.
            eprintln!("--- {name} rolled back to {from}, then forward again");
            replace(&mut cluster, &name, &previous)
                .unwrap_or_else(|e| panic!("start {name} on {from}: {e}"));
            wait_caught_up(&superuser, &cluster, *id).await;
            replace(&mut cluster, &name, &current).unwrap_or_else(|e| panic!("start {name}: {e}"));
            wait_caught_up(&superuser, &cluster, *id).await;
        }
        let last = step + 1 == order.len();
        if !last {
            // Two rounds of the leader's check: still the old format, as a
            // member still runs the previous release.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let now = versions(&superuser, &cluster).await;
            for (id, (_, format)) in &now {
                assert_eq!(
                    *format, old_format,
                    "nexus-{id} switched formats before the last voter was upgraded: {now:?}"
                );
            }
            if old_format < CUSTOM_METADATA_FORMAT && new_format >= CUSTOM_METADATA_FORMAT {
                // A command of the new format waits for the switch: the
                // upgraded replica answers 503 and nothing is forwarded to
                // a leader that could not decode it.
                let reply = custom_metadata_put(&superuser, cluster.api(*id)).await;
                assert_eq!(reply.status, 503, "before the switch: {:?}", reply.body);
            }
        }
    }
    let began = Instant::now();
    loop {
        let now = versions(&superuser, &cluster).await;
        if now.len() == 3
            && now
                .values()
                .all(|(release, format)| *release == to && *format == new_format)
        {
            eprintln!(
                "--- every replica runs {to}; the cluster writes format {new_format} {:?} after the last voter",
                began.elapsed()
            );
            break;
        }
        assert!(
            began.elapsed() < SWITCH_LIMIT,
            "the cluster did not reach format {new_format} within {SWITCH_LIMIT:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    if new_format >= CUSTOM_METADATA_FORMAT {
        let reply = custom_metadata_put(&superuser, cluster.api(order[0])).await;
        assert_eq!(reply.status, 200, "after the switch: {:?}", reply.body);
    }

    // The keepers, one at a time: the leader pushes each restarted keeper
    // its share again.
    for name in cluster.keeper_names() {
        eprintln!("--- {name} -> {to}");
        replace(&mut cluster, &name, &current).unwrap_or_else(|e| panic!("start {name}: {e}"));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let leader = leader_id(&superuser, &cluster).await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    if switches {
        // After the switch, the previous release refuses a data directory of
        // the new format, and says so; this build then takes it back.
        let name = format!("nexus-{follower}");
        eprintln!("--- {name} back to {from}: refused");
        let log_before = log_of(&cluster, &name).len();
        let _ = replace(&mut cluster, &name, &previous);
        let began = Instant::now();
        let refusal = loop {
            let log = log_of(&cluster, &name);
            if let Some(line) = log[log_before.min(log.len())..]
                .lines()
                .find(|line| line.contains(&format!("on-disk format {new_format};")))
            {
                break line.to_owned();
            }
            assert!(
                began.elapsed() < RESTART_LIMIT,
                "{name} on {from} did not refuse the new format; its log:\n{}",
                &log[log_before.min(log.len())..]
            );
            assert!(
                !cluster.ready(follower),
                "{name} on {from} serves on a data directory of format {new_format}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("--- refused: {refusal}");
        assert!(refusal.contains("this build reads format"), "{refusal}");
        eprintln!("--- {name} -> {to} again");
        replace(&mut cluster, &name, &current).unwrap_or_else(|e| panic!("start {name}: {e}"));
        // Its root key comes from the upgraded keepers.
        wait_caught_up(&superuser, &cluster, follower).await;

        // A new replica on the previous release is refused as a member, with
        // the reason, before it could stop at the first entry it cannot read.
        eprintln!("--- nexus-4 on {from} asks to join: refused");
        let joined = cluster.try_spike("join", &["nexus-4", "--bin-dir", &previous_arg]);
        cluster.reload();
        joined.unwrap_or_else(|e| panic!("join nexus-4: {e}"));
        let spare = cluster.replica(4).clone();
        let add = json!({
            "id": 4,
            "clusterAddr": spare.cluster_addr.to_string(),
            "apiAddr": spare.api_addr.to_string(),
        });
        spike_tests::wait_for_port(spare.cluster_addr).await;
        let reply = superuser
            .post(cluster.api(follower), "/v1/cluster?action=add", add)
            .await
            .expect("add reaches the replica");
        assert_eq!(reply.status, 400, "nexus-4 on {from}: {:?}", reply.body);
        let leader = leader_id(&superuser, &cluster).await;
        let refusal = log_of(&cluster, &format!("nexus-{leader}"))
            .lines()
            .find(|line| line.contains("was refused as a member"))
            .unwrap_or_else(|| panic!("nexus-{leader} does not log why nexus-4 was refused"))
            .to_owned();
        assert!(
            refusal.contains(&format!("node 4 runs release {from}")),
            "{refusal}"
        );
        eprintln!("--- refused: {refusal}");
        let members = status(&superuser, cluster.api(follower))
            .await
            .expect("status")["members"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(members, 3, "nexus-4 did not become a member");
        cluster.act("stop", "nexus-4");
    } else {
        // No switch: rolling back stays possible after the last replica.
        let name = format!("nexus-{follower}");
        eprintln!("--- {name} back to {from} (no format switch: allowed), then to {to}");
        replace(&mut cluster, &name, &previous)
            .unwrap_or_else(|e| panic!("start {name} on {from}: {e}"));
        wait_caught_up(&superuser, &cluster, follower).await;
        replace(&mut cluster, &name, &current).unwrap_or_else(|e| panic!("start {name}: {e}"));
        wait_caught_up(&superuser, &cluster, follower).await;
    }

    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer");
    eprintln!(
        "--- {} writes acknowledged in {} attempts ({} failed); longest outage {:?}",
        written.acknowledged.len(),
        written.attempts,
        written.failures,
        written.longest_outage
    );
    assert!(written.acknowledged.len() > 100, "the writer made progress");
    assert!(
        written.longest_outage <= ONE_ELECTION,
        "writes failed for {:?} in a row, longer than one election ({ONE_ELECTION:?})",
        written.longest_outage
    );
    let reader = cluster.api(leader_id(&superuser, &cluster).await);
    for (path, value) in &written.acknowledged {
        let read = get(&superuser, reader, path).await;
        assert_eq!(
            value_of(&read).as_deref(),
            Some(value.as_str()),
            "acknowledged {path} reads {:?}",
            read.body
        );
    }
}
