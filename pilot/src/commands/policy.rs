//! `spike policy`: SPIKE's policy commands.

use std::io::BufRead;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::nexus::{CliError, Nexus};
use crate::output::{self, Format};

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
        /// The policy name.
        policy_name: Option<String>,
        /// The policy name (alternative to the argument).
        #[arg(long)]
        name: Option<String>,
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Delete a policy (asks for confirmation unless --yes).
    Delete {
        /// The policy name.
        policy_name: Option<String>,
        /// The policy name (alternative to the argument).
        #[arg(long)]
        name: Option<String>,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

const PERMISSIONS: [&str; 5] = ["read", "write", "list", "execute", "super"];

fn permissions(text: &str) -> Result<Vec<String>, CliError> {
    let list: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err(CliError::Invalid(
            "no valid permissions specified. valid permissions are: read, write, list, execute, super".to_owned(),
        ));
    }
    if let Some(bad) = list
        .iter()
        .find(|item| !PERMISSIONS.contains(&item.as_str()))
    {
        return Err(CliError::Invalid(format!(
            "invalid permission: '{bad}'. valid permissions: 'read, write, list, execute, super'"
        )));
    }
    Ok(list)
}

fn body_from_fields(fields: &PolicyFields) -> Result<Value, CliError> {
    let missing: Vec<&str> = [
        ("name", fields.name.is_none()),
        ("path-pattern", fields.path_pattern.is_none()),
        ("spiffeid-pattern", fields.spiffeid_pattern.is_none()),
        ("permissions", fields.permissions.is_none()),
    ]
    .into_iter()
    .filter_map(|(flag, absent)| absent.then_some(flag))
    .collect();
    if !missing.is_empty() {
        let lines: Vec<String> = missing
            .iter()
            .map(|flag| format!("  --{flag} is missing"))
            .collect();
        return Err(CliError::Invalid(format!(
            "All flags are required.\n{}",
            lines.join("\n")
        )));
    }
    Ok(json!({
        "name": fields.name,
        "spiffeidPattern": fields.spiffeid_pattern,
        "pathPattern": fields.path_pattern,
        "permissions": permissions(fields.permissions.as_deref().unwrap_or_default())?,
    }))
}

/// Reads a policy file: JSON, or the YAML subset SPIKE's files use
/// (`key: value` lines and a `permissions` list).
fn body_from_file(path: &std::path::Path) -> Result<Value, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Invalid(format!("cannot read policy file {}: {e}", path.display()))
    })?;
    let parsed = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(&text)
            .map_err(|e| CliError::Invalid(format!("policy file is not JSON: {e}")))?
    } else {
        parse_yaml_policy(&text)?
    };
    for field in ["name", "spiffeidPattern", "pathPattern", "permissions"] {
        if parsed
            .get(field)
            .is_none_or(|value| value.is_null() || value == "")
        {
            return Err(CliError::Invalid(format!(
                "{field} is required in the policy file"
            )));
        }
    }
    let listed = match &parsed["permissions"] {
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        Value::String(text) => text.clone(),
        _ => String::new(),
    };
    Ok(json!({
        "name": parsed["name"],
        "spiffeidPattern": parsed["spiffeidPattern"],
        "pathPattern": parsed["pathPattern"],
        "permissions": permissions(&listed)?,
    }))
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

async fn exists(nexus: &Nexus, name: &str) -> Result<bool, CliError> {
    let reply = nexus.call("/v1/acl/policy?action=list", &json!({})).await?;
    Ok(reply["policies"]
        .as_array()
        .is_some_and(|policies| policies.iter().any(|policy| policy["name"] == name)))
}

