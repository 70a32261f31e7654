//! `spike`, SPIKE Pilot: the operator's command-line tool.
//!
//! SPIKE's commands (`secret`, `policy`, `cipher`, `operator`) with SPIKE's
//! flags and output formats, plus the cluster's extensions (`secret
//! destroy`, `--cas`, `cluster`, `operator rekey|rotate`, `audit verify`).
//! It talks to any Nexus node (`SPIKE_NEXUS_API_URL`, and every replica in
//! `SPIKE_NEXUS_API_URLS`): it follows the leader and fails over to another
//! replica when one is down, as the SDK does (it is the SDK's client), and
//! each write of one invocation carries an exactly-once session, so a retry
//! never applies it twice.
//!
//! Exit codes: 0 success, 1 the operation failed (reason on stderr), 2 usage
//! error, 64 no usable identity or configuration. (SPIKE's own CLI exits 0
//! on API errors.)

mod commands;
mod nexus;
mod output;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use spike_sdk::cli::SvidArgs;
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::hardening::{MemoryLock, harden_process, memory_lock_hazard};
use spike_sdk::identity::TrustRoots;

use commands::cipher::CipherCommand;
use commands::cluster::ClusterCommand;
use commands::operator::OperatorCommand;
use commands::policy::PolicyCommand;
use commands::secret::SecretCommand;
use commands::snapshot::SnapshotCommand;
use nexus::CliError;
use output::Format;
use spike_sdk::client::endpoints::{API_URL_DEFAULT, API_URL_VARIABLE, API_URLS_VARIABLE};

#[derive(Debug, Parser)]
#[command(
    name = "spike",
    version,
    about = "SPIKE Pilot: manage a SPIKE secrets store"
)]
struct Cli {
    #[command(flatten)]
    svid: SvidArgs,
    /// The Nexus API: any replica, `https://HOST:PORT`.
    #[arg(long, env = API_URL_VARIABLE, default_value = API_URL_DEFAULT, global = true)]
    api_url: String,
    /// Every replica's API, comma-separated: tried in turn when the one in
    /// --api-url is down (the local cluster's env files set it).
    #[arg(long, env = API_URLS_VARIABLE, global = true)]
    api_urls: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage secrets.
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage access policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Encrypt and decrypt with SPIKE's keys.
    #[command(subcommand)]
    Cipher(CipherCommand),
    /// Recovery, restore, rekey and rotation.
    #[command(subcommand)]
    Operator(OperatorCommand),
    /// Cluster status, membership and leadership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Backups of the encrypted store.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Audit log tools.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Show this tool's SPIFFE ID, the SPIKE role it carries and the trust
    /// domains it holds bundles for.
    Whoami {
        /// Output format: human/h/plain/p, json/j, yaml/y.
        #[arg(short = 'f', long, default_value = "human")]
        format: Format,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check a Nexus audit log's hash chain: it must start with its
    /// genesis record (a log whose head was cut off is reported as such),
    /// and an edited, removed or reordered line is reported with its line
    /// number (exit code 1).
    Verify {
        /// The audit log file.
        file: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `operator recover` and `restore` hold shards (recover: all of them,
    // that is the root key): no core file, no ptrace, and locked memory
    // where no limit makes that risky. Other commands hold at most one
    // secret's values and skip the lock.
    let holds_shards = matches!(
        cli.command,
        Command::Operator(OperatorCommand::Recover | OperatorCommand::Restore)
    );
    let lock = if holds_shards {
        MemoryLock::Auto
    } else {
        MemoryLock::Off
    };
    let hardening = harden_process(lock);
    if holds_shards && !hardening.memory_locked {
        let reason = memory_lock_hazard().unwrap_or_else(|| "mlockall was refused".to_owned());
        eprintln!("spike: warning: memory is not locked, shards may be swapped to disk ({reason})");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&CliError::Invalid(format!("cannot start: {error}"))),
    };
    match runtime.block_on(run(cli)) {
        Ok(text) => {
            let mut stdout = std::io::stdout();
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(error) => fail(&error),
    }
}

fn fail(error: &CliError) -> ExitCode {
    eprintln!("{error}");
    match error {
        CliError::Config(_) => ExitCode::from(spike_sdk::EXIT_CONFIG as u8),
        _ => ExitCode::FAILURE,
    }
}

async fn run(cli: Cli) -> Result<String, CliError> {
    let Cli {
        svid,
        api_url,
        api_urls,
        command,
    } = cli;
    let connect = || nexus::connect(&svid, &api_url, api_urls.as_deref());
    match command {
        // Offline commands need no identity.
        Command::Audit(AuditCommand::Verify { file }) => verify_audit_log(&file),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "spike", &mut script);
            Ok(String::from_utf8_lossy(&script).into_owned())
        }
        Command::Whoami { format } => whoami(&svid, format).await,
        Command::Secret(command) => commands::secret::run(&connect().await?, command).await,
        Command::Policy(command) => commands::policy::run(&connect().await?, command).await,
        Command::Cipher(command) => commands::cipher::run(&connect().await?, command).await,
        Command::Operator(command) => commands::operator::run(&connect().await?, command).await,
        Command::Cluster(command) => commands::cluster::run(&connect().await?, command).await,
        Command::Snapshot(command) => commands::snapshot::run(&connect().await?, command).await,
    }
}

/// Who this tool is.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Whoami<'a> {
    spiffe_id: String,
    role: &'a str,
    trust_domains: Vec<&'a str>,
}

async fn whoami(svid: &SvidArgs, format: Format) -> Result<String, CliError> {
    let trust_roots = TrustRoots::from_environment(&ProcessEnvironment)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let identity = svid
        .load()
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    let material = identity.current();
    let id = material.spiffe_id();
    let role = trust_roots
        .role_of(id)
        .map(|role| role.name())
        .unwrap_or("workload");
    let domains: Vec<&str> = material.trust_domains().collect();
    let whoami = Whoami {
        spiffe_id: id.to_string(),
        role,
        trust_domains: domains,
    };
    Ok(format.render(&whoami, |whoami| {
        format!(
            "spiffe id:     {}\nrole:          {}\ntrust bundles: {}\n",
            whoami.spiffe_id,
            whoami.role,
            whoami.trust_domains.join(", ")
        )
    }))
}

fn verify_audit_log(file: &std::path::Path) -> Result<String, CliError> {
    let reader = std::fs::File::open(file)
        .map(std::io::BufReader::new)
        .map_err(|e| CliError::Invalid(format!("cannot open {}: {e}", file.display())))?;
    let verified = spike_sdk::audit::verify(reader)
        .map_err(|error| CliError::Invalid(format!("{}: {error}", file.display())))?;
    Ok(format!(
        "{}: node {} ({}), root key {} at its start; {} records, chain intact from its genesis\n",
        file.display(),
        verified.node,
        verified.genesis.spiffe_id,
        verified.genesis.root_key_id,
        verified.records,
    ))
}
