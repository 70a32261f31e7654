//! The audit log format: one JSON object per line, each naming the hash of
//! the line before it, so an edited, removed or reordered line breaks the
//! chain and [`verify`] says where.
//!
//! Every file starts with a genesis record naming the replica (node id and
//! SPIFFE ID), the format and the root key the cluster had when the file
//! was made (`"none"` before initialization); its `prev` is the hash of
//! [`GENESIS`]. A log whose first line is anything else had its head cut
//! off, and [`verify`] says so ([`AuditError::TruncatedHead`]). After it
//! come request records (one per API request this replica received) and
//! key records (each root-key or keyring change this replica committed as
//! the leader).
//!
//! Lines record who did what to which path and how it ended; never values,
//! shares or keys. The chain is plain SHA-256: it shows accidents and
//! tampering by whoever cannot rewrite the whole file, not by whoever can.
//! Truncating the end of a log cannot be seen from the log alone: ship it
//! off the host (the writer fsyncs each record before the request is
//! answered) and compare the last sequence number with what the replica
//! reports.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest audit line a verifier reads.
pub const LINE_LEN_MAX: usize = 64 * 1024;

/// The format a genesis record names.
pub const FORMAT: &str = "spike-audit-v2";

/// What a genesis record names for a cluster without a root key.
pub const NO_ROOT_KEY: &str = "none";

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in this file, from 1 (the genesis record); restarts
    /// continue the count.
    pub seq: u64,
    /// When the record was made, RFC 3339.
    pub time: String,
    /// The replica that wrote it.
    pub node: u64,
    /// What happened (`kind` and its fields).
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hex SHA-256 of the previous line (of [`GENESIS`] for the first).
    pub prev: String,
}

/// What a record says happened, by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// The head of a file.
    Genesis(Genesis),
    /// One API request this replica received.
    Request(RequestEvent),
    /// A key change this replica committed as the leader.
    Key(KeyEvent),
    /// A scheduled backup this replica took (or failed to take) as the
    /// leader.
    Backup(BackupEvent),
}

/// The first record of every file: whose log this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    /// [`FORMAT`].
    pub format: String,
    /// The replica's SPIFFE ID.
    pub spiffe_id: String,
    /// The cluster's committed root key id when the file was made, or
    /// [`NO_ROOT_KEY`].
    pub root_key_id: String,
}

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEvent {
    /// The caller's SPIFFE ID.
    pub caller: String,
    /// The URL path.
    pub route: String,
    /// The `?action=` value, empty for none.
    pub action: String,
    /// The secret path or policy name acted on, if any (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `ok` or the SPIKE error code of what the request did (the caller
    /// was answered 503 `audit_unavailable` instead if this record could
    /// not be written at once).
    pub result: String,
    /// HTTP status of that outcome.
    pub status: u16,
    /// Time spent, in microseconds.
    pub duration_us: u64,
}

/// A key change the leader committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    /// Which change.
    pub action: KeyAction,
    /// The root key id after it.
    pub root_key_id: u64,
    /// The active data key after a rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_key: Option<u32>,
    /// Why a rotation or rekey happened (absent in records of releases
    /// that did not say, and for other changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<KeyTrigger>,
}

/// Why a key was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyTrigger {
    /// An operator asked (`spike operator rotate` or `rekey`).
    Operator,
    /// The data key reached its encryption count.
    Operations,
    /// The key reached its maximum age.
    Age,
}

/// The key changes a leader makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// The cluster's first root key.
    Initialize,
    /// A new root key (operator request, or after a restore).
    Rekey,
    /// A new data key for new writes.
    RotateDataKey,
    /// The root key rebuilt from operator shards.
    Restore,
}

/// A scheduled backup the leader took, discarded or failed to take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEvent {
    /// How it ended.
    pub outcome: BackupOutcome,
    /// The schedule slot (floor(leader time / interval)).
    pub slot: u64,
    /// When the slot starts, RFC 3339.
    pub slot_time: String,
    /// The backup file's name in the writer's backup directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The last log index the backup holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// The root key its records are sealed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_key_id: Option<u64>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why it failed or was discarded (paths and I/O errors, never data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a scheduled backup ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupOutcome {
    /// Written, verified and recorded in the replicated state.
    Completed,
    /// Written, but another leader recorded the slot first: the file was
    /// deleted.
    Discarded,
    /// Not written (or not verified): nothing kept.
    Failed,
}

/// What the first line's `prev` hashes.
pub const GENESIS: &[u8] = b"spike-audit-v1";

/// Hex SHA-256 of `bytes`.
pub fn hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The `prev` of the first line.
pub fn genesis_hash() -> String {
    hash(GENESIS)
}

