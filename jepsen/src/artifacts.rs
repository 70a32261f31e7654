//! A run's artifacts: `history.jsonl`, `results.json`, `timeline.svg` and
//! `summary.txt` (also printed).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::check::{Anomaly, Operation};
use crate::history::{Event, EventKind, write_event};
use crate::nemesis::FaultWindow;
use crate::run::{RunSettings, Verdict};
use crate::timeline;

/// Anomalies the summary lists (results.json has them all).
const SUMMARY_ANOMALIES_MAX: usize = 20;

/// What the checkers concluded.
#[derive(Debug)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Every anomaly found.
    pub anomalies: Vec<Anomaly>,
    /// Each checker's report.
    pub details: Value,
}

/// Everything a run leaves behind.
pub struct Artifacts<'a> {
    /// The run's settings.
    pub settings: &'a RunSettings,
    /// The directory the artifacts go to.
    pub out: &'a Path,
    /// The history.
    pub events: &'a [Event],
    /// The history, paired.
    pub operations: &'a [Operation<'a>],
    /// The faults as they happened.
    pub windows: &'a [FaultWindow],
    /// What the checkers concluded.
    pub judgement: Judgement,
    /// How long every replica took to be ready after healing.
    pub recovery: Duration,
    /// Whether links ran through the harness's proxies.
    pub proxied: bool,
}

/// Writes every artifact into `artifacts.out` and prints the summary.
pub fn write(artifacts: &Artifacts<'_>) -> anyhow::Result<()> {
    let out = artifacts.out;
    let mut history = std::io::BufWriter::new(std::fs::File::create(out.join("history.jsonl"))?);
    for event in artifacts.events {
        write_event(&mut history, event)?;
    }
    history.flush()?;
    let gaps = timeline::write_gaps(artifacts.operations, artifacts.windows);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(&results(artifacts, &gaps))?,
    )?;
    std::fs::write(
        out.join("timeline.svg"),
        timeline::svg(artifacts.operations, artifacts.windows, &title(artifacts)),
    )?;
    let summary = summary(artifacts, &gaps)?;
    std::fs::write(out.join("summary.txt"), &summary)?;
    print!("{summary}");
    Ok(())
}

fn count(operations: &[Operation<'_>], kind: EventKind) -> usize {
    operations.iter().filter(|op| op.outcome() == kind).count()
}

fn title(artifacts: &Artifacts<'_>) -> String {
    let settings = artifacts.settings;
    format!(
        "{:?} under {:?}, seed {}: {:?}",
        settings.workload, settings.nemesis, settings.seed, artifacts.judgement.verdict
    )
}

fn results(artifacts: &Artifacts<'_>, gaps: &[Option<f64>]) -> Value {
    let settings = artifacts.settings;
    let operations = artifacts.operations;
    json!({
        "verdict": artifacts.judgement.verdict,
        "workload": settings.workload,
        "nemesis": settings.nemesis,
        "seed": settings.seed,
        "seconds": settings.time.as_secs(),
        "clients": settings.clients,
        "replicas": settings.replicas,
        "unsafe_local_reads": settings.unsafe_local_reads,
        "hosts": if artifacts.proxied { "proxies" } else { "namespaces" },
        "operations": {
            "ok": count(operations, EventKind::Ok),
            "fail": count(operations, EventKind::Fail),
            "info": count(operations, EventKind::Info),
        },
        "faults": artifacts.windows,
        "write_gap_ms": gaps,
        "recovery_ms": artifacts.recovery.as_millis() as u64,
        "anomalies": artifacts.judgement.anomalies,
        "details": artifacts.judgement.details,
    })
}

fn summary(artifacts: &Artifacts<'_>, gaps: &[Option<f64>]) -> anyhow::Result<String> {
    let operations = artifacts.operations;
    let anomalies = &artifacts.judgement.anomalies;
    let mut summary = String::new();
    writeln!(summary, "{}", title(artifacts))?;
    writeln!(
        summary,
        "operations: {} ok, {} fail, {} info",
        count(operations, EventKind::Ok),
        count(operations, EventKind::Fail),
        count(operations, EventKind::Info)
    )?;
    for (window, gap) in artifacts.windows.iter().zip(gaps) {
        writeln!(
            summary,
            "fault {:?} on {} at {:.1}s for {:.1}s: next acknowledged write {}",
            window.fault,
            window.targets.join(","),
            window.start_ns as f64 / 1e9,
            (window.end_ns - window.start_ns) as f64 / 1e9,
            gap.map_or("never".to_owned(), |ms| format!("after {ms:.0} ms"))
        )?;
    }
    writeln!(
        summary,
        "recovery after healing: {} ms",
        artifacts.recovery.as_millis()
    )?;
    if anomalies.is_empty() {
        writeln!(summary, "anomalies: none")?;
    }
    for anomaly in anomalies.iter().take(SUMMARY_ANOMALIES_MAX) {
        writeln!(summary, "ANOMALY {}", serde_json::to_string(anomaly)?)?;
    }
    if anomalies.len() > SUMMARY_ANOMALIES_MAX {
        writeln!(
            summary,
            "... and {} more anomalies (all in results.json)",
            anomalies.len() - SUMMARY_ANOMALIES_MAX
        )?;
    }
    writeln!(summary, "replay: {}", replay(artifacts.settings))?;
    writeln!(summary, "artifacts: {}", artifacts.out.display())?;
    Ok(summary)
}

/// The command that runs `settings` again.
fn replay(settings: &RunSettings) -> String {
    let mut command = format!(
        "spike-jepsen run --workload {} --nemesis {} --time {} --seed {} --clients {} --keys {} \
         --replicas {}",
        flag_value(&settings.workload),
        flag_value(&settings.nemesis),
        go_duration(settings.time),
        settings.seed,
        settings.clients,
        settings.keys,
        settings.replicas,
    );
    if settings.unsafe_local_reads {
        command.push_str(" --unsafe-local-reads");
    }
    if settings.proxies {
        command.push_str(" --proxies");
    }
    if let Some(spire) = &settings.spire {
        command.push_str(&format!(
            " --identity spire --spire-svid-ttl {}",
            go_duration(spire.svid_ttl)
        ));
    }
    command.push_str(" --out DIR");
    command
}

/// `value` as its command-line flag takes it.
fn flag_value(value: &impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |value| value.get_name().to_owned())
}

/// `duration` as `spike_sdk::duration::parse` reads it back.
fn go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_durations_parse_back_to_the_same_duration() {
        for duration in [
            Duration::from_secs(20),
            Duration::from_millis(1500),
            Duration::ZERO,
        ] {
            let text = go_duration(duration);
            assert_eq!(spike_sdk::duration::parse(&text), Ok(duration), "{text}");
        }
    }
}
