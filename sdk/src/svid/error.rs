use std::path::PathBuf;

use crate::identity::Role;

/// Why a process has no usable identity. Each variant is a one-line message
/// an operator can act on; none contains key material.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Configuration: neither a Workload API socket nor SVID files were given.
    #[error(
        "no SVID source: set SPIFFE_ENDPOINT_SOCKET (or --spiffe-endpoint-socket), or all of \
         SPIKE_SVID_CERT_FILE, SPIKE_SVID_KEY_FILE and SPIKE_SVID_BUNDLE_FILE"
    )]
    NoSource,
    /// Configuration: some but not all of the SVID file paths were given.
    #[error("SVID files: {missing} is not set (certificate, key and bundle go together)")]
    IncompleteFiles {
        /// The missing setting.
        missing: &'static str,
    },
    /// Local: an SVID file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    ReadFile {
        /// Which file: certificate, private key or bundle.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Local: a file is not the PEM it should be.
    #[error("{what} file {path} is malformed: {reason}")]
    MalformedPem {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong, never the file's content.
        reason: String,
    },
    /// Source: the SVID has no certificates.
    #[error("the SVID certificate chain is empty")]
    EmptyChain,
    /// Source: the leaf certificate carries no valid SPIFFE ID.
    #[error("the SVID leaf certificate has no valid SPIFFE ID URI SAN: {reason}")]
    NotASvid {
        /// The parser's reason.
        reason: String,
    },
    /// Source: the private key cannot be used for TLS.
    #[error("the SVID private key is not usable: {reason}")]
    UnusableKey {
        /// rustls' reason (names the key type, never its bytes).
        reason: String,
    },
    /// Source: the private key does not belong to the leaf certificate.
    #[error("the SVID private key does not match its certificate")]
    KeyMismatch,
    /// Source: a bundle certificate is not a usable trust anchor.
    #[error("bundle for trust domain {trust_domain} is invalid: {reason}")]
    InvalidBundle {
        /// The bundle's trust domain.
        trust_domain: String,
        /// What is wrong.
        reason: String,
    },
    /// Source: there is no bundle for the SVID's own trust domain.
    #[error("no trust bundle for the SVID's own trust domain {trust_domain}")]
    NoOwnBundle {
        /// The SVID's trust domain.
        trust_domain: String,
    },
    /// Source: the SVID does not chain to its own trust domain's bundle
    /// (wrong CA, expired, not yet valid).
    #[error("SVID {spiffe_id} does not verify against its trust bundle: {reason}")]
    SvidNotTrusted {
        /// The SVID's SPIFFE ID.
        spiffe_id: String,
        /// The verifier's reason.
        reason: String,
    },
    /// Configuration: the wanted SPIFFE ID (SPIKE_SPIFFE_ID) is not one.
    #[error("SPIKE_SPIFFE_ID (--spiffe-id) {text:?} is not a SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The text as given.
        text: String,
        /// The parser's reason.
        reason: String,
    },
    /// Configuration: the Workload API endpoint is not a valid address.
    #[error("Workload API endpoint {endpoint:?} is invalid: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Environment: the Workload API did not deliver an SVID in time.
    #[error("Workload API at {endpoint} is unavailable: {reason}")]
    WorkloadApiUnavailable {
        /// The endpoint.
        endpoint: String,
        /// What happened.
        reason: String,
    },
    /// Configuration: the SVID is valid but not the role this process plays.
    #[error("SVID {spiffe_id} is not a SPIKE {expected} identity under the configured trust roots")]
    WrongRole {
        /// The SVID's SPIFFE ID.
        spiffe_id: String,
        /// The role this process needs.
        expected: Role,
    },
}
