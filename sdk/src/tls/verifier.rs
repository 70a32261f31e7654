use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};

use super::crypto_provider;
use crate::identity::{PeerAuthorizer, SpiffeId};
use crate::svid::{Identity, SvidMaterial};

/// The SPIFFE ID in a certificate's URI SAN, as a rustls error when absent
/// (the peer sent a certificate that is not an SVID).
pub fn peer_spiffe_id(certificate: &CertificateDer<'_>) -> Result<SpiffeId, Error> {
    spiffe::cert::spiffe_id_from_der(certificate.as_ref())
        .map_err(|e| Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e)))))
}

/// Verifies a client chain against `material`'s bundle for the leaf's trust
/// domain at `now`, returning the leaf's SPIFFE ID. The handshake calls it,
/// and so does an established connection when the bundle changes.
pub(super) fn verify_client_chain(
    material: &SvidMaterial,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<SpiffeId, Error> {
    // The ID only picks the bundle here; it is trusted once the chain
    // verifies against that bundle.
    let id = peer_spiffe_id(end_entity)?;
    let verifier = material
        .client_verifier_for(id.trust_domain_name())
        .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
    verifier.verify_client_cert(end_entity, intermediates, now)?;
    Ok(id)
}

fn rejected(reason: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(reason))))
}

/// Server side: verifies the client's SVID chain against the bundle of the
/// client's trust domain, then authorizes its SPIFFE ID.
#[derive(Debug)]
pub(super) struct SpiffeClientVerifier {
    identity: Identity,
    authorizer: PeerAuthorizer,
}

impl SpiffeClientVerifier {
    pub(super) fn new(identity: Identity, authorizer: PeerAuthorizer) -> Self {
        Self {
            identity,
            authorizer,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let id = verify_client_chain(&self.identity.current(), end_entity, intermediates, now)?;
        self.authorizer.authorize(&id).map_err(rejected)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        handshake_signature::schemes()
    }
}

/// Client side: verifies the server's SVID chain against the bundle of the
/// server's trust domain, then checks the server carries the SPIFFE ID we
/// expect. The TLS server name is ignored: SVIDs have no DNS SANs.
#[derive(Debug)]
pub(super) struct SpiffeServerVerifier {
    identity: Identity,
    authorizer: PeerAuthorizer,
}

impl SpiffeServerVerifier {
    pub(super) fn new(identity: Identity, authorizer: PeerAuthorizer) -> Self {
        Self {
            identity,
            authorizer,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id = peer_spiffe_id(end_entity)?;
        let material = self.identity.current();
        let roots = material
            .roots_for(id.trust_domain_name())
            .ok_or(Error::InvalidCertificate(CertificateError::UnknownIssuer))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            crypto_provider().signature_verification_algorithms.all,
        )?;
        self.authorizer.authorize(&id).map_err(rejected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        handshake_signature::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        handshake_signature::schemes()
    }
}

/// Handshake signatures are checked the same way on both sides: with the
/// provider's algorithms against the (already verified) peer certificate.
mod handshake_signature {
    use super::*;

    pub(super) fn tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    pub(super) fn tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &crypto_provider().signature_verification_algorithms,
        )
    }

    pub(super) fn schemes() -> Vec<SignatureScheme> {
        crypto_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
