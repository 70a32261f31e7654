//! The audit log format: one JSON object per line, each naming the hash of
//! the line before it, so an edited, removed or reordered line breaks the
//! chain and [`verify`] says where.
//!
//! Lines record who did what to which path and how it ended; never values,
//! shares or keys. Truncating the end of a log cannot be seen from the log
//! alone: ship it off the host (the writer fsyncs each batch) and compare
//! the last sequence number with what the replica reports.

use std::io::BufRead;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest audit line a verifier reads.
pub const LINE_LEN_MAX: usize = 64 * 1024;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in this log, from 1 (restarts continue the count).
    pub seq: u64,
    /// When the request finished, RFC 3339.
    pub time: String,
    /// The replica that served it.
    pub node: u64,
    /// The caller's SPIFFE ID.
    pub caller: String,
    /// The URL path.
    pub route: String,
    /// The `?action=` value, empty for none.
    pub action: String,
    /// The secret path or policy name acted on, if any (never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `ok` or the SPIKE error code.
    pub result: String,
    /// HTTP status.
    pub status: u16,
    /// Time spent, in microseconds.
    pub duration_us: u64,
    /// Hex SHA-256 of the previous line (of [`GENESIS`] for the first).
    pub prev: String,
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

/// Checks a whole log; returns the number of records on success.
///
/// A log may start mid-chain (after rotation); the first line is then taken
/// as given and everything after it must chain to it.
pub fn verify(input: impl BufRead) -> Result<u64, AuditError> {
    let mut previous: Option<(String, u64)> = None;
    let mut count = 0;
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
        match &previous {
            None if record.seq == 1 && record.prev != genesis_hash() => {
                return Err(AuditError::Broken { line: number });
            }
            None => {}
            Some((previous_hash, previous_seq)) => {
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
            }
        }
        previous = Some((hash(line.as_bytes()), record.seq));
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: usize) -> Vec<String> {
        let mut prev = genesis_hash();
        (1..=lines as u64)
            .map(|seq| {
                let record = AuditRecord {
                    seq,
                    time: "2026-11-29T00:00:00Z".to_owned(),
                    node: 1,
                    caller: "spiffe://spike.ist/spike/pilot/role/superuser".to_owned(),
                    route: "/v1/store/secrets".to_owned(),
                    action: "get".to_owned(),
                    path: Some(format!("p/{seq}")),
                    result: "ok".to_owned(),
                    status: 200,
                    duration_us: 10,
                    prev: prev.clone(),
                };
                let line = serde_json::to_string(&record).expect("serialize");
                prev = hash(line.as_bytes());
                line
            })
            .collect()
    }

    fn check(lines: &[String]) -> Result<u64, AuditError> {
        verify(lines.join("\n").as_bytes())
    }

    #[test]
    fn an_intact_log_verifies() {
        assert_eq!(check(&log(5)), Ok(5));
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
        lines.remove(1);
        assert_eq!(check(&lines), Err(AuditError::Broken { line: 2 }));
    }

    #[test]
    fn reordered_lines_are_found() {
        let mut lines = log(5);
        lines.swap(1, 2);
        assert_eq!(check(&lines), Err(AuditError::Broken { line: 2 }));
    }

    #[test]
    fn a_removed_first_line_is_found() {
        let lines = log(3);
        // Starting mid-chain is allowed, but seq 1 must chain to genesis.
        assert_eq!(check(&lines[1..]), Ok(2));
        let mut forged = log(3);
        forged[0] = forged[0].replace(&genesis_hash(), &hash(b"other"));
        assert_eq!(check(&forged), Err(AuditError::Broken { line: 1 }));
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            verify("not json\n".as_bytes()),
            Err(AuditError::Malformed { line: 1, .. })
        ));
    }
}
