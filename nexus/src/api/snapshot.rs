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
use spike_sdk::identity::Role;

use super::reply::{Answer, Reply};
use super::{ApiError, Call};
use crate::clock::now_ns;
use crate::node::Node;
use crate::raft::snapshot::{self, BackupCounts, BackupReader, BackupRecord};
use crate::raft::state_machine::{SCRATCH_EXPORT_PREFIX, SCRATCH_SUFFIX};
use crate::state::command::{Command, Request, Response, RestoreCommand};

/// The read buffer of a restore's passes over its file.
const VERIFY_BUFFER_BYTES: usize = 256 * 1024;

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
    let path = call.api.node.scratch_dir().join(format!(
        "{SCRATCH_EXPORT_PREFIX}{}{SCRATCH_SUFFIX}",
        now_ns()
    ));
    let node = call.api.node.clone();
    let exported = {
        let path = path.clone();
        crate::raft::run_blocking("write backup", move || {
            node.export_state(&path)?;
            // Open, then unlinked: the answer streams from the open file,
            // and nothing is left behind however the request ends.
            let file = std::fs::File::open(&path)?;
            let length = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, length))
        })
        .await
        .and_then(|exported| exported)
    };
    let _ = std::fs::remove_file(&path);
    let (file, length) =
        exported.map_err(|e| ApiError::Internal(format!("cannot write backup: {e}")))?;
    Ok(Reply::file(file, length))
}

async fn propose(node: &Node, command: RestoreCommand) -> Result<(), ApiError> {
    let request = Request {
        command: Command::Restore(command),
        session: None,
        time_ns: 0,
    };
    match node.write(request).await? {
        Response::Done => Ok(()),
        Response::Refused(refusal) => Err(ApiError::Internal(refusal.to_string())),
        Response::Written(_) | Response::PolicyStored(_) => {
            Err(ApiError::Internal("unexpected response".to_owned()))
        }
    }
}

