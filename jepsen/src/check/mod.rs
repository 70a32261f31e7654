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

use crate::history::{Completion, Event, EventKind, Failure, Step};
use crate::op::{Cas, ErrorKind, Op, Reply};
use linearizable::{RegisterOp, TimedOp, Verdict};

/// Most search steps spent on one key before giving up on it.
pub const SEARCH_STEPS_MAX: u64 = 20_000_000;

/// One invocation and its completion.
#[derive(Debug, Clone)]
pub struct Operation<'h> {
    /// The invocation.
    pub invoke: &'h Event,
    /// The operation invoked.
    pub op: Op,
    /// The completion; `None` when the run ended first (unknown).
    pub completion: Option<&'h Event>,
}

impl Operation<'_> {
    /// How the operation ended (`Info` when it never did).
    pub fn outcome(&self) -> EventKind {
        self.completion.map_or(EventKind::Info, Event::kind)
    }

    /// How the operation ended, if it did.
    pub fn ended(&self) -> Option<Completion> {
        self.completion.and_then(Event::completion)
    }

    /// The reply of an acknowledged operation.
    pub fn acknowledged(&self) -> Option<Reply> {
        match self.ended() {
            Some(Completion::Ok(reply)) => Some(reply),
            _ => None,
        }
    }

    /// The completion's index if the operation happened or certainly did
    /// not; `None` when its outcome is unknown.
    pub fn decided_at(&self) -> Option<u64> {
        match self.outcome() {
            EventKind::Ok | EventKind::Fail => self.completion.map(|event| event.index),
            EventKind::Invoke | EventKind::Info => None,
        }
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
    /// A completion of another operation than the one invoked.
    #[error("event {index} answers another operation than process {process} invoked")]
    Mismatched {
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
        let process = event.process;
        let index = event.index;
        match event.step {
            Step::Invoke(op) => {
                if open.contains_key(&process) {
                    return Err(PairingError::Overlapping { process, index });
                }
                open.insert(process, operations.len());
                operations.push(Operation {
                    invoke: event,
                    op,
                    completion: None,
                });
            }
            Step::Ok(_) | Step::Fail(_) | Step::Info(_) => {
                let Some(position) = open.remove(&process) else {
                    return Err(PairingError::Orphan { process, index });
                };
                let operation = &mut operations[position];
                let reply = event.completion().map(Completion::reply);
                if !reply.is_some_and(|reply| operation.op.answered_by(reply)) {
                    return Err(PairingError::Mismatched { process, index });
                }
                operation.completion = Some(event);
            }
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
    /// A replica still disagrees with the cluster after healing.
    Divergence {
        /// The replica.
        replica: String,
        /// What differs.
        detail: String,
    },
    /// The cluster did not recover after healing: no final read, no
    /// leader, no acknowledged write.
    NotRecovered {
        /// What did not come back.
        detail: String,
    },
    /// A scheduled backup slot was completed more than once (the
    /// self-running workload reads every replica's audit log).
    BackupSlotTwice {
        /// The slot.
        slot: u64,
        /// Completions recorded for it.
        completions: u64,
    },
    /// A scheduled backup file does not match the checksum written beside
    /// it.
    BackupFileCorrupt {
        /// The file.
        file: String,
        /// What differs.
        detail: String,
    },
    /// A replica raised the corruption alarm in a run with no corruption.
    CorruptionAlarm {
        /// The replica.
        replica: String,
        /// Why it says it is corrupt.
        reason: String,
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

/// Turns one register operation into the search's form; `Ok(None)` drops
/// it (it certainly did not happen, or a read without a result).
fn register_op(operation: &Operation<'_>) -> Result<Option<TimedOp>, String> {
    let ended = operation.ended();
    let op = match (operation.op, ended) {
        (Op::Read | Op::Version, Some(Completion::Fail(_) | Completion::Info(_)) | None) => {
            return Ok(None);
        }
        (Op::Read, Some(Completion::Ok(Reply::Read(value)))) => RegisterOp::Read(value),
        (Op::Version, Some(Completion::Ok(Reply::Version(version)))) => {
            RegisterOp::Version(version.ok_or("version without a number")?)
        }
        (Op::Write(_), Some(Completion::Fail(_))) => return Ok(None),
        (Op::Write(value), _) => RegisterOp::Write(value),
        (Op::Cas(Cas { expected, value }), _) => {
            let wrote = match ended {
                Some(Completion::Ok(_)) => Some(true),
                // A conflict is an observation; any other failure is not.
                Some(Completion::Fail(Failure {
                    error: ErrorKind::Conflict,
                    ..
                })) => Some(false),
                Some(Completion::Fail(_)) => return Ok(None),
                Some(Completion::Info(_)) | None => None,
            };
            RegisterOp::Cas {
                expected,
                value,
                wrote,
            }
        }
        (op, ended) => return Err(format!("{op:?} is not a register operation ({ended:?})")),
    };
    Ok(Some(TimedOp {
        invoked: operation.invoke.index,
        completed: operation.decided_at(),
        op,
    }))
}

/// Checks every register key of `operations` (reads, versions, writes and
/// compare-and-sets with a key).
pub fn check_registers(operations: &[Operation<'_>], step_limit: u64) -> RegisterReport {
    let mut report = RegisterReport::default();
    let mut by_key: BTreeMap<&str, Vec<TimedOp>> = BTreeMap::new();
    for operation in operations {
        let Some(key) = operation.invoke.key.as_deref() else {
            continue;
        };
        if !matches!(
            operation.op,
            Op::Read | Op::Version | Op::Write(_) | Op::Cas(_)
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

/// Histories for the checkers' tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::history::{Completion, Event, Failure, Step};
    use crate::op::{ErrorKind, Op, Reply};

    /// A history written event by event.
    #[derive(Default)]
    pub(crate) struct History(pub(crate) Vec<Event>);

    impl History {
        fn push(&mut self, process: u64, key: Option<&str>, step: Step) {
            let index = self.0.len() as u64;
            self.0.push(Event {
                index,
                time_ns: index,
                process,
                step,
                key: key.map(str::to_owned),
                node: None,
            });
        }

        /// `process` invokes `op` on `key`.
        pub(crate) fn invoke(&mut self, process: u64, key: Option<&str>, op: Op) {
            self.push(process, key, Step::Invoke(op));
        }

        /// `process`'s operation on `key` ends.
        pub(crate) fn complete(&mut self, process: u64, key: Option<&str>, done: Completion) {
            self.push(process, key, done.into());
        }

        /// `process` invokes `op` on `key` and it ends.
        pub(crate) fn op(&mut self, process: u64, key: Option<&str>, op: Op, done: Completion) {
            self.invoke(process, key, op);
            self.complete(process, key, done);
        }
    }

    /// A failure with `reply`.
    pub(crate) fn fail(reply: Reply, error: ErrorKind) -> Completion {
        Completion::Fail(Failure { reply, error })
    }

    /// An unknown outcome with `reply`.
    pub(crate) fn info(reply: Reply) -> Completion {
        Completion::Info(Failure {
            reply,
            error: ErrorKind::Unreachable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{History, fail, info};
    use super::*;

    const K: Option<&str> = Some("k");

    #[test]
    fn pairing_refuses_overlaps_orphans_and_mismatched_replies() {
        let mut history = History::default();
        history.invoke(1, K, Op::Read);
        history.invoke(1, K, Op::Read);
        assert_eq!(
            pair(&history.0).err(),
            Some(PairingError::Overlapping {
                process: 1,
                index: 1
            })
        );
        let mut history = History::default();
        history.complete(2, K, Completion::Ok(Reply::Read(None)));
        assert!(matches!(pair(&history.0), Err(PairingError::Orphan { .. })));
        let mut history = History::default();
        history.op(3, K, Op::Write(1), Completion::Ok(Reply::Read(Some(1))));
        assert_eq!(
            pair(&history.0).err(),
            Some(PairingError::Mismatched {
                process: 3,
                index: 1
            })
        );
    }

    #[test]
    fn a_stale_read_in_a_history_is_an_anomaly() {
        let mut history = History::default();
        history.op(1, K, Op::Write(1), Completion::Ok(Reply::Write(1)));
        history.op(2, K, Op::Write(2), Completion::Ok(Reply::Write(2)));
        history.op(3, K, Op::Read, Completion::Ok(Reply::Read(Some(1))));
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
        let mut history = History::default();
        history.op(1, K, Op::Write(5), info(Reply::Write(5)));
        history.op(2, K, Op::Read, Completion::Ok(Reply::Read(Some(5))));
        // A write still open when the run ended counts as unknown too.
        history.invoke(1, K, Op::Write(6));
        let operations = pair(&history.0).expect("pairs");
        let report = check_registers(&operations, SEARCH_STEPS_MAX);
        assert!(report.anomalies.is_empty(), "{:?}", report.anomalies);
        assert_eq!(report.linearizable_keys, 1);
    }

    #[test]
    fn a_refused_cas_is_an_observation_and_other_failures_are_not() {
        let cas = Cas {
            expected: 0,
            value: 9,
        };
        // The key is empty (version 0): a conflict over version 0 is
        // impossible, a cas that failed for another reason proves nothing.
        let mut history = History::default();
        history.op(
            1,
            K,
            Op::Cas(cas),
            fail(Reply::Cas(cas), ErrorKind::NotReady),
        );
        let operations = pair(&history.0).expect("pairs");
        assert!(
            check_registers(&operations, SEARCH_STEPS_MAX)
                .anomalies
                .is_empty()
        );
        history.op(
            1,
            K,
            Op::Cas(cas),
            fail(Reply::Cas(cas), ErrorKind::Conflict),
        );
        let operations = pair(&history.0).expect("pairs");
        assert!(matches!(
            check_registers(&operations, SEARCH_STEPS_MAX).anomalies[..],
            [Anomaly::NotLinearizable { .. }]
        ));
    }

    #[test]
    fn a_version_read_without_a_number_is_malformed() {
        let mut history = History::default();
        history.op(1, K, Op::Version, Completion::Ok(Reply::Version(None)));
        let operations = pair(&history.0).expect("pairs");
        assert!(matches!(
            check_registers(&operations, SEARCH_STEPS_MAX).anomalies[..],
            [Anomaly::Malformed { index: 0, .. }]
        ));
    }
}
