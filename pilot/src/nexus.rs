//! The connection to Nexus: the caller's SVID, the API address from
//! `SPIKE_NEXUS_API_URL`, and SPIKE's error codes turned into messages.

use std::net::SocketAddr;

use serde_json::Value;
use spike_sdk::cli::SvidArgs;
use spike_sdk::client::{HttpsClient, Request};
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::{PeerAuthorizer, Role, TrustRoots};

/// Largest backup the CLI saves (the server's restore limit).
pub const BACKUP_SIZE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// SPIKE's default API address.
pub const API_URL_DEFAULT: &str = "https://localhost:8553";

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The identity or configuration cannot work (exit code 64).
    #[error("{0}")]
    Config(String),
    /// Nexus answered with an error.
    #[error("{}", api_message(.status, .code))]
    Api {
        /// HTTP status.
        status: u16,
        /// SPIKE's error code.
        code: String,
    },
    /// Nexus could not be reached, or answered nonsense.
    #[error("Error: Failed to connect to SPIKE Nexus: {0}")]
    Transport(String),
    /// The command's own input is wrong.
    #[error("Error: {0}")]
    Invalid(String),
}

fn api_message(status: &u16, code: &str) -> String {
    match code {
        "state_not_ready" => {
            "SPIKE is not ready yet. Please wait a moment and try again.".to_owned()
        }
        "api_not_found" => "Error: Resource not found.".to_owned(),
        "api_bad_request" => "Error: Invalid request.".to_owned(),
        "access_unauthorized" => "Error: Unauthorized access.".to_owned(),
        "api_conflict" => {
            "Error: The current version is not the one expected (check-and-set).".to_owned()
        }
        other => format!("Error: SPIKE Nexus failed ({status} {other})."),
    }
}

/// A connected client.
pub struct Nexus {
    client: HttpsClient,
    address: SocketAddr,
}

impl Nexus {
    /// Loads the SVID and resolves the API address.
    pub async fn connect(svid: &SvidArgs, api_url: &str) -> Result<Self, CliError> {
        let trust_roots = TrustRoots::from_environment(&ProcessEnvironment)
            .map_err(|e| CliError::Config(e.to_string()))?;
        let identity = svid
            .load()
            .await
            .map_err(|e| CliError::Config(e.to_string()))?;
        let client = HttpsClient::new(identity, PeerAuthorizer::role(trust_roots, Role::Nexus))
            .map_err(|e| CliError::Config(e.to_string()))?
            .with_response_limit(BACKUP_SIZE_MAX_BYTES)
            .with_timeout(std::time::Duration::from_secs(60));
        let authority = api_url
            .trim()
            .strip_prefix("https://")
            .ok_or_else(|| {
                CliError::Config(format!(
                    "SPIKE_NEXUS_API_URL {api_url:?} must start with https://"
                ))
            })?
            .trim_end_matches('/');
        let address = tokio::net::lookup_host(authority)
            .await
            .ok()
            .and_then(|mut addresses| addresses.next())
            .ok_or_else(|| {
                CliError::Config(format!("SPIKE_NEXUS_API_URL {api_url:?} does not resolve"))
            })?;
        Ok(Self { client, address })
    }

    /// POSTs JSON; a non-200 answer becomes [`CliError::Api`].
    pub async fn call(&self, path_and_query: &str, body: &Value) -> Result<Value, CliError> {
        let reply = self
            .client
            .post_json(self.address, path_and_query, body, &[])
            .await
            .map_err(|e| CliError::Transport(e.to_string()))?;
        if reply.status == 200 {
            Ok(reply.body)
        } else {
            Err(CliError::Api {
                status: reply.status,
                code: reply.body["err"].as_str().unwrap_or("unknown").to_owned(),
            })
        }
    }

    /// POSTs raw bytes (cipher stream mode); returns the raw answer.
    pub async fn call_stream(&self, path: &str, bytes: Vec<u8>) -> Result<Vec<u8>, CliError> {
        let request = Request {
            method: "POST",
            path_and_query: path,
            content_type: "application/octet-stream",
            body: bytes,
            headers: &[],
        };
        let reply = self
            .client
            .send(self.address, request)
            .await
            .map_err(|e| CliError::Transport(e.to_string()))?;
        if reply.status == 200 {
            Ok(reply.bytes)
        } else {
            let code = serde_json::from_slice::<Value>(&reply.bytes)
                .ok()
                .and_then(|body| body["err"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&reply.bytes).trim().to_owned());
            Err(CliError::Api {
                status: reply.status,
                code,
            })
        }
    }
}