/// Restore: replace everything with the uploaded backup, spooled to a
/// private file before this runs ([`super::Upload`]): checked whole in one
/// streaming pass, then proposed piece by piece reading the file again.
pub async fn restore(call: Call<'_>) -> Reply {
    if let Err(error) = call.require(Role::PilotSuperuser) {
        return Reply::failed::<SnapshotRestoreResponse>(error);
    }
    let Some(upload) = call.upload else {
        return Reply::failed::<SnapshotRestoreResponse>(ApiError::Internal(
            "the backup was not spooled".to_owned(),
        ));
    };
    // A restore is never refused half-way for the quota (the cluster
    // would be left unusable), so a backup that cannot fit is refused
    // before anything is replaced.
    let quota = call.api.node.quota().quota();
    let size = upload.size_bytes();
    if quota > 0 && size > quota {
        return Reply::failed::<SnapshotRestoreResponse>(ApiError::StorageQuota(format!(
            "storage quota exceeded: the backup is {}, more than the {} quota \
             (SPIKE_NEXUS_STORAGE_QUOTA); nothing was replaced: raise the quota to restore it",
            spike_sdk::size::display(size),
            spike_sdk::size::display(quota)
        )));
    }
    let opened = |what: &str| {
        upload.open().map_err(|e| {
            ApiError::Internal(format!("cannot read the spooled backup ({what}): {e}"))
        })
    };
    let file = match opened("verify") {
        Ok(file) => file,
        Err(error) => return Reply::failed::<SnapshotRestoreResponse>(error),
    };
    // Every record is decoded and checked before anything is replaced; a
    // refusal says why, naming the first bad record (to the superuser who
    // sent it: paths and names, never a value).
    let verified = crate::raft::run_blocking("verify backup", move || {
        let length = file.metadata()?.len();
        let input = std::io::BufReader::with_capacity(VERIFY_BUFFER_BYTES, file);
        snapshot::verify_backup(input, length)
    })
    .await
    .and_then(|verified| verified);
    let verified = match verified {
        Ok(verified) => verified,
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
    let file = match opened("restore") {
        Ok(file) => file,
        Err(error) => return Reply::failed::<SnapshotRestoreResponse>(error),
    };
    match replace_store(call, file, verified).await {
        Ok(answer) => Reply::json(&answer),
        Err(error) => Reply::failed::<SnapshotRestoreResponse>(error),
    }
}

async fn replace_store(
    call: Call<'_>,
    file: std::fs::File,
    counts: BackupCounts,
) -> Result<SnapshotRestoreResponse, ApiError> {
    let restore_id = now_ns();
    // Checked before the store is cleared: the leader would refuse the
    // custom metadata only after everything else was replaced. A new
    // cluster switches to its newest format within seconds of forming, so
    // a restore right after start waits for that.
    if counts.custom_metadata > 0 {
        wait_for_format(&call, 3).await?;
    }
    let unreadable = |e: std::io::Error| ApiError::Internal(format!("cannot read backup: {e}"));
    let length = file.metadata().map_err(unreadable)?.len();
    let reader = BackupReader::new(
        std::io::BufReader::with_capacity(VERIFY_BUFFER_BYTES, file),
        length,
    )
    .map_err(unreadable)?;
    let pieces = Pieces {
        reader: Some(reader),
        restore_id,
    };
    // Once `Begin` is proposed the store is being replaced: the proposals
    // run in a task of their own, so a client that goes away or a request
    // that times out does not leave the restore half-done.
    let node = call.api.node.clone();
    tokio::spawn(propose_pieces(node, restore_id, pieces))
        .await
        .map_err(|e| ApiError::Internal(format!("restore task: {e}")))??;
    tracing::warn!(
        secrets = counts.secrets,
        policies = counts.policies,
        "store replaced by a backup"
    );
    Ok(SnapshotRestoreResponse {
        restored: true,
        secrets: counts.secrets,
        policies: counts.policies,
        err: None,
        refused: None,
    })
}

/// Proposes `Begin`, then every piece and `Finish` as `pieces` reads them.
async fn propose_pieces(node: Node, restore_id: u64, mut pieces: Pieces) -> Result<(), ApiError> {
    let unreadable = |e: std::io::Error| ApiError::Internal(format!("cannot read backup: {e}"));
    propose(&node, RestoreCommand::Begin { restore_id }).await?;
    loop {
        let (back, commands) = crate::raft::run_blocking("read backup", move || {
            let commands = pieces.next();
            (pieces, commands)
        })
        .await
        .map_err(unreadable)?;
        pieces = back;
        let commands = commands.map_err(unreadable)?;
        if commands.is_empty() {
            return Ok(());
        }
        for command in commands {
            propose(&node, command).await?;
        }
    }
}

/// The commands of a restore after `Begin`, read from a verified backup
/// file: pieces of at most about [`RESTORE_PIECE_MAX_BYTES`] of records,
/// then `Finish`; so memory holds one piece, not the backup.
struct Pieces {
    /// `None` once `Finish` was given.
    reader: Option<BackupReader<std::io::BufReader<std::fs::File>>>,
    restore_id: u64,
}

impl Pieces {
    /// The next commands (rows, then custom metadata rows, in file order),
    /// `Finish` after the last record; none once that was given.
    fn next(&mut self) -> std::io::Result<Vec<RestoreCommand>> {
        let restore_id = self.restore_id;
        let Some(reader) = self.reader.as_mut() else {
            return Ok(Vec::new());
        };
        let (mut secrets, mut policies, mut rows, mut bytes) =
            (Vec::new(), Vec::new(), Vec::new(), 0usize);
        let last = loop {
            match reader.next_record()? {
                Some(BackupRecord::Secret(row)) => {
                    bytes += row.size_bytes;
                    secrets.push((row.key, row.record));
                }
                Some(BackupRecord::Policy(row)) => {
                    bytes += row.size_bytes;
                    policies.push((row.key, row.record));
                }
                Some(BackupRecord::CustomMetadata(row)) => {
                    bytes += row.size_bytes;
                    rows.push((row.key, row.record));
                }
                None => break true,
            }
            if bytes >= RESTORE_PIECE_MAX_BYTES {
                break false;
            }
        };
        let mut commands = Vec::new();
        // Rows before custom metadata rows: the file holds them in that
        // order, and custom metadata needs its secret restored.
        if !secrets.is_empty() || !policies.is_empty() {
            commands.push(RestoreCommand::Rows {
                restore_id,
                secrets,
                policies,
            });
        }
        if !rows.is_empty() {
            commands.push(RestoreCommand::CustomMetadataRows { restore_id, rows });
        }
        if last && let Some(reader) = self.reader.take() {
            commands.push(RestoreCommand::Finish {
                restore_id,
                cluster: Box::new(reader.into_cluster()),
            });
        }
        Ok(commands)
    }
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
