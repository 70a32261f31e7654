//! `spike snapshot` (extension): backups of the encrypted store.

use std::path::PathBuf;

use clap::Subcommand;

use spike_sdk::api::BACKUP_SIZE_MAX_BYTES;
use spike_sdk::client::NexusClient;

use crate::nexus::CliError;

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a backup of the encrypted store (keep the recovery shards of
    /// the same root key: the backup is useless without them).
    Save {
        /// The backup file to write (mode 0600).
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

/// Runs a snapshot command; returns what to print.
pub async fn run(nexus: &NexusClient, command: SnapshotCommand) -> Result<String, CliError> {
    match command {
        SnapshotCommand::Save { out } => {
            let bytes = nexus.snapshot_save().await?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&out)
                .and_then(|mut file| file.write_all(&bytes))
                .map_err(|e| CliError::Invalid(format!("cannot write {}: {e}", out.display())))?;
            Ok(format!(
                "Backup saved to {} ({} bytes).\n",
                out.display(),
                bytes.len()
            ))
        }
        SnapshotCommand::Restore { file } => {
            let size = std::fs::metadata(&file)
                .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", file.display())))?
                .len();
            if size > BACKUP_SIZE_MAX_BYTES as u64 {
                return Err(CliError::Invalid(format!(
                    "{} is over the {BACKUP_SIZE_MAX_BYTES}-byte limit",
                    file.display()
                )));
            }
            let bytes = std::fs::read(&file)
                .map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", file.display())))?;
            let restored = nexus.snapshot_restore(&bytes).await?;
            Ok(format!(
                "Store replaced by the backup: {} secrets, {} policies.\n",
                restored.secrets, restored.policies
            ))
        }
    }
}
