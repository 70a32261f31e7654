//! SVIDs from the SPIFFE Workload API (SPIRE's agent, or the project's dev
//! server), through the `spiffe` crate's `X509Source`: SVIDs and bundles
//! rotate in the background and new handshakes use them at once.
//!
//! A Workload API may give one workload several SVIDs (SPIRE does when
//! several registration entries match it). Without a wanted SPIFFE ID the
//! first is used, as every SPIFFE library does; with one, exactly that ID
//! is used, and a rotation that no longer offers it is refused (the
//! current SVID stays until it expires).
//!
//! A Workload API that answers but issues nothing (no registration entry
//! matches the process) looks like a slow one from outside, so while the
//! first SVID is awaited the process says every few seconds what the
//! Workload API answered, and gives up after the caller's timeout.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::x509_source::SvidPicker;
use spiffe::{WorkloadApiClient, X509Source, X509Svid};
use tokio::sync::watch;

use super::{Identity, IdentityError, SvidMaterial};
use crate::identity::SpiffeId;

/// The first report of a wait comes after this long; later ones follow at
/// the same pace.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(2);
/// Longest a diagnostic fetch may take (it only feeds a log line).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `endpoint`, waits at most `timeout` for the first SVID
/// (the one named `wanted`, if given), and follows rotations until the
/// returned identity is dropped.
pub async fn connect(
    endpoint: &str,
    wanted: Option<&SpiffeId>,
    timeout: Duration,
) -> Result<Identity, IdentityError> {
    check_socket_exists(endpoint)?;
    let unavailable = |reason: String| IdentityError::WorkloadApiUnavailable {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let mut builder = X509Source::builder()
        .endpoint(endpoint)
        .initial_sync_timeout(timeout);
    if let Some(wanted) = wanted {
        builder = builder.picker(ById(wanted.to_string()));
    }
    let began = tokio::time::Instant::now();
    // The reports run beside the build, so a slow probe never holds the
    // first SVID back.
    let last_answer = std::sync::Mutex::new(None::<String>);
    let reports = async {
        let mut every = tokio::time::interval_at(began + WAIT_REPORT_EVERY, WAIT_REPORT_EVERY);
        loop {
            every.tick().await;
            let answer = probe(endpoint, wanted).await;
            tracing::warn!(
                endpoint,
                wanted = wanted.map(ToString::to_string),
                waited_s = began.elapsed().as_secs(),
                gives_up_after_s = timeout.as_secs(),
                uid = rustix::process::getuid().as_raw(),
                "no SVID yet from the Workload API: {answer}"
            );
            *last_answer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(answer);
        }
    };
    let source = tokio::select! {
        built = builder.build() => built,
        never = reports => never,
    };
    let last_answer = last_answer
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let source = source.map_err(|error| {
        let reason = match last_answer {
            Some(answer) => format!("{error} (last answer: {answer})"),
            None => error.to_string(),
        };
        unavailable(reason)
    })?;
    let material = material_of(&source, endpoint)?;
    let (sender, receiver) = watch::channel(Arc::new(material));
    let refresher = tokio::spawn(follow(source, endpoint.to_owned(), sender));
    Ok(Identity::refreshed(receiver, refresher.abort_handle()))
}

/// Picks the SVID whose SPIFFE ID is the wanted one.
#[derive(Debug)]
struct ById(String);

impl SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids
            .iter()
            .position(|svid| svid.spiffe_id().to_string() == self.0)
    }
}

/// What the Workload API answers this process right now, in words: why
/// there is no (wanted) SVID yet.
async fn probe(endpoint: &str, wanted: Option<&SpiffeId>) -> String {
    let fetch = async {
        let client = WorkloadApiClient::connect_to(endpoint)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        client
            .fetch_all_x509_svids()
            .await
            .map_err(|e| format!("it answered: {e}"))
    };
    match tokio::time::timeout(PROBE_TIMEOUT, fetch).await {
        Err(_) => format!("it did not answer within {PROBE_TIMEOUT:?}"),
        Ok(Err(reason)) => format!("{reason} (no registration entry matches this process?)"),
        Ok(Ok(svids)) => {
            let offered: Vec<String> = svids.iter().map(|s| s.spiffe_id().to_string()).collect();
            match wanted {
                Some(wanted) => format!(
                    "it offers [{}] but not {wanted} (SPIKE_SPIFFE_ID)",
                    offered.join(", ")
                ),
                None => format!("it now offers [{}]", offered.join(", ")),
            }
        }
    }
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

async fn follow(source: X509Source, endpoint: String, sender: watch::Sender<Arc<SvidMaterial>>) {
    let mut updates = source.updated();
    while updates.changed().await.is_ok() {
        match material_of(&source, &endpoint) {
            Ok(material) => {
                if same_leaf(&sender.borrow(), &material) {
                    tracing::info!(spiffe_id = %material.spiffe_id(), "Workload API updated the trust bundles");
                } else {
                    tracing::info!(spiffe_id = %material.spiffe_id(), "Workload API rotated the SVID");
                }
                if sender.send(Arc::new(material)).is_err() {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "rotated SVID rejected; keeping the current one until it expires");
            }
        }
    }
    source.shutdown().await;
}

/// Whether two materials carry the same SVID (a bundle-only update).
fn same_leaf(a: &SvidMaterial, b: &SvidMaterial) -> bool {
    let leaf = |material: &SvidMaterial| {
        material
            .certified_key()
            .end_entity_cert()
            .map(|cert| cert.as_ref().to_vec())
            .ok()
    };
    leaf(a) == leaf(b)
}

fn material_of(source: &X509Source, endpoint: &str) -> Result<SvidMaterial, IdentityError> {
    let unavailable = |reason: String| IdentityError::WorkloadApiUnavailable {
        endpoint: endpoint.to_owned(),
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
