//! `spike cluster` (extension): status, membership and leadership.

use std::net::SocketAddr;

use clap::Subcommand;
use spike_sdk::api::{ClusterHealth, ClusterStatus, Member, RateLimitRule, RateLimits};
use spike_sdk::client::NexusClient;
use spike_sdk::domain::NodeId;

use crate::nexus::CliError;
use crate::output::Format;

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
    /// The leader's autopilot report: each replica's last contact, log lag
    /// and health, and how many voters may fail.
    Health {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Add a replica (started with --join) as a learner; the leader's
    /// autopilot makes it a voter once it has been healthy for the
    /// stabilization time.
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
        /// A permanent non-voter (read replica): it stays a learner, serves
        /// reads, never counts toward quorum. Adding it again without this
        /// flag lets it become a voter.
        #[arg(long)]
        non_voter: bool,
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
    /// Rate limits per SPIFFE ID and route, enforced by every replica.
    #[command(subcommand)]
    Limits(LimitsCommand),
}

#[derive(Debug, Subcommand)]
pub enum LimitsCommand {
    /// The rate limits in force.
    Get {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Replace the rate limits cluster-wide: the first rule that covers a
    /// (caller, route) pair decides its token bucket, on each replica.
    Set {
        /// A rule, `SPIFFE_ID,ROUTE,RATE,BURST`, in order (repeatable):
        /// SPIFFE_ID is an ID, a prefix ending in /* or *; ROUTE is
        /// `/v1/store/secrets?action=get` or *; RATE requests per second
        /// (0: no limit for the match); BURST requests at once.
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// The limits as JSON (`{"rules":[{"spiffeId":..,"route":..,
        /// "ratePerSecond":..,"burst":..}]}`), from this file (- for
        /// stdin), instead of --rule.
        #[arg(long, conflicts_with = "rules")]
        file: Option<std::path::PathBuf>,
    },
    /// Remove every rate limit.
    Clear,
}

/// Parses `SPIFFE_ID,ROUTE,RATE,BURST`.
fn parse_rule(text: &str) -> Result<RateLimitRule, CliError> {
    let invalid =
        || CliError::Invalid(format!("--rule {text:?} is not SPIFFE_ID,ROUTE,RATE,BURST"));
    // A route holds no comma; a SPIFFE ID may not either.
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [spiffe_id, route, rate, burst] = parts.as_slice() else {
        return Err(invalid());
    };
    Ok(RateLimitRule {
        spiffe_id: (*spiffe_id).to_owned(),
        route: (*route).to_owned(),
        rate_per_second: rate.parse().map_err(|_| invalid())?,
        burst: burst.parse().map_err(|_| invalid())?,
    })
}

fn read_limits(file: &std::path::Path) -> Result<RateLimits, CliError> {
    use std::io::Read;
    let mut text = String::new();
    let read = if file == std::path::Path::new("-") {
        std::io::stdin().take(1 << 20).read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|f| f.take(1 << 20).read_to_string(&mut text))
    };
    read.map_err(|e| CliError::Invalid(format!("cannot read {}: {e}", file.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Invalid(format!(
            "{} is not rate limits as JSON: {e}",
            file.display()
        ))
    })
}

fn limits_text(limits: &RateLimits) -> String {
    if limits.rules.is_empty() {
        return "No rate limits.\n".to_owned();
    }
    limits
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let rate = if rule.rate_per_second == 0 {
                "unlimited".to_owned()
            } else {
                format!("{}/s burst {}", rule.rate_per_second, rule.burst)
            };
            let route = if rule.route.is_empty() {
                "*"
            } else {
                &rule.route
            };
            format!("  {:<3} {} {} {}\n", index + 1, rule.spiffe_id, route, rate)
        })
        .collect()
}

fn role_name(voter: bool, non_voter: bool) -> &'static str {
    match (voter, non_voter) {
        (true, _) => "voter",
        (false, true) => "non-voter",
        (false, false) => "learner",
    }
}

