//! SVIDs from PEM files, for users of spiffe-helper or cert-manager.
//!
//! The files are polled every [`FILE_POLL_INTERVAL`]; when their content
//! changes the new SVID is validated and, only if valid, published. The
//! bundle file holds the CA certificates of the SVID's own trust domain
//! (federated bundles need the Workload API).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::{Identity, IdentityError, SvidFiles, SvidMaterial};
use crate::identity::TrustDomain;

/// How often the SVID files are checked for changes.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest SVID file accepted; real ones are a few kilobytes.
pub const FILE_SIZE_MAX_BYTES: u64 = 1024 * 1024;

/// Loads the files once, then keeps watching them.
pub async fn watch(paths: SvidFiles) -> Result<Identity, IdentityError> {
    let (fingerprint, material) = load(&paths).await?;
    let (sender, receiver) = watch::channel(Arc::new(material));
    let refresher = tokio::spawn(refresh(paths, fingerprint, sender));
    Ok(Identity::refreshed(receiver, refresher.abort_handle()))
}

/// Reads and validates the three files, returning a digest of their bytes
/// (so the watcher can tell a change) and the material.
pub async fn load(paths: &SvidFiles) -> Result<([u8; 32], SvidMaterial), IdentityError> {
    let cert_pem = read("certificate", &paths.cert).await?;
    let key_pem = read("private key", &paths.key).await?;
    let bundle_pem = read("bundle", &paths.bundle).await?;
    let fingerprint = fingerprint(&cert_pem, &key_pem, &bundle_pem);

    let malformed = |what: &'static str, path: &Path, reason: String| IdentityError::MalformedPem {
        what,
        path: path.to_owned(),
        reason,
    };
    let chain = parse_certificates(&cert_pem)
        .map_err(|reason| malformed("certificate", &paths.cert, reason))?;
    let authorities = parse_certificates(&bundle_pem)
        .map_err(|reason| malformed("bundle", &paths.bundle, reason))?;
    // The pem error names the section, never key bytes.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| malformed("private key", &paths.key, e.to_string()))?;

    let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
    let spiffe_id =
        spiffe::cert::spiffe_id_from_der(leaf.as_ref()).map_err(|e| IdentityError::NotASvid {
            reason: e.to_string(),
        })?;
    let domain =
        TrustDomain::new(spiffe_id.trust_domain_name()).map_err(|e| IdentityError::NotASvid {
            reason: e.to_string(),
        })?;
    let material = SvidMaterial::new(chain, key, [(domain, authorities)])?;
    Ok((fingerprint, material))
}

async fn refresh(
    paths: SvidFiles,
    mut fingerprint: [u8; 32],
    sender: watch::Sender<Arc<SvidMaterial>>,
) {
    let mut interval = tokio::time::interval(FILE_POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match load(&paths).await {
            Ok((new_fingerprint, _)) if new_fingerprint == fingerprint => {}
            Ok((new_fingerprint, material)) => {
                tracing::info!(spiffe_id = %material.spiffe_id(), "SVID files changed; new SVID in use");
                fingerprint = new_fingerprint;
                if sender.send(Arc::new(material)).is_err() {
                    return;
                }
            }
            // Mid-rotation writers can leave a torn set of files for a moment;
            // keep serving the last good SVID and try again next tick.
            Err(error) => {
                tracing::warn!(%error, "SVID files not reloaded; keeping the current SVID")
            }
        }
    }
}

async fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, IdentityError> {
    let error = |source| IdentityError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(error)?.len();
    if size > FILE_SIZE_MAX_BYTES {
        return Err(IdentityError::MalformedPem {
            what,
            path: path.to_owned(),
            reason: format!("{size} bytes is over the {FILE_SIZE_MAX_BYTES}-byte limit"),
        });
    }
    tokio::fs::read(path)
        .await
        .map(Zeroizing::new)
        .map_err(error)
}

fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certificates.is_empty() {
        return Err("no CERTIFICATE section".to_owned());
    }
    Ok(certificates)
}

fn fingerprint(cert: &[u8], key: &[u8], bundle: &[u8]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for part in [cert, key, bundle] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest.finalize().into()
}
