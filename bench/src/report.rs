//! The results document (results.json), the table (results.md) and the
//! plot (plot.svg). `spike-bench report` renders the last two again from
//! the first, so the README's table is one command away from the JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::load::{LoadShape, Outcome, Workload};

/// Everything a `compare` measured, and where and on what.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// When, on what machine, with which settings.
    pub meta: Meta,
    /// Each system measured, in the order measured (ours first).
    pub peers: Vec<Peer>,
    /// Every measured cell.
    pub rows: Vec<Row>,
}

/// When, where and how a run was made.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Start of the run, RFC 3339 in UTC.
    pub date: String,
    /// The machine.
    pub machine: Machine,
    /// `release` or `debug`: how the benchmark and our binaries were built.
    pub build: String,
    /// spike-bench's own version.
    pub spike_bench: String,
    /// Members of each cluster (3 or 5; 3 in documents from before
    /// `--replicas`).
    #[serde(default = "replicas_before_the_flag")]
    pub replicas: usize,
    /// Length of each cell, seconds.
    pub duration_s: f64,
    /// Keys preloaded.
    pub keys: u64,
    /// Bytes per value.
    pub value_size: usize,
}

/// The machine a run was made on, from /proc.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
}

/// One system measured: ours or an etcd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Peer {
    /// Its name in the rows and the table (`nexus`, `etcd 3.6.8`).
    pub name: String,
    /// What its binary reports as its version.
    pub version: String,
    /// The binary run.
    pub binary: String,
    /// Kill -9 of the leader: the gap and the restart (medians, ms).
    pub failover: Option<serde_json::Value>,
    /// The grown store: resident memory, files on disk, restart time and
    /// a new member catching up.
    pub memory: Option<MemoryTrial>,
}

/// Every cluster had 3 members before `--replicas` came.
fn replicas_before_the_flag() -> usize {
    3
}

/// A peer's store grown to many keys (`--memory-keys`). Documents from
/// before the files on disk and the catch-up lack those (empty, none).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryTrial {
    /// Keys written.
    pub keys: u64,
    /// Seconds the writes took (64 clients).
    #[serde(default)]
    pub load_s: Option<f64>,
    /// Resident memory of each member, KiB.
    pub resident_kib: Vec<(String, u64)>,
    /// Each member's data files.
    #[serde(default)]
    pub disk: Vec<Footprint>,
    /// The member restarted (kill -9, then start), when named.
    #[serde(default)]
    pub restarted: Option<String>,
    /// From its start to serving again, ms.
    pub restart_to_serving_ms: f64,
    /// A member added to the grown cluster (none: not measured).
    #[serde(default)]
    pub catch_up: Option<CatchUp>,
}

/// One member's data directory on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// The member.
    pub member: String,
    /// Bytes of everything in its data directory.
    pub total_bytes: u64,
    /// The files and directories that matter (its state, its log, its
    /// snapshots), bytes each, relative to its data directory.
    pub parts: Vec<(String, u64)>,
}

/// A member added to the grown cluster, until it serves with the data.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatchUp {
    /// The new member.
    pub member: String,
    /// From its start (and the add) to caught up, ms: ours, ready with
    /// the leader's applied index at the add; etcd, serving a
    /// linearizable read.
    pub caught_up_ms: f64,
    /// The index it had to reach (ours: the leader's applied index; etcd:
    /// the leader's Raft index at the add).
    pub target_index: Option<u64>,
    /// The snapshot it was sent, bytes: ours, the one it installed
    /// (`spike_raft_snapshot_size_bytes{operation="install"}`); etcd, the
    /// leader's database, which is what etcd sends. None if it caught up
    /// from the log alone.
    pub snapshot_bytes: Option<u64>,
    /// Its data directory once caught up.
    pub disk: Option<Footprint>,
}

impl Peer {
    /// A peer with nothing measured yet.
    pub fn new(name: &str, version: &str, binary: &std::path::Path) -> Self {
        Self {
            name: name.to_owned(),
            version: version.to_owned(),
            binary: binary.display().to_string(),
            failover: None,
            memory: None,
        }
    }
}