fn confirm(name: &str) -> bool {
    eprint!("Are you sure you want to delete policy '{name}'? (y/N): ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).is_ok() && matches!(answer.trim(), "y" | "Y")
}

/// Runs a policy command; returns what to print.
pub async fn run(nexus: &Nexus, command: PolicyCommand) -> Result<String, CliError> {
    match command {
        PolicyCommand::Create(fields) => {
            let body = body_from_fields(&fields)?;
            let name = body["name"].as_str().unwrap_or_default().to_owned();
            if exists(nexus, &name).await? {
                return Err(CliError::Invalid(format!(
                    "Policy '{name}' already exists."
                )));
            }
            nexus.call("/v1/acl/policy", &body).await?;
            Ok("Policy created successfully.\n".to_owned())
        }
        PolicyCommand::Apply { fields, file } => {
            let body = match file {
                Some(path) => body_from_file(&path)?,
                None => body_from_fields(&fields)?,
            };
            nexus.call("/v1/acl/policy", &body).await?;
            Ok(format!(
                "Policy '{}' applied successfully\n",
                body["name"].as_str().unwrap_or_default()
            ))
        }
        PolicyCommand::List {
            path_pattern,
            spiffeid_pattern,
            format,
        } => {
            let body = json!({
                "spiffeidPattern": spiffeid_pattern.unwrap_or_default(),
                "pathPattern": path_pattern.unwrap_or_default(),
            });
            let reply = match nexus.call("/v1/acl/policy?action=list", &body).await {
                Err(CliError::Api { status: 404, .. }) => json!({ "policies": [] }),
                other => other?,
            };
            let policies = reply["policies"].as_array().cloned().unwrap_or_default();
            Ok(match format {
                Format::Human if policies.is_empty() => "No policies found.\n".to_owned(),
                Format::Human => {
                    let mut out = "POLICIES\n========\n\n".to_owned();
                    for policy in &policies {
                        out += &format!(
                            "Name: {}\n--------\n\n",
                            policy["name"].as_str().unwrap_or_default()
                        );
                    }
                    out
                }
                Format::Json => output::json(&Value::Array(policies)),
                Format::Yaml => output::yaml(&Value::Array(policies)),
            })
        }
        PolicyCommand::Get {
            policy_name,
            name,
            format,
        } => {
            let name = policy_name.or(name).ok_or_else(|| {
                CliError::Invalid("a policy name is required (argument or --name)".to_owned())
            })?;
            let policy = nexus
                .call("/v1/acl/policy?action=get", &json!({ "id": name }))
                .await?;
            Ok(match format {
                Format::Json => output::json(&policy),
                Format::Yaml => output::yaml(&policy),
                Format::Human => {
                    let list = policy["permissions"]
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    let text = |field: &str| policy[field].as_str().unwrap_or_default().to_owned();
                    format!(
                        "POLICY DETAILS\n=============\n\nName: {}\nSPIFFE ID Pattern: {}\nPath Pattern: {}\nPermissions: {list}\nCreated At: {}\nUpdated At: {}\n\n",
                        text("name"),
                        text("spiffiedPattern"),
                        text("pathPattern"),
                        text("createdAt"),
                        text("updatedAt"),
                    )
                }
            })
        }
        PolicyCommand::Delete {
            policy_name,
            name,
            yes,
        } => {
            let name = policy_name.or(name).ok_or_else(|| {
                CliError::Invalid("a policy name is required (argument or --name)".to_owned())
            })?;
            if !yes && !confirm(&name) {
                return Ok("Operation canceled.\n".to_owned());
            }
            nexus
                .call("/v1/acl/policy?action=delete", &json!({ "id": name }))
                .await?;
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
        assert_eq!(parsed["permissions"], json!(["read", "list"]));
        let inline = parse_yaml_policy("permissions: [read, write]\n").expect("parses");
        assert_eq!(inline["permissions"], json!(["read", "write"]));
    }

    #[test]
    fn permissions_are_checked_before_sending() {
        assert!(permissions("read, write").is_ok());
        assert!(permissions("read,fly").is_err());
        assert!(permissions(" , ").is_err());
    }
}
