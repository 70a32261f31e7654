//! `spike operator`: recovery shards out and back in, plus rekey and
//! data-key rotation.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

use clap::Subcommand;
use spike_sdk::client::NexusClient;
use spike_sdk::crypto::KeyShare;
use spike_sdk::crypto::recovery_line;
use zeroize::Zeroizing;

use crate::nexus::CliError;

/// Longest shard line read from stdin.
const SHARD_LINE_MAX_BYTES: usize = 4096;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Save the recovery shards (do this while SPIKE Nexus is healthy).
    Recover,
    /// Feed one recovery shard back (after a total loss); run once per shard.
    Restore,
    /// Replace the root key (extension); n and t may change.
    Rekey {
        /// Shares to make (one per keeper).
        #[arg(long)]
        shares: u8,
        /// Shares needed to rebuild the key.
        #[arg(long)]
        threshold: u8,
    },
    /// Start a new data key for new writes (extension).
    Rotate,
}

/// Where recovery files go: `$SPIKE_PILOT_RECOVERY_DIR/recover`, else
/// `~/.spike/recover`, else `/tmp/.spike-$USER/recover` (SPIKE's order).
fn recovery_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SPIKE_PILOT_RECOVERY_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("recover");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|home| !home.is_empty()) {
        return PathBuf::from(home).join(".spike").join("recover");
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "spike".to_owned());
    PathBuf::from(format!("/tmp/.spike-{user}")).join("recover")
}

fn write_shards(shares: &[KeyShare]) -> Result<PathBuf, CliError> {
    let dir = recovery_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| {
            CliError::Invalid(format!(
                "Invalid recovery directory path: {} ({e})",
                dir.display()
            ))
        })?;
    for entry in std::fs::read_dir(&dir)
        .map_err(|e| CliError::Invalid(e.to_string()))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("spike.recovery") && name.ends_with(".txt") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    for share in shares {
        if share.expose_secret().iter().all(|byte| *byte == 0) {
            return Err(CliError::Invalid("Empty shard found.".to_owned()));
        }
        let index = share.index().get();
        let path = dir.join(format!("spike.recovery.{index}.txt"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| CliError::Invalid(format!("Failed to save shard {index}: {e}")))?;
        let line = Zeroizing::new(recovery_line::format(share));
        file.write_all(line.as_bytes())
            .map_err(|e| CliError::Invalid(format!("Failed to save shard {index}: {e}")))?;
    }
    Ok(dir)
}

/// Reads one shard line: hidden from a terminal, plain from a pipe.
fn read_shard() -> Result<Zeroizing<String>, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("(your input will be hidden as you paste/type it)");
        eprint!("Enter recovery shard: ");
        let line = read_hidden_line().map_err(|e| CliError::Invalid(e.to_string()))?;
        eprintln!();
        return Ok(line);
    }
    let mut line = Zeroizing::new(String::new());
    stdin
        .lock()
        .take(SHARD_LINE_MAX_BYTES as u64)
        .read_line(&mut line)
        .map_err(|e| CliError::Invalid(e.to_string()))?;
    Ok(line)
}

/// Turns terminal echo off while one line is read, and back on after.
fn read_hidden_line() -> std::io::Result<Zeroizing<String>> {
    use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let original = tcgetattr(&stdin)?;
    let mut hidden = original.clone();
    hidden.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&stdin, OptionalActions::Now, &hidden)?;
    let mut line = Zeroizing::new(String::new());
    let read = stdin
        .lock()
        .take(SHARD_LINE_MAX_BYTES as u64)
        .read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Now, &original)?;
    read.map(|_| line)
}

/// Runs an operator command; returns what to print.
pub async fn run(nexus: &NexusClient, command: OperatorCommand) -> Result<String, CliError> {
    match command {
        OperatorCommand::Recover => {
            let shares = nexus.recover().await?;
            if shares.is_empty() {
                return Err(CliError::Invalid("No shards found.".to_owned()));
            }
            let dir = write_shards(&shares)?;
            Ok(format!(
                "\n  SPIKE Recovery shards saved to the recovery directory:\n  {}\n\n  Please make sure that:\n    1. You encrypt these shards and keep them safe.\n    2. Securely erase the shards from the\n       recovery directory after you encrypt them\n       and save them to a safe location.\n\n  If you lose these shards, you will not be able to recover\n  SPIKE Nexus in the unlikely event of a total system crash.\n\n",
                dir.display()
            ))
        }
        OperatorCommand::Restore => {
            let line = read_shard()?;
            let share =
                recovery_line::parse(&line).map_err(|e| CliError::Invalid(e.to_string()))?;
            let status = nexus.restore(&share).await?;
            if status.restored {
                return Ok("\n  SPIKE is now restored and ready to use.\n\n".to_owned());
            }
            let mut out = String::new();
            if status.progress_reset {
                out += "\n  The leader changed: shards given before are forgotten; start again.\n";
            }
            out += &format!(
                "\n  Shards collected:  {}\n  Shards remaining:  {}\n  Please run `spike operator restore` again to provide the remaining shards.\n\n",
                status.collected, status.remaining
            );
            Ok(out)
        }
        OperatorCommand::Rekey { shares, threshold } => {
            let root_key_id = nexus.rekey(shares, threshold).await?;
            Ok(format!("Root key replaced: now root key {root_key_id}.\n"))
        }
        OperatorCommand::Rotate => {
            let data_key_id = nexus.rotate_data_key().await?;
            Ok(format!(
                "Data key rotated: new writes use data key {data_key_id}.\n"
            ))
        }
    }
}
