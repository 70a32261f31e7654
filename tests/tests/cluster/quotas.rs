//! The storage quota and the rate limits, on real processes: past the
//! quota, writes that add data are refused (507) while reads, deletes and
//! destroys go on, and the alarm shows until space is freed; a rate limit
//! set for one workload refuses its burst beyond (429, `Retry-After`),
//! leaves another workload alone, survives a leader change, and never
//! locks the superuser out of the limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spike_sdk::client::RawReply;
use spike_tests::{ApiClient, LocalCluster};

use crate::support::{Operators, RECOVERY_LIMIT, leader, phase, status};

/// The quota the quota test starts its replicas with.
const QUOTA: &str = "6MiB";
/// Each secret the quota test writes: 400 KiB of values.
const VALUE_BYTES: usize = 400 * 1024;

/// `spike ARGS` as the superuser, at every replica (it follows the leader).
pub async fn spike(cluster: &LocalCluster, args: &[&str]) -> std::process::Output {
    spike_at(cluster, &[1, 2, 3], args).await
}

/// `spike ARGS` as the superuser, at replicas `ids` (the first asked first).
async fn spike_at(cluster: &LocalCluster, ids: &[u64], args: &[&str]) -> std::process::Output {
    let home = tempfile::tempdir().expect("home");
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("https://{}", cluster.api(*id)))
        .collect();
    cluster
        .spike_as("superuser")
        .env("HOME", home.path())
        .env("SPIKE_NEXUS_API_URL", &urls[0])
        .env("SPIKE_NEXUS_API_URLS", urls.join(","))
        .args(args)
        .output()
        .await
        .expect("spike runs")
}

async fn post_raw(client: &ApiClient, node: SocketAddr, path: &str, body: Value) -> RawReply {
    client
        .raw(
            node,
            "POST",
            path,
            spike_sdk::api::header::JSON,
            body.to_string().into_bytes(),
        )
        .await
        .unwrap_or_else(|error| panic!("{path} on {node}: {error}"))
}

fn err_of(reply: &RawReply) -> Value {
    serde_json::from_slice::<Value>(&reply.bytes).unwrap_or(Value::Null)["err"].clone()
}

async fn put_big(client: &ApiClient, node: SocketAddr, path: &str, fill: char) -> RawReply {
    let value: String = std::iter::repeat_n(fill, VALUE_BYTES).collect();
    post_raw(
        client,
        node,
        "/v1/store/secrets",
        json!({ "path": path, "values": { "v": value } }),
    )
    .await
}

