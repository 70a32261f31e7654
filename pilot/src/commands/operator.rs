//! `spike operator`: recovery shards out and back in, plus rekey and
//! data-key rotation.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

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
    /// Automatic key rotation settings (extension).
    #[command(subcommand)]
    Rotation(RotationCommand),
}

/// `spike operator rotation`.
#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Show the settings in force and the keys' ages.
    Get,
    /// Set the replicated settings; they override every replica's
    /// SPIKE_NEXUS_DATA_KEY_* / ROOT_KEY_* / REENCRYPT_* flags from then on.
    /// Settings not given keep their current value.
    Set {
        /// Encryptions after which the data key is replaced.
        #[arg(long)]
        data_key_rotate_after_ops: Option<u64>,
        /// Age after which the data key is replaced ("0": never), e.g. 720h.
        #[arg(long, value_parser = spike_sdk::duration::parse)]
        data_key_max_age: Option<std::time::Duration>,
        /// Age after which the root key is replaced ("0": never).
        #[arg(long, value_parser = spike_sdk::duration::parse)]
        root_key_max_age: Option<std::time::Duration>,
        /// Secret versions re-sealed under the newest data key per second
        /// (0: none).
        #[arg(long)]
        reencrypt_per_second: Option<u32>,
    },
}

fn describe_rotation(state: &spike_sdk::api::RotationResponse) -> String {
    let age = |seconds: u64| {
        if seconds == 0 {
            "never".to_owned()
        } else {
            format!("{seconds}s")
        }
    };
    let settings = &state.settings;
    format!(
        "Settings ({}):\n  data key rotate after ops:  {}\n  data key max age:           {}\n  \
         root key max age:           {}\n  re-encrypt per second:      {}\n\
         Root key {} (age {}s), active data key {} (age {}s); \
         {} secret versions under older data keys.\n",
        if state.replicated {
            "replicated"
        } else {
            "flags of the answering replica"
        },
        settings.data_key_rotate_after_ops,
        age(settings.data_key_max_age_seconds),
        age(settings.root_key_max_age_seconds),
        settings.reencrypt_per_second,
        state.root_key_id,
        state.root_key_age_seconds,
        state.active_data_key_id,
        state.data_key_age_seconds,
        state.versions_under_old_keys,
    )
}

async fn rotation(nexus: &NexusClient, command: RotationCommand) -> Result<String, CliError> {
    match command {
        RotationCommand::Get => Ok(describe_rotation(&nexus.rotation().await?)),
        RotationCommand::Set {
            data_key_rotate_after_ops,
            data_key_max_age,
            root_key_max_age,
            reencrypt_per_second,
        } => {
            let whole_seconds = |age: std::time::Duration| {
                if age.subsec_nanos() == 0 {
                    Ok(age.as_secs())
                } else {
                    Err(CliError::Invalid(format!(
                        "key ages are whole seconds, not {age:?}"
                    )))
                }
            };
            let mut settings = nexus.rotation().await?.settings;
            if let Some(ops) = data_key_rotate_after_ops {
                settings.data_key_rotate_after_ops = ops;
            }
            if let Some(age) = data_key_max_age {
                settings.data_key_max_age_seconds = whole_seconds(age)?;
            }
            if let Some(age) = root_key_max_age {
                settings.root_key_max_age_seconds = whole_seconds(age)?;
            }
            if let Some(rate) = reencrypt_per_second {
                settings.reencrypt_per_second = rate;
            }
            Ok(describe_rotation(&nexus.set_rotation(settings).await?))
        }
    }
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
    write_shards_in(&dir, shares)?;
    Ok(dir)
}

/// Writes the shards into `dir`, which must be this user's own: created
/// 0700 if missing, refused if it (or its parent) is a symlink, belongs to
/// someone else, or others may write to it, as a directory another local
/// user made in /tmp would.
fn write_shards_in(dir: &Path, shares: &[KeyShare]) -> Result<(), CliError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            CliError::Invalid(format!(
                "Invalid recovery directory path: {} ({e})",
                dir.display()
            ))
        })?;
    check_private_dir(dir, false)?;
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        check_private_dir(parent, true)?;
    }
    for entry in std::fs::read_dir(dir)
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
        let mut file = create_private(&path)
            .map_err(|e| CliError::Invalid(format!("Failed to save shard {index}: {e}")))?;
        let line = Zeroizing::new(recovery_line::format(share));
        file.write_all(line.as_bytes())
            .map_err(|e| CliError::Invalid(format!("Failed to save shard {index}: {e}")))?;
    }
    Ok(())
}

/// A new file at `path`, mode 0600. `create_new` is `O_CREAT | O_EXCL`,
/// which never follows a symlink and fails on anything already there, so a
/// link planted after the old shards were removed cannot redirect a shard.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Refuses `dir` unless it is a real directory (not a symlink) owned by
/// this user (or by root, for a parent) that no one else may write to.
fn check_private_dir(dir: &Path, root_may_own: bool) -> Result<(), CliError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: String| {
        CliError::Invalid(format!(
            "Refusing recovery directory {}: {why}",
            dir.display()
        ))
    };
    let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
    if !meta.file_type().is_dir() {
        return Err(refuse("not a directory (a symlink?)".to_owned()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && !(root_may_own && meta.uid() == 0) {
        return Err(refuse(format!("owned by uid {}, not {me}", meta.uid())));
    }
    // Group or world writable, unless sticky (/tmp itself, as a parent).
    let sticky = meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !(root_may_own && sticky) {
        return Err(refuse(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
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
        OperatorCommand::Rotation(command) => rotation(nexus, command).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spike_sdk::crypto::{SecretBytes, ShareIndex};
    use std::os::unix::fs::PermissionsExt;

    fn shares() -> Vec<KeyShare> {
        (1..=2)
            .map(|index| {
                KeyShare::new(
                    ShareIndex::new(index).expect("index"),
                    SecretBytes::from_array(&mut [index; 32]),
                )
            })
            .collect()
    }

    #[test]
    fn shards_go_only_into_a_directory_of_our_own() {
        // Regression (review #16): an existing directory was used whoever
        // owned it and whatever its mode.
        let base = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let dir = base.path().join("recover");
        write_shards_in(&dir, &shares()).expect("a fresh private directory");
        let mode = std::fs::metadata(dir.join("spike.recovery.1.txt"))
            .expect("shard file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        write_shards_in(&dir, &shares()).expect("written again over the old ones");

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(write_shards_in(&dir, &shares()).is_err(), "world-writable");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");

        let elsewhere = base.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&elsewhere, &link).expect("symlink");
        assert!(
            write_shards_in(&link, &shares()).is_err(),
            "a symlinked directory"
        );

        if rustix::process::geteuid().is_root() {
            let foreign = base.path().join("foreign");
            std::fs::create_dir(&foreign).expect("mkdir");
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).expect("chown");
            assert!(
                write_shards_in(&foreign, &shares()).is_err(),
                "owned by nobody"
            );
        }
    }

    #[test]
    fn a_shard_file_never_follows_a_symlink() {
        let base = tempfile::tempdir().expect("temp dir");
        let target = base.path().join("target");
        std::fs::write(&target, "keep me").expect("write");
        let link = base.path().join("spike.recovery.1.txt");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(create_private(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "keep me");
    }
}
