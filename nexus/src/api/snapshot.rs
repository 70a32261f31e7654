//! `/v1/snapshot` (extension): backups of the encrypted store.
//!
//! `save` returns a consistent copy of the replicated state as it stands
//! after everything committed so far (the snapshot file format: ciphertext
//! and public metadata only; useless without the recovery shards of its
//! root key). `restore` replaces the whole store with a backup, through
//! Raft, in bounded pieces; afterwards the replicas need the backup's root
//! key, from the keepers if it is the current one, otherwise from an
//! operator restore with the backup's recovery shards.

use spike_sdk::api::{ApiResponse, EmptyResponse, ErrorCode, SnapshotRestoreResponse};
use spike_sdk::domain::{PolicyName, SecretPath};
use spike_sdk::identity::Role;

use super::reply::{Answer, Reply};
use super::{ApiError, Call};
use crate::clock::now_ns;
use crate::raft::snapshot::{self, Backup, BackupRow};
use crate::state::command::{Command, Request, Response, RestoreCommand};
use crate::state::secret::SecretRecord;
use crate::state::store::PolicyRecord;

/// Most record bytes proposed in one log entry during a restore.
const RESTORE_PIECE_MAX_BYTES: usize = 512 * 1024;

/// Save: the store as a backup file.
pub async fn save(call: Call<'_>) -> Reply {
    backup(call)
        .await
        .unwrap_or_else(Reply::failed::<EmptyResponse>)
}

async fn backup(call: Call<'_>) -> Result<Reply, ApiError> {
    call.require(Role::PilotSuperuser)?;
    call.api.node.linearize().await?;
    let dir = tempfile_dir(&call)?;
    let path = dir.join(format!("backup-{}.tmp", now_ns()));
    let bytes = call
        .api
        .node
        .export_state(&path)
        .map_err(|e| ApiError::Internal(format!("cannot write backup: {e}")));
    let _ = std::fs::remove_file(&path);
    Ok(Reply::stream(bytes?))
}

fn tempfile_dir(call: &Call<'_>) -> Result<std::path::PathBuf, ApiError> {
    Ok(call.api.node.scratch_dir())
}

async fn propose(call: &Call<'_>, command: RestoreCommand) -> Result<(), ApiError> {
    let request = Request {
        command: Command::Restore(command),
        session: None,
        time_ns: 0,
    };
    match call.api.node.write(request).await? {
        Response::Done => Ok(()),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        Response::Written(_) | Response::PolicyStored(_) => {
            Err(ApiError::Internal("unexpected response".to_owned()))
        }
    }
}

/// Restore: replace everything with the uploaded backup.
pub async fn restore(call: Call<'_>) -> Reply {
    if let Err(error) = call.require(Role::PilotSuperuser) {
        return Reply::failed::<SnapshotRestoreResponse>(error);
    }
    // A restore is never refused half-way for the quota (the cluster
    // would be left unusable), so a backup that cannot fit is refused
    // before anything is replaced.
    let quota = call.api.node.quota().quota();
    let size = u64::try_from(call.body.len()).unwrap_or(u64::MAX);
    if quota > 0 && size > quota {
        return Reply::failed::<SnapshotRestoreResponse>(ApiError::StorageQuota(format!(
            "storage quota exceeded: the backup is {}, more than the {} quota \
             (SPIKE_NEXUS_STORAGE_QUOTA); nothing was replaced: raise the quota to restore it",
            spike_sdk::size::display(size),
            spike_sdk::size::display(quota)
        )));
    }
    // Every record is decoded and checked before anything is replaced; a
    // refusal says why, naming the first bad record (to the superuser who
    // sent it: paths and names, never a value).
    let backup = match snapshot::read_backup(call.body) {
        Ok(backup) => backup,
        Err(error) => {
            tracing::info!(%error, "backup refused");
            let mut reply = Reply::failed::<SnapshotRestoreResponse>(ApiError::BAD_REQUEST);
            reply.answer = Answer::Json(
                serde_json::to_vec(&SnapshotRestoreResponse {
                    refused: Some(error.to_string()),
                    ..SnapshotRestoreResponse::failed(ErrorCode::BadRequest)
                })
                .unwrap_or_default(),
            );
            return reply;
        }
    };
    match replace_store(call, backup).await {
        Ok(answer) => Reply::json(&answer),
        Err(error) => Reply::failed::<SnapshotRestoreResponse>(error),
    }
}

