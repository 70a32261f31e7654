//! A development certificate authority that mints X.509 SVIDs.
//!
//! For development and tests only: its key sits in a file next to the
//! certificates. Production SVIDs come from SPIRE or another SPIFFE issuer.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, string::Ia5String,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use spike_sdk::identity::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

/// How long a dev CA certificate is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Default lifetime of a minted SVID.
pub const SVID_TTL_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Back-dating of `notBefore`, so small clock differences between processes
/// do not make a fresh SVID "not yet valid".
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// Errors minting or loading dev certificates.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// rcgen refused the parameters or the key.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
    /// A SPIFFE ID or trust domain is not valid.
    #[error("invalid SPIFFE name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The SPIFFE ID is not in the CA's trust domain.
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignId {
        /// The ID asked for.
        id: String,
        /// The CA's trust domain.
        trust_domain: String,
    },
}

/// A minted SVID: DER chain (leaf first) and PKCS#8 key, plus PEM forms.
#[derive(Clone)]
pub struct MintedSvid {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// DER certificate chain, leaf first.
    pub chain_der: Vec<Vec<u8>>,
    /// DER PKCS#8 private key.
    pub key_pkcs8_der: Vec<u8>,
    /// PEM certificate chain.
    pub chain_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
}

impl std::fmt::Debug for MintedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedSvid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .finish_non_exhaustive()
    }
}

/// A dev CA for one trust domain.
pub struct DevCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

impl DevCa {
    /// A new CA with a fresh P-256 key.
    pub fn generate(trust_domain: &str) -> Result<Self, CaError> {
        let trust_domain = parse_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "SPIKE development");
        name.push(
            DnType::CommonName,
            format!("SPIKE dev CA for {}", trust_domain.as_str()),
        );
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(ia5(&format!(
            "spiffe://{}",
            trust_domain.as_str()
        ))?)];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - CLOCK_SKEW_ALLOWANCE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        let key_pem = key.serialize_pem();
        Ok(Self {
            trust_domain,
            issuer: Issuer::new(params, key),
            cert_der,
            cert_pem,
            key_pem,
        })
    }

    /// A CA loaded from its PEM certificate and key.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let trust_domain = parse_trust_domain(trust_domain)?;
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let cert_der = pem_to_der(cert_pem)?;
        Ok(Self {
            trust_domain,
            issuer,
            cert_der,
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA's trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA certificate (the trust bundle), DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA key, PEM (dev only; written with mode 0600).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Mints an SVID for `spiffe_id`, valid from a minute ago for `ttl`.
    pub fn mint(&self, spiffe_id: &str, ttl: Duration) -> Result<MintedSvid, CaError> {
        let now = OffsetDateTime::now_utc();
        self.mint_with_validity(spiffe_id, now - CLOCK_SKEW_ALLOWANCE, now + ttl)
    }

    /// Mints an SVID with an explicit validity window (tests mint expired
    /// and not-yet-valid SVIDs with it).
    pub fn mint_with_validity(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<MintedSvid, CaError> {
        let id = SpiffeId::new(spiffe_id).map_err(|e| CaError::InvalidName {
            name: spiffe_id.to_owned(),
            reason: e.to_string(),
        })?;
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                trust_domain: self.trust_domain.as_str().to_owned(),
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "SPIKE development");
        params.distinguished_name = name;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.subject_alt_names = vec![SanType::URI(ia5(&id.to_string())?)];
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(MintedSvid {
            spiffe_id: id,
            chain_der: vec![cert.der().to_vec()],
            key_pkcs8_der: key.serialize_der(),
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn parse_trust_domain(name: &str) -> Result<TrustDomain, CaError> {
    TrustDomain::new(name).map_err(|e| CaError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn ia5(text: &str) -> Result<Ia5String, CaError> {
    Ia5String::try_from(text).map_err(|e| CaError::InvalidName {
        name: text.to_owned(),
        reason: e.to_string(),
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // A dev CA: if the OS RNG fails we still want distinct serials, and the
    // time-based fallback gives them.
    if spike_sdk::crypto::random::fill(&mut bytes).is_err() {
        bytes = OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes();
    }
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn pem_to_der(pem: &str) -> Result<Vec<u8>, CaError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|_| CaError::Generation(rcgen::Error::CouldNotParseCertificate))
}
