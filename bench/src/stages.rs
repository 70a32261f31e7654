//! `spike-bench stages`: where one request's time goes at one client.
//!
//! Each replica times its own stages in its `/metrics` histograms (the
//! whole request in the API, the Raft write from proposal to applied
//! response, each fsynced log commit, each apply batch, each audit
//! commit). The command scrapes every replica before and after a
//! one-client run of each workload and divides the growth of each
//! histogram's sum by the operations the client completed: the mean time
//! per operation each stage took, on which replica, beside the client's
//! own mean. What the client saw beyond the server's request time is the
//! client, TLS, HTTP and the loopback network.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use spike_dev_cluster::probe;

use crate::load::{self, LoadShape, Workload};
use crate::nexus::NexusCluster;
use crate::{Sizing, teardown};

/// How long one scrape of a replica's `/metrics` may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The histograms timed, in the order shown: (metric, what it times).
const STAGES: &[(&str, &str)] = &[
    (
        "spike_api_request_duration_seconds",
        "request in the server (all of it)",
    ),
    (
        "spike_raft_write_duration_seconds",
        "Raft write: proposal to applied response",
    ),
    (
        "spike_raft_log_sync_duration_seconds",
        "log commit, fsynced",
    ),
    ("spike_raft_apply_duration_seconds", "apply batch"),
    (
        "spike_audit_commit_duration_seconds",
        "audit commit, fsynced",
    ),
];

#[derive(clap::Args)]
pub struct StagesArgs {
    /// Workloads to break down, each at one client.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "put,get,get-stale,encrypt"
    )]
    workloads: Vec<Workload>,
    #[command(flatten)]
    sizing: Sizing,
    /// Where stages.md goes.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Directory of the built binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// First of the loopback ports used.
    #[arg(long, default_value_t = 27_600)]
    base_port: u16,
}

impl StagesArgs {
    /// `--bin-dir`, if given.
    pub fn bin_dir(&self) -> Option<&PathBuf> {
        self.bin_dir.as_ref()
    }
}

/// (sum in seconds, count) of one histogram, over all its series.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Totals {
    seconds: f64,
    count: f64,
}

/// Every timed histogram of one replica.
type Scrape = BTreeMap<&'static str, Totals>;

/// The `_sum` and `_count` of each of [`STAGES`] in a `/metrics` text,
/// added up over the series of each (routes, statuses).
fn parse(text: &str) -> Scrape {
    let mut scrape = Scrape::new();
    for line in text.lines() {
        for (name, _) in STAGES {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            let (field, rest) = if let Some(rest) = rest.strip_prefix("_sum") {
                ("sum", rest)
            } else if let Some(rest) = rest.strip_prefix("_count") {
                ("count", rest)
            } else {
                continue;
            };
            if !rest.starts_with([' ', '{']) {
                continue;
            }
            let Some(value) = rest
                .split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            let totals = scrape.entry(name).or_default();
            match field {
                "sum" => totals.seconds += value,
                _ => totals.count += value,
            }
        }
    }
    scrape
}

/// Every replica's timed histograms, by process name.
fn scrape_all(health: &[(String, SocketAddr)]) -> anyhow::Result<BTreeMap<String, Scrape>> {
    health
        .iter()
        .map(|(name, addr)| {
            let text = probe::scrape(*addr, SCRAPE_TIMEOUT)
                .with_context(|| format!("{name} did not answer GET /metrics"))?;
            Ok((name.clone(), parse(&text)))
        })
        .collect()
}

/// One line of the breakdown.
struct Line {
    stage: &'static str,
    replica: String,
    /// Mean time per client operation, ms.
    per_operation_ms: f64,
    /// Events (commits, batches) per client operation.
    events_per_operation: f64,
}

/// The growth of each stage on each replica between two scrapes, per
/// client operation; stages that did not run are left out.
fn breakdown(
    before: &BTreeMap<String, Scrape>,
    after: &BTreeMap<String, Scrape>,
    operations: u64,
) -> Vec<Line> {
    let operations = operations.max(1) as f64;
    let mut lines = Vec::new();
    for (metric, stage) in STAGES {
        for (replica, scrape) in after {
            let now = scrape.get(metric).copied().unwrap_or_default();
            let then = before
                .get(replica)
                .and_then(|s| s.get(metric))
                .copied()
                .unwrap_or_default();
            let events = now.count - then.count;
            if events <= 0.0 {
                continue;
            }
            lines.push(Line {
                stage,
                replica: replica.clone(),
                per_operation_ms: (now.seconds - then.seconds) * 1000.0 / operations,
                events_per_operation: events / operations,
            });
        }
    }
    lines
}

