//! The set workload's checker: clients add unique elements (each a new
//! secret path written once); after healing, one read lists every element
//! and the version count of each. Every acknowledged add must be there,
//! nothing may be there that nobody tried to add, and no element may have
//! more than one version (a retried add applied twice).

use std::collections::{BTreeMap, BTreeSet};

use super::{Anomaly, Operation};
use crate::history::EventKind;
use crate::op::Op;

/// Counts the set checker reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetReport {
    /// Adds acknowledged.
    pub acknowledged: usize,
    /// Adds with an unknown outcome.
    pub unknown: usize,
    /// Of the unknown adds, how many turned out applied.
    pub unknown_applied: usize,
    /// Anomalies.
    pub anomalies: Vec<Anomaly>,
}

/// Checks `operations` (adds of an element) against the final read:
/// element -> number of versions found.
pub fn check(operations: &[Operation<'_>], final_read: &BTreeMap<u64, u64>) -> SetReport {
    let mut report = SetReport::default();
    let mut attempted = BTreeSet::new();
    let mut acknowledged = BTreeSet::new();
    for operation in operations {
        let Op::Add(element) = operation.op else {
            continue;
        };
        attempted.insert(element);
        match operation.outcome() {
            EventKind::Ok => {
                acknowledged.insert(element);
            }
            EventKind::Info | EventKind::Invoke => {
                report.unknown += 1;
                if final_read.contains_key(&element) {
                    report.unknown_applied += 1;
                }
            }
            EventKind::Fail => {}
        }
    }
    report.acknowledged = acknowledged.len();
    for element in &acknowledged {
        if !final_read.contains_key(element) {
            report
                .anomalies
                .push(Anomaly::LostAdd { element: *element });
        }
    }
    for (element, versions) in final_read {
        if !attempted.contains(element) {
            report
                .anomalies
                .push(Anomaly::UnexpectedElement { element: *element });
        }
        if *versions > 1 {
            report.anomalies.push(Anomaly::DuplicatedAdd {
                element: *element,
                versions: *versions,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::pair;
    use crate::check::testing::{History, fail, info};
    use crate::history::Completion;
    use crate::op::{ErrorKind, Reply};

    fn history(adds: &[(u64, EventKind)]) -> History {
        let mut history = History::default();
        for (process, (element, outcome)) in adds.iter().enumerate() {
            let reply = Reply::Add(*element);
            let done = match outcome {
                EventKind::Ok => Completion::Ok(reply),
                EventKind::Fail => fail(reply, ErrorKind::Denied),
                EventKind::Info | EventKind::Invoke => info(reply),
            };
            history.op(process as u64, None, Op::Add(*element), done);
        }
        history
    }

    #[test]
    fn lost_unexpected_and_duplicated_elements_are_flagged() {
        let history = history(&[
            (1, EventKind::Ok),
            (2, EventKind::Ok),
            (3, EventKind::Info),
            (4, EventKind::Fail),
        ]);
        let operations = pair(&history.0).expect("pairs");
        // 2 lost, 3 applied though unknown (fine), 9 never added, 1 twice.
        let read = BTreeMap::from([(1, 2), (3, 1), (9, 1)]);
        let report = check(&operations, &read);
        assert_eq!(report.acknowledged, 2);
        assert_eq!(report.unknown_applied, 1);
        assert_eq!(
            report.anomalies,
            vec![
                Anomaly::LostAdd { element: 2 },
                Anomaly::DuplicatedAdd {
                    element: 1,
                    versions: 2
                },
                Anomaly::UnexpectedElement { element: 9 },
            ]
        );
    }

    #[test]
    fn a_clean_history_passes() {
        let history = history(&[(1, EventKind::Ok), (2, EventKind::Info)]);
        let operations = pair(&history.0).expect("pairs");
        let report = check(&operations, &BTreeMap::from([(1, 1)]));
        assert!(report.anomalies.is_empty());
    }
}
