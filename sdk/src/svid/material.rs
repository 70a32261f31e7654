use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::IdentityError;
use crate::identity::{SpiffeId, TrustDomain};
use crate::tls::crypto_provider;

/// One validated SVID with the trust bundles that came with it.
///
/// Construction checks everything a handshake would later trip over: the
/// leaf carries a SPIFFE ID, the key matches it and can sign, every bundle
/// is a valid set of trust anchors, and the SVID chains to the bundle of its
/// own trust domain and is within its validity period now. A rotated SVID
/// that fails any check is never published.
pub struct SvidMaterial {
    spiffe_id: SpiffeId,
    certified_key: Arc<CertifiedKey>,
    trust: BTreeMap<String, TrustAnchors>,
}

struct TrustAnchors {
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl SvidMaterial {
    /// Validates and assembles SVID material. `chain` starts with the leaf;
    /// `bundles` maps trust domains (ours and federated ones) to their CA
    /// certificates.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: impl IntoIterator<Item = (TrustDomain, Vec<CertificateDer<'static>>)>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
        let spiffe_id = spiffe::cert::spiffe_id_from_der(leaf.as_ref()).map_err(|e| {
            IdentityError::NotASvid {
                reason: e.to_string(),
            }
        })?;

        let provider = crypto_provider();
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            IdentityError::UnusableKey {
                reason: e.to_string(),
            }
        })?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            // rustls cannot compare every key type; the handshake signature
            // check still catches a mismatch for those.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(_) => return Err(IdentityError::KeyMismatch),
        }

        let mut trust = BTreeMap::new();
        for (domain, authorities) in bundles {
            let anchors = TrustAnchors::new(&domain, authorities)?;
            trust.insert(domain.as_str().to_owned(), anchors);
        }

        let material = Self {
            spiffe_id,
            certified_key: Arc::new(certified_key),
            trust,
        };
        material.verify_own_chain()?;
        Ok(material)
    }

    fn verify_own_chain(&self) -> Result<(), IdentityError> {
        let domain = self.spiffe_id.trust_domain_name();
        let anchors = self
            .trust
            .get(domain)
            .ok_or_else(|| IdentityError::NoOwnBundle {
                trust_domain: domain.to_owned(),
            })?;
        let chain = &self.certified_key.cert;
        let untrusted = |reason: String| IdentityError::SvidNotTrusted {
            spiffe_id: self.spiffe_id.to_string(),
            reason,
        };
        let (leaf, intermediates) = chain.split_first().ok_or(IdentityError::EmptyChain)?;
        let parsed = ParsedCertificate::try_from(leaf).map_err(|e| untrusted(e.to_string()))?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &anchors.roots,
            intermediates,
            UnixTime::now(),
            crypto_provider().signature_verification_algorithms.all,
        )
        .map_err(|e| untrusted(e.to_string()))
    }

    /// The SVID's SPIFFE ID.
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// When the SVID stops being valid: the earliest notAfter of its chain
    /// (`None` if a certificate of it does not parse, which a validated
    /// chain never has).
    pub fn expires_at(&self) -> Option<std::time::SystemTime> {
        crate::tls::chain_not_after(&self.certified_key.cert).ok()
    }

    /// The certificate chain and signing key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The trust anchors for `trust_domain`, if we have its bundle.
    pub fn roots_for(&self, trust_domain: &str) -> Option<&Arc<RootCertStore>> {
        self.trust.get(trust_domain).map(|anchors| &anchors.roots)
    }

    /// A verifier of client chains issued in `trust_domain`, if we have its bundle.
    pub(crate) fn client_verifier_for(
        &self,
        trust_domain: &str,
    ) -> Option<&Arc<dyn ClientCertVerifier>> {
        self.trust
            .get(trust_domain)
            .map(|anchors| &anchors.client_verifier)
    }

    /// The trust domains we hold bundles for.
    pub fn trust_domains(&self) -> impl Iterator<Item = &str> {
        self.trust.keys().map(String::as_str)
    }
}

impl TrustAnchors {
    fn new(
        domain: &TrustDomain,
        authorities: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidBundle {
            trust_domain: domain.as_str().to_owned(),
            reason,
        };
        if authorities.is_empty() {
            return Err(invalid("it holds no certificates".to_owned()));
        }
        let mut roots = RootCertStore::empty();
        for authority in authorities {
            roots.add(authority).map_err(|e| invalid(e.to_string()))?;
        }
        let roots = Arc::new(roots);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
                .build()
                .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            roots,
            client_verifier,
        })
    }
}

impl fmt::Debug for SvidMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SvidMaterial")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("trust_domains", &self.trust.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