pub async fn run(args: StagesArgs, bin_dir: PathBuf) -> anyhow::Result<()> {
    args.sizing.check_duration()?;
    std::fs::create_dir_all(&args.out)?;
    let work = teardown::WorkDir::new("spike-bench-stages")?;
    let cluster = NexusCluster::up(&bin_dir, &work.path().join("nexus"), args.base_port)?;
    let health: Vec<(String, SocketAddr)> = cluster
        .file()
        .replicas()
        .map(|(process, replica)| (process.name.clone(), replica.health_addr))
        .collect();
    let store = Arc::new(cluster.client().await?);
    let shape = |workload| LoadShape {
        workload,
        clients: 1,
        duration: args.sizing.duration,
        keys: args.sizing.keys,
        value_size: args.sizing.value_size,
    };
    eprintln!("stages: writing {} keys", args.sizing.keys);
    load::preload(&store, &shape(Workload::Put))
        .await
        .map_err(|e| anyhow::anyhow!("preload: {e}"))?;
    let mut report = String::from(
        "Where one client's request goes, per operation (mean ms), from each replica's \
         /metrics; 'per op' counts the stage's events (commits, batches) per operation.\n",
    );
    for workload in &args.workloads {
        let before = scrape_all(&health)?;
        let outcome = load::run(&store, &shape(*workload)).await;
        let after = scrape_all(&health)?;
        if outcome.operations == 0 {
            anyhow::bail!(
                "{workload:?}: no operation completed: {}",
                outcome.first_error.unwrap_or_default()
            );
        }
        let mean_ms = 1000.0 / outcome.ops_per_second;
        let lines = breakdown(&before, &after, outcome.operations);
        let server_ms: f64 = lines
            .iter()
            .filter(|line| line.stage == STAGES[0].1)
            .map(|line| line.per_operation_ms)
            .sum();
        let _ = writeln!(
            report,
            "\n{workload:?} at 1 client: {:.0} ops/s, mean {mean_ms:.3} ms, p50 {:.3} ms, \
             p99 {:.3} ms, {} errors\n",
            outcome.ops_per_second, outcome.p50_ms, outcome.p99_ms, outcome.errors
        );
        let _ = writeln!(report, "| stage | replica | ms per op | per op |");
        let _ = writeln!(report, "|---|---|---:|---:|");
        let _ = writeln!(
            report,
            "| client, TLS, HTTP, loopback (client mean - server) | | {:.3} | |",
            mean_ms - server_ms
        );
        for line in &lines {
            let _ = writeln!(
                report,
                "| {} | {} | {:.3} | {:.2} |",
                line.stage, line.replica, line.per_operation_ms, line.events_per_operation
            );
        }
    }
    println!("{report}");
    let path = args.out.join("stages.md");
    std::fs::write(&path, &report)?;
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# HELP spike_raft_log_sync_duration_seconds Time of one fsynced commit
spike_raft_log_sync_duration_seconds_sum 0.5
spike_raft_log_sync_duration_seconds_count 1000
spike_raft_log_sync_duration_seconds_bucket{le=\"0.0005\"} 900
spike_api_request_duration_seconds_sum{route=\"/v1/store/secrets\",status=\"200\"} 1.5
spike_api_request_duration_seconds_count{route=\"/v1/store/secrets\",status=\"200\"} 900
spike_api_request_duration_seconds_sum{route=\"/v1/store/secrets\",status=\"404\"} 0.5
spike_api_request_duration_seconds_count{route=\"/v1/store/secrets\",status=\"404\"} 100
spike_raft_write_duration_seconds_sum_other 7
";

    #[test]
    fn sums_and_counts_add_up_over_series_and_nothing_else_counts() {
        let scrape = parse(TEXT);
        assert_eq!(
            scrape["spike_raft_log_sync_duration_seconds"],
            Totals {
                seconds: 0.5,
                count: 1000.0
            }
        );
        assert_eq!(
            scrape["spike_api_request_duration_seconds"],
            Totals {
                seconds: 2.0,
                count: 1000.0
            }
        );
        assert!(!scrape.contains_key("spike_raft_write_duration_seconds"));
    }

    #[test]
    fn each_stage_is_its_growth_per_client_operation() {
        let before = BTreeMap::from([("nexus-1".to_owned(), parse(TEXT))]);
        let mut grown = parse(TEXT);
        grown.insert(
            "spike_raft_log_sync_duration_seconds",
            Totals {
                seconds: 0.7,
                count: 1500.0,
            },
        );
        let after = BTreeMap::from([("nexus-1".to_owned(), grown)]);
        let lines = breakdown(&before, &after, 500);
        assert_eq!(lines.len(), 1, "stages that did not grow are left out");
        assert_eq!(lines[0].replica, "nexus-1");
        assert!((lines[0].per_operation_ms - 0.4).abs() < 1e-9);
        assert!((lines[0].events_per_operation - 1.0).abs() < 1e-9);
    }
}
