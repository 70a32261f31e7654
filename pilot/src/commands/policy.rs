//! `spike policy`: SPIKE's policy commands.

use std::io::BufRead;

use clap::{Args, Subcommand};
use serde_json::Value;
use spike_sdk::api::{ListPoliciesRequest, Policy};
use spike_sdk::client::NexusClient;
use spike_sdk::domain::{Permission, PolicyName, PolicyRef};

use crate::nexus::CliError;
use crate::output::Format;

#[derive(Debug, Args)]
pub struct PolicyFields {
    /// Policy name.
    #[arg(long)]
    name: Option<String>,
    /// Resource path regexp pattern, e.g. '^secrets/.*$'.
    #[arg(long)]
    path_pattern: Option<String>,
    /// SPIFFE ID regexp pattern, e.g. '^spiffe://example\.org/service/.*$'.
    #[arg(long)]
    spiffeid_pattern: Option<String>,
    /// Comma-separated permissions: read, write, list, execute, super.
    #[arg(long)]
    permissions: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create a policy (refused if the name exists).
    Create(PolicyFields),
    /// Create or replace a policy, from flags or a YAML/JSON file.
    Apply {
        #[command(flatten)]
        fields: PolicyFields,
        /// File with name, spiffeidPattern, pathPattern and permissions.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// List policies, optionally those with exactly this pattern.
    List {
        /// Only policies with exactly this path pattern.
        #[arg(long, conflicts_with = "spiffeid_pattern")]
        path_pattern: Option<String>,
        /// Only policies with exactly this SPIFFE ID pattern.
        #[arg(long)]
        spiffeid_pattern: Option<String>,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Print one policy.
    Get {
        /// The policy's id or name.
        policy_name: Option<String>,
        /// The policy's name (alternative to the argument).
        #[arg(long)]
        name: Option<String>,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Delete a policy (asks for confirmation unless --yes).
    Delete {
        /// The policy's id or name.
        policy_name: Option<String>,
        /// The policy's name (alternative to the argument).
        #[arg(long)]
        name: Option<String>,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

/// A policy as the operator gives it, checked before anything is sent.
struct PolicySpec {
    name: PolicyName,
    spiffeid_pattern: String,
    path_pattern: String,
    permissions: Vec<Permission>,
}

fn permissions(text: &str) -> Result<Vec<Permission>, CliError> {
    let list: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect();
    if list.is_empty() {
        return Err(CliError::Invalid(
            "no valid permissions specified. valid permissions are: read, write, list, execute, super".to_owned(),
        ));
    }
    list.into_iter()
        .map(|item| {
            item.parse().map_err(|_| {
                CliError::Invalid(format!(
                    "invalid permission: '{item}'. valid permissions: 'read, write, list, execute, super'"
                ))
            })
        })
        .collect()
}

fn policy_name(text: &str) -> Result<PolicyName, CliError> {
    text.parse()
        .map_err(|e: spike_sdk::domain::InvalidValue| CliError::Invalid(e.to_string()))
}

fn spec_from_fields(fields: &PolicyFields) -> Result<PolicySpec, CliError> {
    let missing: Vec<String> = [
        ("name", fields.name.is_none()),
        ("path-pattern", fields.path_pattern.is_none()),
        ("spiffeid-pattern", fields.spiffeid_pattern.is_none()),
        ("permissions", fields.permissions.is_none()),
    ]
    .into_iter()
    .filter(|(_, absent)| *absent)
    .map(|(flag, _)| format!("  --{flag} is missing"))
    .collect();
    if !missing.is_empty() {
        return Err(CliError::Invalid(format!(
            "All flags are required.\n{}",
            missing.join("\n")
        )));
    }
    Ok(PolicySpec {
        name: policy_name(fields.name.as_deref().unwrap_or_default())?,
        spiffeid_pattern: fields.spiffeid_pattern.clone().unwrap_or_default(),
        path_pattern: fields.path_pattern.clone().unwrap_or_default(),
        permissions: permissions(fields.permissions.as_deref().unwrap_or_default())?,
    })
}

/// A policy file's fields (SPIKE's `PolicySpec`): permissions as a list or
/// as one comma-separated string.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyFile {
    #[serde(default)]
    name: String,
    #[serde(default)]
    spiffeid_pattern: String,
    #[serde(default)]
    path_pattern: String,
    #[serde(default)]
    permissions: PermissionList,
}

#[derive(Default, serde::Deserialize)]
#[serde(untagged)]
enum PermissionList {
    #[default]
    None,
    List(Vec<String>),
    Text(String),
}

/// Reads a policy file: JSON, or the YAML subset SPIKE's files use
/// (`key: value` lines and a `permissions` list).
fn spec_from_file(path: &std::path::Path) -> Result<PolicySpec, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Invalid(format!("cannot read policy file {}: {e}", path.display()))
    })?;
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(&text)
            .map_err(|e| CliError::Invalid(format!("policy file is not JSON: {e}")))?
    } else {
        parse_yaml_policy(&text)?
    };
    let file: PolicyFile = serde_json::from_value(parsed)
        .map_err(|e| CliError::Invalid(format!("policy file: {e}")))?;
    let listed = match file.permissions {
        PermissionList::None => String::new(),
        PermissionList::List(items) => items.join(","),
        PermissionList::Text(text) => text,
    };
    for (field, empty) in [
        ("name", file.name.is_empty()),
        ("spiffeidPattern", file.spiffeid_pattern.is_empty()),
        ("pathPattern", file.path_pattern.is_empty()),
        ("permissions", listed.trim().is_empty()),
    ] {
        if empty {
            return Err(CliError::Invalid(format!(
                "{field} is required in the policy file"
            )));
        }
    }
    Ok(PolicySpec {
        name: policy_name(&file.name)?,
        spiffeid_pattern: file.spiffeid_pattern,
        path_pattern: file.path_pattern,
        permissions: permissions(&listed)?,
    })
}

