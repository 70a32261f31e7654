//! The side-by-side table, the JSON document and the SVG plot.

use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{LoadShape, Outcome, Workload};

/// One measured cell: a target under one shape.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `nexus` or `etcd`.
    pub target: &'static str,
    /// The load.
    pub shape: LoadShape,
    /// The figures.
    pub outcome: Outcome,
}

fn find<'a>(rows: &'a [Row], target: &str, workload: Workload, clients: usize) -> Option<&'a Row> {
    rows.iter().find(|row| {
        row.target == target && row.shape.workload == workload && row.shape.clients == clients
    })
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "-".into()
    }
}

/// The table: ops/s and p99 for both targets, with ratios (ours / etcd).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | clients | nexus ops/s | etcd ops/s | ratio | nexus p50/p99 ms | etcd p50/p99 ms | p99 ratio | errors (nexus/etcd) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut keys: Vec<(Workload, usize)> = rows
        .iter()
        .map(|row| (row.shape.workload, row.shape.clients))
        .collect();
    keys.dedup();
    keys.sort_by_key(|(workload, clients)| (*workload as u8, *clients));
    keys.dedup();
    for (workload, clients) in keys {
        let ours = find(rows, "nexus", workload, clients).map(|row| &row.outcome);
        let theirs = find(rows, "etcd", workload, clients).map(|row| &row.outcome);
        let ops =
            |o: Option<&Outcome>| o.map_or("-".into(), |o| format!("{:.0}", o.ops_per_second));
        let lat = |o: Option<&Outcome>| {
            o.map_or("-".into(), |o| format!("{:.2} / {:.2}", o.p50_ms, o.p99_ms))
        };
        let errors = |o: Option<&Outcome>| o.map_or("-".into(), |o| o.errors.to_string());
        let (ops_ratio, p99_ratio) = match (ours, theirs) {
            (Some(a), Some(b)) => (
                ratio(a.ops_per_second, b.ops_per_second),
                ratio(a.p99_ms, b.p99_ms),
            ),
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {clients} | {} | {} | {ops_ratio} | {} | {} | {p99_ratio} | {}/{} |",
            serde_json::to_value(workload)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ops(ours),
            ops(theirs),
            lat(ours),
            lat(theirs),
            errors(ours),
            errors(theirs),
        );
    }
    out
}

/// An SVG with, per workload, throughput and p99 against concurrency for
/// both targets.
pub fn svg(rows: &[Row]) -> String {
    const PANEL_W: f64 = 300.0;
    const PANEL_H: f64 = 200.0;
    const MARGIN: f64 = 50.0;
    let workloads = [
        Workload::Put,
        Workload::Get,
        Workload::GetStale,
        Workload::Mixed,
    ];
    let mut clients: Vec<usize> = rows.iter().map(|row| row.shape.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    let width = MARGIN + workloads.len() as f64 * (PANEL_W + MARGIN);
    let height = MARGIN + 2.0 * (PANEL_H + MARGIN);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    type Metric = fn(&Outcome) -> f64;
    let metrics: [(&str, Metric); 2] = [("ops/s", |o| o.ops_per_second), ("p99 ms", |o| o.p99_ms)];
    for (column, workload) in workloads.iter().enumerate() {
        for (line, (label, metric)) in metrics.iter().enumerate() {
            let x0 = MARGIN + column as f64 * (PANEL_W + MARGIN);
            let y0 = MARGIN + line as f64 * (PANEL_H + MARGIN);
            let top = rows
                .iter()
                .filter(|row| row.shape.workload == *workload)
                .map(|row| metric(&row.outcome))
                .fold(0.0_f64, f64::max)
                .max(1e-9);
            let _ = write!(
                out,
                r##"<rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/><text x="{x0}" y="{}">{} {label} (max {top:.1})</text>"##,
                y0 - 6.0,
                serde_json::to_value(workload)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            );
            let x_of =
                |index: usize| x0 + (index as f64 + 0.5) * PANEL_W / clients.len().max(1) as f64;
            for (index, count) in clients.iter().enumerate() {
                let _ = write!(
                    out,
                    r#"<text x="{}" y="{}" text-anchor="middle">{count}</text>"#,
                    x_of(index),
                    y0 + PANEL_H + 14.0
                );
            }
            for (target, color) in [("nexus", "#1f77b4"), ("etcd", "#d62728")] {
                let points: Vec<String> = clients
                    .iter()
                    .enumerate()
                    .filter_map(|(index, count)| {
                        let row = find(rows, target, *workload, *count)?;
                        let y = y0 + PANEL_H - metric(&row.outcome) / top * PANEL_H;
                        Some(format!("{:.1},{y:.1}", x_of(index)))
                    })
                    .collect();
                let _ = write!(
                    out,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                    points.join(" ")
                );
            }
        }
    }
    let _ = write!(
        out,
        r##"<text x="{MARGIN}" y="{}" fill="#1f77b4">nexus</text><text x="{}" y="{}" fill="#d62728">etcd</text><text x="{}" y="{}">x: concurrent clients</text></svg>"##,
        height - 10.0,
        MARGIN + 60.0,
        height - 10.0,
        MARGIN + 120.0,
        height - 10.0
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn row(target: &'static str, clients: usize, ops: f64, p99: f64) -> Row {
        Row {
            target,
            shape: LoadShape {
                workload: Workload::Put,
                clients,
                duration: Duration::from_secs(1),
                keys: 10,
                value_size: 256,
            },
            outcome: Outcome {
                ops_per_second: ops,
                operations: ops as u64,
                errors: 0,
                first_error: None,
                p50_ms: p99 / 2.0,
                p90_ms: p99,
                p99_ms: p99,
                max_ms: p99,
            },
        }
    }

    #[test]
    fn the_table_pairs_targets_and_shows_ratios() {
        let rows = [
            row("nexus", 64, 3000.0, 20.0),
            row("etcd", 64, 2000.0, 40.0),
        ];
        let table = table(&rows);
        assert!(
            table.contains("| put | 64 | 3000 | 2000 | 1.50x |"),
            "{table}"
        );
        assert!(table.contains("| 0.50x |"), "{table}");
        let svg = svg(&rows);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 16);
    }
}
