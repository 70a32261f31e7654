//! What must never happen: key material or plaintext on disk, strangers on
//! the cluster port, malformed messages disturbing the cluster, a replica
//! starting on a configuration that cannot work.

use std::path::Path;
use std::sync::Arc;

use serde_json::json;
use spike_sdk::crypto::shamir::recover;
use spike_sdk::crypto::{KeyCheck, KeyShare, SecretBytes, ShareIndex};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};
use spike_sdk::tls::{client_config, connect};
use spike_tests::{LocalCluster, binary, free_port};

use crate::support::{Operators, get, phase, put, recovery_shards, status, value_of};
use spike_tests::save_backup;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("read dir").flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_root_key_share_or_plaintext_ever_reaches_the_disk() {
    let mut cluster = LocalCluster::up(&["--nexus-arg=--snapshot-every=5"]);
    let ops = Operators::of(&cluster).await;
    let marker = format!("MARKER-{}-do-not-store", std::process::id());

    phase("write marker values, enough to build snapshots, rotate and rekey");
    for i in 0..12 {
        assert_eq!(
            put(
                &ops.superuser,
                cluster.api(1 + i % 3),
                &format!("m/{i}"),
                &marker
            )
            .await
            .status,
            200
        );
    }
    let rotate = ops
        .superuser
        .post(cluster.api(2), "/v1/operator/rotate", json!({}))
        .await
        .expect("rotate");
    assert_eq!(rotate.status, 200, "{:?}", rotate.body);
    assert_eq!(
        put(&ops.superuser, cluster.api(3), "m/after-rotate", &marker)
            .await
            .status,
        200
    );
    assert_eq!(
        value_of(&get(&ops.superuser, cluster.api(1), "m/0").await),
        Some(marker.clone())
    );

    phase("rebuild the root key from the recovery shards, as an attacker with them could");
    let shards = recovery_shards(&ops.recover, cluster.api(1)).await;
    let state = status(&ops.superuser, cluster.api(1))
        .await
        .expect("status");
    let check_hex = state["rootKey"]["keyCheck"].as_str().expect("key check");
    let mut check = [0u8; 32];
    for (i, byte) in check.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&check_hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    let shares: Vec<KeyShare> = shards
        .iter()
        .map(|(index, bytes)| {
            KeyShare::new(
                ShareIndex::new(*index as u8).expect("index"),
                SecretBytes::from_slice(bytes).expect("32 bytes"),
            )
        })
        .collect();
    let root_key =
        recover(&shares, &KeyCheck::from_bytes(check)).expect("the shards rebuild the key");

    phase("stop the cluster and scan every byte it wrote");
    for name in cluster
        .replica_names()
        .into_iter()
        .chain(cluster.keeper_names())
    {
        cluster.act("stop", &name);
    }
    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("marker".to_owned(), marker.into_bytes()),
        ("root key".to_owned(), root_key.expose_secret().to_vec()),
        (
            "root key (hex)".to_owned(),
            hex(root_key.expose_secret()).into_bytes(),
        ),
    ];
    for (index, bytes) in &shards {
        needles.push((format!("share {index}"), bytes.clone()));
        needles.push((format!("share {index} (hex)"), hex(bytes).into_bytes()));
    }
    // Every replica's data directory and every process's log. (The dev
    // launcher's own recovery/ folder holds shards on purpose.)
    let mut files = files_under(&cluster.dir.path().join("logs"));
    for id in 1..=3 {
        files.extend(files_under(&cluster.data_dir(id)));
    }
    let mut scanned = 0usize;
    for file in &files {
        let bytes = std::fs::read(file).expect("read");
        scanned += bytes.len();
        for (what, needle) in &needles {
            assert!(
                !bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_slice()),
                "{what} found in {}",
                file.display()
            );
        }
    }
    eprintln!("scanned {} files, {scanned} bytes", files.len());
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".snap")),
        "a snapshot was written and scanned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_port_refuses_non_nexus_peers_and_survives_garbage() {
    let cluster = LocalCluster::up(&["--replicas", "3", "--keepers", "3", "--threshold", "2"]);
    let ops = Operators::of(&cluster).await;
    let cluster_port = cluster.replica(1).cluster_addr;
    let roots = TrustRoots::from_environment(&[]).expect("defaults");

    phase("a superuser is refused at TLS on the cluster port");
    let pilot = cluster.identity("superuser").await;
    let config =
        client_config(pilot, PeerAuthorizer::role(roots.clone(), Role::Nexus)).expect("config");
    let refused = async {
        let (mut stream, _) = connect(cluster_port, Arc::new(config))
            .await
            .map_err(|e| e.to_string())?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut buffer = [0u8; 16];
        match stream.read(&mut buffer).await {
            Ok(0) => Err("closed".to_owned()),
            Ok(_) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }
    .await;
    assert!(
        refused.is_err(),
        "a non-nexus peer got a cluster connection"
    );

    phase("a nexus sending garbage gets a clear error; the cluster carries on");
    let nexus = cluster.identity("nexus-2").await;
    let config = client_config(nexus, PeerAuthorizer::role(roots, Role::Nexus)).expect("config");
    let channel = spike_sdk::tls::grpc_channel(
        cluster_port,
        config,
        spike_sdk::tls::ChannelOptions::default(),
    );
    let mut client = nexus_cluster_proto::cluster_client::ClusterClient::new(channel);
    for garbage in [vec![], vec![0xff; 64], b"not postcard at all".to_vec()] {
        let error = client
            .append_entries(nexus_cluster_proto::Frame { payload: garbage })
            .await
            .expect_err("garbage is refused");
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{error}");
    }
    assert_eq!(
        put(&ops.superuser, cluster.api(1), "after-garbage", "ok")
            .await
            .status,
        200
    );
}