fn unquote(text: &str) -> String {
    let text = text.trim();
    if text.len() >= 2
        && ((text.starts_with('"') && text.ends_with('"'))
            || (text.starts_with('\'') && text.ends_with('\'')))
    {
        if text.starts_with('"')
            && let Ok(Value::String(inner)) = serde_json::from_str(text)
        {
            return inner;
        }
        return text[1..text.len() - 1].to_owned();
    }
    text.to_owned()
}

fn parse_yaml_policy(text: &str) -> Result<Value, CliError> {
    let mut object = serde_json::Map::new();
    let mut list_key: Option<String> = None;
    for raw in text.lines() {
        let line = raw.trim_end();
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if let Some(item) = line.trim_start().strip_prefix("- ") {
            let key = list_key
                .as_ref()
                .ok_or_else(|| CliError::Invalid(format!("unexpected list item: {line}")))?;
            if let Some(Value::Array(items)) = object.get_mut(key) {
                items.push(Value::String(unquote(item)));
            }
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| CliError::Invalid(format!("not a 'key: value' line: {line}")))?;
        let key = key.trim().to_owned();
        let value = value.trim();
        if value.is_empty() {
            object.insert(key.clone(), Value::Array(Vec::new()));
            list_key = Some(key);
        } else if let Some(inner) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            let items = inner
                .split(',')
                .map(unquote)
                .filter(|item| !item.is_empty())
                .map(Value::String)
                .collect();
            object.insert(key, Value::Array(items));
            list_key = None;
        } else {
            object.insert(key, Value::String(unquote(value)));
            list_key = None;
        }
    }
    Ok(Value::Object(object))
}

async fn exists(nexus: &NexusClient, name: &PolicyName) -> Result<bool, CliError> {
    let policies = nexus.list_policies().await?;
    Ok(policies.iter().any(|policy| policy.name == name.as_str()))
}

fn confirm(name: &str) -> bool {
    eprint!("Are you sure you want to delete policy '{name}'? (y/N): ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y")
}

fn policy_ref(argument: Option<String>, name: Option<String>) -> Result<PolicyRef, CliError> {
    let text = argument.or(name).ok_or_else(|| {
        CliError::Invalid("a policy id or name is required (argument or --name)".to_owned())
    })?;
    text.parse()
        .map_err(|e: spike_sdk::domain::InvalidValue| CliError::Invalid(e.to_string()))
}

