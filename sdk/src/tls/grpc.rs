//! gRPC channels over our mTLS (Nexus to keepers, Nexus to Nexus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use super::connect;

/// Timeouts and keepalives of a gRPC channel. Every one is bounded.
#[derive(Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// Longest a TCP connect plus TLS handshake may take.
    pub connect_timeout: Duration,
    /// Longest one request may take.
    pub request_timeout: Duration,
    /// HTTP/2 ping interval; a healed partition is noticed within about
    /// twice this.
    pub keepalive_interval: Duration,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(5),
        }
    }
}

/// A lazily connecting channel to `address` that presents our SVID and
/// accepts the server only if `config`'s authorizer does. The channel
/// reconnects by itself and is cheap to clone: keep one per peer.
pub fn grpc_channel(
    address: SocketAddr,
    mut config: ClientConfig,
    options: ChannelOptions,
) -> Channel {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let connector = tower::service_fn(move |_uri| {
        let config = config.clone();
        async move {
            let (stream, peer) = connect(address, config).await?;
            tracing::trace!(server = %peer.spiffe_id, %address, "gRPC connection established");
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The scheme is a formality: TLS happens in the connector.
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap_or_else(|_| unreachable!("a socket address always forms a valid URI"))
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_interval)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}
