//! The connection to the cluster: the caller's SVID, every replica the
//! operator named (`SPIKE_NEXUS_API_URL`, and ours, `SPIKE_NEXUS_API_URLS`),
//! and the SDK's client, which follows the leader, fails over when a
//! replica dies, and gives each write of this invocation an exactly-once
//! session. Failures become SPIKE's messages.

use std::time::Duration;

use spike_sdk::api::BACKUP_SIZE_MAX_BYTES;
use spike_sdk::cli::SvidArgs;
use spike_sdk::client::{Error, NexusClient, Settings, endpoints};
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::TrustRoots;

/// Longest one exchange may take (backups stream to and from files within
/// the SDK's longer transfer timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The identity or configuration cannot work (exit code 64).
    #[error("{0}")]
    Config(String),
    /// The cluster refused or failed the operation.
    #[error("{}", api_message(.0))]
    Api(#[from] Error),
    /// The command's own input is wrong.
    #[error("Error: {0}")]
    Invalid(String),
}

/// SPIKE's CLI messages, where SPIKE has one.
fn api_message(error: &Error) -> String {
    match error {
        Error::NotReady(_) => "SPIKE is not ready yet. Please wait a moment and try again.".into(),
        Error::NotFound => "Error: Resource not found.".into(),
        Error::BadRequest => "Error: Invalid request.".into(),
        Error::Denied => "Error: Unauthorized access.".into(),
        Error::Conflict => {
            "Error: The current version is not the one expected (check-and-set).".into()
        }
        Error::TooLarge => "Error: The request is larger than SPIKE Nexus takes.".into(),
        Error::Unreachable(reason) => format!("Error: Failed to connect to SPIKE Nexus: {reason}"),
        Error::Decode(reason) => format!("Error: Failed to parse API response: {reason}"),
        Error::RateLimited { retry_after_secs } => format!(
            "Error: Rate limited by SPIKE Nexus (spike cluster limits); try again in {retry_after_secs} s."
        ),
        Error::StorageQuota(reason) => format!("Error: {reason}"),
        Error::BackupRefused(reason) => {
            format!("Error: the backup was refused, nothing was replaced: {reason}")
        }
        Error::Invalid(reason) => format!("Error: {reason}"),
        other => format!("Error: SPIKE Nexus failed: {other}"),
    }
}

/// Loads the SVID and resolves every API URL given.
pub async fn connect(
    svid: &SvidArgs,
    api_url: &str,
    api_urls: Option<&str>,
) -> Result<NexusClient, CliError> {
    let trust_roots = TrustRoots::from_environment(&ProcessEnvironment)
        .map_err(|e| CliError::Config(e.to_string()))?;
    let identity = svid
        .load()
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    let urls = std::iter::once(api_url).chain(api_urls);
    let endpoints = endpoints::resolve(urls)
        .await
        .map_err(|e| CliError::Config(e.to_string()))?;
    let mut settings = Settings::new(endpoints);
    settings.request_timeout = REQUEST_TIMEOUT;
    // Answers held in memory (long lists) as large as they were before
    // backups streamed to files.
    settings.response_limit = BACKUP_SIZE_MAX_BYTES + 1024 * 1024;
    NexusClient::new(identity, trust_roots, settings).map_err(|e| CliError::Config(e.to_string()))
}
