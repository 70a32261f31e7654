//! The availability timeline: every operation's latency against the time it
//! started, coloured by outcome, over shaded fault windows; and the gap
//! each fault opened in acknowledged writes.

use std::fmt::Write as _;

use crate::check::Operation;
use crate::history::EventKind;
use crate::nemesis::FaultWindow;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 360.0;
const MARGIN: f64 = 50.0;

/// Renders the timeline as an SVG document.
pub fn svg(operations: &[Operation<'_>], windows: &[FaultWindow], title: &str) -> String {
    let end_ns = operations
        .iter()
        .filter_map(|op| op.completion.map(|c| c.time_ns))
        .chain(windows.iter().map(|w| w.end_ns))
        .max()
        .unwrap_or(1)
        .max(1);
    let latency_ms = |op: &Operation<'_>| {
        op.completion
            .map(|c| (c.time_ns.saturating_sub(op.invoke.time_ns)) as f64 / 1e6)
    };
    let top_ms = operations
        .iter()
        .filter_map(latency_ms)
        .fold(1.0f64, f64::max)
        .ceil();
    let x = |ns: u64| MARGIN + (ns as f64 / end_ns as f64) * (WIDTH - 2.0 * MARGIN);
    let y = |ms: f64| HEIGHT - MARGIN - (ms / top_ms) * (HEIGHT - 2.0 * MARGIN);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for window in windows {
        let (x0, x1) = (x(window.start_ns), x(window.end_ns));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{MARGIN}" width="{:.1}" height="{:.1}" fill="#f4cccc"/><text x="{x0:.1}" y="{:.1}" fill="#990000">{}</text>"##,
            (x1 - x0).max(1.0),
            HEIGHT - 2.0 * MARGIN,
            MARGIN - 4.0,
            escape(&format!("{:?} {}", window.fault, window.targets.join(" ")))
        );
    }
    for op in operations {
        let Some(ms) = latency_ms(op) else { continue };
        let colour = match op.outcome() {
            EventKind::Ok => "#2a7",
            EventKind::Fail => "#c22",
            _ => "#e90",
        };
        let _ = writeln!(
            out,
            r##"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{colour}"/>"##,
            x(op.invoke.time_ns),
            y(ms)
        );
    }
    let axis_y = HEIGHT - MARGIN;
    let _ = writeln!(
        out,
        r#"<line x1="{MARGIN}" y1="{axis_y}" x2="{:.1}" y2="{axis_y}" stroke="black"/><line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{axis_y}" stroke="black"/>"#,
        WIDTH - MARGIN
    );
    let _ = writeln!(
        out,
        r#"<text x="{MARGIN}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.1} s</text>"#,
        axis_y + 16.0,
        WIDTH - MARGIN,
        axis_y + 16.0,
        end_ns as f64 / 1e9
    );
    let _ = writeln!(
        out,
        r#"<text x="4" y="{:.1}">{top_ms} ms</text><text x="4" y="{axis_y}">0 ms</text>"#,
        MARGIN + 4.0
    );
    let _ = writeln!(
        out,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end"><tspan fill="#2a7">ok</tspan> <tspan fill="#e90">info</tspan> <tspan fill="#c22">fail</tspan>, latency by start time</text>"##,
        WIDTH - MARGIN,
        HEIGHT - 8.0
    );
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// For each fault: ms from its start until the first acknowledged write
/// that was invoked after it began (a write already under way may finish
/// on the old leader), or `None` if none came before the end.
pub fn write_gaps(operations: &[Operation<'_>], windows: &[FaultWindow]) -> Vec<Option<f64>> {
    windows
        .iter()
        .map(|window| {
            operations
                .iter()
                .filter(|op| op.op.is_write())
                .filter(|op| op.outcome() == EventKind::Ok)
                .filter(|op| op.invoke.time_ns >= window.start_ns)
                .filter_map(|op| op.completion)
                .filter(|completion| completion.time_ns >= window.start_ns)
                .map(|completion| (completion.time_ns - window.start_ns) as f64 / 1e6)
                .reduce(f64::min)
        })
        .collect()
}
