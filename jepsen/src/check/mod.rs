//! Checkers: they read a history and list its anomalies.
//!
//! Operations are paired first (each process has at most one operation
//! outstanding), then judged by workload:
//! - register keys: linearizability per key ([`linearizable`]), which also
//!   catches lost writes, duplicated writes (a version too high) and
//!   versions going back;
//! - set: every acknowledged add is in the final read, nothing appears that
//!   was never added, and no add was applied twice ([`set`]);
//! - lifecycle: a destroyed version never comes back and a version never
//!   changes content ([`lifecycle`]);
//! - policy: an acknowledged revocation (or grant) holds for every read that
//!   starts after it ([`policy`]).

pub mod lifecycle;
pub mod linearizable;
pub mod policy;
pub mod set;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::history::{Event, EventKind};
use linearizable::{RegisterOp, TimedOp, Verdict};

/// Most search steps spent on one key before giving up on it.
pub const SEARCH_STEPS_MAX: u64 = 20_000_000;

/// One invocation and its completion.
#[derive(Debug, Clone)]
pub struct Operation<'h> {
    /// The invocation.
    pub invoke: &'h Event,
    /// The completion; `None` when the run ended first (unknown).
    pub completion: Option<&'h Event>,
}

impl Operation<'_> {
    /// How the operation ended (`Info` when it never did).
    pub fn outcome(&self) -> EventKind {
        self.completion.map_or(EventKind::Info, |event| event.kind)
    }
}

/// A history that cannot be checked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PairingError {
    /// A process invoked an operation while another was outstanding.
    #[error("process {process} invoked event {index} with an operation still open")]
    Overlapping {
        /// The process.
        process: u64,
        /// The offending event.
        index: u64,
    },
    /// A completion without an invocation.
    #[error("event {index} completes nothing for process {process}")]
    Orphan {
        /// The process.
        process: u64,
        /// The offending event.
        index: u64,
    },
}

/// Pairs invocations with completions, in invocation order.
pub fn pair(events: &[Event]) -> Result<Vec<Operation<'_>>, PairingError> {
    let mut open: BTreeMap<u64, usize> = BTreeMap::new();
    let mut operations: Vec<Operation<'_>> = Vec::new();
    for event in events {
        if event.kind == EventKind::Invoke {
            if open.contains_key(&event.process) {
                return Err(PairingError::Overlapping {
                    process: event.process,
                    index: event.index,
                });
            }
            open.insert(event.process, operations.len());
            operations.push(Operation {
                invoke: event,
                completion: None,
            });
        } else {
            let Some(position) = open.remove(&event.process) else {
                return Err(PairingError::Orphan {
                    process: event.process,
                    index: event.index,
                });
            };
            operations[position].completion = Some(event);
        }
    }
    Ok(operations)
}

