//! gRPC channels over our mTLS (Nexus to keepers, Nexus to Nexus).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tonic::transport::{Channel, Endpoint};

use super::connect_server;

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

/// A channel could not open a connection (TCP connect, TLS handshake or the
/// server's identity failed, or the connect timeout passed). The request
/// that needed the connection never left this process, so sending it again
/// cannot apply it twice. The channel's connector returns it, and it stays
/// in the source chain of the [`tonic::Status`] the call fails with: find
/// it with [`ConnectFailed::in_chain`], never by the status's text.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {address}: {source}")]
pub struct ConnectFailed {
    /// The server's address.
    pub address: SocketAddr,
    /// What failed.
    #[source]
    pub source: std::io::Error,
}

impl ConnectFailed {
    /// Whether `error` or any error in its source chain is a
    /// [`ConnectFailed`]: the call that failed with it was never sent.
    pub fn in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
        std::iter::successors(Some(error), |error| error.source()).any(|error| error.is::<Self>())
    }
}

/// A lazily connecting channel to `address` that presents our SVID and
/// accepts the server only if `config`'s authorizer does. The channel
/// reconnects by itself and is cheap to clone: keep one per peer. A call
/// that fails because no connection could be made carries a
/// [`ConnectFailed`].
pub fn grpc_channel(
    address: SocketAddr,
    mut config: ClientConfig,
    options: ChannelOptions,
) -> Channel {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    // The connect timeout is applied here rather than by the endpoint, so
    // that every way a connection can fail to open is a `ConnectFailed`.
    let connector = tower::service_fn(move |_uri| {
        let config = config.clone();
        async move {
            let connected =
                tokio::time::timeout(options.connect_timeout, connect_server(address, config))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no connection within {:?}", options.connect_timeout),
                        ))
                    });
            let connection = connected.map_err(|source| ConnectFailed { address, source })?;
            tracing::trace!(server = %connection.server().spiffe_id, %address, "gRPC connection established");
            Ok::<_, ConnectFailed>(TokioIo::new(connection))
        }
    });
    // The scheme is a formality: TLS happens in the connector.
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap_or_else(|_| unreachable!("a socket address always forms a valid URI"))
        .timeout(options.request_timeout)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_interval)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector)
}
