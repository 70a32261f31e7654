//! The lifecycle workload's checker: clients write versions, delete,
//! undelete and destroy them, and read specific versions. Two promises:
//! - a destroyed version never comes back: once a destroy of version v
//!   completed, no read of v invoked afterwards returns a value;
//! - a version never changes content: every read of (key, v) that returns a
//!   value returns the same one.

use std::collections::BTreeMap;

use super::{Anomaly, Operation};
use crate::op::{Op, Reply, VersionNumber};

/// What the lifecycle checker counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleReport {
    /// Destroys acknowledged.
    pub destroyed: usize,
    /// Version reads that returned a value.
    pub reads_with_value: usize,
    /// Anomalies.
    pub anomalies: Vec<Anomaly>,
}

/// Checks `operations` of the lifecycle workload (destroys and reads of
/// one version each; a read completes with the value or null).
pub fn check(operations: &[Operation<'_>]) -> LifecycleReport {
    let mut report = LifecycleReport::default();
    // (key, version) -> when its destroy completed (event index).
    let mut destroyed: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for op in operations {
        let Op::Destroy(VersionNumber { version }) = op.op else {
            continue;
        };
        let (Some(key), Some(_), Some(done)) = (
            op.invoke.key.clone(),
            op.acknowledged(),
            op.completion.map(|c| c.index),
        ) else {
            continue;
        };
        report.destroyed += 1;
        let earliest = destroyed.entry((key, version)).or_insert(done);
        *earliest = (*earliest).min(done);
    }
    let mut contents: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for op in operations {
        let Op::ReadVersion(VersionNumber { version }) = op.op else {
            continue;
        };
        let (Some(key), Some(Reply::ReadVersion(Some(value)))) =
            (op.invoke.key.clone(), op.acknowledged())
        else {
            continue;
        };
        report.reads_with_value += 1;
        if let Some(done) = destroyed.get(&(key.clone(), version))
            && op.invoke.index > *done
        {
            report.anomalies.push(Anomaly::DestroyedVersionReturned {
                key: key.clone(),
                version,
                read_at: op.invoke.index,
            });
        }
        match contents.get(&(key.clone(), version)) {
            Some((first, _)) if *first != value => {
                report.anomalies.push(Anomaly::VersionChanged {
                    key,
                    version,
                    read_at: op.invoke.index,
                });
            }
            Some(_) => {}
            None => {
                contents.insert((key, version), (value, op.invoke.index));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::pair;
    use crate::check::testing::{History, info};
    use crate::history::Completion;

    const K: Option<&str> = Some("k");

    fn read(history: &mut History, version: u64, value: Option<u64>) {
        history.op(
            1,
            K,
            Op::ReadVersion(VersionNumber { version }),
            Completion::Ok(Reply::ReadVersion(value)),
        );
    }

    fn destroy(version: u64) -> Op {
        Op::Destroy(VersionNumber { version })
    }

    #[test]
    fn a_destroyed_version_that_comes_back_is_flagged() {
        let mut history = History::default();
        read(&mut history, 1, Some(7));
        history.op(1, K, destroy(1), Completion::Ok(Reply::Destroy));
        read(&mut history, 1, None);
        read(&mut history, 1, Some(7));
        let operations = pair(&history.0).expect("pairs");
        let report = check(&operations);
        assert_eq!(
            report.anomalies,
            vec![Anomaly::DestroyedVersionReturned {
                key: "k".to_owned(),
                version: 1,
                read_at: 6
            }]
        );
    }

    #[test]
    fn a_version_whose_content_changes_is_flagged() {
        let mut history = History::default();
        read(&mut history, 2, Some(7));
        read(&mut history, 2, Some(8));
        let operations = pair(&history.0).expect("pairs");
        assert_eq!(
            check(&operations).anomalies,
            vec![Anomaly::VersionChanged {
                key: "k".to_owned(),
                version: 2,
                read_at: 2
            }]
        );
    }

    #[test]
    fn an_unknown_destroy_proves_nothing() {
        let mut history = History::default();
        history.op(1, K, destroy(1), info(Reply::Destroy));
        read(&mut history, 1, Some(7));
        let operations = pair(&history.0).expect("pairs");
        assert!(check(&operations).anomalies.is_empty());
    }
}