/// Something a checker found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Anomaly {
    /// No order of a key's operations explains what clients saw.
    NotLinearizable {
        /// The key.
        key: String,
        /// Invocation index to start reading the history from.
        stuck_at: u64,
    },
    /// An acknowledged add is missing from the final read.
    LostAdd {
        /// The element.
        element: u64,
    },
    /// The final read holds an element nobody tried to add.
    UnexpectedElement {
        /// The element.
        element: u64,
    },
    /// An element's add was applied more than once.
    DuplicatedAdd {
        /// The element.
        element: u64,
        /// Versions found.
        versions: u64,
    },
    /// A read returned a version after its destroy was acknowledged.
    DestroyedVersionReturned {
        /// The key.
        key: String,
        /// The version.
        version: u64,
        /// Invocation index of the read.
        read_at: u64,
    },
    /// Two reads of the same version returned different values.
    VersionChanged {
        /// The key.
        key: String,
        /// The version.
        version: u64,
        /// Invocation index of the second read.
        read_at: u64,
    },
    /// A read was allowed after a revocation was acknowledged.
    RevocationNotHeld {
        /// Invocation index of the read.
        read_at: u64,
    },
    /// A read was denied after a grant was acknowledged.
    GrantNotHeld {
        /// Invocation index of the read.
        read_at: u64,
    },
    /// The final reads disagree between replicas after healing.
    Divergence {
        /// What differs.
        detail: String,
    },
    /// A history line does not have the shape its workload writes.
    Malformed {
        /// Event index.
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What the register checker concluded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RegisterReport {
    /// Keys found linearizable.
    pub linearizable_keys: usize,
    /// Keys the search gave up on (no verdict; not an anomaly, but the run
    /// is not a pass either).
    pub unknown_keys: Vec<String>,
    /// Anomalies.
    pub anomalies: Vec<Anomaly>,
}

fn number(value: &Value) -> Option<u64> {
    value.as_u64()
}

/// Turns one register operation into the search's form; `Ok(None)` drops
/// it (it certainly did not happen, or a read without a result).
fn register_op(operation: &Operation<'_>) -> Result<Option<TimedOp>, String> {
    let invoke = operation.invoke;
    let completion = operation.completion;
    let outcome = operation.outcome();
    let result = completion.map(|event| &event.value);
    let op = match (invoke.f.as_str(), outcome) {
        (_, EventKind::Invoke) => return Err("completion marked invoke".to_owned()),
        ("read" | "version", EventKind::Fail | EventKind::Info) => return Ok(None),
        ("read", EventKind::Ok) => {
            let value = result.ok_or("read without result")?;
            if value.is_null() {
                RegisterOp::Read(None)
            } else {
                RegisterOp::Read(Some(number(value).ok_or("read of a non-number")?))
            }
        }
        ("version", EventKind::Ok) => {
            RegisterOp::Version(result.and_then(number).ok_or("version without a number")?)
        }
        ("write", EventKind::Fail) => return Ok(None),
        ("write", _) => RegisterOp::Write(number(&invoke.value).ok_or("write of a non-number")?),
        ("cas", _) => {
            let expected = invoke.value["expected"]
                .as_u64()
                .ok_or("cas without expected")?;
            let value = invoke.value["value"].as_u64().ok_or("cas without value")?;
            let wrote = match outcome {
                EventKind::Ok => Some(true),
                // A conflict is an observation; any other failure is not.
                EventKind::Fail
                    if completion.and_then(|e| e.error.as_deref()) == Some("conflict") =>
                {
                    Some(false)
                }
                EventKind::Fail => return Ok(None),
                _ => None,
            };
            RegisterOp::Cas {
                expected,
                value,
                wrote,
            }
        }
        (other, _) => return Err(format!("unknown register operation {other:?}")),
    };
    let completed = match outcome {
        EventKind::Info => None,
        _ => completion.map(|event| event.index),
    };
    Ok(Some(TimedOp {
        invoked: invoke.index,
        completed,
        op,
    }))
}

/// Checks every register key of `operations` (those with a key and an `f`
/// of read, version, write or cas).
pub fn check_registers(operations: &[Operation<'_>], step_limit: u64) -> RegisterReport {
    let mut report = RegisterReport::default();
    let mut by_key: BTreeMap<&str, Vec<TimedOp>> = BTreeMap::new();
    for operation in operations {
        let Some(key) = operation.invoke.key.as_deref() else {
            continue;
        };
        if !matches!(
            operation.invoke.f.as_str(),
            "read" | "version" | "write" | "cas"
        ) {
            continue;
        }
        match register_op(operation) {
            Ok(Some(op)) => by_key.entry(key).or_default().push(op),
            Ok(None) => {
                by_key.entry(key).or_default();
            }
            Err(reason) => report.anomalies.push(Anomaly::Malformed {
                index: operation.invoke.index,
                reason,
            }),
        }
    }
    for (key, ops) in by_key {
        match linearizable::check(&ops, step_limit) {
            Verdict::Linearizable => report.linearizable_keys += 1,
            Verdict::NotLinearizable { stuck_at } => {
                report.anomalies.push(Anomaly::NotLinearizable {
                    key: key.to_owned(),
                    stuck_at,
                });
            }
            Verdict::Unknown { .. } => report.unknown_keys.push(key.to_owned()),
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Recorder(Vec<Event>);

    impl Recorder {
        fn event(&mut self, process: u64, kind: EventKind, f: &str, value: Value) {
            let index = self.0.len() as u64;
            self.0.push(Event {
                index,
                time_ns: index,
                process,
                kind,
                f: f.to_owned(),
                key: Some("k".to_owned()),
                value,
                node: None,
                error: None,
            });
        }
    }

    #[test]
    fn pairing_refuses_overlaps_and_orphans() {
        let mut history = Recorder(Vec::new());
        history.event(1, EventKind::Invoke, "read", Value::Null);
        history.event(1, EventKind::Invoke, "read", Value::Null);
        assert_eq!(
            pair(&history.0).err(),
            Some(PairingError::Overlapping {
                process: 1,
                index: 1
            })
        );
        let mut history = Recorder(Vec::new());
        history.event(2, EventKind::Ok, "read", Value::Null);
        assert!(matches!(pair(&history.0), Err(PairingError::Orphan { .. })));
    }

    #[test]
    fn a_stale_read_in_a_history_is_an_anomaly() {
        let mut history = Recorder(Vec::new());
        history.event(1, EventKind::Invoke, "write", json!(1));
        history.event(1, EventKind::Ok, "write", json!(1));
        history.event(2, EventKind::Invoke, "write", json!(2));
        history.event(2, EventKind::Ok, "write", json!(2));
        history.event(3, EventKind::Invoke, "read", Value::Null);
        history.event(3, EventKind::Ok, "read", json!(1));
        let operations = pair(&history.0).expect("pairs");
        let report = check_registers(&operations, SEARCH_STEPS_MAX);
        assert_eq!(
            report.anomalies,
            vec![Anomaly::NotLinearizable {
                key: "k".to_owned(),
                stuck_at: 4
            }]
        );
    }

    #[test]
    fn timeouts_are_unknown_not_failures() {
        let mut history = Recorder(Vec::new());
        history.event(1, EventKind::Invoke, "write", json!(5));
        history.event(1, EventKind::Info, "write", json!(5));
        history.event(2, EventKind::Invoke, "read", Value::Null);
        history.event(2, EventKind::Ok, "read", json!(5));
        // A write still open when the run ended counts as unknown too.
        history.event(1, EventKind::Invoke, "write", json!(6));
        let operations = pair(&history.0).expect("pairs");
        let report = check_registers(&operations, SEARCH_STEPS_MAX);
        assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
        assert_eq!(report.linearizable_keys, 1);
    }
}