fn permissions_text(policy: &Policy) -> String {
    policy
        .permissions
        .iter()
        .map(|permission| permission.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A policy for people, in SPIKE 0.8.0's layout.
fn human_policy(policy: &Policy) -> String {
    let mut out = format!(
        "ID: {}\nName: {}\nSPIFFE ID Pattern: {}\nPath Pattern: {}\nPermissions: {}\nCreated At: {}\n",
        policy.id,
        policy.name,
        policy.spiffeid_pattern,
        policy.path_pattern,
        permissions_text(policy),
        policy.created_at,
    );
    if !policy.updated_at.is_zero() {
        out += &format!("Updated At: {}\n", policy.updated_at);
    }
    out
}

async fn put(nexus: &NexusClient, spec: &PolicySpec) -> Result<String, CliError> {
    Ok(nexus
        .put_policy(
            &spec.name,
            &spec.spiffeid_pattern,
            &spec.path_pattern,
            &spec.permissions,
        )
        .await?)
}

/// Runs a policy command; returns what to print.
pub async fn run(nexus: &NexusClient, command: PolicyCommand) -> Result<String, CliError> {
    match command {
        PolicyCommand::Create(fields) => {
            let spec = spec_from_fields(&fields)?;
            if exists(nexus, &spec.name).await? {
                return Err(CliError::Invalid(format!(
                    "Policy '{}' already exists.",
                    spec.name
                )));
            }
            put(nexus, &spec).await?;
            Ok("Policy created successfully.\n".to_owned())
        }
        PolicyCommand::Apply { fields, file } => {
            let spec = match file {
                Some(path) => spec_from_file(&path)?,
                None => spec_from_fields(&fields)?,
            };
            put(nexus, &spec).await?;
            Ok(format!("Policy '{}' applied successfully\n", spec.name))
        }
        PolicyCommand::List {
            path_pattern,
            spiffeid_pattern,
            format,
        } => {
            let filter = ListPoliciesRequest {
                spiffeid_pattern: spiffeid_pattern.unwrap_or_default(),
                path_pattern: path_pattern.unwrap_or_default(),
            };
            let policies = nexus.list_policies_matching(&filter).await?;
            Ok(format.render(&policies, |policies| {
                if policies.is_empty() {
                    return "No policies found.\n".to_owned();
                }
                let mut out = "POLICIES\n========\n\n".to_owned();
                for policy in policies {
                    out += &human_policy(policy);
                    out += "--------\n\n";
                }
                out
            }))
        }
        PolicyCommand::Get {
            policy_name,
            name,
            format,
        } => {
            let policy = nexus.get_policy(&policy_ref(policy_name, name)?).await?;
            Ok(format.render(&policy, |policy| {
                format!(
                    "POLICY DETAILS\n=============\n\n{}\n",
                    human_policy(policy)
                )
            }))
        }
        PolicyCommand::Delete {
            policy_name,
            name,
            yes,
        } => {
            let policy = policy_ref(policy_name, name)?;
            if !yes && !confirm(policy.as_str()) {
                return Ok("Operation canceled.\n".to_owned());
            }
            nexus.delete_policy(&policy).await?;
            Ok("Policy deleted successfully.\n".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_yaml_subset_of_spike_policy_files_parses() {
        let text = "# a policy\nname: db-readers\nspiffeidPattern: \"^spiffe://example\\\\.org/app/.*$\"\npathPattern: '^db/.*$'\npermissions:\n  - read\n  - list\n";
        let parsed = parse_yaml_policy(text).expect("parses");
        assert_eq!(parsed["name"], "db-readers");
        assert_eq!(parsed["spiffeidPattern"], "^spiffe://example\\.org/app/.*$");
        assert_eq!(parsed["pathPattern"], "^db/.*$");
        assert_eq!(parsed["permissions"], serde_json::json!(["read", "list"]));
        let inline = parse_yaml_policy("permissions: [read, write]\n").expect("parses");
        assert_eq!(inline["permissions"], serde_json::json!(["read", "write"]));
    }

    #[test]
    fn permissions_are_checked_before_sending() {
        assert_eq!(
            permissions("read, write").ok(),
            Some(vec![Permission::Read, Permission::Write])
        );
        assert!(permissions("read,fly").is_err());
        assert!(permissions(" , ").is_err());
    }
}