impl Meta {
    /// This machine, now, with these settings.
    pub fn now(duration: Duration, keys: u64, value_size: usize, replicas: usize) -> Self {
        let date = time::OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .ok()
            .and_then(|now| {
                now.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Self {
            date,
            machine: Machine::this(),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            spike_bench: env!("CARGO_PKG_VERSION").to_owned(),
            replicas,
            duration_s: duration.as_secs_f64(),
            keys,
            value_size,
        }
    }
}

impl Machine {
    fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib: u64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0);
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_mib: memory_kib / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// One measured cell: a target under one shape.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// The peer's name (`nexus`, `etcd 3.6.8`).
    pub target: String,
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

const WORKLOADS: [Workload; 6] = [
    Workload::Put,
    Workload::Get,
    Workload::GetStale,
    Workload::Mixed,
    Workload::Encrypt,
    Workload::Decrypt,
];

/// How the table and the plot name a workload.
fn label(workload: Workload) -> &'static str {
    match workload {
        Workload::Put => "put",
        Workload::Get => "get (linearizable)",
        Workload::GetStale => "get (stale)",
        Workload::Mixed => "mixed 90/10",
        Workload::Encrypt => "encrypt 1 KiB",
        Workload::Decrypt => "decrypt 1 KiB",
    }
}

fn ratio(ours: f64, theirs: f64) -> String {
    if theirs > 0.0 {
        format!("{:.2}x", ours / theirs)
    } else {
        "-".into()
    }
}

/// 12345.6 -> "12,346".
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// The peers' names: those of `results.peers`, then any only the rows
/// name (a hand-edited document).
fn peer_names(results: &Results) -> Vec<String> {
    let mut names: Vec<String> = results.peers.iter().map(|p| p.name.clone()).collect();
    for row in &results.rows {
        if !names.contains(&row.target) {
            names.push(row.target.clone());
        }
    }
    names
}

/// The (workload, clients) cells measured, in table order.
fn cells(rows: &[Row]) -> Vec<(Workload, usize)> {
    let mut keys: Vec<(Workload, usize)> = rows
        .iter()
        .map(|row| (row.shape.workload, row.shape.clients))
        .collect();
    keys.sort_by_key(|(workload, clients)| (*workload as u8, *clients));
    keys.dedup();
    keys
}

/// The table: ops/s of every peer with the ratio ours / each other peer,
/// then p50 and p99 of every peer, then errors.
pub fn table(results: &Results) -> String {
    let names = peer_names(results);
    let ours = names.first().map(String::as_str);
    let mut out = String::from("| workload | clients |");
    let mut rule = String::from("|---|---:|");
    for (index, name) in names.iter().enumerate() {
        let _ = write!(out, " {name} ops/s |");
        rule.push_str("---:|");
        if index > 0 {
            out.push_str(" ratio |");
            rule.push_str("---:|");
        }
    }
    let all = names.join(" / ");
    let _ = write!(out, " p50 ms {all} | p99 ms {all} | errors |");
    rule.push_str("---:|---:|---:|");
    let _ = writeln!(out, "\n{rule}");
    for (workload, clients) in cells(&results.rows) {
        let outcome =
            |name: &str| find(&results.rows, name, workload, clients).map(|row| &row.outcome);
        let _ = write!(out, "| {} | {clients} |", label(workload));
        let mine = ours.and_then(outcome);
        for (index, name) in names.iter().enumerate() {
            let theirs = outcome(name);
            let ops = theirs.map_or("-".into(), |o| thousands(o.ops_per_second));
            let _ = write!(out, " {ops} |");
            if index > 0 {
                let cell = match (mine, theirs) {
                    (Some(a), Some(b)) => ratio(a.ops_per_second, b.ops_per_second),
                    _ => "-".into(),
                };
                let _ = write!(out, " {cell} |");
            }
        }
        let column = |figure: fn(&Outcome) -> f64| {
            names
                .iter()
                .map(|name| outcome(name).map_or("-".into(), |o| format!("{:.2}", figure(o))))
                .collect::<Vec<String>>()
                .join(" / ")
        };
        let errors = names
            .iter()
            .map(|name| outcome(name).map_or("-".into(), |o| o.errors.to_string()))
            .collect::<Vec<String>>()
            .join(" / ");
        let _ = writeln!(
            out,
            " {} | {} | {errors} |",
            column(|o| o.p50_ms),
            column(|o| o.p99_ms)
        );
    }
    out
}

/// "756 ms (508-859)" from a `median_ms` JSON object.
fn median_text(value: Option<&serde_json::Value>) -> Option<String> {
    let value = value?;
    let ms = |key: &str| value.get(key).and_then(serde_json::Value::as_f64);
    let median = ms("median_ms")?;
    Some(match (ms("min_ms"), ms("max_ms")) {
        (Some(min), Some(max)) => format!(
            "{} ms ({}-{})",
            thousands(median),
            thousands(min),
            thousands(max)
        ),
        _ => format!("{} ms", thousands(median)),
    })
}

/// The whole results.md: what was measured where, the table, failover and
/// memory, and how to render it again.
pub fn markdown(results: &Results) -> String {
    let meta = &results.meta;
    let machine = &meta.machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on {} ({} cores, {:.1} GiB memory, Linux {}), {} build.\n",
        meta.date,
        machine.cpu,
        machine.cores,
        machine.memory_mib as f64 / 1024.0,
        machine.kernel,
        meta.build
    );
    let peers: Vec<String> = results
        .peers
        .iter()
        .map(|peer| {
            if peer.name.contains(&peer.version) {
                peer.name.clone()
            } else {
                format!("{} {}", peer.name, peer.version)
            }
        })
        .collect();
    let _ = writeln!(
        out,
        "Peers: {}; {} members each, mTLS and fsync on; {} keys of {}-byte values; {} s per cell (spike-bench {}).\n",
        peers.join(", "),
        meta.replicas,
        thousands(meta.keys as f64),
        meta.value_size,
        meta.duration_s,
        meta.spike_bench
    );
    out.push_str(&table(results));
    let mut failover = Vec::new();
    let mut restart = Vec::new();
    for peer in &results.peers {
        let trials = peer
            .failover
            .as_ref()
            .and_then(|f| f.get("failover_gap"))
            .and_then(|gap| gap.get("trials_ms"))
            .and_then(serde_json::Value::as_array)
            .map_or(0, Vec::len);
        if let Some(text) = median_text(peer.failover.as_ref().and_then(|f| f.get("failover_gap")))
        {
            let plural = if trials == 1 { "" } else { "s" };
            failover.push(format!("{} {text} over {trials} trial{plural}", peer.name));
        }
        if let Some(text) = median_text(
            peer.failover
                .as_ref()
                .and_then(|f| f.get("restart_to_serving")),
        ) {
            restart.push(format!("{} {text}", peer.name));
        }
    }
    if !failover.is_empty() {
        let _ = writeln!(
            out,
            "\nKill -9 of the leader to the next acknowledged write (median, min-max): {}.",
            failover.join("; ")
        );
    }
    if !restart.is_empty() {
        let _ = writeln!(
            out,
            "The restarted member serving again: {}.",
            restart.join("; ")
        );
    }
    out.push_str(&memory_section(results));
    let _ = writeln!(
        out,
        "\nRendered by `spike-bench report --from results.json` (the table, this text and plot.svg)."
    );
    out
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

/// The grown stores: a row per member (resident memory, data files on
/// disk), then each peer's restart and new member catching up.
fn memory_section(results: &Results) -> String {
    let grown: Vec<(&Peer, &MemoryTrial)> = results
        .peers
        .iter()
        .filter_map(|peer| Some((peer, peer.memory.as_ref()?)))
        .collect();
    let Some((_, first)) = grown.first() else {
        return String::new();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nWith {} keys, {} members each (a row per member; files on disk in MiB):\n",
        thousands(first.keys as f64),
        results.meta.replicas
    );
    let _ = writeln!(
        out,
        "| peer | member | resident MiB | on disk MiB | of which |\n|---|---|---:|---:|---|"
    );
    for (peer, trial) in &grown {
        let mut members: Vec<&str> = trial.resident_kib.iter().map(|(m, _)| m.as_str()).collect();
        for footprint in &trial.disk {
            if !members.contains(&footprint.member.as_str()) {
                members.push(&footprint.member);
            }
        }
        for member in members {
            let resident = trial
                .resident_kib
                .iter()
                .find(|(name, _)| name == member)
                .map_or("-".to_owned(), |(_, kib)| thousands(*kib as f64 / 1024.0));
            let footprint = trial.disk.iter().find(|f| f.member == member);
            let total = footprint.map_or("-".to_owned(), |f| mib(f.total_bytes));
            let parts = footprint.map_or(String::new(), |f| {
                f.parts
                    .iter()
                    .map(|(part, bytes)| format!("{part} {}", mib(*bytes)))
                    .collect::<Vec<String>>()
                    .join(", ")
            });
            let _ = writeln!(
                out,
                "| {} | {member} | {resident} | {total} | {parts} |",
                peer.name
            );
        }
        // The member added by the trial, once caught up.
        if let Some(added) = trial.catch_up.as_ref().and_then(|c| c.disk.as_ref()) {
            let _ = writeln!(
                out,
                "| {} | {} (added) | - | {} | {} |",
                peer.name,
                added.member,
                mib(added.total_bytes),
                added
                    .parts
                    .iter()
                    .map(|(part, bytes)| format!("{part} {}", mib(*bytes)))
                    .collect::<Vec<String>>()
                    .join(", ")
            );
        }
    }
    out.push('\n');
    for (peer, trial) in &grown {
        let mut line = format!("{}:", peer.name);
        if let Some(load_s) = trial.load_s.filter(|s| *s > 0.0) {
            let _ = write!(
                line,
                " {} keys written in {load_s:.1} s ({}/s);",
                thousands(trial.keys as f64),
                thousands(trial.keys as f64 / load_s)
            );
        }
        let restarted = trial
            .restarted
            .as_deref()
            .map_or(String::new(), |name| format!(" ({name})"));
        let _ = write!(
            line,
            " a member restarted{restarted} serves again in {} ms",
            thousands(trial.restart_to_serving_ms)
        );
        match &trial.catch_up {
            Some(catch_up) => {
                let index = catch_up
                    .target_index
                    .map_or(String::new(), |index| format!(" to index {index}"));
                let sent = match catch_up.snapshot_bytes {
                    Some(bytes) => format!("a snapshot of {} MiB", mib(bytes)),
                    None => "the log alone, no snapshot".to_owned(),
                };
                let _ = write!(
                    line,
                    "; a new member, {}, caught up{index} in {} ms from {sent}",
                    catch_up.member,
                    thousands(catch_up.caught_up_ms)
                );
            }
            None => line.push_str("; a new member catching up: not measured"),
        }
        let _ = writeln!(out, "{line}.");
    }
    out
}

/// Colours of the peers, in order (ours first).
const COLOURS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Text for SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A tick's label: 12000 -> "12k", 2500 -> "2.5k", 0.2 -> "0.2".
fn tick_label(value: f64) -> String {
    let trim = |text: String| {
        if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            text
        }
    };
    if value >= 1000.0 {
        format!("{}k", trim(format!("{:.1}", value / 1000.0)))
    } else if value >= 1.0 {
        trim(format!("{value:.1}"))
    } else {
        trim(format!("{value:.3}"))
    }
}

