//! The lifecycle workload's checker: clients write versions, delete,
//! undelete and destroy them, and read specific versions. Two promises:
//! - a destroyed version never comes back: once a destroy of version v
//!   completed, no read of v invoked afterwards returns a value;
//! - a version never changes content: every read of (key, v) that returns a
//!   value returns the same one.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{Anomaly, Operation};
use crate::history::EventKind;

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

fn version_of(value: &Value) -> Option<u64> {
    value["version"].as_u64()
}

/// Checks `operations` of the lifecycle workload (`destroy` and
/// `read-version`, each with `{"version": v}` as argument; reads complete
/// with the value or null).
pub fn check(operations: &[Operation<'_>]) -> LifecycleReport {
    let mut report = LifecycleReport::default();
    // (key, version) -> when its destroy completed (event index).
    let mut destroyed: BTreeMap<(String, u64), u64> = BTreeMap::new();
    for op in operations {
        if op.invoke.f != "destroy" || op.outcome() != EventKind::Ok {
            continue;
        }
        let (Some(key), Some(version), Some(done)) = (
            op.invoke.key.clone(),
            version_of(&op.invoke.value),
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
        if op.invoke.f != "read-version" || op.outcome() != EventKind::Ok {
            continue;
        }
        let (Some(key), Some(version), Some(completion)) = (
            op.invoke.key.clone(),
            version_of(&op.invoke.value),
            op.completion,
        ) else {
            continue;
        };
        let Some(value) = completion.value.as_u64() else {
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
    use crate::history::Event;
    use serde_json::json;

    fn op(events: &mut Vec<Event>, f: &str, version: u64, kind: EventKind, result: Value) {
        for (event_kind, value) in [
            (EventKind::Invoke, json!({ "version": version })),
            (kind, result),
        ] {
            events.push(Event {
                index: events.len() as u64,
                time_ns: 0,
                process: 1,
                kind: event_kind,
                f: f.to_owned(),
                key: Some("k".to_owned()),
                value,
                node: None,
                error: None,
            });
        }
    }

    #[test]
    fn a_destroyed_version_that_comes_back_is_flagged() {
        let mut events = Vec::new();
        op(&mut events, "read-version", 1, EventKind::Ok, json!(7));
        op(&mut events, "destroy", 1, EventKind::Ok, Value::Null);
        op(&mut events, "read-version", 1, EventKind::Ok, Value::Null);
        op(&mut events, "read-version", 1, EventKind::Ok, json!(7));
        let operations = pair(&events).expect("pairs");
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
        let mut events = Vec::new();
        op(&mut events, "read-version", 2, EventKind::Ok, json!(7));
        op(&mut events, "read-version", 2, EventKind::Ok, json!(8));
        let operations = pair(&events).expect("pairs");
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
        let mut events = Vec::new();
        op(&mut events, "destroy", 1, EventKind::Info, Value::Null);
        op(&mut events, "read-version", 1, EventKind::Ok, json!(7));
        let operations = pair(&events).expect("pairs");
        assert!(check(&operations).anomalies.is_empty());
    }
}
