//! `/v1/snapshot` (extension): backups of the encrypted store. Save
//! answers the backup file's bytes (`application/octet-stream`); restore
//! takes them as its body.

use serde::{Deserialize, Serialize};

use super::ErrorCode;

/// Largest backup a restore takes (and the body limit of that route).
pub const BACKUP_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Restore's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotRestoreResponse {
    /// Whether the store was replaced.
    pub restored: bool,
    /// Secrets restored.
    pub secrets: u64,
    /// Policies restored.
    pub policies: u64,
    /// Set on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub err: Option<ErrorCode>,
    /// Why the backup was refused (400), naming its first bad record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

super::responses!(SnapshotRestoreResponse);
