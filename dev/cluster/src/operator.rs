//! Saving the recovery shards after the first start and restoring them
//! after a total loss, through the API, as the recover and restore roles.
//! Development convenience only: a production deployment never keeps
//! shards next to the data.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use spike_sdk::client::{self, NexusClient, Settings};
use spike_sdk::crypto::recovery_line;
use spike_sdk::identity::{TrustDomain, TrustRoots};
use spike_sdk::svid::IdentityError;

use crate::file::ClusterFile;

/// Longest wait for an operator identity from the Workload API.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);

/// Saving or restoring the shards failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No runtime for the API calls (the machine is out of threads or
    /// file descriptors).
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    /// The cluster has no replica to ask.
    #[error("no nexus")]
    NoReplica,
    /// The cluster file names no such identity.
    #[error(transparent)]
    File(#[from] crate::file::FileError),
    /// The dev Workload API does not serve the operator identity.
    #[error("identity {role}: {source}")]
    Identity {
        /// `recover` or `restore`.
        role: &'static str,
        /// Why.
        source: IdentityError,
    },
    /// `cluster.json`'s trust domain is not one.
    #[error("trust domain {domain:?}: {reason}")]
    TrustDomain {
        /// As the file says.
        domain: String,
        /// Why it is refused.
        reason: String,
    },
    /// The cluster refused, or no replica answered within the client's
    /// retry budget.
    #[error("operator {action}: {source}")]
    Api {
        /// `recover` or `restore`.
        action: &'static str,
        /// Why.
        source: client::Error,
    },
    /// A saved shard cannot be written or read back.
    #[error("{}: {reason}", path.display())]
    ShardFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Every saved shard was fed and the key is still not restored.
    #[error("the saved shards did not restore the root key")]
    NotRestored,
}

fn runtime() -> Result<tokio::runtime::Runtime, OperatorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OperatorError::Runtime)
}

/// A client of every serving replica, as the operator `role`.
async fn client(cluster: &ClusterFile, role: &'static str) -> Result<NexusClient, OperatorError> {
    let identity = cluster
        .svid_source(role)?
        .load(IDENTITY_TIMEOUT)
        .await
        .map_err(|source| OperatorError::Identity { role, source })?;
    let domain =
        TrustDomain::new(&cluster.trust_domain).map_err(|error| OperatorError::TrustDomain {
            domain: cluster.trust_domain.clone(),
            reason: error.to_string(),
        })?;
    let endpoints: Vec<_> = cluster
        .serving_replicas()
        .map(|(_, replica)| replica.api_addr)
        .collect();
    if endpoints.is_empty() {
        return Err(OperatorError::NoReplica);
    }
    NexusClient::new(
        identity,
        TrustRoots::single(domain),
        Settings::new(endpoints),
    )
    .map_err(|source| OperatorError::Api {
        action: role,
        source,
    })
}

/// Writes `spike.recovery.<i>.txt` files (mode 0600), like `spike operator recover`.
pub fn save_recovery_shards(cluster: &ClusterFile) -> Result<(), OperatorError> {
    let dir = cluster.dir.join("recovery");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|error| OperatorError::ShardFile {
            path: dir.clone(),
            reason: error.to_string(),
        })?;
    runtime()?.block_on(async {
        let shares = client(cluster, "recover")
            .await?
            .recover()
            .await
            .map_err(|source| OperatorError::Api {
                action: "recover",
                source,
            })?;
        for share in &shares {
            let line = zeroize::Zeroizing::new(recovery_line::format(share));
            write_private(
                &dir.join(format!("spike.recovery.{}.txt", share.index().get())),
                line.as_bytes(),
            )?;
        }
        Ok(())
    })
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), OperatorError> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.write_all(b"\n")
        })
        .map_err(|error| OperatorError::ShardFile {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

/// Feeds the saved shards to the leader, one at a time, until it says the
/// key is restored (the client retries while the leader still settles).
pub fn restore(cluster: &ClusterFile) -> Result<(), OperatorError> {
    let dir = cluster.dir.join("recovery");
    runtime()?.block_on(async {
        let client = client(cluster, "restore").await?;
        for index in 1..=cluster.shares {
            let path = dir.join(format!("spike.recovery.{index}.txt"));
            let Ok(line) = fs::read_to_string(&path) else {
                continue;
            };
            let share = recovery_line::parse(&line).map_err(|error| OperatorError::ShardFile {
                path: path.clone(),
                reason: error.to_string(),
            })?;
            let restored = client
                .restore(&share)
                .await
                .map_err(|source| OperatorError::Api {
                    action: "restore",
                    source,
                })?;
            if restored.restored {
                return Ok(());
            }
        }
        Err(OperatorError::NotRestored)
    })
}
