//! The leader's autopilot on real processes: the health report and the
//! failure tolerance as replicas die, promotion of an added replica only
//! after the stabilization time, opt-in removal of dead voters that never
//! goes below the minimum quorum, and non-voting read replicas.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use spike_tests::{ApiClient, LocalCluster};

use crate::support::{
    Operators, RECOVERY_LIMIT, get, leader, phase, put, read_until, status, value_of, voter_ids,
    voters_become,
};

/// The health report as `node` answers it (the leader's, forwarded if
/// `node` follows), or `None` if it does not answer 200.
async fn health(client: &ApiClient, node: SocketAddr) -> Option<Value> {
    let reply = client
        .post(node, "/v1/cluster?action=health", json!({}))
        .await
        .ok()?;
    (reply.status == 200).then_some(reply.body)
}

/// Asks `node` for the health report until `holds` says it shows `what`;
/// fails the test after `limit`.
async fn health_until(
    client: &ApiClient,
    node: SocketAddr,
    what: &str,
    limit: Duration,
    holds: impl Fn(&Value) -> bool,
) -> Value {
    let began = tokio::time::Instant::now();
    let mut last = None;
    loop {
        if let Some(report) = health(client, node).await {
            if holds(&report) {
                return report;
            }
            last = Some(report);
        }
        assert!(
            began.elapsed() < limit,
            "health never showed {what} within {limit:?}; last report: {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Member `id` of a health report.
fn member(report: &Value, id: u64) -> &Value {
    report["members"]
        .as_array()
        .and_then(|members| members.iter().find(|member| member["id"] == id))
        .unwrap_or_else(|| panic!("no member {id} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_a_killed_replica_unhealthy_and_no_failure_tolerance_left() {
    let mut cluster = LocalCluster::up(&[]);
    let ops = Operators::of(&cluster).await;
    let lead = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != lead).collect();
    let (victim, survivor) = (followers[0], followers[1]);

    phase("three healthy voters tolerate one failure; a follower forwards to the leader");
    let report = health_until(
        &ops.superuser,
        cluster.api(victim),
        "every member healthy",
        RECOVERY_LIMIT,
        |report| report["healthy"] == true,
    )
    .await;
    assert_eq!(report["leaderId"], lead, "{report:#}");
    assert_eq!(report["failureTolerance"], 1, "{report:#}");
    assert_eq!(report["voters"], 3, "{report:#}");
    assert_eq!(report["healthyVoters"], 3, "{report:#}");
    for id in [1, 2, 3] {
        let member = member(&report, id);
        assert_eq!(member["voter"], true, "{member}");
        assert_eq!(member["leader"], id == lead, "{member}");
        assert_eq!(member["healthy"], true, "{member}");
        let contact = member["lastContactMs"].as_u64().expect("contacted");
        assert!(contact <= 2_000, "{member}");
        assert!(
            member["logLag"].as_u64().expect("a lag") <= 1_000,
            "{member}"
        );
    }

    phase("kill -9 a follower: it turns unhealthy and the tolerance drops to 0");
    cluster.act("kill", &format!("nexus-{victim}"));
    let report = health_until(
        &ops.superuser,
        cluster.api(survivor),
        "the killed replica unhealthy",
        RECOVERY_LIMIT,
        |report| member(report, victim)["healthy"] == false,
    )
    .await;
    assert_eq!(report["healthy"], false, "{report:#}");
    assert_eq!(report["failureTolerance"], 0, "{report:#}");
    assert_eq!(report["voters"], 3, "{report:#}");
    assert_eq!(report["healthyVoters"], 2, "{report:#}");
    let dead = member(&report, victim);
    assert!(
        dead["lastContactMs"].as_u64().is_none_or(|ms| ms > 2_000),
        "{dead}"
    );
    assert_eq!(member(&report, survivor)["healthy"], true, "{report:#}");

    phase("it has been unhealthy for longer and longer");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = health(&ops.superuser, cluster.api(lead))
        .await
        .expect("the leader answers");
    let (before, after) = (
        dead["stableForMs"].as_u64().expect("stable for"),
        member(&later, victim)["stableForMs"]
            .as_u64()
            .expect("stable for"),
    );
    assert!(after >= before + 900, "{before} ms, then {after} ms");
    assert_eq!(
        put(&ops.superuser, cluster.api(survivor), "a", "1")
            .await
            .status,
        200,
        "two of three voters still commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_replica_votes_only_after_the_stabilization_time() {
    const STABILIZATION: Duration = Duration::from_secs(6);
    let stabilization = format!(
        "--nexus-arg=--autopilot-stabilization-time={}s",
        STABILIZATION.as_secs()
    );
    let mut cluster = LocalCluster::up(&["--spares", "1", &stabilization]);
    let ops = Operators::of(&cluster).await;
    cluster.try_act("join", "nexus-4").expect("join");
    let add = json!({
        "id": 4,
        "clusterAddr": cluster.replica(4).cluster_addr.to_string(),
        "apiAddr": cluster.api(4).to_string(),
    });

    phase("added: a learner at once");
    let reply = ops
        .superuser
        .post(cluster.api(1), "/v1/cluster?action=add", add)
        .await
        .expect("add");
    let added_at = tokio::time::Instant::now();
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let state = status(&ops.superuser, cluster.api(1))
        .await
        .expect("status");
    assert_eq!(voter_ids(&state["members"]), vec![1, 2, 3], "{state:#}");
    let report = health_until(
        &ops.superuser,
        cluster.api(2),
        "the learner healthy",
        RECOVERY_LIMIT,
        |report| member(report, 4)["healthy"] == true,
    )
    .await;
    assert_eq!(member(&report, 4)["voter"], false, "{report:#}");
    assert_eq!(report["voters"], 3, "a learner is no voter: {report:#}");
    assert_eq!(report["failureTolerance"], 1, "{report:#}");

    phase("a voter once healthy for the stabilization time, never before");
    voters_become(&ops.superuser, cluster.api(1), &[1, 2, 3, 4]).await;
    let waited = added_at.elapsed();
    assert!(
        waited >= STABILIZATION,
        "promoted {waited:?} after the add, before the stabilization time"
    );
    let report = health_until(
        &ops.superuser,
        cluster.api(4),
        "four healthy voters",
        RECOVERY_LIMIT,
        |report| report["healthyVoters"] == 4,
    )
    .await;
    assert_eq!(report["failureTolerance"], 1, "4 voters: {report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_voters_are_removed_after_the_cleanup_time_but_never_below_the_minimum_quorum() {
    const CLEANUP_AFTER: Duration = Duration::from_secs(4);
    let cleanup = format!(
        "--nexus-arg=--autopilot-cleanup-dead-after={}s",
        CLEANUP_AFTER.as_secs()
    );
    let mut cluster = LocalCluster::up(&["--replicas", "5", &cleanup]);
    let ops = Operators::of(&cluster).await;
    let lead = leader(&ops.superuser, &cluster, &[1, 2, 3, 4, 5]).await;
    let mut victims = [1, 2, 3, 4, 5].into_iter().filter(|id| *id != lead);
    let mut voters = vec![1, 2, 3, 4, 5];

    for _ in 0..2 {
        let victim = victims.next().expect("a follower");
        phase(&format!(
            "kill -9 voter {victim} of {}: removed after the cleanup time",
            voters.len()
        ));
        cluster.act("kill", &format!("nexus-{victim}"));
        let killed_at = tokio::time::Instant::now();
        voters.retain(|id| *id != victim);
        voters_become(&ops.superuser, cluster.api(lead), &voters).await;
        let waited = killed_at.elapsed();
        assert!(
            waited >= CLEANUP_AFTER,
            "removed {waited:?} after the kill, before the cleanup time"
        );
        let again = ops
            .superuser
            .post(
                cluster.api(lead),
                "/v1/cluster?action=add",
                json!({
                    "id": victim,
                    "clusterAddr": cluster.replica(victim).cluster_addr.to_string(),
                    "apiAddr": cluster.api(victim).to_string(),
                }),
            )
            .await
            .expect("add");
        assert_eq!(again.status, 400, "its id is retired: {:?}", again.body);
    }

    let victim = victims.next().expect("a follower");
    phase(&format!(
        "kill -9 voter {victim} of 3: the minimum quorum (3) keeps it"
    ));
    cluster.act("kill", &format!("nexus-{victim}"));
    let report = health_until(
        &ops.superuser,
        cluster.api(lead),
        "the third victim unhealthy past the cleanup time",
        RECOVERY_LIMIT,
        |report| {
            let dead = member(report, victim);
            dead["healthy"] == false
                && dead["stableForMs"].as_u64().unwrap_or(0)
                    > u64::try_from(CLEANUP_AFTER.as_millis()).unwrap_or(u64::MAX) + 2_000
        },
    )
    .await;
    assert_eq!(report["voters"], 3, "{report:#}");
    assert_eq!(report["failureTolerance"], 0, "{report:#}");
    let state = status(&ops.superuser, cluster.api(lead))
        .await
        .expect("status");
    assert_eq!(voter_ids(&state["members"]), voters, "{state:#}");
    assert_eq!(
        put(&ops.superuser, cluster.api(lead), "b", "1")
            .await
            .status,
        200,
        "two of three voters still commit"
    );
}

/// Waits until `node` reports that the cluster writes on-disk format
/// `format` (the leader switches once every member reads it).
async fn cluster_format_becomes(client: &ApiClient, node: SocketAddr, format: u64) {
    let began = tokio::time::Instant::now();
    loop {
        let state = status(client, node).await;
        if state
            .as_ref()
            .is_some_and(|state| state["clusterFormat"] == format)
        {
            return;
        }
        assert!(
            began.elapsed() < RECOVERY_LIMIT,
            "the cluster never wrote format {format}: {state:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A stale read of `path` through `node`: its value, if it answered 200.
async fn stale_read(client: &ApiClient, node: SocketAddr, path: &str) -> Option<String> {
    let reply = client
        .post_with(
            node,
            "/v1/store/secrets?action=get",
            json!({ "path": path }),
            &[("x-spike-consistency", "stale")],
        )
        .await
        .expect("stale read");
    value_of(&reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_voter_serves_reads_never_votes_and_is_not_missed_when_it_dies() {
    const STABILIZATION: Duration = Duration::from_secs(2);
    let stabilization = format!(
        "--nexus-arg=--autopilot-stabilization-time={}s",
        STABILIZATION.as_secs()
    );
    let mut cluster = LocalCluster::up(&["--spares", "1", &stabilization]);
    let ops = Operators::of(&cluster).await;
    cluster_format_becomes(&ops.superuser, cluster.api(1), 3).await;
    let lead = leader(&ops.superuser, &cluster, &[1, 2, 3]).await;
    assert_eq!(
        put(&ops.superuser, cluster.api(lead), "r", "1")
            .await
            .status,
        200
    );

    phase("added with nonVoter: a learner that serves reads");
    cluster.try_act("join", "nexus-4").expect("join");
    let api4 = cluster.api(4);
    let add = json!({
        "id": 4,
        "clusterAddr": cluster.replica(4).cluster_addr.to_string(),
        "apiAddr": api4.to_string(),
        "nonVoter": true,
    });
    let reply = ops
        .superuser
        .post(cluster.api(2), "/v1/cluster?action=add", add)
        .await
        .expect("add");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    cluster.wait_ready(4, RECOVERY_LIMIT).await;
    read_until(&ops.superuser, api4, "r", "1").await;
    assert_eq!(
        stale_read(&ops.superuser, api4, "r").await.as_deref(),
        Some("1")
    );
    assert_eq!(
        put(&ops.superuser, cluster.api(lead), "r", "2")
            .await
            .status,
        200
    );
    let linearizable = get(&ops.superuser, api4, "r").await;
    assert_eq!(
        value_of(&linearizable).as_deref(),
        Some("2"),
        "a linearizable read on the non-voter sees the write before it: {:?}",
        linearizable.body
    );

    let stable_past = u64::try_from((STABILIZATION * 2).as_millis()).unwrap_or(u64::MAX);
    let still_a_learner = |report: &Value| {
        let member = member(report, 4);
        member["healthy"] == true && member["stableForMs"].as_u64().unwrap_or(0) > stable_past
    };
    phase("healthy for twice the stabilization time, it still does not vote");
    let report = health_until(
        &ops.superuser,
        api4,
        "the non-voter healthy past the stabilization time",
        RECOVERY_LIMIT,
        still_a_learner,
    )
    .await;
    let read_replica = member(&report, 4);
    assert_eq!(read_replica["voter"], false, "{report:#}");
    assert_eq!(read_replica["nonVoter"], true, "{report:#}");
    assert_eq!(report["voters"], 3, "{report:#}");
    assert_eq!(report["failureTolerance"], 1, "{report:#}");
    let state = status(&ops.superuser, cluster.api(1))
        .await
        .expect("status");
    assert_eq!(voter_ids(&state["members"]), vec![1, 2, 3], "{state:#}");
    let listed = state["members"]
        .as_array()
        .and_then(|members| members.iter().find(|member| member["id"] == 4))
        .cloned()
        .expect("listed");
    assert_eq!(listed["nonVoter"], true, "{listed}");

    phase("a new leader knows it is a non-voter too");
    let next = [1, 2, 3]
        .into_iter()
        .find(|id| *id != lead)
        .expect("another voter");
    let reply = ops
        .superuser
        .post(
            cluster.api(next),
            "/v1/cluster?action=transfer",
            json!({ "id": next }),
        )
        .await
        .expect("transfer");
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let report = health_until(
        &ops.superuser,
        cluster.api(next),
        "the new leader watching the non-voter past the stabilization time",
        RECOVERY_LIMIT,
        |report| report["leaderId"] == next && still_a_learner(report),
    )
    .await;
    assert_eq!(member(&report, 4)["voter"], false, "{report:#}");
    assert_eq!(report["voters"], 3, "{report:#}");

    phase("kill -9 the non-voter: writes and the tolerance are untouched");
    cluster.act("kill", "nexus-4");
    let report = health_until(
        &ops.superuser,
        cluster.api(next),
        "the non-voter unhealthy",
        RECOVERY_LIMIT,
        |report| member(report, 4)["healthy"] == false,
    )
    .await;
    assert_eq!(report["failureTolerance"], 1, "{report:#}");
    assert_eq!(report["healthyVoters"], 3, "{report:#}");
    assert_eq!(
        put(&ops.superuser, cluster.api(next), "r", "3")
            .await
            .status,
        200
    );
}
