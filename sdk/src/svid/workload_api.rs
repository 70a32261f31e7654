//! SVIDs from the SPIFFE Workload API (SPIRE's agent, or the project's dev
//! server), through the `spiffe` crate's `X509Source`: SVIDs and bundles
//! rotate in the background and new handshakes use them at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::X509Source;
use tokio::sync::watch;

use super::{Identity, IdentityError, SvidMaterial};

/// Connects to `endpoint`, waits at most `timeout` for the first SVID, and
/// follows rotations until the returned identity is dropped.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Identity, IdentityError> {
    check_socket_exists(endpoint)?;
    let unavailable = |reason: String| IdentityError::WorkloadApiUnavailable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let source = X509Source::builder()
        .endpoint(endpoint)
        .initial_sync_timeout(timeout)
        .build()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let material = material_of(&source)?;
    let (sender, receiver) = watch::channel(Arc::new(material));
    let refresher = tokio::spawn(follow(source, sender));
    Ok(Identity::refreshed(receiver, refresher.abort_handle()))
}

/// A missing socket file would make the source retry until the timeout;
/// say so at once instead.
fn check_socket_exists(endpoint: &str) -> Result<(), IdentityError> {
    let Some(path) = endpoint.strip_prefix("unix://") else {
        if endpoint.starts_with("tcp://") {
            return Ok(());
        }
        return Err(IdentityError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: "expected unix:///path or tcp://ip:port".to_owned(),
        });
    };
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(IdentityError::WorkloadApiUnavailable {
            endpoint: endpoint.to_owned(),
            reason: format!("socket {path} does not exist"),
        })
    }
}

async fn follow(source: X509Source, sender: watch::Sender<Arc<SvidMaterial>>) {
    let mut updates = source.updated();
    while updates.changed().await.is_ok() {
        match material_of(&source) {
            Ok(material) => {
                tracing::info!(spiffe_id = %material.spiffe_id(), "Workload API rotated the SVID or bundles");
                if sender.send(Arc::new(material)).is_err() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rotated SVID rejected; keeping the current one");
            }
        }
    }
    source.shutdown().await;
}

fn material_of(source: &X509Source) -> Result<SvidMaterial, IdentityError> {
    let unavailable = |reason: String| IdentityError::WorkloadApiUnavailable {
        endpoint: "the Workload API".to_owned(),
        reason,
    };
    let svid = source.svid().map_err(|e| unavailable(e.to_string()))?;
    let bundles = source
        .bundle_set()
        .map_err(|e| unavailable(e.to_string()))?;
    let chain = svid
        .cert_chain()
        .iter()
        .map(|cert| CertificateDer::from(cert.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let bundles = bundles.iter().map(|(domain, bundle)| {
        let authorities = bundle
            .authorities()
            .iter()
            .map(|cert| CertificateDer::from(cert.as_bytes().to_vec()))
            .collect();
        (domain.clone(), authorities)
    });
    SvidMaterial::new(chain, key, bundles)
}
