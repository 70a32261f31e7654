//! Operations as the history records them: what a client invoked ([`Op`]:
//! its function `f` and argument `value`), what came back ([`Reply`]: the
//! same `f`, the result as `value`) and why an operation failed
//! ([`ErrorKind`]). Workloads build these and checkers match on them, so
//! the compiler holds the two together.

use serde::{Deserialize, Serialize};

/// A compare-and-set's argument: write `value` only over version
/// `expected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cas {
    /// The version the client last saw (0: the path must be absent).
    pub expected: u64,
    /// The value written.
    pub value: u64,
}

/// The version a lifecycle operation acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionNumber {
    /// The version, from 1.
    pub version: u64,
}

/// What the policy workload's readers were told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// The read was served.
    Allowed,
    /// The read was refused for want of a policy.
    Denied,
}

/// An operation as invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "kebab-case")]
pub enum Op {
    /// Register: read the current value.
    Read,
    /// Register or lifecycle: read the current version number.
    Version,
    /// Register: write a new version holding the value.
    Write(u64),
    /// Register: write only over the expected version.
    Cas(Cas),
    /// Lifecycle: write a new version holding the value.
    Put(u64),
    /// Lifecycle: read one version.
    ReadVersion(VersionNumber),
    /// Lifecycle: mark a version deleted.
    Delete(VersionNumber),
    /// Lifecycle: bring a deleted version back.
    Undelete(VersionNumber),
    /// Lifecycle: drop a version for good.
    Destroy(VersionNumber),
    /// Policy: grant the workload read access.
    Grant,
    /// Policy: revoke the workload's read access.
    Revoke,
    /// Policy: read the granted secret as the workload.
    ReadAcl,
    /// Root key: make a new root key and hand out its shares.
    Rekey,
    /// Root key: make a new data key.
    Rotate,
    /// Set or root key: write the element's own new path.
    Add(u64),
    /// Automatic rotation: set the replicated rotation settings.
    SetRotation,
}

/// What an operation's completion carries: its result when it happened,
/// the same shape (often null) when it failed or is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "kebab-case")]
pub enum Reply {
    /// The value read; null when the path has none.
    Read(Option<u64>),
    /// The current version (0 when absent); null when the read failed.
    Version(Option<u64>),
    /// The value written.
    Write(u64),
    /// The compare-and-set's argument.
    Cas(Cas),
    /// The value written.
    Put(u64),
    /// The version's value; null when it has none (or the read failed).
    ReadVersion(Option<u64>),
    /// Nothing.
    Delete,
    /// Nothing.
    Undelete,
    /// Nothing.
    Destroy,
    /// Nothing.
    Grant,
    /// Nothing.
    Revoke,
    /// Whether the read was allowed; null when it failed otherwise.
    ReadAcl(Option<Access>),
    /// The new root key's id; null when it failed.
    Rekey(Option<u64>),
    /// The new data key's id; null when it failed.
    Rotate(Option<u64>),
    /// The element added.
    Add(u64),
    /// Nothing.
    SetRotation,
}

impl Op {
    /// Whether the operation changes the cluster's state (a read does not).
    pub fn is_write(self) -> bool {
        match self {
            Self::Read | Self::Version | Self::ReadVersion(_) | Self::ReadAcl => false,
            Self::Write(_)
            | Self::Cas(_)
            | Self::Put(_)
            | Self::Delete(_)
            | Self::Undelete(_)
            | Self::Destroy(_)
            | Self::Grant
            | Self::Revoke
            | Self::Rekey
            | Self::Rotate
            | Self::Add(_)
            | Self::SetRotation => true,
        }
    }

    /// Whether `reply` answers this operation (the same `f`).
    pub fn answered_by(self, reply: Reply) -> bool {
        match self {
            Self::Read => matches!(reply, Reply::Read(_)),
            Self::Version => matches!(reply, Reply::Version(_)),
            Self::Write(_) => matches!(reply, Reply::Write(_)),
            Self::Cas(_) => matches!(reply, Reply::Cas(_)),
            Self::Put(_) => matches!(reply, Reply::Put(_)),
            Self::ReadVersion(_) => matches!(reply, Reply::ReadVersion(_)),
            Self::Delete(_) => matches!(reply, Reply::Delete),
            Self::Undelete(_) => matches!(reply, Reply::Undelete),
            Self::Destroy(_) => matches!(reply, Reply::Destroy),
            Self::Grant => matches!(reply, Reply::Grant),
            Self::Revoke => matches!(reply, Reply::Revoke),
            Self::ReadAcl => matches!(reply, Reply::ReadAcl(_)),
            Self::Rekey => matches!(reply, Reply::Rekey(_)),
            Self::Rotate => matches!(reply, Reply::Rotate(_)),
            Self::Add(_) => matches!(reply, Reply::Add(_)),
            Self::SetRotation => matches!(reply, Reply::SetRotation),
        }
    }
}

