//! Reads one secret the way an application would: any cluster node as the
//! entry point, the leader found by the client, "not ready" retried.
//!
//! ```text
//! source .spike-local/env          # from `dev/cluster/run up`
//! cargo run -p spike-sdk --features client --example read_secret -- apps/db
//! ```
//!
//! The nodes come from `SPIKE_NEXUS_API_URL` and `SPIKE_NEXUS_API_URLS`
//! (every replica, comma-separated); the SVID from `SPIFFE_ENDPOINT_SOCKET`
//! (or the `SPIKE_SVID_*_FILE` files).

use std::process::ExitCode;
use std::time::Duration;

use spike_sdk::client::endpoints::{self, API_URL_DEFAULT, API_URL_VARIABLE, API_URLS_VARIABLE};
use spike_sdk::client::{Error, NexusClient, Settings};
use spike_sdk::domain::SecretPath;
use spike_sdk::environment::ProcessEnvironment;
use spike_sdk::identity::TrustRoots;
use spike_sdk::svid::{SvidSource, WORKLOAD_API_TIMEOUT_DEFAULT};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: read_secret PATH");
        return ExitCode::from(64);
    };
    match read(&path).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("read_secret: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn read(path: &str) -> Result<(), String> {
    let path: SecretPath = path.parse().map_err(|e| format!("{e}"))?;
    let urls = [API_URL_VARIABLE, API_URLS_VARIABLE].map(|name| std::env::var(name).ok());
    let urls: Vec<&str> = urls.iter().flatten().map(String::as_str).collect();
    let urls = if urls.is_empty() {
        vec![API_URL_DEFAULT]
    } else {
        urls
    };
    let endpoints = endpoints::resolve(urls).await.map_err(|e| e.to_string())?;
    let identity = SvidSource::from_environment(&ProcessEnvironment)
        .map_err(|e| e.to_string())?
        .load(WORKLOAD_API_TIMEOUT_DEFAULT)
        .await
        .map_err(|e| e.to_string())?;
    let trust_roots =
        TrustRoots::from_environment(&ProcessEnvironment).map_err(|e| e.to_string())?;
    let client = NexusClient::new(identity, trust_roots, Settings::new(endpoints))
        .map_err(|e| e.to_string())?;

    // The client already retries within its budget (15 s by default); an
    // application that starts with the cluster may wait longer.
    for _ in 0..4 {
        match client.get_secret(&path, None).await {
            Ok(values) => {
                for (key, value) in values.iter() {
                    // A real application would use the value, not print it.
                    println!("{key}: {} bytes", value.len());
                }
                return Ok(());
            }
            Err(Error::NotFound) => return Err(format!("no secret at {path}")),
            Err(Error::Denied) => return Err(format!("this workload may not read {path}")),
            Err(error) if error.is_retryable() => {
                eprintln!("read_secret: {error}; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err("SPIKE Nexus stayed unavailable".into())
}
