//! Operation histories as JSON lines.
//!
//! Every operation is recorded twice: an `invoke` when a client starts it and
//! a completion when it ends, which is `ok` (it happened), `fail` (it
//! certainly did not happen) or `info` (unknown: timeouts and connection
//! errors are always `info`, never `fail`, since the request may have been
//! applied).

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

/// Longest history line accepted when reading, so a corrupt file cannot
/// exhaust memory.
pub const LINE_LEN_MAX: usize = 1 << 20;

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// The client started the operation.
    Invoke,
    /// The operation happened.
    Ok,
    /// The operation certainly did not happen.
    Fail,
    /// Unknown whether the operation happened.
    Info,
}

/// One history event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time_ns: u64,
    /// The client (logical process) that ran the operation.
    pub process: u64,
    /// Invoke or completion.
    pub kind: EventKind,
    /// The operation's function, e.g. `read`, `write`, `cas`.
    pub f: String,
    /// The key the operation touched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The operation's value (argument on invoke, result on completion).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub value: serde_json::Value,
    /// The node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Why an operation failed or is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Errors reading a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading failed.
    #[error("reading the history failed: {0}")]
    Io(#[from] io::Error),
    /// A line is not an event.
    #[error("history line {line}: {reason}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Writes `event` as one JSON line.
pub fn write_event(out: &mut impl Write, event: &Event) -> io::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.write_all(b"\n")
}

/// Reads a whole history.
pub fn read_history(input: impl BufRead) -> Result<Vec<Event>, HistoryError> {
    let mut events = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let malformed = |reason: String| HistoryError::Malformed {
            line: number + 1,
            reason,
        };
        if line.len() > LINE_LEN_MAX {
            return Err(malformed(format!("longer than {LINE_LEN_MAX} bytes")));
        }
        events.push(serde_json::from_str(&line).map_err(|e| malformed(e.to_string()))?);
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_json_lines() {
        let events = vec![
            Event {
                index: 0,
                time_ns: 10,
                process: 3,
                kind: EventKind::Invoke,
                f: "write".to_owned(),
                key: Some("k1".to_owned()),
                value: serde_json::json!(5),
                node: Some("n1".to_owned()),
                error: None,
            },
            Event {
                index: 1,
                time_ns: 99,
                process: 3,
                kind: EventKind::Info,
                f: "write".to_owned(),
                key: Some("k1".to_owned()),
                value: serde_json::json!(5),
                node: Some("n1".to_owned()),
                error: Some("timeout".to_owned()),
            },
        ];
        let mut buffer = Vec::new();
        for event in &events {
            write_event(&mut buffer, event).expect("write to memory");
        }
        assert_eq!(read_history(buffer.as_slice()).expect("read back"), events);
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let text =
            "{\"index\":0,\"time_ns\":1,\"process\":1,\"kind\":\"ok\",\"f\":\"read\"}\nnot json\n";
        match read_history(text.as_bytes()) {
            Err(HistoryError::Malformed { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }
}
