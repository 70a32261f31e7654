//! Saving the recovery shards after the first start and restoring them
//! after a total loss, through the API, as the recover and restore roles.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;
use spike_sdk::client::HttpsClient;
use spike_sdk::crypto::recovery_line;
use spike_sdk::crypto::{KeyShare, SecretBytes, ShareIndex};
use spike_sdk::identity::{PeerAuthorizer, Role, TrustDomain, TrustRoots};
use spike_sdk::svid::SvidSource;
use std::io::Write;

use crate::ClusterFile;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn client(cluster: &ClusterFile, role: &str) -> anyhow::Result<HttpsClient> {
    let socket = cluster.socket(role);
    let identity = SvidSource::WorkloadApi {
        endpoint: format!("unix://{}", socket.display()),
    }
    .load(Duration::from_secs(10))
    .await
    .with_context(|| format!("identity {role}"))?;
    let roots = TrustRoots::single(TrustDomain::new(&cluster.trust_domain)?);
    Ok(HttpsClient::new(
        identity,
        PeerAuthorizer::role(roots, Role::Nexus),
    )?)
}

fn first_api(cluster: &ClusterFile) -> anyhow::Result<SocketAddr> {
    cluster
        .processes
        .iter()
        .find(|process| process.role == "nexus" && process.serves())
        .and_then(|process| process.api_addr.as_deref())
        .context("no nexus")?
        .parse()
        .context("nexus address")
}

/// Writes `spike.recovery.<i>.txt` files (mode 0600), like `spike operator recover`.
pub fn save_recovery_shards(cluster: &ClusterFile) -> anyhow::Result<()> {
    let dir = cluster.dir.join("recovery");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    runtime()?.block_on(async {
        let client = client(cluster, "recover").await?;
        let reply = client
            .post_json(first_api(cluster)?, "/v1/operator/recover", &json!({}), &[])
            .await?;
        if reply.status != 200 {
            bail!("operator recover answered {}: {}", reply.status, reply.body);
        }
        let shards = reply.body["shards"]
            .as_object()
            .context("no shards in the reply")?;
        for (index, bytes) in shards {
            let value: Vec<u8> = bytes
                .as_array()
                .context("shard is not an array")?
                .iter()
                .map(|byte| {
                    byte.as_u64()
                        .and_then(|b| u8::try_from(b).ok())
                        .context("shard byte")
                })
                .collect::<anyhow::Result<_>>()?;
            let share = KeyShare::new(
                ShareIndex::new(index.parse()?)?,
                SecretBytes::from_slice(&value)
                    .map_err(|n| anyhow::anyhow!("shard of {n} bytes"))?,
            );
            write_private(
                &dir.join(format!("spike.recovery.{index}.txt")),
                recovery_line::format(&share).as_bytes(),
            )?;
        }
        Ok(())
    })
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.write_all(b"\n")?;
    Ok(())
}

/// Feeds the saved shards to the leader, one at a time, until it says the
/// key is restored.
pub fn restore(cluster: &ClusterFile) -> anyhow::Result<()> {
    let dir = cluster.dir.join("recovery");
    runtime()?.block_on(async {
        let client = client(cluster, "restore").await?;
        let address = first_api(cluster)?;
        for index in 1..=cluster.shares {
            let path = dir.join(format!("spike.recovery.{index}.txt"));
            let Ok(line) = fs::read_to_string(&path) else {
                continue;
            };
            let share =
                recovery_line::parse(&line).with_context(|| format!("{}", path.display()))?;
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
                if reply.status != 503 || attempts >= 50 {
                    break reply;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if reply.status != 200 {
                bail!("operator restore answered {}: {}", reply.status, reply.body);
            }
            if reply.body["restored"] == true {
                return Ok(());
            }
        }
        bail!("the saved shards did not restore the root key")
    })
}
