//! `spike-bench isolation`: can a noisy workload push a quiet one's
//! latency up? One identity hammers the cluster with many concurrent
//! clients (linearizable reads, back to back, never backing off, even
//! after a 429) while another reads at a steady pace; the quiet one's
//! p50 and p99 are measured alone, beside the noisy one without a limit,
//! and beside it with a rate limit set on the noisy identity
//! (`spike cluster limits`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use spike_sdk::api::{RateLimitRule, RateLimits};
use spike_sdk::client::{Error, NexusClient, Settings};
use spike_sdk::domain::{Permission, PolicyName, SecretPath};
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::WORKLOAD_API_TIMEOUT_DEFAULT;

use crate::nexus::NexusCluster;

/// The scenario's settings.
#[derive(clap::Args, Clone)]
pub struct IsolationArgs {
    /// Length of each phase.
    #[arg(long, default_value = "10s", value_parser = spike_sdk::duration::parse)]
    pub duration: Duration,
    /// Concurrent clients of the noisy identity.
    #[arg(long, default_value_t = 64)]
    pub noisy_clients: usize,
    /// Requests per second of the quiet identity (one client, paced).
    #[arg(long, default_value_t = 50)]
    pub quiet_rate: u32,
    /// The noisy identity's limit in the limited phase: requests per second
    /// per replica (the burst is the same).
    #[arg(long, default_value_t = 100)]
    pub noisy_limit: u32,
    /// The noisy identity writes (fsynced puts) instead of reading.
    #[arg(long)]
    pub noisy_writes: bool,
    /// The noisy clients wait out `Retry-After` after a 429, as a client
    /// that plays by the rules does; by default they ask again at once.
    #[arg(long)]
    pub noisy_backs_off: bool,
    /// Directory of the built binaries (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<std::path::PathBuf>,
    /// First of the loopback ports used.
    #[arg(long, default_value_t = 27_400)]
    pub base_port: u16,
}

/// One phase's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// What ran.
    pub name: &'static str,
    /// The quiet identity's completed reads.
    pub quiet_reads: usize,
    /// Its failed reads.
    pub quiet_errors: u64,
    /// Its latency percentiles, milliseconds.
    pub quiet_p50_ms: f64,
    /// See `quiet_p50_ms`.
    pub quiet_p99_ms: f64,
    /// See `quiet_p50_ms`.
    pub quiet_max_ms: f64,
    /// The noisy identity's completed reads per second.
    pub noisy_ok_per_second: f64,
    /// Its refusals (429) per second.
    pub noisy_limited_per_second: f64,
}

const KEYS: u64 = 100;

fn path_of(key: u64) -> SecretPath {
    SecretPath::try_from(format!("iso/k{key}")).expect("a path")
}

/// A client acting as `name`, and its SPIFFE ID.
async fn client_of(cluster: &NexusCluster, name: &str) -> anyhow::Result<(NexusClient, String)> {
    let identity = cluster
        .file()
        .svid_source(name)?
        .load(WORKLOAD_API_TIMEOUT_DEFAULT)
        .await?;
    let spiffe_id = identity.spiffe_id().to_string();
    let roots = TrustRoots::from_environment(&[])?;
    let client = NexusClient::new(identity, roots, Settings::new(cluster.endpoints()))?;
    Ok((client, spiffe_id))
}

/// The noisy clients, until `stop`; counts successes and 429s.
fn hammer(
    noisy: &Arc<NexusClient>,
    args: &IsolationArgs,
    stop: Instant,
    ok: &Arc<AtomicU64>,
    limited: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let (writes, backs_off) = (args.noisy_writes, args.noisy_backs_off);
    let value = Arc::new(crate::load::value_of(256));
    (0..args.noisy_clients)
        .map(|lane| {
            let (noisy, ok, limited) = (noisy.clone(), ok.clone(), limited.clone());
            let value = value.clone();
            tokio::spawn(async move {
                let mut key = lane as u64;
                while Instant::now() < stop {
                    key = (key + 7) % KEYS;
                    let outcome = if writes {
                        let values = [("v", value.as_str())].into_iter().collect();
                        noisy
                            .put_secret(&path_of(key), &values, None)
                            .await
                            .map(drop)
                    } else {
                        noisy.get_secret(&path_of(key), None).await.map(drop)
                    };
                    match outcome {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::RateLimited { retry_after_secs }) => {
                            limited.fetch_add(1, Ordering::Relaxed);
                            if backs_off {
                                let wait = Duration::from_secs(retry_after_secs);
                                let left = stop.saturating_duration_since(Instant::now());
                                tokio::time::sleep(wait.min(left)).await;
                            }
                        }
                        Err(_) => {}
                    }
                }
            })
        })
        .collect()
}