async fn replace_store(
    call: Call<'_>,
    backup: Backup,
) -> Result<SnapshotRestoreResponse, ApiError> {
    let restore_id = now_ns();
    let (secrets, policies) = (backup.secrets.len(), backup.policies.len());
    // Checked before the store is cleared: the leader would refuse the
    // custom metadata only after everything else was replaced. A new
    // cluster switches to its newest format within seconds of forming, so
    // a restore right after start waits for that.
    if !backup.custom_metadata.is_empty() {
        wait_for_format(&call, 3).await?;
    }
    propose(&call, RestoreCommand::Begin { restore_id }).await?;
    let mut piece = (Vec::new(), Vec::new(), 0usize);
    let rows = backup
        .secrets
        .into_iter()
        .map(Row::Secret)
        .chain(backup.policies.into_iter().map(Row::Policy));
    for row in rows {
        piece.2 += match row {
            Row::Secret(BackupRow {
                key,
                record,
                size_bytes,
            }) => {
                piece.0.push((key, record));
                size_bytes
            }
            Row::Policy(BackupRow {
                key,
                record,
                size_bytes,
            }) => {
                piece.1.push((key, record));
                size_bytes
            }
        };
        if piece.2 >= RESTORE_PIECE_MAX_BYTES {
            let (secrets, policies, _) = std::mem::take(&mut piece);
            propose(
                &call,
                RestoreCommand::Rows {
                    restore_id,
                    secrets,
                    policies,
                },
            )
            .await?;
        }
    }
    let (secrets_left, policies_left, _) = piece;
    if !secrets_left.is_empty() || !policies_left.is_empty() {
        propose(
            &call,
            RestoreCommand::Rows {
                restore_id,
                secrets: secrets_left,
                policies: policies_left,
            },
        )
        .await?;
    }
    let mut rows = Vec::new();
    let mut piece_bytes = 0;
    for row in backup.custom_metadata {
        piece_bytes += row.size_bytes;
        rows.push((row.key, row.record));
        if piece_bytes >= RESTORE_PIECE_MAX_BYTES {
            piece_bytes = 0;
            let rows = std::mem::take(&mut rows);
            propose(
                &call,
                RestoreCommand::CustomMetadataRows { restore_id, rows },
            )
            .await?;
        }
    }
    if !rows.is_empty() {
        propose(
            &call,
            RestoreCommand::CustomMetadataRows { restore_id, rows },
        )
        .await?;
    }
    propose(
        &call,
        RestoreCommand::Finish {
            restore_id,
            cluster: Box::new(backup.cluster),
        },
    )
    .await?;
    tracing::warn!(secrets, policies, "store replaced by a backup");
    Ok(SnapshotRestoreResponse {
        restored: true,
        secrets: secrets as u64,
        policies: policies as u64,
        err: None,
        refused: None,
    })
}

/// Longest a restore waits for the cluster to write the format its backup
/// needs.
const FORMAT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (up to [`FORMAT_WAIT`]) until this replica has applied the
/// cluster's switch to `format` or a newer one.
async fn wait_for_format(call: &Call<'_>, format: u32) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + FORMAT_WAIT;
    loop {
        let cluster_format = call
            .api
            .node
            .state
            .cluster_format()
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if cluster_format >= format {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Unavailable(format!(
                "the backup needs on-disk format {format} and the cluster writes format {cluster_format}: finish the upgrade first"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A backup record on its way into a restore piece.
enum Row {
    Secret(BackupRow<SecretPath, SecretRecord>),
    Policy(BackupRow<PolicyName, PolicyRecord>),
}
