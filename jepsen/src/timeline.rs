//! The availability timeline: every operation's latency against the time it
//! started, coloured by outcome, over shaded fault windows; and the gap
//! each fault opened in acknowledged writes.

use std::fmt::Write as _;

use crate::check::Operation;
use crate::history::EventKind;
use crate::nemesis::FaultWindow;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 58.0;
const BOTTOM: f64 = 62.0;

/// The latency axis: whole decades from 0.1 ms (or lower) to above the
/// slowest operation. Log, so normal operations (a few ms) and a fault's
/// stall (seconds) are both readable.
fn latency_axis(fastest_ms: f64, slowest_ms: f64) -> (f64, f64) {
    let bottom = 10f64.powf(fastest_ms.clamp(1e-3, 0.1).log10().floor());
    let mut top = 10f64.powf(slowest_ms.max(1.0).log10().ceil());
    if slowest_ms > top / 1.25 {
        top *= 10.0;
    }
    (bottom, top)
}

/// A round step for about `count` time ticks over `end_s` seconds.
fn time_step(end_s: f64, count: f64) -> f64 {
    let raw = (end_s / count).max(1e-3);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|factor| factor * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// "0.1", "1", "10", "1000" ms as labels.
fn ms_label(value: f64) -> String {
    if value >= 1000.0 {
        format!("{} s", value / 1000.0)
    } else if value >= 1.0 {
        format!("{value:.0} ms")
    } else {
        let text = format!("{value:.3}");
        format!("{} ms", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// Renders the timeline as an SVG document: each operation's latency (log
/// axis, with ticks and gridlines) at the time it started, coloured by
/// outcome, over the shaded fault windows, with a legend.
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
    let latencies: Vec<f64> = operations.iter().filter_map(latency_ms).collect();
    let (bottom, top) = latency_axis(
        latencies.iter().copied().fold(f64::INFINITY, f64::min),
        latencies.iter().copied().fold(0.0, f64::max),
    );
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let x = |ns: u64| LEFT + (ns as f64 / end_ns as f64) * plot_w;
    let span = (top / bottom).log10();
    let y = |ms: f64| {
        let at = ((ms.max(bottom) / bottom).log10() / span).clamp(0.0, 1.0);
        TOP + plot_h - at * plot_h
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        escape(title)
    );
    for window in windows {
        let (x0, x1) = (x(window.start_ns), x(window.end_ns));
        let _ = writeln!(
            out,
            r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{plot_h:.1}" fill="#f4cccc"/><text x="{x0:.1}" y="{:.1}" fill="#990000">{}</text>"##,
            (x1 - x0).max(1.0),
            TOP - 4.0,
            escape(&format!("{:?} {}", window.fault, window.targets.join(" ")))
        );
    }
    // Gridlines and ticks: every decade labelled, 2 and 5 as light lines.
    let mut decade = bottom;
    while decade <= top * 1.000_001 {
        for factor in [1.0, 2.0, 5.0] {
            let value = decade * factor;
            if value > top * 1.000_001 {
                break;
            }
            let at = y(value);
            let (stroke, label) = if factor == 1.0 {
                ("#d0d0d0", ms_label(value))
            } else {
                ("#eeeeee", String::new())
            };
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="{stroke}"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{label}</text>"##,
                LEFT + plot_w,
                LEFT - 5.0,
                at + 4.0
            );
        }
        decade *= 10.0;
    }
    let end_s = end_ns as f64 / 1e9;
    let step = time_step(end_s, 10.0);
    let axis_y = TOP + plot_h;
    let mut tick = 0.0;
    while tick <= end_s * 1.000_001 {
        let at = x((tick * 1e9) as u64);
        let _ = writeln!(
            out,
            r##"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{axis_y:.1}" stroke="#eeeeee"/><line x1="{at:.1}" y1="{axis_y:.1}" x2="{at:.1}" y2="{:.1}" stroke="#444"/><text x="{at:.1}" y="{:.1}" text-anchor="middle" fill="#444">{} s</text>"##,
            axis_y + 4.0,
            axis_y + 16.0,
            (tick * 1000.0).round() / 1000.0
        );
        tick += step;
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
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#888"/><text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#444">time since the run began (operation start)</text><text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" fill="#444">latency (log)</text>"##,
        LEFT + plot_w / 2.0,
        axis_y + 32.0,
        TOP + plot_h / 2.0
    );
    // The legend.
    let legend_y = HEIGHT - 12.0;
    let mut at = LEFT;
    for (colour, text) in [
        ("#2a7", "ok"),
        ("#e90", "info (outcome unknown)"),
        ("#c22", "fail"),
    ] {
        let _ = writeln!(
            out,
            r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"/><text x="{:.1}" y="{legend_y:.1}">{text}</text>"#,
            at + 4.0,
            legend_y - 4.0,
            at + 12.0
        );
        at += 24.0 + 6.5 * text.len() as f64;
    }
    let _ = writeln!(
        out,
        r##"<rect x="{at:.1}" y="{:.1}" width="14" height="10" fill="#f4cccc"/><text x="{:.1}" y="{legend_y:.1}">fault in place</text>"##,
        legend_y - 9.0,
        at + 18.0
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, Step};
    use crate::nemesis::Nemesis;
    use crate::op::{Op, Reply};

    fn event(index: u64, time_ms: f64, step: Step) -> Event {
        Event {
            index,
            time_ns: (time_ms * 1e6) as u64,
            process: 0,
            step,
            key: None,
            node: None,
        }
    }

    /// Normal operations (2 ms) and a fault's stall (700 ms) both stay
    /// readable: the fast ones well above the floor, every point inside
    /// the frame, the axis labelled.
    #[test]
    fn a_log_axis_keeps_normal_operations_off_the_floor() {
        let mut events = Vec::new();
        for i in 0..100u64 {
            let start = i as f64 * 100.0;
            let took = if i == 35 { 700.0 } else { 2.0 };
            events.push(event(2 * i, start, Step::Invoke(Op::Write(i))));
            events.push(event(2 * i + 1, start + took, Step::Ok(Reply::Write(i))));
        }
        let operations: Vec<Operation<'_>> = events
            .chunks(2)
            .map(|pair| Operation {
                invoke: &pair[0],
                op: Op::Write(0),
                completion: Some(&pair[1]),
            })
            .collect();
        let windows = [FaultWindow {
            fault: Nemesis::PartitionLeader,
            targets: vec!["nexus-1".to_owned()],
            start_ns: 3_000_000_000,
            end_ns: 4_000_000_000,
        }];
        let svg = svg(&operations, &windows, "register under partition-leader");
        let plot_h = HEIGHT - TOP - BOTTOM;
        let ys: Vec<f64> = svg
            .split("<circle cx=")
            .skip(1)
            .filter(|circle| circle.contains("r=\"1.6\""))
            .map(|circle| {
                circle
                    .split("cy=\"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|y| y.parse().ok())
                    .expect("cy")
            })
            .collect();
        assert_eq!(ys.len(), 100);
        for y in &ys {
            assert!((TOP..=TOP + plot_h).contains(y), "{y} outside the frame");
        }
        let floor = TOP + plot_h;
        let fast = ys[0];
        assert!(
            floor - fast > plot_h * 0.25,
            "2 ms sits {} px above the floor",
            floor - fast
        );
        assert!(ys[35] < fast, "the stall is above the normal operations");
        for label in [
            "1 ms",
            "100 ms",
            "1 s",
            "5 s",
            "fault in place",
            "latency (log)",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
    }
}
