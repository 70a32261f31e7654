//! Mutual TLS on X.509 SVIDs.
//!
//! Both sides present the current SVID of an [`Identity`] and verify the
//! peer's chain against the bundle of the peer's trust domain, then ask a
//! [`PeerAuthorizer`] whether that SPIFFE ID may connect. Material is read
//! per handshake, so a rotated SVID or bundle applies to the next connection
//! without rebuilding any config. TLS 1.3 only, ring provider only.
//!
//! SVIDs carry no DNS names: a client authenticates the server by the SPIFFE
//! ID it expects (the role check), not by host name.
//!
//! No session is ever resumed, on either side: a resumed TLS 1.3 handshake
//! re-uses the first handshake's peer chain without verifying it again, so
//! an SVID that expired or whose CA left the bundle would keep getting in.
//! An established connection ends when its peer's chain expires or stops
//! verifying against a new bundle, and at the latest after a maximum age
//! (see [`TlsListener`]).

#[cfg(feature = "tonic")]
mod grpc;
mod limits;
mod listener;
mod resolver;
mod stats;
mod verifier;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};

use crate::identity::PeerAuthorizer;
use crate::svid::Identity;

#[cfg(feature = "tonic")]
pub use grpc::{ChannelOptions, ConnectFailed, grpc_channel};
pub use limits::{
    CONNECTIONS_MAX_DEFAULT, CONNECTIONS_PER_PEER_MAX_DEFAULT, ConnectionLimits,
    HANDSHAKES_PER_ADDRESS_MAX_DEFAULT, raise_descriptor_limit,
};
pub(crate) use listener::chain_not_after;
pub use listener::{
    CONNECTION_AGE_GRACE, CONNECTION_AGE_MAX_DEFAULT, HANDSHAKE_TIMEOUT, HANDSHAKES_IN_FLIGHT_MAX,
    Lapse, PeerIdentity, READY_CONNECTIONS_MAX, ServerConnection, TlsConnection, TlsListener,
    connect, connect_server,
};
pub use stats::{HandshakeFailure, LimitRefusal, ListenerStats};
pub use verifier::peer_spiffe_id;

/// The one crypto provider of every TLS config we build (ring).
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Errors building a TLS configuration (a protocol-version or provider
/// mismatch: a bug, not an operator mistake).
#[derive(Debug, thiserror::Error)]
#[error("cannot build TLS configuration: {0}")]
pub struct TlsConfigError(#[from] rustls::Error);

/// A server configuration that requires a client SVID, verifies it and
/// admits only peers `authorizer` accepts. Set `alpn_protocols` on the
/// result for HTTP servers.
pub fn server_config(
    identity: Identity,
    authorizer: PeerAuthorizer,
) -> Result<ServerConfig, TlsConfigError> {
    let verifier = Arc::new(verifier::SpiffeClientVerifier::new(
        identity.clone(),
        authorizer,
    ));
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver::SvidResolver::new(identity)));
    // No resumption: neither a stateful session cache nor TLS 1.3 tickets
    // (rustls's stateless ticketer is already off by default), so every
    // handshake runs the verifier above.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client configuration that presents our SVID and accepts only servers
/// whose SPIFFE ID `authorizer` accepts (a workload refuses a "Nexus" that
/// does not carry the Nexus role).
pub fn client_config(
    identity: Identity,
    authorizer: PeerAuthorizer,
) -> Result<ClientConfig, TlsConfigError> {
    let verifier = Arc::new(verifier::SpiffeServerVerifier::new(
        identity.clone(),
        authorizer,
    ));
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // our verifier checks the chain and the SPIFFE ID instead of a DNS name
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(resolver::SvidResolver::new(identity)));
    // Our servers issue no tickets; offering none also keeps this client
    // from resuming with any other server on a chain it verified before.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}