fn members_text(members: &[Member]) -> String {
    members
        .iter()
        .map(|member| {
            format!(
                "  {:<4} {:<9} api {:<22} cluster {}\n",
                member.id,
                role_name(member.voter, member.non_voter),
                member.api_addr,
                member.cluster_addr,
            )
        })
        .collect()
}

fn human_health(health: &ClusterHealth) -> String {
    let mut text = format!(
        "healthy:           {}\nfailure tolerance: {} (healthy voters {} of {})\nleader:            {}\n  {:<4} {:<9} {:<9} {:>12} {:>8}  {:<10}\n",
        health.healthy,
        health.failure_tolerance,
        health.healthy_voters,
        health.voters,
        health.leader_id,
        "id",
        "role",
        "health",
        "last contact",
        "log lag",
        "stable for",
    );
    for member in &health.members {
        let role = if member.leader {
            "leader"
        } else {
            role_name(member.voter, member.non_voter)
        };
        let contact = member
            .last_contact_ms
            .map_or_else(|| "never".to_owned(), |ms| format!("{ms}ms"));
        text.push_str(&format!(
            "  {:<4} {:<9} {:<9} {:>12} {:>8}  {:<10} api {}\n",
            member.id,
            role,
            if member.healthy {
                "healthy"
            } else {
                "UNHEALTHY"
            },
            contact,
            member.log_lag,
            format!("{:.1}s", member.stable_for_ms as f64 / 1000.0),
            member.api_addr,
        ));
    }
    text
}

fn optional<T: std::fmt::Display>(value: Option<T>, none: &str) -> String {
    value.map_or_else(|| none.to_owned(), |value| value.to_string())
}

fn backup_text(status: &ClusterStatus) -> String {
    let last = match &status.last_backup {
        Some(last) => format!(
            "backup:    {} (slot {}, index {}, root key {}, {} bytes) on node {}\n",
            last.file, last.slot_time, last.index, last.root_key_id, last.size_bytes, last.node
        ),
        None => "backup:    none recorded\n".to_owned(),
    };
    let schedule = match &status.backup_schedule {
        Some(schedule) => format!(
            "schedule:  every {} ms into {} (keeps {}; here: {} done, {} failed)\n",
            schedule.interval_ms,
            schedule.dir,
            schedule.retain,
            schedule.succeeded,
            schedule.failed
        ),
        None => "schedule:  off on this replica\n".to_owned(),
    };
    last + &schedule
}

fn human_status(status: &ClusterStatus) -> String {
    let root_key = &status.root_key;
    let text = format!(
        "node:      {} ({:?})\nstorage:   {}\nrelease:   {} (reads on-disk formats {}..{}; the cluster writes format {})\ncorrupt:   {}\nleader:    {} at {}\nterm:      {}\ncommitted: {}\napplied:   {}\nroot key:  {} (id {}, check {})\ndata key:  {} ({} encryptions)\nmembers:\n{}",
        status.node_id,
        status.state,
        storage_text(status),
        status.release.as_deref().unwrap_or("0.1.0"),
        optional(status.format_oldest, "1"),
        optional(status.format_newest, "1"),
        optional(status.cluster_format, "1"),
        match (&status.corruption, status.corrupt) {
            (Some(reason), _) => format!("YES: {reason} (replace this replica)"),
            (None, true) => "YES (replace this replica)".to_owned(),
            (None, false) => match status.digest_agreed_index {
                Some(index) =>
                    format!("no (its state digest matches the voters' at index {index})"),
                None => "no".to_owned(),
            },
        },
        optional(status.leader_id, "none"),
        optional(status.leader_api_addr, "unknown"),
        status.term,
        optional(status.commit_index, "-"),
        optional(status.applied_index, "-"),
        serde_json::to_value(root_key.status)
            .ok()
            .and_then(|value| value.as_str().map(str::to_owned))
            .unwrap_or_default(),
        optional(root_key.root_key_id, "-"),
        root_key
            .key_check
            .as_deref()
            .map(|check| &check[..check.len().min(16)])
            .unwrap_or("-"),
        optional(root_key.data_key_id, "-"),
        optional(root_key.data_key_encryptions, "-"),
        members_text(&status.members),
    );
    text + &backup_text(status)
}