/// A linear axis from 0: its top (a round number with headroom above
/// `max`) and its ticks.
fn linear_axis(max: f64) -> (f64, Vec<f64>) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max * 1.08 / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let top = (max * 1.08 / step).ceil() * step;
    let count = (top / step).round() as usize;
    (top, (0..=count).map(|i| i as f64 * step).collect())
}

/// A log axis over whole decades holding `low..=high` (at least one
/// decade): its bounds and its labelled ticks (1, 2, 5 per decade when
/// there are few decades, else 1 only).
fn log_axis(low: f64, high: f64) -> (f64, f64, Vec<f64>) {
    let low = if low > 0.0 {
        low
    } else {
        high.max(1e-3) / 10.0
    };
    let high = high.max(low);
    let mut bottom = 10f64.powf(low.log10().floor());
    let mut top = 10f64.powf(high.log10().ceil());
    if top <= bottom * 1.000_001 {
        top = bottom * 10.0;
    }
    // A value near an end decade gets room, not the frame.
    if high > top / 1.25 {
        top *= 10.0;
    }
    if low < bottom * 1.25 {
        bottom /= 10.0;
    }
    let decades = (top / bottom).log10().round() as i32;
    let factors: &[f64] = if decades <= 3 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    let mut decade = bottom;
    while decade <= top * 1.000_001 {
        for factor in factors {
            let tick = decade * factor;
            if tick <= top * 1.000_001 {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    (bottom, top, ticks)
}

const PANEL_W: f64 = 260.0;
const PANEL_H: f64 = 200.0;
const LEFT: f64 = 56.0;
const GAP: f64 = 24.0;
const TOP: f64 = 92.0;
const ROW_GAP: f64 = 64.0;

/// One plotted line: a peer's figure at each concurrency level.
struct Series<'a> {
    colour: &'a str,
    dashed: bool,
    name: &'a str,
    points: Vec<(usize, f64)>,
}

/// A panel: frame, grid, ticks, labels and the lines. `y_of` maps a value
/// to 0..=1 of the panel's height.
fn panel(
    out: &mut String,
    (x0, y0): (f64, f64),
    title: &str,
    clients: &[usize],
    ticks: &[(f64, f64)],
    series: &[Series<'_>],
    y_of: &dyn Fn(f64) -> f64,
) {
    let _ = write!(
        out,
        r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
        y0 - 8.0,
        escape(title)
    );
    for (value, at) in ticks {
        let y = y0 + PANEL_H - at * PANEL_H;
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
            x0 + PANEL_W,
            x0 - 5.0,
            y + 4.0,
            tick_label(*value)
        );
    }
    let x_of = |index: usize| x0 + (index as f64 + 0.5) * PANEL_W / clients.len().max(1) as f64;
    for (index, count) in clients.iter().enumerate() {
        let x = x_of(index);
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#f0f0f0"/><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{count}</text>"##,
            y0 + PANEL_H,
            y0 + PANEL_H,
            y0 + PANEL_H + 4.0,
            y0 + PANEL_H + 16.0
        );
    }
    let _ = write!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">clients</text><rect x="{x0}" y="{y0}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        x0 + PANEL_W / 2.0,
        y0 + PANEL_H + 30.0
    );
    for line in series {
        let points: Vec<(f64, f64, f64)> = line
            .points
            .iter()
            .map(|(index, value)| {
                let at = y_of(*value).clamp(0.0, 1.0);
                (x_of(*index), y0 + PANEL_H - at * PANEL_H, *value)
            })
            .collect();
        let path: Vec<String> = points
            .iter()
            .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            line.colour,
            path.join(" ")
        );
        for (x, y, value) in points {
            let _ = write!(
                out,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"><title>{}: {}</title></circle>"#,
                line.colour,
                escape(line.name),
                tick_label(value)
            );
        }
    }
}