/// A broken audit log, with the 1-based line where the break shows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// Reading failed.
    #[error("reading the audit log failed: {0}")]
    Io(String),
    /// The file has no line at all, not even its genesis record.
    #[error("the log is empty: its genesis record is missing")]
    Empty,
    /// The first line is not a genesis record: the head of the log was
    /// removed (or the file was cut and appended to).
    #[error(
        "line 1: the log starts mid-chain at sequence {seq}, without its genesis record: its head was cut off"
    )]
    TruncatedHead {
        /// The sequence number the file starts at.
        seq: u64,
    },
    /// A genesis record after the first line.
    #[error("line {line}: a genesis record inside the log")]
    MisplacedGenesis {
        /// The line.
        line: usize,
    },
    /// A record names another replica than the genesis record does.
    #[error("line {line}: written by node {found}, but the log is node {expected}'s")]
    ForeignNode {
        /// The line.
        line: usize,
        /// The node the line names.
        found: u64,
        /// The node of the genesis record.
        expected: u64,
    },
    /// A line is not an audit record.
    #[error("line {line}: not an audit record: {reason}")]
    Malformed {
        /// The line.
        line: usize,
        /// Why.
        reason: String,
    },
    /// A line's `prev` is not the hash of the line before it: that line was
    /// edited, or lines were removed or reordered.
    #[error("line {line}: chain broken (the line before it was edited, removed or moved)")]
    Broken {
        /// The line.
        line: usize,
    },
    /// Sequence numbers skip or go back.
    #[error("line {line}: sequence {found} where {expected} was expected")]
    Sequence {
        /// The line.
        line: usize,
        /// The sequence found.
        found: u64,
        /// The sequence expected.
        expected: u64,
    },
}

/// What an intact log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The replica that wrote it.
    pub node: u64,
    /// Its genesis record.
    pub genesis: Genesis,
    /// Records, the genesis record included.
    pub records: u64,
}

