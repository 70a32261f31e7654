//! The SPIRE tier: the cluster on a real SPIRE server and agents (v1.13.3,
//! built from Go modules by `dev/spire/build`), every keeper, replica and
//! client holding an agent-issued SVID. The tests need the SPIRE binaries,
//! so a plain `cargo test` skips them (ignored); `tests/run` builds SPIRE
//! and runs them with `--ignored` when Go is installed.
//!
//! SVIDs here live 10 to 20 s, so every process rotates several times per
//! test; each test counts the rotations and the failed requests of a steady
//! SDK load, and prints its figures.

mod cluster;
mod federation;
mod revocation;
mod rotation;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use spike_dev_cluster::spire::Side;
use spike_sdk::api::SecretValues;
use spike_sdk::client::{NexusClient, RetryPolicy, Settings};
use spike_sdk::domain::SecretPath;
use spike_sdk::identity::TrustRoots;
use spike_tests::{LocalCluster, binary};

/// Where `spire-server` and `spire-agent` are: `SPIKE_SPIRE_BIN_DIR`, or
/// where `dev/spire/build` puts them beside the cargo binaries.
pub fn spire_bin_dir() -> PathBuf {
    std::env::var_os("SPIKE_SPIRE_BIN_DIR").map_or_else(
        || {
            let cargo_bins = binary("spike");
            let target = cargo_bins
                .parent()
                .and_then(|dir| dir.parent())
                .expect("binaries in target/PROFILE");
            target.join("spire").join("bin")
        },
        PathBuf::from,
    )
}

/// A cluster on SPIRE whose SVIDs live `svid_ttl`, with `args` for `up`.
pub fn up(svid_ttl: &str, args: &[&str]) -> LocalCluster {
    let bin_dir = spire_bin_dir();
    let bin_dir = bin_dir.to_str().expect("a UTF-8 path");
    assert!(
        std::path::Path::new(bin_dir).join("spire-server").exists(),
        "no SPIRE in {bin_dir}: run dev/spire/build"
    );
    let mut all = vec![
        "--identity",
        "spire",
        "--spire-bin-dir",
        bin_dir,
        "--spire-svid-ttl",
        svid_ttl,
        "--spire-ca-ttl",
        "1h",
    ];
    all.extend_from_slice(args);
    LocalCluster::up(&all)
}

/// Runs `spire-server ARGS` against the cluster's server; its output.
pub fn spire_server(cluster: &LocalCluster, args: &[&str]) -> String {
    spike_dev_cluster::spire::server(&cluster.file, args).unwrap_or_else(|error| panic!("{error}"))
}

/// SPIRE's own CA rotation on `side`'s server, forced, each step given
/// time to reach every workload (agents sync every 5 s; a federated
/// domain fetches the other's bundle every 10 s): prepare (the new CA
/// joins the bundle), activate (new SVIDs are signed by it), taint the old
/// one (agents rotate every SVID it signed at once), revoke it (it leaves
/// the bundle). Returns the new authority's id.
pub async fn rotate_ca(cluster: &LocalCluster, side: Side, step: Duration) -> String {
    let run = |args: &[&str]| {
        spike_dev_cluster::spire::server_on(&cluster.file, side, args)
            .unwrap_or_else(|error| panic!("{error}"))
    };
    let authority = |which: &str| {
        let shown = run(&["localauthority", "x509", "show", "-output", "json"]);
        let shown: serde_json::Value = serde_json::from_str(&shown).expect("json");
        shown[which]["authority_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no {which} authority: {shown}"))
            .to_owned()
    };
    let old = authority("active");
    run(&["localauthority", "x509", "prepare"]);
    let new = authority("prepared");
    for (action, id) in [("activate", &new), ("taint", &old), ("revoke", &old)] {
        tokio::time::sleep(step).await;
        run(&["localauthority", "x509", action, "-authorityID", id]);
    }
    tokio::time::sleep(step).await;
    new
}

/// Stops `load`, prints what it did during `what`, and fails the test if
/// a request failed (or hardly any succeeded).
pub async fn assert_no_failed_request(load: Load, what: &str) {
    let report = load.stop().await;
    println!(
        "{what}: {} requests ok, {} failed",
        report.ok, report.failed
    );
    assert_eq!(report.failed, 0, "{what}: {:?}", report.first_failures);
    assert!(report.ok > 100, "{what}: {report:?}");
}

/// Deletes every registration entry of `spiffe_id`; how many there were.
pub fn delete_entries(cluster: &LocalCluster, spiffe_id: &str) -> usize {
    let shown = spire_server(
        cluster,
        &["entry", "show", "-spiffeID", spiffe_id, "-output", "json"],
    );
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("entry show -output json");
    let ids: Vec<String> = shown["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .filter_map(|entry| entry["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        spire_server(cluster, &["entry", "delete", "-entryID", id]);
    }
    ids.len()
}