/// The plot: per workload (columns), throughput on a linear axis and p50
/// (dashed) and p99 (solid) latency on a log axis against concurrency,
/// every peer in its colour, with a legend and the run's facts on top.
pub fn svg(results: &Results) -> String {
    let rows = &results.rows;
    let names = peer_names(results);
    let workloads: Vec<Workload> = WORKLOADS
        .into_iter()
        .filter(|w| rows.iter().any(|row| row.shape.workload == *w))
        .collect();
    let mut clients: Vec<usize> = rows.iter().map(|row| row.shape.clients).collect();
    clients.sort_unstable();
    clients.dedup();
    let columns = workloads.len().max(1) as f64;
    let width = (columns * (LEFT + PANEL_W + GAP) + GAP).max(720.0);
    let height = TOP + 2.0 * (PANEL_H + ROW_GAP) + 8.0;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    let meta = &results.meta;
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="20" font-size="14" font-weight="bold">{}</text><text x="{LEFT}" y="38" fill="#444">{}</text>"##,
        escape(&format!(
            "{} members each, mTLS and fsync on, {} keys x {} B, {} s per cell",
            meta.replicas,
            thousands(meta.keys as f64),
            meta.value_size,
            meta.duration_s
        )),
        escape(&format!(
            "{} on {} ({} cores, {:.1} GiB), {} build",
            meta.date,
            meta.machine.cpu,
            meta.machine.cores,
            meta.machine.memory_mib as f64 / 1024.0,
            meta.build
        ))
    );
    // The legend: a swatch per peer, then the two line styles.
    let mut x = LEFT;
    let version_of = |name: &str| {
        results
            .peers
            .iter()
            .find(|peer| peer.name == name)
            .map(|peer| peer.version.clone())
    };
    for (index, name) in names.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let text = match version_of(name) {
            Some(version) if !name.contains(&version) => {
                format!("{name} {}", version.split(' ').next().unwrap_or_default())
            }
            _ => name.clone(),
        };
        let _ = write!(
            out,
            r#"<line x1="{x}" y1="56" x2="{}" y2="56" stroke="{colour}" stroke-width="3"/><text x="{}" y="60">{}</text>"#,
            x + 22.0,
            x + 28.0,
            escape(&text)
        );
        x += 40.0 + 7.0 * text.len() as f64;
    }
    let _ = write!(
        out,
        r##"<line x1="{x}" y1="56" x2="{}" y2="56" stroke="#444" stroke-width="2"/><text x="{}" y="60">p99</text><line x1="{}" y1="56" x2="{}" y2="56" stroke="#444" stroke-width="2" stroke-dasharray="5,4"/><text x="{}" y="60">p50</text>"##,
        x + 22.0,
        x + 28.0,
        x + 60.0,
        x + 82.0,
        x + 88.0
    );
    let level = |count: usize| clients.iter().position(|c| *c == count).unwrap_or(0);
    let series_of = |workload: Workload, figure: fn(&Outcome) -> f64, dashed: bool| {
        names
            .iter()
            .enumerate()
            .map(|(index, name)| Series {
                colour: COLOURS[index % COLOURS.len()],
                dashed,
                name,
                points: rows
                    .iter()
                    .filter(|row| row.target == *name && row.shape.workload == workload)
                    .map(|row| (level(row.shape.clients), figure(&row.outcome)))
                    .collect::<Vec<_>>(),
            })
            .map(|mut series| {
                series.points.sort_by_key(|(index, _)| *index);
                series
            })
            .collect::<Vec<_>>()
    };
    for (column, workload) in workloads.iter().enumerate() {
        let x0 = GAP + LEFT + column as f64 * (LEFT + PANEL_W + GAP);
        // Throughput, linear from 0.
        let throughput = series_of(*workload, |o| o.ops_per_second, false);
        let max = throughput
            .iter()
            .flat_map(|s| s.points.iter().map(|(_, v)| *v))
            .fold(0.0, f64::max);
        let (top, ticks) = linear_axis(max);
        let ticks: Vec<(f64, f64)> = ticks.into_iter().map(|t| (t, t / top)).collect();
        panel(
            &mut out,
            (x0, TOP),
            &format!("{}: ops/s", label(*workload)),
            &clients,
            &ticks,
            &throughput,
            &|value| value / top,
        );
        // Latency, log: p99 solid, p50 dashed.
        let mut latency = series_of(*workload, |o| o.p99_ms, false);
        latency.extend(series_of(*workload, |o| o.p50_ms, true));
        let values: Vec<f64> = latency
            .iter()
            .flat_map(|s| s.points.iter().map(|(_, v)| *v))
            .filter(|v| *v > 0.0)
            .collect();
        let (low, high) = (
            values.iter().copied().fold(f64::INFINITY, f64::min),
            values.iter().copied().fold(0.0, f64::max),
        );
        let (bottom, top, ticks) = if values.is_empty() {
            log_axis(0.1, 10.0)
        } else {
            log_axis(low, high)
        };
        let span = (top / bottom).log10();
        let y_of = move |value: f64| (value.max(bottom) / bottom).log10() / span;
        let ticks: Vec<(f64, f64)> = ticks.into_iter().map(|t| (t, y_of(t))).collect();
        panel(
            &mut out,
            (x0, TOP + PANEL_H + ROW_GAP),
            &format!("{}: latency ms (log)", label(*workload)),
            &clients,
            &ticks,
            &latency,
            &y_of,
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: &str, workload: Workload, clients: usize, ops: f64, p99: f64) -> Row {
        Row {
            target: target.to_owned(),
            shape: LoadShape {
                workload,
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

    fn results(rows: Vec<Row>) -> Results {
        let mut meta = Meta::now(Duration::from_secs(1), 10, 256, 3);
        meta.date = "2026-12-07T19:00:00Z".into();
        Results {
            meta,
            peers: vec![
                Peer::new("nexus", "0.3.0-dev", std::path::Path::new("nexus")),
                Peer::new("etcd 3.6.8", "3.6.8", std::path::Path::new("etcd")),
            ],
            rows,
        }
    }

    #[test]
    fn the_table_pairs_targets_and_shows_ratios() {
        let results = results(vec![
            row("nexus", Workload::Put, 64, 3000.0, 20.0),
            row("etcd 3.6.8", Workload::Put, 64, 2000.0, 40.0),
            row("etcd 3.4.23", Workload::Put, 64, 1500.0, 40.0),
        ]);
        let table = table(&results);
        assert!(
            table.contains("| put | 64 | 3,000 | 2,000 | 1.50x | 1,500 | 2.00x | 10.00 / 20.00 / 20.00 | 20.00 / 40.00 / 40.00 | 0 / 0 / 0 |"),
            "{table}"
        );
        assert!(table.starts_with(
            "| workload | clients | nexus ops/s | etcd 3.6.8 ops/s | ratio | etcd 3.4.23 ops/s | ratio |"
        ));
        let markdown = markdown(&results);
        assert!(markdown.contains("2026-12-07T19:00:00Z"), "{markdown}");
        assert!(
            markdown.contains("Peers: nexus 0.3.0-dev, etcd 3.6.8;"),
            "{markdown}"
        );
    }

    #[test]
    fn the_json_reads_back_into_the_same_report() {
        let before = results(vec![
            row("nexus", Workload::Get, 1, 1000.0, 2.0),
            row("etcd 3.6.8", Workload::Get, 1, 900.0, 1.5),
        ]);
        let text = serde_json::to_string(&before).expect("serialises");
        let after: Results = serde_json::from_str(&text).expect("reads back");
        assert_eq!(markdown(&before), markdown(&after));
        assert_eq!(svg(&before), svg(&after));
    }

    /// Every point's y within its panel, whatever the figures.
    fn points_inside(svg: &str) {
        for polyline in svg.split("<polyline").skip(1) {
            let points = polyline
                .split("points=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("points");
            for point in points.split_whitespace() {
                let y: f64 = point.split(',').nth(1).expect("y").parse().expect("number");
                let inside = (TOP..=TOP + PANEL_H).contains(&y)
                    || (TOP + PANEL_H + ROW_GAP..=TOP + 2.0 * PANEL_H + ROW_GAP).contains(&y);
                assert!(inside, "{y} outside every panel");
            }
        }
    }

    #[test]
    fn the_plot_shows_every_peer_inside_its_panels() {
        let mut rows = Vec::new();
        for (target, scale) in [("nexus", 1.0), ("etcd 3.6.8", 0.7), ("etcd 3.4.23", 0.6)] {
            for (clients, ops, p99) in [(1, 600.0, 1.4), (16, 5100.0, 9.5), (64, 10345.0, 23.7)] {
                rows.push(row(
                    target,
                    Workload::Put,
                    clients,
                    ops * scale,
                    p99 / scale,
                ));
            }
        }
        let svg = svg(&results(rows));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // One line per peer for throughput, two (p50, p99) for latency.
        assert_eq!(svg.matches("<polyline").count(), 9);
        for name in [
            "nexus",
            "etcd 3.6.8",
            "etcd 3.4.23",
            "p99",
            "p50",
            "10k",
            "clients",
        ] {
            assert!(svg.contains(name), "{name} missing");
        }
        points_inside(&svg);
    }

    #[test]
    fn the_replica_count_is_in_the_caption_and_the_plot_title() {
        let mut five = results(vec![row("nexus", Workload::Put, 1, 600.0, 2.0)]);
        five.meta.replicas = 5;
        assert!(
            markdown(&five).contains("; 5 members each,"),
            "{}",
            markdown(&five)
        );
        assert!(svg(&five).contains(">5 members each,"));
        let three = results(vec![row("nexus", Workload::Put, 1, 600.0, 2.0)]);
        assert!(markdown(&three).contains("; 3 members each,"));
    }

    #[test]
    fn a_document_from_before_replicas_and_footprints_still_renders() {
        let mut old =
            serde_json::to_value(results(vec![row("nexus", Workload::Put, 1, 600.0, 2.0)]))
                .expect("serialises");
        old["meta"]
            .as_object_mut()
            .expect("meta")
            .remove("replicas");
        old["peers"][0]["memory"] = serde_json::json!({
            "keys": 100000,
            "resident_kib": [["nexus-1", 146432], ["nexus-2", 150528]],
            "restart_to_serving_ms": 158.2,
        });
        let results: Results = serde_json::from_value(old).expect("an older document reads");
        assert_eq!(results.meta.replicas, 3);
        let text = markdown(&results);
        assert!(text.contains("; 3 members each,"), "{text}");
        assert!(text.contains("With 100,000 keys, 3 members each"), "{text}");
        assert!(text.contains("| nexus | nexus-2 | 147 | - |  |"), "{text}");
        assert!(
            text.contains("nexus: a member restarted serves again in 158 ms; a new member catching up: not measured."),
            "{text}"
        );
    }

    #[test]
    fn the_memory_trial_shows_every_member_its_files_and_the_catch_up() {
        let mut results = results(vec![row("nexus", Workload::Put, 1, 600.0, 2.0)]);
        let mib = 1024 * 1024;
        results.peers[0].memory = Some(MemoryTrial {
            keys: 1_000_000,
            load_s: Some(100.0),
            resident_kib: vec![
                ("nexus-1".into(), 300 * 1024),
                ("nexus-2".into(), 310 * 1024),
            ],
            disk: vec![Footprint {
                member: "nexus-1".into(),
                total_bytes: 900 * mib,
                parts: vec![
                    ("state.redb".into(), 600 * mib),
                    ("log.redb".into(), 50 * mib),
                ],
            }],
            restarted: Some("nexus-2".into()),
            restart_to_serving_ms: 1234.0,
            catch_up: Some(CatchUp {
                member: "nexus-6".into(),
                caught_up_ms: 8500.0,
                target_index: Some(1_000_123),
                snapshot_bytes: Some(400 * mib),
                disk: Some(Footprint {
                    member: "nexus-6".into(),
                    total_bytes: 800 * mib,
                    parts: vec![("snapshots".into(), 400 * mib)],
                }),
            }),
        });
        results.peers[1].memory = Some(MemoryTrial {
            keys: 1_000_000,
            restart_to_serving_ms: 900.0,
            catch_up: Some(CatchUp {
                member: "etcd-6".into(),
                caught_up_ms: 3000.0,
                ..CatchUp::default()
            }),
            ..MemoryTrial::default()
        });
        let text = markdown(&results);
        for wanted in [
            "With 1,000,000 keys, 3 members each",
            "| nexus | nexus-1 | 300 | 900.0 | state.redb 600.0, log.redb 50.0 |",
            "| nexus | nexus-2 | 310 | - |  |",
            "| nexus | nexus-6 (added) | - | 800.0 | snapshots 400.0 |",
            "nexus: 1,000,000 keys written in 100.0 s (10,000/s); a member restarted (nexus-2) serves again in 1,234 ms; a new member, nexus-6, caught up to index 1000123 in 8,500 ms from a snapshot of 400.0 MiB.",
            "etcd 3.6.8: a member restarted serves again in 900 ms; a new member, etcd-6, caught up in 3,000 ms from the log alone, no snapshot.",
        ] {
            assert!(text.contains(wanted), "{wanted} missing from:\n{text}");
        }
        let again: Results =
            serde_json::from_str(&serde_json::to_string(&results).expect("serialises"))
                .expect("reads back");
        assert_eq!(markdown(&again), text);
    }

    #[test]
    fn axes_leave_headroom_and_round_ticks() {
        let (top, ticks) = linear_axis(10_345.0);
        assert!(top > 10_345.0 && top <= 15_000.0, "{top}");
        assert_eq!(ticks.first(), Some(&0.0));
        assert_eq!(ticks.last(), Some(&top));
        let (bottom, top, ticks) = log_axis(0.4, 23.7);
        assert!(bottom <= 0.4 && top >= 23.7, "{bottom}..{top}");
        assert!(ticks.contains(&1.0) && ticks.contains(&10.0), "{ticks:?}");
        assert_eq!(tick_label(2500.0), "2.5k");
        assert_eq!(tick_label(0.2), "0.2");
        assert_eq!(tick_label(20.0), "20");
    }
}
