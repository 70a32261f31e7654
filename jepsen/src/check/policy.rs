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

/// Checks `operations` (`grant`, `revoke`, and `read-acl` completing with
/// `"allowed"` or `"denied"`).
pub fn check(operations: &[Operation<'_>]) -> PolicyReport {
    let mut report = PolicyReport::default();
    let changes: Vec<Change> = operations
        .iter()
        .filter(|op| matches!(op.invoke.f.as_str(), "grant" | "revoke"))
        .map(|op| Change {
            grant: op.invoke.f == "grant",
            invoked: op.invoke.index,
            acknowledged: (op.outcome() == EventKind::Ok)
                .then(|| op.completion.map(|c| c.index))
                .flatten(),
            unknown: matches!(op.outcome(), EventKind::Info | EventKind::Invoke),
        })
        .collect();
    report.changes = changes.iter().filter(|c| c.acknowledged.is_some()).count();
    for read in operations.iter().filter(|op| op.invoke.f == "read-acl") {
        let (EventKind::Ok, Some(completion)) = (read.outcome(), read.completion) else {
            continue;
        };
        let allowed = match completion.value.as_str() {
            Some("allowed") => true,
            Some("denied") => false,
            _ => continue,
        };
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
    use crate::history::Event;
    use serde_json::{Value, json};

    fn op(events: &mut Vec<Event>, process: u64, f: &str, kind: EventKind, result: Value) {
        for (event_kind, value) in [(EventKind::Invoke, Value::Null), (kind, result)] {
            events.push(Event {
                index: events.len() as u64,
                time_ns: 0,
                process,
                kind: event_kind,
                f: f.to_owned(),
                key: None,
                value,
                node: None,
                error: None,
            });
        }
    }

    #[test]
    fn a_read_allowed_after_an_acknowledged_revoke_is_flagged() {
        let mut events = Vec::new();
        op(&mut events, 0, "grant", EventKind::Ok, Value::Null);
        op(&mut events, 1, "read-acl", EventKind::Ok, json!("allowed"));
        op(&mut events, 0, "revoke", EventKind::Ok, Value::Null);
        op(&mut events, 1, "read-acl", EventKind::Ok, json!("allowed"));
        let operations = pair(&events).expect("pairs");
        assert_eq!(
            check(&operations).anomalies,
            vec![Anomaly::RevocationNotHeld { read_at: 6 }]
        );
    }

    #[test]
    fn a_read_denied_after_an_acknowledged_grant_is_flagged() {
        let mut events = Vec::new();
        op(&mut events, 0, "grant", EventKind::Ok, Value::Null);
        op(&mut events, 1, "read-acl", EventKind::Ok, json!("denied"));
        let operations = pair(&events).expect("pairs");
        assert_eq!(
            check(&operations).anomalies,
            vec![Anomaly::GrantNotHeld { read_at: 2 }]
        );
    }

    #[test]
    fn concurrent_or_unknown_changes_excuse_either_answer() {
        let mut events = Vec::new();
        op(&mut events, 0, "grant", EventKind::Ok, Value::Null);
        // A revoke that timed out may land any time later.
        op(&mut events, 0, "revoke", EventKind::Info, Value::Null);
        op(&mut events, 1, "read-acl", EventKind::Ok, json!("denied"));
        op(&mut events, 1, "read-acl", EventKind::Ok, json!("allowed"));
        let operations = pair(&events).expect("pairs");
        assert!(check(&operations).anomalies.is_empty());
    }
}