/// Why an operation failed or is unknown: the SDK's error, without its
/// free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The current version was not the expected one.
    #[error("conflict")]
    Conflict,
    /// No such secret, version or policy.
    #[error("not found")]
    NotFound,
    /// No leader or no root key yet.
    #[error("not ready")]
    NotReady,
    /// No node answered within the retry budget.
    #[error("unreachable")]
    Unreachable,
    /// The caller may not do this.
    #[error("access denied")]
    Denied,
    /// The request was malformed or out of limits.
    #[error("bad request")]
    BadRequest,
    /// The request was too large.
    #[error("request too large")]
    TooLarge,
    /// Any other answer of the server.
    #[error("server error")]
    Server,
    /// A reply of the wrong shape.
    #[error("unexpected reply")]
    Decode,
    /// The client's settings cannot work.
    #[error("invalid client settings")]
    Settings,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_keep_the_f_and_value_of_the_history_format() {
        let cases = [
            (Op::Read, json!({ "f": "read" })),
            (Op::Write(5), json!({ "f": "write", "value": 5 })),
            (
                Op::Cas(Cas {
                    expected: 1,
                    value: 9,
                }),
                json!({ "f": "cas", "value": { "expected": 1, "value": 9 } }),
            ),
            (
                Op::ReadVersion(VersionNumber { version: 2 }),
                json!({ "f": "read-version", "value": { "version": 2 } }),
            ),
            (Op::ReadAcl, json!({ "f": "read-acl" })),
            (Op::Add(7), json!({ "f": "add", "value": 7 })),
        ];
        for (op, wire) in cases {
            assert_eq!(serde_json::to_value(op).expect("serialises"), wire);
            assert_eq!(serde_json::from_value::<Op>(wire).expect("parses"), op);
        }
    }

    #[test]
    fn replies_keep_the_f_and_value_of_the_history_format() {
        let cases = [
            (Reply::Read(Some(5)), json!({ "f": "read", "value": 5 })),
            (Reply::Read(None), json!({ "f": "read", "value": null })),
            (
                Reply::ReadAcl(Some(Access::Denied)),
                json!({ "f": "read-acl", "value": "denied" }),
            ),
            (Reply::Destroy, json!({ "f": "destroy" })),
            (Reply::Rekey(Some(3)), json!({ "f": "rekey", "value": 3 })),
        ];
        for (reply, wire) in cases {
            assert_eq!(serde_json::to_value(reply).expect("serialises"), wire);
            assert_eq!(
                serde_json::from_value::<Reply>(wire).expect("parses"),
                reply
            );
        }
        // The old writer left a null value out.
        assert_eq!(
            serde_json::from_value::<Reply>(json!({ "f": "read" })).expect("parses"),
            Reply::Read(None)
        );
        assert_eq!(
            serde_json::from_value::<Reply>(json!({ "f": "delete", "value": null }))
                .expect("parses"),
            Reply::Delete
        );
    }

    #[test]
    fn an_operation_of_the_wrong_shape_does_not_parse() {
        for wire in [
            json!({ "f": "write" }),
            json!({ "f": "write", "value": -1 }),
            json!({ "f": "cas", "value": 3 }),
            json!({ "f": "frobnicate" }),
        ] {
            assert!(
                serde_json::from_value::<Op>(wire.clone()).is_err(),
                "{wire}"
            );
        }
    }

    #[test]
    fn a_reply_answers_only_its_own_operation() {
        assert!(Op::Write(1).answered_by(Reply::Write(1)));
        assert!(!Op::Write(1).answered_by(Reply::Read(Some(1))));
        assert!(!Op::Grant.answered_by(Reply::Revoke));
    }
}
