//! `spike secret`: SPIKE's secret commands, plus `destroy` and `--cas`.

use clap::Subcommand;
use spike_sdk::api::{CustomMetadata, SecretMetadataResponse, SecretValues};
use spike_sdk::client::NexusClient;
use spike_sdk::domain::SecretPath;

use crate::nexus::CliError;
use crate::output::Format;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a new version of a secret: spike secret put PATH KEY=VALUE...
    Put {
        /// The secret path.
        path: SecretPath,
        /// Values as key=value (split at the first '=').
        #[arg(required = true)]
        values: Vec<String>,
        /// Write only if the current version is this one (0: only if none).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Print a secret's values, or one value.
    Get {
        /// The secret path.
        path: SecretPath,
        /// Print only this key's value.
        key: Option<String>,
        /// Version to read (0: current).
        #[arg(short, long, default_value_t = 0)]
        version: u64,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// List every secret path.
    List {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Mark versions deleted (they can be undeleted).
    Delete {
        /// The secret path.
        path: SecretPath,
        /// Comma-separated versions (0: current).
        #[arg(short, long, default_value = "0")]
        versions: String,
    },
    /// Clear deletion marks.
    Undelete {
        /// The secret path.
        path: SecretPath,
        /// Comma-separated versions (0: current).
        #[arg(short, long, default_value = "0")]
        versions: String,
    },
    /// Destroy versions for good (their values are erased; no undelete).
    Destroy {
        /// The secret path.
        path: SecretPath,
        /// Comma-separated versions (0: current).
        #[arg(short, long, default_value = "0")]
        versions: String,
    },
    /// Secret metadata.
    #[command(subcommand)]
    Metadata(MetadataCommand),
}

#[derive(Debug, Subcommand)]
pub enum MetadataCommand {
    /// Print a secret's versions and metadata (never values).
    Get {
        /// The secret path.
        path: SecretPath,
        /// Version that must exist (0: current).
        #[arg(short, long, default_value_t = 0)]
        version: u64,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Replace a secret's custom metadata: spike secret metadata put PATH
    /// KEY=VALUE... (no pairs with --clear: remove it all).
    Put {
        /// The secret path (the secret must exist).
        path: SecretPath,
        /// Pairs as key=value (split at the first '='); they replace every
        /// pair set before.
        #[arg(required_unless_present = "clear")]
        pairs: Vec<String>,
        /// Remove every pair.
        #[arg(long, conflicts_with = "pairs")]
        clear: bool,
    },
}

fn parse_versions(text: &str) -> Result<Vec<u64>, CliError> {
    let text = if text.trim().is_empty() { "0" } else { text };
    text.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.parse::<i64>()
                .map_err(|_| CliError::Invalid(format!("Invalid version number: {item}")))
                .and_then(|number| {
                    u64::try_from(number)
                        .map_err(|_| CliError::Invalid(format!("Negative version number: {item}")))
                })
        })
        .collect()
}

/// Runs a secret command; returns what to print.
pub async fn run(nexus: &NexusClient, command: SecretCommand) -> Result<String, CliError> {
    match command {
        SecretCommand::Put { path, values, cas } => {
            let mut map = SecretValues::new();
            for pair in &values {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::Invalid(format!("Invalid key-value pair: {pair}")))?;
                map.insert(key, value);
            }
            nexus.put_secret(&path, &map, cas).await?;
            Ok("OK\n".to_owned())
        }
        SecretCommand::Get {
            path,
            key,
            version,
            format,
        } => {
            let values = nexus.get_secret(&path, Some(version)).await?;
            match key {
                Some(key) => {
                    let value = values
                        .get(&key)
                        .ok_or_else(|| CliError::Invalid("Key not found.".to_owned()))?;
                    Ok(format.render(&value, |value| format!("{value}\n")))
                }
                None => Ok(format.render(&values, |values| {
                    values
                        .iter()
                        .map(|(key, value)| format!("{key}: {value}\n"))
                        .collect()
                })),
            }
        }
        SecretCommand::List { format } => {
            let keys = nexus.list_secrets().await?;
            Ok(format.render(&keys, |keys| {
                if keys.is_empty() {
                    "No secrets found.\n".to_owned()
                } else {
                    keys.iter().map(|key| format!("- {key}\n")).collect()
                }
            }))
        }
        SecretCommand::Delete { path, versions } => {
            nexus
                .delete_secret(&path, &parse_versions(&versions)?)
                .await?;
            Ok("OK\n".to_owned())
        }
        SecretCommand::Undelete { path, versions } => {
            nexus
                .undelete_secret(&path, &parse_versions(&versions)?)
                .await?;
            Ok("OK\n".to_owned())
        }
        SecretCommand::Destroy { path, versions } => {
            nexus
                .destroy_secret(&path, &parse_versions(&versions)?)
                .await?;
            Ok("OK\n".to_owned())
        }
        SecretCommand::Metadata(MetadataCommand::Get {
            path,
            version,
            format,
        }) => {
            let metadata = nexus.secret_metadata(&path, Some(version)).await?;
            Ok(format.render(&metadata, human_metadata))
        }
        SecretCommand::Metadata(MetadataCommand::Put { path, pairs, .. }) => {
            let mut custom = CustomMetadata::default();
            for pair in &pairs {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::Invalid(format!("Invalid key-value pair: {pair}")))?;
                custom.0.insert(key.to_owned(), value.to_owned());
            }
            custom.check().map_err(CliError::Invalid)?;
            nexus.put_secret_metadata(&path, custom).await?;
            Ok("OK\n".to_owned())
        }
    }
}

fn human_metadata(answer: &SecretMetadataResponse) -> String {
    let line = "-".repeat(50);
    let meta = &answer.metadata;
    let mut out = format!(
        "\nMetadata:\n{line}\nCurrent Version : {}\nOldest Version  : {}\nCreated Time    : {}\nLast Updated    : {}\nMax Versions    : {}\n{line}\n",
        meta.current_version,
        meta.oldest_version,
        meta.created_time,
        meta.updated_time,
        meta.max_versions,
    );
    if !answer.custom_metadata.is_empty() {
        out += &format!("\nCustom Metadata:\n{line}\n");
        for (key, value) in &answer.custom_metadata.0 {
            out += &format!("{key} : {value}\n");
        }
        out += &format!("{line}\n");
    }
    if !answer.versions.is_empty() {
        out += &format!("\nSecret Versions:\n{line}\n");
        for (number, version) in &answer.versions {
            out += &format!("Version {number}:\n  Created: {}\n", version.created_time);
            if let Some(deleted) = version.deleted_time {
                out += &format!("  Deleted: {deleted}\n");
            }
            if version.destroyed {
                out += "  Destroyed\n";
            }
            out += &format!("{line}\n");
        }
    }
    out
}