/// An SDK client of every replica that follows the leader, as identity
/// `name` (its SVID from the agent).
pub async fn client(cluster: &LocalCluster, name: &str) -> NexusClient {
    let endpoints = cluster
        .file
        .serving_replicas()
        .map(|(_, replica)| replica.api_addr)
        .collect();
    let mut settings = Settings::new(endpoints);
    settings.request_timeout = Duration::from_secs(2);
    with_settings(cluster, name, settings).await
}

/// An SDK client that tries replica `id` once per request, as identity
/// `name`: a probe of that replica alone.
pub async fn probe_of(cluster: &LocalCluster, name: &str, id: u64) -> NexusClient {
    let mut settings = Settings::new(vec![cluster.api(id)]);
    settings.request_timeout = Duration::from_secs(2);
    settings.follow_leader = false;
    settings.retry = RetryPolicy {
        attempts_max: 1,
        deadline: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    with_settings(cluster, name, settings).await
}

/// An SDK client that stays on the replicas at `endpoints`, as identity
/// `name`.
pub async fn client_of(
    cluster: &LocalCluster,
    name: &str,
    endpoints: Vec<std::net::SocketAddr>,
) -> NexusClient {
    let mut settings = Settings::new(endpoints);
    settings.request_timeout = Duration::from_secs(2);
    settings.follow_leader = false;
    with_settings(cluster, name, settings).await
}

async fn with_settings(cluster: &LocalCluster, name: &str, settings: Settings) -> NexusClient {
    let identity = cluster.identity(name).await;
    let roots = TrustRoots::from_environment(&[]).expect("default trust roots");
    NexusClient::new(identity, roots, settings).expect("client")
}

/// How many times process `name` logged a new SVID from its Workload API.
pub fn rotations(cluster: &LocalCluster, name: &str) -> usize {
    log_lines(cluster, name)
        .iter()
        .filter(|line| line.contains("Workload API rotated the SVID"))
        .count()
}

/// Process `name`'s log, one line each, colours removed.
pub fn log_lines(cluster: &LocalCluster, name: &str) -> Vec<String> {
    let log = std::fs::read_to_string(&cluster.process(name).log).unwrap_or_default();
    log.lines().map(strip_colours).collect()
}

/// A log line without its ANSI colour sequences.
pub fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A steady load of writes and reads through one SDK client, counted.
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failures: std::sync::Mutex<Vec<String>>,
}

/// What a load did.
#[derive(Debug)]
pub struct LoadReport {
    /// Write-then-read rounds that succeeded.
    pub ok: u64,
    /// Rounds that failed (or read back something else).
    pub failed: u64,
    /// The first few failures, for the assertion message.
    pub first_failures: Vec<String>,
}

impl Load {
    /// `workers` tasks, each writing then reading its own secret, until
    /// [`Load::stop`].
    pub fn start(client: NexusClient, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let client = Arc::new(client);
        let workers = (0..workers)
            .map(|worker| {
                let (stop, counts, client) = (stop.clone(), counts.clone(), client.clone());
                tokio::spawn(async move {
                    let path =
                        SecretPath::try_from(format!("load/{worker}").as_str()).expect("a path");
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let value = round.to_string();
                        let values: SecretValues = [("v", value.as_str())].into_iter().collect();
                        let outcome = match client.put_secret(&path, &values, None).await {
                            Ok(()) => client
                                .get_secret(&path, None)
                                .await
                                .map(|read| read.get("v") == Some(value.as_str())),
                            Err(error) => Err(error),
                        };
                        match outcome {
                            Ok(true) => {
                                counts.ok.fetch_add(1, Ordering::Relaxed);
                            }
                            other => {
                                counts.failed.fetch_add(1, Ordering::Relaxed);
                                let mut first = counts.first_failures.lock().expect("lock");
                                if first.len() < 5 {
                                    first.push(format!("{other:?}"));
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        Self {
            stop,
            counts,
            workers,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok(&self) -> u64 {
        self.counts.ok.load(Ordering::Relaxed)
    }

    /// Stops the workers and reports.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("load worker");
        }
        LoadReport {
            ok: self.counts.ok.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
            first_failures: self.counts.first_failures.lock().expect("lock").clone(),
        }
    }
}

/// Whether this process may make network namespaces (root and iproute2).
pub fn namespaces_possible() -> bool {
    rustix::process::geteuid().is_root()
        && std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|output| output.status.success())
}
