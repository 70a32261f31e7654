//! `spike secret`: SPIKE's secret commands, plus `destroy` and `--cas`.

use clap::Subcommand;
use serde_json::{Map, Value, json};

use crate::nexus::{CliError, Nexus};
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a new version of a secret: spike secret put PATH KEY=VALUE...
    Put {
        /// The secret path.
        path: String,
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
        path: String,
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
        path: String,
        /// Comma-separated versions (0: current).
        #[arg(short, long, default_value = "0")]
        versions: String,
    },
    /// Clear deletion marks.
    Undelete {
        /// The secret path.
        path: String,
        /// Comma-separated versions (0: current).
        #[arg(short, long, default_value = "0")]
        versions: String,
    },
    /// Destroy versions for good (their values are erased; no undelete).
    Destroy {
        /// The secret path.
        path: String,
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
        path: String,
        /// Version that must exist (0: current).
        #[arg(short, long, default_value_t = 0)]
        version: u64,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
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
pub async fn run(nexus: &Nexus, command: SecretCommand) -> Result<String, CliError> {
    match command {
        SecretCommand::Put { path, values, cas } => {
            let mut map = Map::new();
            for pair in &values {
                let (key, value) = pair
                    .split_once('=')
                    .ok_or_else(|| CliError::Invalid(format!("Invalid key-value pair: {pair}")))?;
                map.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            let mut body = json!({ "path": path, "values": map });
            if let Some(cas) = cas {
                body["cas"] = json!(cas);
            }
            nexus.call("/v1/store/secrets", &body).await?;
            Ok("OK\n".to_owned())
        }
        SecretCommand::Get {
            path,
            key,
            version,
            format,
        } => {
            let reply = nexus
                .call(
                    "/v1/store/secrets?action=get",
                    &json!({ "path": path, "version": version }),
                )
                .await?;
            let data = reply["data"].as_object().cloned().unwrap_or_default();
            match key {
                Some(key) => {
                    let value = data
                        .get(&key)
                        .ok_or_else(|| CliError::Invalid("Key not found.".to_owned()))?;
                    Ok(match format {
                        Format::Human => format!("{}\n", value.as_str().unwrap_or_default()),
                        Format::Json => output::json(value),
                        Format::Yaml => output::yaml(value),
                    })
                }
                None => Ok(match format {
                    Format::Human => data
                        .iter()
                        .map(|(key, value)| {
                            format!("{key}: {}\n", value.as_str().unwrap_or_default())
                        })
                        .collect(),
                    Format::Json => output::json(&Value::Object(data)),
                    Format::Yaml => output::yaml(&Value::Object(data)),
                }),
            }
        }
        SecretCommand::List { format } => {
            let reply = match nexus
                .call("/v1/store/secrets?action=list", &json!({}))
                .await
            {
                Err(CliError::Api { status: 404, .. }) => json!({ "keys": [] }),
                other => other?,
            };
            let keys = reply["keys"].as_array().cloned().unwrap_or_default();
            Ok(match format {
                Format::Human if keys.is_empty() => "No secrets found.\n".to_owned(),
                Format::Human => keys
                    .iter()
                    .map(|key| format!("- {}\n", key.as_str().unwrap_or_default()))
                    .collect(),
                Format::Json => output::json(&Value::Array(keys)),
                Format::Yaml => output::yaml(&Value::Array(keys)),
            })
        }
        SecretCommand::Delete { path, versions } => {
            versions_command(nexus, "delete", &path, &versions).await
        }
        SecretCommand::Undelete { path, versions } => {
            versions_command(nexus, "undelete", &path, &versions).await
        }
        SecretCommand::Destroy { path, versions } => {
            versions_command(nexus, "destroy", &path, &versions).await
        }
        SecretCommand::Metadata(MetadataCommand::Get {
            path,
            version,
            format,
        }) => {
            let reply = nexus
                .call(
                    "/v1/store/secrets/metadata?action=get",
                    &json!({ "path": path, "version": version }),
                )
                .await?;
            Ok(match format {
                Format::Json => output::json(&reply),
                Format::Yaml => output::yaml(&reply),
                Format::Human => human_metadata(&reply),
            })
        }
    }
}

async fn versions_command(
    nexus: &Nexus,
    action: &str,
    path: &str,
    versions: &str,
) -> Result<String, CliError> {
    let versions = parse_versions(versions)?;
    nexus
        .call(
            &format!("/v1/store/secrets?action={action}"),
            &json!({ "path": path, "versions": versions }),
        )
        .await?;
    Ok("OK\n".to_owned())
}

fn human_metadata(reply: &Value) -> String {
    let line = "-".repeat(50);
    let meta = &reply["metadata"];
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = format!(
        "\nMetadata:\n{line}\nCurrent Version : {}\nOldest Version  : {}\nCreated Time    : {}\nLast Updated    : {}\nMax Versions    : {}\n{line}\n",
        text(&meta["currentVersion"]),
        text(&meta["oldestVersion"]),
        text(&meta["createdTime"]),
        text(&meta["updatedTime"]),
        text(&meta["maxVersions"]),
    );
    if let Some(versions) = reply["versions"]
        .as_object()
        .filter(|versions| !versions.is_empty())
    {
        out += &format!("\nSecret Versions:\n{line}\n");
        let mut numbers: Vec<(&String, &Value)> = versions.iter().collect();
        numbers.sort_by_key(|(number, _)| number.parse::<u64>().unwrap_or(0));
        for (number, version) in numbers {
            out += &format!(
                "Version {number}:\n  Created: {}\n",
                text(&version["createdTime"])
            );
            if !version["deletedTime"].is_null() {
                out += &format!("  Deleted: {}\n", text(&version["deletedTime"]));
            }
            if version["destroyed"] == true {
                out += "  Destroyed\n";
            }
            out += &format!("{line}\n");
        }
    }
    out
}
