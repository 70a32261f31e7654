//! What must hold while an attack runs: a well-behaved client's requests
//! succeed in time, and every replica's memory stays bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use spike_tests::{ApiClient, LocalCluster};
use tokio::task::JoinHandle;

use crate::{P99_MAX, RSS_MAX_BYTES};

/// A well-behaved client (the superuser, a fresh connection per request,
/// as SPIKE's CLI makes) asking replica 1 every 50 ms, and a sampler of
/// every replica's VmRSS.
pub struct Watch {
    started: Instant,
    stop: Arc<AtomicBool>,
    probe: JoinHandle<(Vec<Duration>, Vec<String>)>,
    memory: JoinHandle<Vec<(String, u64)>>,
}

/// Resident memory of process `pid` in bytes (`/proc/PID/status`).
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Watch {
    /// Starts watching `cluster`.
    pub async fn start(cluster: &LocalCluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let client = ApiClient::new(&cluster.identity("superuser").await);
        let node = cluster.api(1);
        let put = client
            .post(
                node,
                "/v1/store/secrets",
                json!({"path": "probe/x", "values": {"k": "v"}}),
            )
            .await
            .expect("probe put");
        assert_eq!(put.status, 200, "{:?}", put.body);
        let probe = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut latencies, mut failures) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let began = Instant::now();
                    match client
                        .post(
                            node,
                            "/v1/store/secrets?action=get",
                            json!({"path": "probe/x"}),
                        )
                        .await
                    {
                        Ok(reply) if reply.status == 200 => latencies.push(began.elapsed()),
                        Ok(reply) => failures.push(format!("{} {:?}", reply.status, reply.body)),
                        Err(error) => failures.push(error),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                (latencies, failures)
            }
        });
        let pids: Vec<(String, u32)> = cluster
            .replica_names()
            .into_iter()
            .filter_map(|name| Some((name.clone(), cluster.process(&name).pid?.get())))
            .collect();
        assert!(!pids.is_empty(), "no replica runs");
        let memory = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut peaks: Vec<(String, u64)> =
                    pids.iter().map(|(name, _)| (name.clone(), 0)).collect();
                while !stop.load(Ordering::SeqCst) {
                    for ((_, pid), (_, peak)) in pids.iter().zip(peaks.iter_mut()) {
                        *peak = (*peak).max(resident_bytes(*pid).unwrap_or(0));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                peaks
            }
        });
        Self {
            started: Instant::now(),
            stop,
            probe,
            memory,
        }
    }

    /// Stops watching and asserts the bounds held throughout.
    pub async fn check(self) {
        // Enough probe requests for a p99 even after a quick attack.
        let watched = self.started.elapsed();
        if watched < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_secs(3) - watched).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let (mut latencies, failures) = self.probe.await.expect("probe task");
        let peaks = self.memory.await.expect("memory task");
        for (name, peak) in &peaks {
            eprintln!("{name}: peak VmRSS {} MiB", peak / (1024 * 1024));
            assert!(
                *peak < RSS_MAX_BYTES,
                "{name} reached {} MiB resident, over the bound of {} MiB",
                peak / (1024 * 1024),
                RSS_MAX_BYTES / (1024 * 1024)
            );
        }
        assert!(
            failures.is_empty(),
            "the well-behaved client failed {} times ({} succeeded): {:?}",
            failures.len(),
            latencies.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(
            latencies.len() >= 5,
            "too few probe requests: {}",
            latencies.len()
        );
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
        eprintln!("probe: {} requests, p99 {p99:?}", latencies.len());
        assert!(p99 < P99_MAX, "the well-behaved client's p99 was {p99:?}");
    }
}
