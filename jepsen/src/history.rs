//! Operation histories as JSON lines.
//!
//! Every operation is recorded twice: an `invoke` when a client starts it and
//! a completion when it ends, which is `ok` (it happened), `fail` (it
//! certainly did not happen) or `info` (unknown: timeouts and connection
//! errors are always `info`, never `fail`, since the request may have been
//! applied). An invocation carries the [`Op`] (its `f` and argument), a
//! completion the [`Reply`] (the same `f` and the result).

use std::io::{self, BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::op::{ErrorKind, Op, Reply};

/// Longest history line accepted when reading, so a corrupt file cannot
/// exhaust memory.
pub const LINE_LEN_MAX: usize = 1 << 20;

/// What an event says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One history event: a line `{"index", "time_ns", "process", "kind",
/// "f", "value", "error", "key", "node"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the start of the run (monotonic clock).
    pub time_ns: u64,
    /// The client (logical process) that ran the operation.
    pub process: u64,
    /// The invocation or the completion.
    #[serde(flatten)]
    pub step: Step,
    /// The key the operation touched, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The node the client talked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// An event's `kind` with what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Step {
    /// The client started the operation.
    Invoke(Op),
    /// The operation happened.
    Ok(Reply),
    /// The operation certainly did not happen.
    Fail(Failure),
    /// Unknown whether the operation happened.
    Info(Failure),
}

/// A failed or unknown operation's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// What the completion carries (the argument of a write, else mostly
    /// null).
    #[serde(flatten)]
    pub reply: Reply,
    /// Why.
    pub error: ErrorKind,
}

/// How an operation ended: a completion's [`Step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// It happened.
    Ok(Reply),
    /// It certainly did not happen.
    Fail(Failure),
    /// Unknown whether it happened.
    Info(Failure),
}

impl Completion {
    /// The event kind that records it.
    pub fn kind(self) -> EventKind {
        match self {
            Self::Ok(_) => EventKind::Ok,
            Self::Fail(_) => EventKind::Fail,
            Self::Info(_) => EventKind::Info,
        }
    }

    /// What it carries.
    pub fn reply(self) -> Reply {
        match self {
            Self::Ok(reply) => reply,
            Self::Fail(failure) | Self::Info(failure) => failure.reply,
        }
    }
}

impl From<Completion> for Step {
    fn from(completion: Completion) -> Self {
        match completion {
            Completion::Ok(reply) => Self::Ok(reply),
            Completion::Fail(failure) => Self::Fail(failure),
            Completion::Info(failure) => Self::Info(failure),
        }
    }
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self.step {
            Step::Invoke(_) => EventKind::Invoke,
            Step::Ok(_) => EventKind::Ok,
            Step::Fail(_) => EventKind::Fail,
            Step::Info(_) => EventKind::Info,
        }
    }

    /// How the operation ended, if this is a completion.
    pub fn completion(&self) -> Option<Completion> {
        match self.step {
            Step::Invoke(_) => None,
            Step::Ok(reply) => Some(Completion::Ok(reply)),
            Step::Fail(failure) => Some(Completion::Fail(failure)),
            Step::Info(failure) => Some(Completion::Info(failure)),
        }
    }
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
    use crate::op::Cas;

    #[test]
    fn events_round_trip_through_json_lines() {
        let cas = Cas {
            expected: 2,
            value: 5,
        };
        let events = vec![
            Event {
                index: 0,
                time_ns: 10,
                process: 3,
                step: Step::Invoke(Op::Cas(cas)),
                key: Some("k1".to_owned()),
                node: Some("n1".to_owned()),
            },
            Event {
                index: 1,
                time_ns: 99,
                process: 3,
                step: Step::Info(Failure {
                    reply: Reply::Cas(cas),
                    error: ErrorKind::Unreachable,
                }),
                key: Some("k1".to_owned()),
                node: Some("n1".to_owned()),
            },
            Event {
                index: 2,
                time_ns: 120,
                process: 4,
                step: Step::Ok(Reply::Read(None)),
                key: None,
                node: None,
            },
        ];
        let mut buffer = Vec::new();
        for event in &events {
            write_event(&mut buffer, event).expect("write to memory");
        }
        assert_eq!(read_history(buffer.as_slice()).expect("read back"), events);
    }

    #[test]
    fn lines_the_old_writer_wrote_read_as_typed_events() {
        let text = concat!(
            r#"{"index":0,"time_ns":1,"process":2,"kind":"invoke","f":"cas","key":"3","value":{"expected":1,"value":2000001},"node":"10.0.0.1:8553"}"#,
            "\n",
            r#"{"index":1,"time_ns":2,"process":2,"kind":"fail","f":"cas","key":"3","value":{"expected":1,"value":2000001},"node":"10.0.0.1:8553","error":"conflict"}"#,
            "\n",
            r#"{"index":2,"time_ns":3,"process":5,"kind":"invoke","f":"read","key":"0"}"#,
            "\n",
            r#"{"index":3,"time_ns":4,"process":5,"kind":"ok","f":"read","key":"0"}"#,
            "\n",
            r#"{"index":4,"time_ns":5,"process":1,"kind":"ok","f":"read-acl","value":"allowed"}"#,
            "\n",
        );
        let events = read_history(text.as_bytes()).expect("the old format reads");
        let cas = Cas {
            expected: 1,
            value: 2_000_001,
        };
        let steps: Vec<Step> = events.iter().map(|event| event.step).collect();
        assert_eq!(
            steps,
            vec![
                Step::Invoke(Op::Cas(cas)),
                Step::Fail(Failure {
                    reply: Reply::Cas(cas),
                    error: ErrorKind::Conflict,
                }),
                Step::Invoke(Op::Read),
                Step::Ok(Reply::Read(None)),
                Step::Ok(Reply::ReadAcl(Some(crate::op::Access::Allowed))),
            ]
        );
        // Written again, every line holds the same fields and values.
        for (line, event) in text.lines().zip(&events) {
            let old: serde_json::Value = serde_json::from_str(line).expect("json");
            let mut new = serde_json::to_value(event).expect("serialises");
            // The old writer left a null value out; the new one writes it.
            if new["value"].is_null() {
                new.as_object_mut().map(|fields| fields.remove("value"));
            }
            assert_eq!(new, old);
        }
    }

    #[test]
    fn a_malformed_line_is_reported_with_its_number() {
        let text = concat!(
            r#"{"index":0,"time_ns":1,"process":1,"kind":"ok","f":"read"}"#,
            "\nnot json\n"
        );
        match read_history(text.as_bytes()) {
            Err(HistoryError::Malformed { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected a malformed-line error, got {other:?}"),
        }
    }

    #[test]
    fn an_operation_of_the_wrong_shape_is_a_malformed_line() {
        let text = r#"{"index":0,"time_ns":1,"process":1,"kind":"invoke","f":"write","value":"x"}"#;
        assert!(matches!(
            read_history(text.as_bytes()),
            Err(HistoryError::Malformed { line: 1, .. })
        ));
    }
}