/// The cluster protocol as a client outside the nexus crate sees it.
mod nexus_cluster_proto {
    tonic::include_proto!("spike.cluster.v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_an_impossible_configuration_exits_64_before_binding() {
    let port = free_port();
    let peers = format!("1=127.0.0.1:{}/127.0.0.1:{port}", free_port());
    let keepers = format!("127.0.0.1:{},127.0.0.1:{}", free_port(), free_port());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--node-id".into(),
                "2".into(),
                "--peers".into(),
                peers.clone(),
                "--keepers".into(),
                keepers.clone(),
                "--shares=2".into(),
            ],
            "is not in --peers",
        ),
        (
            vec![
                "--peers".into(),
                peers.clone(),
                "--keepers".into(),
                keepers.clone(),
                "--shares=2".into(),
                "--threshold=3".into(),
            ],
            "threshold 3 is greater",
        ),
        (
            vec![
                "--peers".into(),
                peers.clone(),
                "--keepers".into(),
                "127.0.0.1:9,127.0.0.1:9".into(),
                "--shares=2".into(),
            ],
            "twice",
        ),
        (
            vec![
                "--peers".into(),
                peers.clone(),
                "--keepers".into(),
                keepers.clone(),
                "--shares=3".into(),
            ],
            "lists 2 keepers",
        ),
        (
            vec![
                "--peers".into(),
                "1=nowhere".into(),
                "--keepers".into(),
                keepers.clone(),
                "--shares=2".into(),
            ],
            "is not ID=CLUSTER_ADDR/API_ADDR",
        ),
    ];
    for (args, needle) in cases {
        let output = tokio::process::Command::new(binary("nexus"))
            .env_clear()
            .args(&args)
            .output()
            .await
            .expect("run nexus");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "the API port was bound"
        );
    }
}

/// Whether this process may lock memory without a limit (`CAP_IPC_LOCK`,
/// bit 14 of the effective set), which the processes it starts inherit:
/// their default `--lock-memory=auto` then locks.
fn may_lock_memory_without_limit() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("own status");
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let unlimited = std::fs::read_to_string("/proc/self/limits")
        .expect("own limits")
        .lines()
        .any(|line| line.starts_with("Max locked memory") && line.contains("unlimited"));
    effective & (1 << 14) != 0 || unlimited
}

/// A line of `/proc/PID/FILE` that starts with `prefix`.
fn proc_line(pid: u32, file: &str, prefix: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .expect("proc file")
        .lines()
        .find(|line| line.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} in /proc/{pid}/{file}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_and_keepers_lock_memory_and_keep_their_files_private() {
    let mut cluster = LocalCluster::up(&[
        "--replicas",
        "1",
        "--keepers",
        "2",
        "--threshold",
        "2",
        "--nexus-arg=--snapshot-every=5",
    ]);
    let ops = Operators::of(&cluster).await;
    for i in 0..8 {
        assert_eq!(
            put(&ops.superuser, cluster.api(1), &format!("p/{i}"), "v")
                .await
                .status,
            200
        );
    }

    phase("no core files, and memory locked where the OS allows it");
    let lock_expected = may_lock_memory_without_limit();
    for name in cluster
        .replica_names()
        .into_iter()
        .chain(cluster.keeper_names())
    {
        let pid = cluster.process(&name).pid.expect("running").get();
        let core = proc_line(pid, "limits", "Max core file size");
        assert!(
            core.split_whitespace().nth(4) == Some("0"),
            "{name}: {core}"
        );
        let locked_kb: u64 = proc_line(pid, "status", "VmLck:")
            .split_whitespace()
            .nth(1)
            .and_then(|kb| kb.parse().ok())
            .expect("VmLck in kB");
        assert_eq!(
            locked_kb > 0,
            lock_expected,
            "{name} locked {locked_kb} kB (locking allowed here: {lock_expected})"
        );
    }

    phase("the data directory is 0700 and every file in it 0600");
    // A backup goes through a scratch file in the data directory.
    let backup = save_backup(&ops.superuser, cluster.api(1)).await;
    assert_eq!(backup.status, 200);
    cluster.act("stop", "nexus-1");
    let data_dir = cluster.data_dir(1);
    let mode = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&data_dir), 0o700, "{}", data_dir.display());
    let files = files_under(&data_dir);
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with(".snap")),
        "a snapshot was written: {files:?}"
    );
    for file in &files {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is readable by others",
            file.display()
        );
    }
}
