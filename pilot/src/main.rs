//! `spike`, SPIKE Pilot: the operator's command-line tool.
//!
//! It gets its identity like every other SPIKE process (Workload API or SVID
//! files) and talks to any Nexus node. So far it has one command, `whoami`,
//! which shows the identity the tool would act as and the SPIKE role that
//! identity carries: the first thing to check when a call is refused.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use spike_sdk::cli::{SvidArgs, config_error, runtime_error};
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::TrustRoots;

#[derive(Debug, Parser)]
#[command(
    name = "spike",
    version,
    about = "SPIKE Pilot: manage a SPIKE secrets store"
)]
struct Cli {
    #[command(flatten)]
    svid: SvidArgs,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Human)]
    format: Format,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show this tool's SPIFFE ID, the SPIKE role it carries and the trust
    /// domains it holds bundles for.
    Whoami,
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a Nexus audit log's hash chain: an edited, removed or
    /// reordered line is reported with its line number (exit code 1).
    Verify {
        /// The audit log file.
        file: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Offline commands need no identity.
    if let Command::Audit(AuditCommand::Verify { file }) = &cli.command {
        return verify_audit_log(file, cli.format);
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => runtime_error("spike", error),
    }
}

async fn run(cli: Cli) -> ExitCode {
    let trust_roots = match TrustRoots::from_environment(&ProcessEnvironment) {
        Ok(roots) => roots,
        Err(error) => return config_error("spike", error),
    };
    let identity = match cli.svid.load().await {
        Ok(identity) => identity,
        Err(error) => return config_error("spike", error),
    };
    match cli.command {
        Command::Audit(_) => unreachable!("handled before loading an identity"),
        Command::Whoami => {
            let material = identity.current();
            let id = material.spiffe_id();
            let role = trust_roots
                .role_of(id)
                .map(|role| role.name())
                .unwrap_or("workload");
            let domains: Vec<&str> = material.trust_domains().collect();
            match cli.format {
                Format::Human => {
                    println!("spiffe id:     {id}");
                    println!("role:          {role}");
                    println!("trust bundles: {}", domains.join(", "));
                }
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "spiffeId": id.to_string(),
                        "role": role,
                        "trustDomains": domains,
                    })
                ),
            }
            ExitCode::SUCCESS
        }
    }
}

fn verify_audit_log(file: &std::path::Path, format: Format) -> ExitCode {
    let reader = match std::fs::File::open(file) {
        Ok(handle) => std::io::BufReader::new(handle),
        Err(error) => {
            return runtime_error("spike", format!("cannot open {}: {error}", file.display()));
        }
    };
    match spike_sdk::audit::verify(reader) {
        Ok(records) => {
            match format {
                Format::Human => println!("{}: {records} records, chain intact", file.display()),
                Format::Json => println!(
                    "{}",
                    serde_json::json!({ "records": records, "intact": true })
                ),
            }
            ExitCode::SUCCESS
        }
        Err(error) => runtime_error("spike", format!("{}: {error}", file.display())),
    }
}
