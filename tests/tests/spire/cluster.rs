//! The cluster on SPIRE does everything it does on dev identities, through
//! the same Workload API code; and a process the agent gives nothing says
//! so and exits 64.

use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use spike_sdk::api::SecretValues;
use spike_sdk::client::Error;
use spike_sdk::domain::SecretPath;
use spike_tests::{LocalCluster, binary};
use tokio::io::AsyncWriteExt;

use crate::{client, up};

/// Runs `spike ARGS` as identity `role`, with `stdin`, recovery files in
/// `home`.
async fn spike(
    cluster: &LocalCluster,
    role: &str,
    home: &std::path::Path,
    args: &[&str],
    stdin: &[u8],
) -> Output {
    let urls: Vec<String> = cluster
        .file
        .serving_replicas()
        .map(|(_, replica)| format!("https://{}", replica.api_addr))
        .collect();
    let mut child = cluster
        .spike_as(role)
        .env("SPIKE_NEXUS_API_URL", &urls[0])
        .env("SPIKE_NEXUS_API_URLS", urls.join(","))
        .env("SPIKE_PILOT_RECOVERY_DIR", home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spike");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("stdin");
    drop(input);
    child.wait_with_output().await.expect("spike")
}

/// Like [`spike`], expecting success; its stdout.
async fn spike_ok(
    cluster: &LocalCluster,
    role: &str,
    home: &std::path::Path,
    args: &[&str],
) -> String {
    let output = spike(cluster, role, home, args, b"").await;
    assert!(
        output.status.success(),
        "spike {args:?} as {role}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `spike secret get app/db pass`, as the superuser, answers the secret.
async fn assert_serves_the_secret(cluster: &LocalCluster, home: &std::path::Path) {
    let read = spike_ok(
        cluster,
        "superuser",
        home,
        &["secret", "get", "app/db", "pass"],
    )
    .await;
    assert_eq!(read.trim(), "s3cr3t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn secrets_policies_ciphers_recovery_and_restore_work_on_agent_issued_svids() {
    let mut cluster = up("20s", &["--workload", "billing=/app/billing"]);
    let home = tempfile::tempdir().expect("home");
    let home = home.path();

    let whoami = spike_ok(&cluster, "superuser", home, &["whoami"]).await;
    assert!(
        whoami.contains("spiffe://spike.ist/spike/pilot/role/superuser"),
        "{whoami}"
    );
    spike_ok(
        &cluster,
        "superuser",
        home,
        &["secret", "put", "app/db", "pass=s3cr3t"],
    )
    .await;
    assert_serves_the_secret(&cluster, home).await;

    // A policy for the billing workload, whose SVID also comes from SPIRE.
    spike_ok(
        &cluster,
        "superuser",
        home,
        &[
            "policy",
            "create",
            "--name",
            "billing",
            "--spiffeid-pattern",
            "^spiffe://spike\\.ist/app/billing$",
            "--path-pattern",
            "^app/",
            "--permissions",
            "read",
        ],
    )
    .await;
    let billing = client(&cluster, "billing").await;
    let path = SecretPath::try_from("app/db").expect("path");
    let values = billing
        .get_secret(&path, None)
        .await
        .expect("billing reads");
    assert_eq!(values.get("pass"), Some("s3cr3t"));
    let denied = billing
        .put_secret(
            &path,
            &[("pass", "mine")].into_iter().collect::<SecretValues>(),
            None,
        )
        .await;
    assert!(matches!(denied, Err(Error::Denied)), "{denied:?}");

    // The lite workload encrypts and decrypts, and may do nothing else.
    let lite = client(&cluster, "lite-workload").await;
    let sealed = lite.encrypt(b"card 4111").await.expect("encrypt");
    let opened = lite.decrypt(&sealed).await.expect("decrypt");
    assert_eq!(opened.as_slice(), b"card 4111");
    assert!(matches!(
        lite.get_secret(&path, None).await,
        Err(Error::Denied)
    ));

    // Recovery shards as the recover role, then a total loss (SPIRE, the
    // keepers and the replicas all stop), then a restore as the restore
    // role, through the restarted SPIRE.
    let saved = spike_ok(&cluster, "recover", home, &["operator", "recover"]).await;
    assert!(saved.contains("SPIKE Recovery shards saved"), "{saved}");
    let mut shards: Vec<_> = std::fs::read_dir(home.join("recover"))
        .expect("recovery directory")
        .flatten()
        .map(|entry| entry.path())
        .collect();
    shards.sort();
    assert_eq!(shards.len(), 5, "one per keeper");
    cluster.try_spike("down", &[]).expect("down");
    // Nothing of SPIRE or the cluster is left running, and no agent
    // socket stays behind.
    cluster.reload();
    for process in &cluster.file.processes {
        assert!(
            spike_dev_cluster::supervise::running(process).is_none(),
            "{} still runs after down",
            process.name
        );
    }
    let agent_socket = cluster.file.agent_socket("spire-agent");
    assert!(
        !agent_socket.exists(),
        "{} left behind",
        agent_socket.display()
    );
    let said = cluster.try_spike("up", &[]).expect("up again");
    cluster.reload();
    assert!(said.contains("spike operator restore"), "{said}");
    // Threshold 3.
    for shard in &shards[..3] {
        let shard = std::fs::read(shard).expect("shard");
        let restored = spike(&cluster, "restore", home, &["operator", "restore"], &shard).await;
        assert!(restored.status.success(), "{restored:?}");
    }
    for id in 1..=3 {
        cluster.wait_ready(id, Duration::from_secs(30)).await;
    }
    assert_serves_the_secret(&cluster, home).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SPIRE: tests/run builds it (dev/spire/build) and runs these"]
async fn a_process_the_agent_gives_no_identity_says_so_and_exits_64() {
    let cluster = up(
        "20s",
        &["--replicas", "1", "--keepers", "1", "--threshold", "1"],
    );
    let socket = cluster
        .process("keeper-1")
        .spiffe_endpoint_socket
        .clone()
        .expect("a socket");
    // A keeper run as a user no registration entry names (a misconfigured
    // selector): the agent answers, but issues nothing.
    let began = Instant::now();
    let output = std::process::Command::new(binary("keeper"))
        .env_clear()
        .env("SPIFFE_ENDPOINT_SOCKET", &socket)
        .env("SPIKE_WORKLOAD_API_TIMEOUT_MS", "5000")
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .uid(61_999)
        .gid(61_999)
        .output()
        .expect("run keeper");
    let waited = began.elapsed();
    let said = crate::strip_colours(&String::from_utf8_lossy(&output.stdout))
        + &crate::strip_colours(&String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(64), "{said}");
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    // Within seconds, and again before giving up: which socket, and what
    // the agent answered.
    let reports: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("no SVID yet from the Workload API"))
        .collect();
    assert!(reports.len() >= 2, "{said}");
    assert!(
        reports[0].contains(socket.trim_start_matches("unix://")),
        "{said}"
    );
    assert!(reports[0].contains("no identity issued"), "{said}");
    assert!(reports[0].contains("uid=61999"), "{said}");
    assert!(said.contains("keeper: Workload API at"), "{said}");
}