/// The quiet client: one read every 1/`rate` s until `stop`; latencies.
async fn steady(quiet: &NexusClient, rate: u32, stop: Instant) -> (Vec<Duration>, u64) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut key = 0;
    while Instant::now() < stop {
        ticks.tick().await;
        key = (key + 1) % KEYS;
        let began = Instant::now();
        match quiet.get_secret(&path_of(key), None).await {
            Ok(_) => latencies.push(began.elapsed()),
            Err(_) => errors += 1,
        }
    }
    (latencies, errors)
}

async fn phase(
    name: &'static str,
    args: &IsolationArgs,
    quiet: &NexusClient,
    noisy: Option<&Arc<NexusClient>>,
) -> Phase {
    let began = Instant::now();
    let stop = began + args.duration;
    let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let tasks = match noisy {
        Some(noisy) => hammer(noisy, args, stop, &ok, &limited),
        None => Vec::new(),
    };
    let (mut latencies, quiet_errors) = steady(quiet, args.quiet_rate, stop).await;
    for task in tasks {
        let _ = task.await;
    }
    let seconds = began.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[index].as_secs_f64() * 1000.0
    };
    Phase {
        name,
        quiet_reads: latencies.len(),
        quiet_errors,
        quiet_p50_ms: percentile(0.5),
        quiet_p99_ms: percentile(0.99),
        quiet_max_ms: percentile(1.0),
        noisy_ok_per_second: ok.load(Ordering::Relaxed) as f64 / seconds,
        noisy_limited_per_second: limited.load(Ordering::Relaxed) as f64 / seconds,
    }
}

/// Runs the scenario on a fresh cluster in `dir`; returns each phase.
pub async fn run(
    args: &IsolationArgs,
    bin_dir: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<Phase>> {
    let cluster = NexusCluster::up_with(
        bin_dir,
        dir,
        args.base_port,
        &[
            "--workload",
            "noisy=/app/noisy",
            "--workload",
            "quiet=/app/quiet",
        ],
    )?;
    let superuser = cluster.client().await?.client;
    let (noisy, noisy_id) = client_of(&cluster, "noisy").await?;
    let noisy = Arc::new(noisy);
    let (quiet, _) = client_of(&cluster, "quiet").await?;
    let readers: PolicyName = "iso-readers".parse().context("policy name")?;
    superuser
        .put_policy(
            &readers,
            "^spiffe://[a-z.]+/app/[a-z]+$",
            "^iso/",
            &[Permission::Read, Permission::Write],
        )
        .await?;
    let value = crate::load::value_of(256);
    for key in 0..KEYS {
        let values = [("v", value.as_str())].into_iter().collect();
        superuser.put_secret(&path_of(key), &values, None).await?;
    }
    let mut phases = vec![
        phase("quiet alone", args, &quiet, None).await,
        phase("beside noisy, no limit", args, &quiet, Some(&noisy)).await,
    ];
    let rule = RateLimitRule {
        spiffe_id: noisy_id,
        route: "*".to_owned(),
        rate_per_second: args.noisy_limit,
        burst: args.noisy_limit,
    };
    // A new cluster takes the format limits need a few seconds after start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let limits = RateLimits {
            rules: vec![rule.clone()],
        };
        match superuser.set_cluster_limits(limits).await {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                eprintln!("isolation: limits not set yet ({error}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
    phases.push(phase("beside noisy, noisy limited", args, &quiet, Some(&noisy)).await);
    Ok(phases)
}
