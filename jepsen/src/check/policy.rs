//! The policy workload's checker. One admin process alternately grants a
//! workload read access (creates a policy) and revokes it (deletes the
//! policy); readers with the workload's identity read a secret and see
//! `allowed` or `denied`. Promises:
//! - a revocation holds: a read invoked after a revoke was acknowledged,
//!   with no grant invoked since, is denied;
//! - a grant holds: a read invoked after a grant was acknowledged, with no
//!   revoke invoked since, is allowed.
//!
//! An admin operation with an unknown outcome may take effect at any later
//! time, so from its invocation on, reads are not judged against the
//! opposite state.

use super::{Anomaly, Operation};
use crate::history::EventKind;
use crate::op::{Access, Op, Reply};

/// What the policy checker counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyReport {
    /// Grants and revokes acknowledged.
    pub changes: usize,
    /// Reads judged.
    pub reads_judged: usize,
    /// Anomalies.
    pub anomalies: Vec<Anomaly>,
}

/// One admin change as the checker needs it.
struct Change {
    grant: bool,
    invoked: u64,
    /// Completion index when acknowledged; `None` if unknown or failed.
    acknowledged: Option<u64>,
    unknown: bool,
}

/// Checks `operations` (grants, revokes, and reads that were allowed or
/// denied).
pub fn check(operations: &[Operation<'_>]) -> PolicyReport {
    let mut report = PolicyReport::default();
    let changes: Vec<Change> = operations
        .iter()
        .filter_map(|op| {
            let grant = match op.op {
                Op::Grant => true,
                Op::Revoke => false,
                _ => return None,
            };
            Some(Change {
                grant,
                invoked: op.invoke.index,
                acknowledged: op
                    .acknowledged()
                    .and(op.completion.map(|completion| completion.index)),
                unknown: op.outcome() == EventKind::Info,
            })
        })
        .collect();
    report.changes = changes.iter().filter(|c| c.acknowledged.is_some()).count();
    for read in operations.iter().filter(|op| op.op == Op::ReadAcl) {
        let (Some(Reply::ReadAcl(Some(access))), Some(completion)) =
            (read.acknowledged(), read.completion)
        else {
            continue;
        };
        let allowed = access == Access::Allowed;
        // The last change acknowledged before the read began.
        let Some(last) = changes
            .iter()
            .filter(|c| c.acknowledged.is_some_and(|done| done < read.invoke.index))
            .max_by_key(|c| c.invoked)
        else {
            continue;
        };
        // Anything invoked since (or unknown before) could have moved the
        // state the other way before the read ended.
        let could_flip = changes.iter().any(|c| {
            c.grant != last.grant
                && c.invoked < completion.index
                && (c.invoked > last.invoked || c.unknown)
        });
        if could_flip {
            continue;
        }
        report.reads_judged += 1;
        if allowed != last.grant {
            report.anomalies.push(if last.grant {
                Anomaly::GrantNotHeld {
                    read_at: read.invoke.index,
                }
            } else {
                Anomaly::RevocationNotHeld {
                    read_at: read.invoke.index,
                }
            });
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

    fn read(history: &mut History, access: Access) {
        history.op(
            1,
            None,
            Op::ReadAcl,
            Completion::Ok(Reply::ReadAcl(Some(access))),
        );
    }

    #[test]
    fn a_read_allowed_after_an_acknowledged_revoke_is_flagged() {
        let mut history = History::default();
        history.op(0, None, Op::Grant, Completion::Ok(Reply::Grant));
        read(&mut history, Access::Allowed);
        history.op(0, None, Op::Revoke, Completion::Ok(Reply::Revoke));
        read(&mut history, Access::Allowed);
        let operations = pair(&history.0).expect("pairs");
        assert_eq!(
            check(&operations).anomalies,
            vec![Anomaly::RevocationNotHeld { read_at: 6 }]
        );
    }

    #[test]
    fn a_read_denied_after_an_acknowledged_grant_is_flagged() {
        let mut history = History::default();
        history.op(0, None, Op::Grant, Completion::Ok(Reply::Grant));
        read(&mut history, Access::Denied);
        let operations = pair(&history.0).expect("pairs");
        assert_eq!(
            check(&operations).anomalies,
            vec![Anomaly::GrantNotHeld { read_at: 2 }]
        );
    }

    #[test]
    fn concurrent_or_unknown_changes_excuse_either_answer() {
        let mut history = History::default();
        history.op(0, None, Op::Grant, Completion::Ok(Reply::Grant));
        // A revoke that timed out may land any time later.
        history.op(0, None, Op::Revoke, info(Reply::Revoke));
        read(&mut history, Access::Denied);
        read(&mut history, Access::Allowed);
        let operations = pair(&history.0).expect("pairs");
        assert!(check(&operations).anomalies.is_empty());
    }
}
