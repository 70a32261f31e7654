//! `spike snapshot` (extension): backups of the encrypted store.

use std::path::PathBuf;

use clap::Subcommand;

use spike_sdk::api::BACKUP_UNMETERED_MAX_BYTES;
use spike_sdk::client::NexusClient;

use crate::nexus::CliError;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the encrypted store (keep the recovery shards of
    /// the same root key: the backup is useless without them).
    Save {
        /// The backup file to write (mode 0600; written as FILE.partial,
        /// then renamed, so a failed save leaves FILE as it was).
        #[arg(short = 'o', long)]
        out: PathBuf,
    },
    /// Replace the whole store with a backup. Replicas then need the
    /// backup's root key (`spike operator restore` with its shards, unless
    /// the keepers still hold it).
    Restore {
        /// The backup file.
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
}

/// Runs a snapshot command; returns what to print. Backups stream to and
/// from their files, never whole in memory.
pub async fn run(nexus: &NexusClient, command: SnapshotCommand) -> Result<String, CliError> {
    match command {
        SnapshotCommand::Save { out } => {
            // Written beside its name, then renamed: a save that fails
            // half-way leaves an earlier backup at `out` as it was.
            let mut partial = out.clone().into_os_string();
            partial.push(".partial");
            let partial = PathBuf::from(partial);
            let saved = nexus
                .snapshot_save_to(&partial, BACKUP_UNMETERED_MAX_BYTES)
                .await
                .map_err(CliError::from)
                .and_then(|size| {
                    std::fs::rename(&partial, &out).map(|()| size).map_err(|e| {
                        CliError::Invalid(format!("cannot write {}: {e}", out.display()))
                    })
                });
            if saved.is_err() {
                let _ = std::fs::remove_file(&partial);
            }
            let size = saved?;
            Ok(format!(
                "Backup saved to {} ({size} bytes).\n",
                out.display()
            ))
        }
        SnapshotCommand::Restore { file } => {
            // The cluster decides how large a backup it takes.
            let restored = nexus.snapshot_restore_file(&file).await?;
            Ok(format!(
                "Store replaced by the backup: {} secrets, {} policies.\n",
                restored.secrets, restored.policies
            ))
        }
    }
}
