//! Saving the recovery shards after the first start and restoring them
//! after a total loss, through the API, as the recover and restore roles.
//! Development convenience only: a production deployment never keeps
//! shards next to the data.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use spike_sdk::client::{ClientError, HttpsClient, JsonReply};
use spike_sdk::crypto::{CryptoError, KeyShare, SecretBytes, ShareIndex, recovery_line};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustDomain, TrustRoots};
use spike_sdk::svid::{IdentityError, SvidSource};
use spike_sdk::tls::TlsConfigError;

use crate::file::ClusterFile;

/// Longest wait for an operator identity from the Workload API.
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(10);
/// Restore attempts per shard while the leader still settles (503).
const RESTORE_ATTEMPTS_MAX: u32 = 50;
/// Pause between those attempts.
const RESTORE_RETRY_PAUSE: Duration = Duration::from_millis(100);

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
    /// The identity makes no TLS client.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The request did not get an answer.
    #[error(transparent)]
    Request(#[from] ClientError),
    /// The replica refused (or its reply lacks what it must hold).
    #[error("operator {action} answered {status}: {body}")]
    Refused {
        /// `recover` or `restore`.
        action: &'static str,
        /// The HTTP status.
        status: u16,
        /// The reply.
        body: String,
    },
    /// A shard in the reply is not one.
    #[error("a shard in the recover reply: {0}")]
    Shard(CryptoError),
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

/// `POST /v1/operator/recover`'s reply: shard bytes by share index.
#[derive(Deserialize)]
struct Recovered {
    shards: BTreeMap<u8, Vec<u8>>,
}

/// `POST /v1/operator/restore`'s reply, as far as read here.
#[derive(Deserialize)]
struct Restored {
    #[serde(default)]
    restored: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime, OperatorError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OperatorError::Runtime)
}

async fn client(cluster: &ClusterFile, role: &'static str) -> Result<HttpsClient, OperatorError> {
    let identity = SvidSource::WorkloadApi {
        endpoint: format!("unix://{}", cluster.socket(role).display()),
    }
    .load(IDENTITY_TIMEOUT)
    .await
    .map_err(|source| OperatorError::Identity { role, source })?;
    let domain =
        TrustDomain::new(&cluster.trust_domain).map_err(|error| OperatorError::TrustDomain {
            domain: cluster.trust_domain.clone(),
            reason: error.to_string(),
        })?;
    let roots = TrustRoots::single(domain);
    Ok(HttpsClient::new(
        identity,
        PeerAuthorizer::role(roots, Role::Nexus),
    )?)
}

fn first_api(cluster: &ClusterFile) -> Result<SocketAddr, OperatorError> {
    cluster
        .serving_replicas()
        .next()
        .map(|(_, replica)| replica.api_addr)
        .ok_or(OperatorError::NoReplica)
}

/// The reply's body as `T` if the status is 200, else [`OperatorError::Refused`].
fn accepted<T: for<'de> Deserialize<'de>>(
    action: &'static str,
    reply: JsonReply,
) -> Result<T, OperatorError> {
    let refused = |reply: &JsonReply| OperatorError::Refused {
        action,
        status: reply.status,
        body: reply.body.to_string(),
    };
    if reply.status != 200 {
        return Err(refused(&reply));
    }
    T::deserialize(&reply.body).map_err(|_| refused(&reply))
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
        let client = client(cluster, "recover").await?;
        let reply = client
            .post_json(first_api(cluster)?, "/v1/operator/recover", &json!({}), &[])
            .await?;
        let recovered: Recovered = accepted("recover", reply)?;
        for (index, bytes) in recovered.shards {
            let share = KeyShare::new(
                ShareIndex::new(index).map_err(OperatorError::Shard)?,
                SecretBytes::from_slice(&bytes).map_err(|length| OperatorError::Refused {
                    action: "recover",
                    status: 200,
                    body: format!("a shard of {length} bytes"),
                })?,
            );
            write_private(
                &dir.join(format!("spike.recovery.{index}.txt")),
                recovery_line::format(&share).as_bytes(),
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

/// Feeds the saved shards to the first replica (which forwards them to
/// the leader), one at a time, until it says the key is restored.
pub fn restore(cluster: &ClusterFile) -> Result<(), OperatorError> {
    let dir = cluster.dir.join("recovery");
    runtime()?.block_on(async {
        let client = client(cluster, "restore").await?;
        let address = first_api(cluster)?;
        for index in 1..=cluster.shares {
            let path = dir.join(format!("spike.recovery.{index}.txt"));
            let Ok(line) = fs::read_to_string(&path) else {
                continue;
            };
            let share = recovery_line::parse(&line).map_err(|error| OperatorError::ShardFile {
                path: path.clone(),
                reason: error.to_string(),
            })?;
            let body = json!({
                "id": share.index().get(),
                "shard": share.expose_secret().to_vec(),
            });
            // The leader may still be settling after the restart.
            let mut attempts = 0;
            let reply = loop {
                let reply = client
                    .post_json(address, "/v1/operator/restore", &body, &[])
                    .await?;
                attempts += 1;
                if reply.status != 503 || attempts >= RESTORE_ATTEMPTS_MAX {
                    break reply;
                }
                tokio::time::sleep(RESTORE_RETRY_PAUSE).await;
            };
            let restored: Restored = accepted("restore", reply)?;
            if restored.restored {
                return Ok(());
            }
        }
        Err(OperatorError::NotRestored)
    })
}
