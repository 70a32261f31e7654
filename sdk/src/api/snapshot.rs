//! `/v1/snapshot` (extension): backups of the encrypted store. Save
//! answers the backup file's bytes (`application/octet-stream`); restore
//! takes them as its body.

use serde::{Deserialize, Serialize};

use super::ErrorCode;

/// Largest backup a restore held in memory takes
/// (`NexusClient::snapshot_restore`), and the least a replica takes: a
/// replica takes backups up to the larger of this and its storage quota,
/// spooled to a file.
pub const BACKUP_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Largest backup a replica without a storage quota takes, and the largest
/// `spike snapshot save` writes: a fixed cap, so an upload cannot fill a
/// disk unbounded.
pub const BACKUP_UNMETERED_MAX_BYTES: u64 = 16 * 1024 * 1024 * 1024;

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