/// Waits until the leader's status says the quota is (or is not) exceeded.
async fn quota_alarm_becomes(client: &ApiClient, cluster: &LocalCluster, exceeded: bool) -> Value {
    let began = tokio::time::Instant::now();
    loop {
        let id = leader(client, cluster, &[1, 2, 3]).await;
        if let Some(status) = status(client, cluster.api(id)).await
            && status["storageQuotaExceeded"] == exceeded
        {
            return status;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "the quota alarm never became {exceeded}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_storage_quota_only_writes_that_add_data_are_refused_until_space_is_freed() {
    let quota_arg = format!("--storage-quota={QUOTA}");
    let cluster = LocalCluster::up(&["--nexus-arg", &quota_arg]);
    let ops = Operators::of(&cluster).await;
    let su = &ops.superuser;
    let node = cluster.api(1);

    phase("fill the store until a put is refused");
    let mut written = Vec::new();
    let refused = loop {
        let path = format!("big/{}", written.len());
        let reply = put_big(su, node, &path, 'x').await;
        match reply.status {
            200 => written.push(path),
            507 => break reply,
            other => panic!("put {path}: {other} {:?}", err_of(&reply)),
        }
        // Back to back: the sampler (every 1 s) sees few of them; the
        // leader's estimate of what it let through since counts the rest.
        assert!(written.len() < 100, "100 puts of 400 KiB and no refusal");
    };
    assert_eq!(err_of(&refused), "storage_quota_exceeded");
    let reason = refused
        .header(spike_sdk::api::header::REASON)
        .expect("a refusal names its reason")
        .to_owned();
    for needed in ["storage quota exceeded", "6.0 MiB", "destroy"] {
        assert!(reason.contains(needed), "{reason}");
    }
    eprintln!("refused after {} puts: {reason}", written.len());
    let alarm = quota_alarm_becomes(su, &cluster, true).await;
    assert_eq!(alarm["storageQuotaBytes"], 6 * 1024 * 1024);

    phase("the quota is a ceiling: no replica holds more than it");
    // Once a page scan has measured every copy (at most every 5 s). The
    // leader decides on its own pages; a follower holds the same data in
    // pages of its own (its apply batches differ), so within 5 % of them.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let leader_id = leader(su, &cluster, &[1, 2, 3]).await;
    let quota_bytes = 6 * 1024 * 1024;
    for id in [1, 2, 3] {
        let status = status(su, cluster.api(id)).await.expect("status");
        let used = status["storageUsedBytes"].as_u64().expect("used");
        eprintln!(
            "nexus-{id}: {used} bytes in use after {} puts",
            written.len()
        );
        let bound = if id == leader_id {
            quota_bytes
        } else {
            quota_bytes + quota_bytes / 20
        };
        assert!(used <= bound, "nexus-{id} holds {used} bytes");
    }

    phase("the CLI shows the leader's alarm and the error");
    // The alarm is the leader's: it refuses the writes (the followers,
    // each under the quota by its own measure, raise theirs only past it).
    let began = tokio::time::Instant::now();
    loop {
        let id = leader(su, &cluster, &[1, 2, 3]).await;
        let shown = spike_at(&cluster, &[id], &["cluster", "status"]).await;
        let shown = String::from_utf8_lossy(&shown.stdout);
        if shown.contains("QUOTA EXCEEDED") {
            break;
        }
        assert!(began.elapsed() < RECOVERY_LIMIT, "{shown}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // 4 values of 120 KiB (one argument may not pass 128 KiB): no room.
    let pairs: Vec<String> = (0..4)
        .map(|index| format!("v{index}={}", "z".repeat(120 * 1024)))
        .collect();
    let mut args = vec!["secret", "put", "big/cli"];
    args.extend(pairs.iter().map(String::as_str));
    let refused = spike(&cluster, &args).await;
    let said = String::from_utf8_lossy(&refused.stderr).into_owned()
        + &String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("storage quota exceeded"), "{said}");

    phase("a backup larger than the quota is refused before anything is replaced");
    let oversized = su
        .raw(
            node,
            "POST",
            "/v1/snapshot?action=restore",
            "application/octet-stream",
            vec![0; 7 * 1024 * 1024],
        )
        .await
        .expect("restore reaches the node");
    assert_eq!(oversized.status, 507);
    let reason = oversized
        .header(spike_sdk::api::header::REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains("the backup is 7.0 MiB"), "{reason}");
    let read = post_raw(
        su,
        node,
        "/v1/store/secrets?action=get",
        json!({ "path": written[0] }),
    )
    .await;
    assert_eq!(read.status, 200, "the store is untouched");

    phase("reads, deletes, undeletes and destroys go on");
    let first = &written[0];
    let read = post_raw(
        su,
        node,
        "/v1/store/secrets?action=get",
        json!({ "path": first }),
    )
    .await;
    assert_eq!(read.status, 200);
    for action in ["delete", "undelete"] {
        let reply = post_raw(
            su,
            node,
            &format!("/v1/store/secrets?action={action}"),
            json!({ "path": first, "versions": [1] }),
        )
        .await;
        assert_eq!(reply.status, 200, "{action}: {:?}", err_of(&reply));
    }
    for path in &written {
        let reply = post_raw(
            su,
            node,
            "/v1/store/secrets?action=destroy",
            json!({ "path": path, "versions": [1] }),
        )
        .await;
        assert_eq!(reply.status, 200, "destroy {path}: {:?}", err_of(&reply));
    }

    phase("space freed: the alarm clears and writes work again");
    quota_alarm_becomes(su, &cluster, false).await;
    let again = put_big(su, node, "big/again", 'y').await;
    assert_eq!(again.status, 200, "{:?}", err_of(&again));
}

/// `spike cluster limits ARGS...` as the superuser; retried while the
/// cluster has not switched to the format limits need (a new cluster does
/// so within seconds).
async fn limits(cluster: &LocalCluster, args: &[&str]) -> String {
    let began = tokio::time::Instant::now();
    loop {
        let mut all = vec!["cluster", "limits"];
        all.extend_from_slice(args);
        let output = spike(cluster, &all).await;
        let said = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return said;
        }
        let complaint = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "spike cluster limits {args:?}: {said}{complaint}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Statuses of `count` requests by `client` to `node`, at once.
async fn burst(client: &ApiClient, node: SocketAddr, count: usize) -> Vec<RawReply> {
    let mut replies = Vec::new();
    for _ in 0..count {
        replies.push(
            post_raw(
                client,
                node,
                "/v1/store/secrets?action=get",
                json!({ "path": "apps/x" }),
            )
            .await,
        );
    }
    replies
}

fn limited(replies: &[RawReply]) -> usize {
    replies.iter().filter(|reply| reply.status == 429).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_one_workload_back_survives_a_leader_change_and_spares_the_superuser() {
    let mut cluster = LocalCluster::up(&[
        "--workload",
        "noisy=/app/noisy",
        "--workload",
        "quiet=/app/quiet",
    ]);
    let ops = Operators::of(&cluster).await;
    let su = &ops.superuser;
    let noisy_identity = cluster.identity("noisy").await;
    let noisy_id = noisy_identity.spiffe_id().to_string();
    let noisy = ApiClient::new(&noisy_identity);
    let quiet = ApiClient::new(&cluster.identity("quiet").await);

    phase("set a limit on the noisy workload with the CLI");
    // One request a second after a burst of 3.
    let rule = format!("{noisy_id},*,1,3");
    limits(
        &cluster,
        &[
            "set",
            "--rule",
            &rule,
            "--rule",
            "*,/v1/cluster?action=status,1,1",
        ],
    )
    .await;
    let shown = limits(&cluster, &["get", "-f", "json"]).await;
    let shown: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(shown["rules"][0]["spiffeId"], noisy_id.as_str());
    assert_eq!(shown["rules"][0]["burst"], 3);

    phase("the noisy workload's burst beyond gets 429 with Retry-After");
    let node = cluster.api(2);
    let began = tokio::time::Instant::now();
    let replies = burst(&noisy, node, 8).await;
    let took = began.elapsed();
    let statuses: Vec<u16> = replies.iter().map(|reply| reply.status).collect();
    // Not limited: refused by authorization (no policy), the first 3.
    assert_eq!(statuses[..4], [401, 401, 401, 429], "{statuses:?}");
    let refused = &replies[3];
    assert_eq!(err_of(refused), "rate_limited");
    let retry_after: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // It asked again at once, ignoring Retry-After: each such request is
    // held until the moment it was given, then let through if a token
    // refilled (1 a second) or refused; never answered early.
    assert!(limited(&replies) >= 3, "{statuses:?}");
    let let_through = statuses[4..]
        .iter()
        .filter(|status| **status != 429)
        .count();
    assert!(
        took >= Duration::from_secs(1) && let_through as u64 <= took.as_secs() + 1,
        "{statuses:?} in {took:?}"
    );

    phase("the quiet workload is unaffected");
    assert_eq!(limited(&burst(&quiet, node, 20).await), 0);

    phase("the setting survives a leader change");
    let old = leader(su, &cluster, &[1, 2, 3]).await;
    cluster.act("kill", &format!("nexus-{old}"));
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let new = loop {
        let id = leader(su, &cluster, &survivors).await;
        if id != old {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let shown = limits(&cluster, &["get", "-f", "json"]).await;
    assert!(shown.contains(&noisy_id), "{shown}");
    // Buckets are per replica: the new leader's are fresh, then spent.
    let replies = burst(&noisy, cluster.api(new), 8).await;
    assert!(limited(&replies) >= 3);
    cluster.act("start", &format!("nexus-{old}"));

    phase("the superuser is never locked out of the cluster routes");
    // Status is limited to 1 a second for everyone by the second rule, but
    // not for the superuser.
    for _ in 0..10 {
        let reply = post_raw(su, node, "/v1/cluster?action=status", json!({})).await;
        assert_eq!(reply.status, 200);
    }
    let quiet_status = burst_status(&quiet, node).await;
    assert_eq!(quiet_status, [401, 429]);
    // Limit everyone, the superuser included, on every route...
    limits(&cluster, &["set", "--rule", "*,*,1,1"]).await;
    let data = burst(su, node, 5).await;
    assert!(
        limited(&data) >= 2,
        "the superuser's data routes are limited too"
    );
    // ...and it can still lift the limits.
    let said = limits(&cluster, &["clear"]).await;
    assert!(said.contains("removed"), "{said}");
    assert_eq!(limits(&cluster, &["get"]).await, "No rate limits.\n");
    assert_eq!(limited(&burst(&noisy, node, 10).await), 0);
}

/// Two status requests at once by a caller that is not the superuser: 401
/// first (it may not see the status), then 429 (its bucket of 1 is spent).
async fn burst_status(client: &ApiClient, node: SocketAddr) -> [u16; 2] {
    let mut statuses = [0; 2];
    for status in &mut statuses {
        *status = post_raw(client, node, "/v1/cluster?action=status", json!({}))
            .await
            .status;
    }
    statuses
}