fn storage_text(status: &ClusterStatus) -> String {
    let Some(used) = status.storage_used_bytes else {
        return "-".to_owned();
    };
    let used = spike_sdk::size::display(used);
    match status.storage_quota_bytes {
        Some(0) | None => format!("{used} (no quota)"),
        Some(quota) => format!(
            "{used} of {} quota{}",
            spike_sdk::size::display(quota),
            if status.storage_quota_exceeded == Some(true) {
                " - QUOTA EXCEEDED: writes that add data are refused"
            } else {
                ""
            }
        ),
    }
}

fn node_id(id: u64) -> Result<NodeId, CliError> {
    NodeId::new(id).map_err(|e| CliError::Invalid(e.to_string()))
}

fn address(text: &str, flag: &str) -> Result<SocketAddr, CliError> {
    text.parse()
        .map_err(|_| CliError::Invalid(format!("--{flag} {text:?} is not IP:PORT")))
}

/// Runs a cluster command; returns what to print.
pub async fn run(nexus: &NexusClient, command: ClusterCommand) -> Result<String, CliError> {
    match command {
        ClusterCommand::Status { format } => {
            let status = nexus.cluster_status().await?;
            Ok(format.render(&status, human_status))
        }
        ClusterCommand::Members { format } => {
            let members = nexus.cluster_members().await?;
            Ok(format.render(&members, |members| members_text(members)))
        }
        ClusterCommand::Health { format } => {
            let health = nexus.cluster_health().await?;
            Ok(format.render(&health, human_health))
        }
        ClusterCommand::Add {
            id,
            cluster_addr,
            api_addr,
            non_voter,
        } => {
            let (node, cluster_addr, api_addr) = (
                node_id(id)?,
                address(&cluster_addr, "cluster-addr")?,
                address(&api_addr, "api-addr")?,
            );
            if non_voter {
                nexus.add_non_voter(node, cluster_addr, api_addr).await?;
                return Ok(format!(
                    "Node {id} added as a non-voter: a read replica that never votes.\n"
                ));
            }
            nexus.add_member(node, cluster_addr, api_addr).await?;
            Ok(format!(
                "Node {id} added as a learner; the leader makes it a voter once it has been healthy for the stabilization time (see `spike cluster health`).\n"
            ))
        }
        ClusterCommand::Remove { id } => {
            nexus.remove_member(node_id(id)?).await?;
            Ok(format!("Node {id} removed; its id is retired.\n"))
        }
        ClusterCommand::TransferLeader { id } => {
            nexus.transfer_leader(node_id(id)?).await?;
            Ok(format!("Leadership handed to node {id}.\n"))
        }
        ClusterCommand::Limits(LimitsCommand::Get { format }) => {
            let limits = nexus.cluster_limits().await?;
            Ok(format.render(&limits, limits_text))
        }
        ClusterCommand::Limits(LimitsCommand::Set { rules, file }) => {
            let limits = match file {
                Some(file) => read_limits(&file)?,
                None => RateLimits {
                    rules: rules
                        .iter()
                        .map(|rule| parse_rule(rule))
                        .collect::<Result<_, _>>()?,
                },
            };
            limits.validate().map_err(CliError::Invalid)?;
            let count = limits.rules.len();
            nexus.set_cluster_limits(limits).await?;
            Ok(format!("Rate limits set ({count} rules).\n"))
        }
        ClusterCommand::Limits(LimitsCommand::Clear) => {
            nexus.set_cluster_limits(RateLimits::default()).await?;
            Ok("Rate limits removed.\n".to_owned())
        }
    }
}
