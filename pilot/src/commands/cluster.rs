//! `spike cluster` (extension): status, membership and leadership.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::nexus::{CliError, Nexus};
use crate::output::{self, Format};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// This replica, the leader, Raft progress and the root key.
    Status {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Every replica and whether it votes.
    Members {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Add a replica (started with --join): learner first, then voter.
    Add {
        /// Its node id (never used before).
        #[arg(long)]
        id: u64,
        /// Its cluster address, HOST:PORT.
        #[arg(long)]
        cluster_addr: String,
        /// Its API address, HOST:PORT.
        #[arg(long)]
        api_addr: String,
    },
    /// Remove a replica; its id is retired.
    Remove {
        /// The node id.
        #[arg(long)]
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The node id to lead.
        #[arg(long)]
        id: u64,
    },
}

fn members_text(members: &Value) -> String {
    let mut out = String::new();
    for member in members.as_array().into_iter().flatten() {
        out += &format!(
            "  {:<4} {:<8} api {:<22} cluster {}\n",
            member["id"],
            if member["voter"] == true {
                "voter"
            } else {
                "learner"
            },
            member["apiAddr"].as_str().unwrap_or_default(),
            member["clusterAddr"].as_str().unwrap_or_default(),
        );
    }
    out
}

fn render(value: &Value, format: Format, human: impl FnOnce(&Value) -> String) -> String {
    match format {
        Format::Json => output::json(value),
        Format::Yaml => output::yaml(value),
        Format::Human => human(value),
    }
}

/// Runs a cluster command; returns what to print.
pub async fn run(nexus: &Nexus, command: ClusterCommand) -> Result<String, CliError> {
    match command {
        ClusterCommand::Status { format } => {
            let status = nexus.call("/v1/cluster?action=status", &json!({})).await?;
            Ok(render(&status, format, |s| {
                format!(
                    "node:      {} ({})\nleader:    {} at {}\nterm:      {}\ncommitted: {}\napplied:   {}\nroot key:  {} (id {}, check {})\nmembers:\n{}",
                    s["nodeId"],
                    s["state"].as_str().unwrap_or_default(),
                    s["leaderId"],
                    s["leaderApiAddr"].as_str().unwrap_or("unknown"),
                    s["term"],
                    s["commitIndex"],
                    s["appliedIndex"],
                    s["rootKey"]["status"].as_str().unwrap_or_default(),
                    s["rootKey"]["rootKeyId"],
                    s["rootKey"]["keyCheck"]
                        .as_str()
                        .map(|check| &check[..check.len().min(16)])
                        .unwrap_or("-"),
                    members_text(&s["members"]),
                )
            }))
        }
        ClusterCommand::Members { format } => {
            let reply = nexus.call("/v1/cluster?action=members", &json!({})).await?;
            Ok(render(&reply["members"], format, members_text))
        }
        ClusterCommand::Add {
            id,
            cluster_addr,
            api_addr,
        } => {
            nexus
                .call(
                    "/v1/cluster?action=add",
                    &json!({ "id": id, "clusterAddr": cluster_addr, "apiAddr": api_addr }),
                )
                .await?;
            Ok(format!("Node {id} added.\n"))
        }
        ClusterCommand::Remove { id } => {
            nexus
                .call("/v1/cluster?action=remove", &json!({ "id": id }))
                .await?;
            Ok(format!("Node {id} removed; its id is retired.\n"))
        }
        ClusterCommand::TransferLeader { id } => {
            nexus
                .call("/v1/cluster?action=transfer", &json!({ "id": id }))
                .await?;
            Ok(format!("Leadership handed to node {id}.\n"))
        }
    }
}
