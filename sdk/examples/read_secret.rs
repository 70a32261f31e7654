//! Reads one secret the way an application would: any cluster node as the
//! entry point, the leader found by the client, "not ready" retried.
//!
//! ```text
//! source .spike-local/env          # from `dev/cluster/run up`
//! cargo run -p spike-sdk --features client --example read_secret -- apps/db
//! ```
//!
//! `SPIKE_NEXUS_API_URL` may list several nodes, comma-separated; the SVID
//! comes from `SPIFFE_ENDPOINT_SOCKET` (or the `SPIKE_SVID_*_FILE` files).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use spike_sdk::client::{Error, NexusClient, Settings};
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
    let urls =
        std::env::var("SPIKE_NEXUS_API_URL").unwrap_or_else(|_| "https://127.0.0.1:8553".into());
    let endpoints = urls
        .split(',')
        .map(|url| {
            url.trim()
                .trim_start_matches("https://")
                .parse::<SocketAddr>()
                .map_err(|e| format!("endpoint {url:?}: {e} (use https://IP:PORT)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
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
        match client.get_secret(path, None).await {
            Ok(values) => {
                for (key, value) in values {
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