/// Checks a whole file: it starts with a genesis record that chains to
/// [`GENESIS`], every later line chains to the one before it with the next
/// sequence number, and every line is the same replica's.
pub fn verify(input: impl BufRead) -> Result<Verified, AuditError> {
    let mut head: Option<(u64, Genesis)> = None;
    let mut previous = (genesis_hash(), 0);
    let mut records = 0;
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(|e| AuditError::Io(e.to_string()))?;
        if line.len() > LINE_LEN_MAX {
            return Err(AuditError::Malformed {
                line: number,
                reason: format!("longer than {LINE_LEN_MAX} bytes"),
            });
        }
        let record: AuditRecord =
            serde_json::from_str(&line).map_err(|e| AuditError::Malformed {
                line: number,
                reason: e.to_string(),
            })?;
        match (&head, record.event) {
            (None, AuditEvent::Genesis(genesis)) => head = Some((record.node, genesis)),
            (None, _) => return Err(AuditError::TruncatedHead { seq: record.seq }),
            (Some(_), AuditEvent::Genesis(_)) => {
                return Err(AuditError::MisplacedGenesis { line: number });
            }
            (Some((node, _)), _) if record.node != *node => {
                return Err(AuditError::ForeignNode {
                    line: number,
                    found: record.node,
                    expected: *node,
                });
            }
            (Some(_), _) => {}
        }
        let (previous_hash, previous_seq) = &previous;
        if record.prev != *previous_hash {
            return Err(AuditError::Broken { line: number });
        }
        if record.seq != previous_seq + 1 {
            return Err(AuditError::Sequence {
                line: number,
                found: record.seq,
                expected: previous_seq + 1,
            });
        }
        previous = (hash(line.as_bytes()), record.seq);
        records += 1;
    }
    let (node, genesis) = head.ok_or(AuditError::Empty)?;
    Ok(Verified {
        node,
        genesis,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: u64 = 1;

    fn line(seq: u64, node: u64, event: AuditEvent, prev: &str) -> String {
        let record = AuditRecord {
            seq,
            time: "2026-11-29T00:00:00Z".to_owned(),
            node,
            event,
            prev: prev.to_owned(),
        };
        serde_json::to_string(&record).expect("serialize")
    }

    fn genesis() -> AuditEvent {
        AuditEvent::Genesis(Genesis {
            format: FORMAT.to_owned(),
            spiffe_id: "spiffe://spike.ist/spike/nexus/1".to_owned(),
            root_key_id: NO_ROOT_KEY.to_owned(),
        })
    }

    fn request(seq: u64) -> AuditEvent {
        AuditEvent::Request(RequestEvent {
            caller: "spiffe://spike.ist/spike/pilot/role/superuser".to_owned(),
            route: "/v1/store/secrets".to_owned(),
            action: "get".to_owned(),
            path: Some(format!("p/{seq}")),
            result: "ok".to_owned(),
            status: 200,
            duration_us: 10,
        })
    }

    /// A genesis record and `requests` request records, then a key record
    /// and a backup record.
    fn log(requests: u64) -> Vec<String> {
        let mut prev = genesis_hash();
        let mut lines = Vec::new();
        let mut push = |seq, event| {
            let text = line(seq, NODE, event, &prev);
            prev = hash(text.as_bytes());
            lines.push(text);
        };
        push(1, genesis());
        for seq in 2..=requests + 1 {
            push(seq, request(seq));
        }
        push(
            requests + 2,
            AuditEvent::Key(KeyEvent {
                action: KeyAction::RotateDataKey,
                root_key_id: 1,
                data_key: Some(2),
                trigger: Some(KeyTrigger::Age),
            }),
        );
        push(
            requests + 3,
            AuditEvent::Backup(BackupEvent {
                outcome: BackupOutcome::Completed,
                slot: 7,
                slot_time: "2026-11-29T00:00:14Z".to_owned(),
                file: Some("spike-backup-20261129T000014Z-i000000000012-rk1.snap".to_owned()),
                index: Some(12),
                root_key_id: Some(1),
                size_bytes: Some(300),
                sha256: Some("00".repeat(32)),
                reason: None,
            }),
        );
        lines
    }

    fn check(lines: &[String]) -> Result<u64, AuditError> {
        verify(lines.join("\n").as_bytes()).map(|verified| verified.records)
    }

    #[test]
    fn an_intact_log_verifies_and_names_its_replica() {
        let verified = verify(log(5).join("\n").as_bytes()).expect("intact");
        assert_eq!(verified.records, 8);
        assert_eq!(verified.node, NODE);
        assert_eq!(
            verified.genesis.spiffe_id,
            "spiffe://spike.ist/spike/nexus/1"
        );
        assert_eq!(verified.genesis.root_key_id, NO_ROOT_KEY);
        assert!(log(0)[0].contains(r#""kind":"genesis""#), "{}", log(0)[0]);
        assert!(
            log(0)[2].contains(r#""kind":"backup","outcome":"completed""#),
            "{}",
            log(0)[2]
        );
    }

    #[test]
    fn an_edited_line_is_found() {
        let mut lines = log(5);
        lines[2] = lines[2].replace("p/3", "p/x");
        assert_eq!(check(&lines), Err(AuditError::Broken { line: 4 }));
    }

    #[test]
    fn a_removed_line_is_found() {
        let mut lines = log(5);
        lines.remove(2);
        assert_eq!(check(&lines), Err(AuditError::Broken { line: 3 }));
    }

    #[test]
    fn reordered_lines_are_found() {
        let mut lines = log(5);
        lines.swap(2, 3);
        assert_eq!(check(&lines), Err(AuditError::Broken { line: 3 }));
    }

    #[test]
    fn a_log_that_starts_mid_chain_is_a_truncated_head() {
        let lines = log(3);
        assert_eq!(
            check(&lines[1..]),
            Err(AuditError::TruncatedHead { seq: 2 })
        );
        assert_eq!(
            check(&lines[3..]),
            Err(AuditError::TruncatedHead { seq: 4 })
        );
        assert_eq!(check(&[]), Err(AuditError::Empty));
    }

    #[test]
    fn a_forged_genesis_does_not_chain() {
        // A genesis record put in front of a cut log: its successor does
        // not chain to it.
        let lines = log(3);
        let mut forged = vec![line(1, NODE, genesis(), &genesis_hash())];
        forged.extend_from_slice(&lines[2..]);
        assert_eq!(check(&forged), Err(AuditError::Broken { line: 2 }));
        // A genesis record that does not chain to GENESIS.
        let mut other = log(3);
        other[0] = line(1, NODE, genesis(), &hash(b"other"));
        assert_eq!(check(&other), Err(AuditError::Broken { line: 1 }));
    }

    #[test]
    fn a_second_genesis_or_another_replica_is_found() {
        let mut lines = log(3);
        let prev = hash(lines[1].as_bytes());
        lines[2] = line(3, NODE, genesis(), &prev);
        assert_eq!(check(&lines), Err(AuditError::MisplacedGenesis { line: 3 }));
        let mut lines = log(3);
        let prev = hash(lines[1].as_bytes());
        lines[2] = line(3, 2, request(3), &prev);
        assert_eq!(
            check(&lines),
            Err(AuditError::ForeignNode {
                line: 3,
                found: 2,
                expected: NODE
            })
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            verify("not json\n".as_bytes()),
            Err(AuditError::Malformed { line: 1, .. })
        ));
    }
}
