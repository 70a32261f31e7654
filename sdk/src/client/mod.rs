//! Clients for the SPIKE API (feature `client`).
//!
//! - [`NexusClient`]: what applications, the `spike` CLI, the benchmark and
//!   the fault-injection harness use. Leader discovery, pooled HTTP/2
//!   connections, bounded retries, exactly-once writes, typed requests and
//!   answers ([`crate::api`]), typed errors.
//! - [`HttpsClient`]: one raw request to one node over its own HTTP/1.1
//!   connection, as SPIKE's Go clients send them, the status and bytes
//!   returned as they are: for tests of the wire itself.
//! - [`endpoints`]: API URLs (`SPIKE_NEXUS_API_URL`, `SPIKE_NEXUS_API_URLS`)
//!   to addresses.

pub mod endpoints;
mod error;
mod nexus;
mod operations;
mod pool;
mod session;
mod transfer;

pub use error::Error;
pub use nexus::{NexusClient, RetryPolicy, Settings, TRANSFER_TIMEOUT_DEFAULT};
pub use pool::CONNECTION_AGE_MAX;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use rustls::ClientConfig;

use crate::identity::PeerAuthorizer;
use crate::svid::Identity;
use crate::tls::{TlsConfigError, client_config, connect};

/// Longest a whole request (connect, TLS, send, receive) may take by default.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Largest response body read by default.
pub const RESPONSE_SIZE_MAX_BYTES: usize = 8 * 1024 * 1024;

/// A raw reply: status, headers and body bytes.
#[derive(Debug, Clone)]
pub struct RawReply {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: hyper::HeaderMap,
    /// The body.
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or the TLS handshake failed (including a server with the
    /// wrong SPIFFE ID).
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The server.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The HTTP exchange failed after connecting: the request may or may not
    /// have been processed.
    #[error("request to {address} failed: {reason}")]
    Exchange {
        /// The server.
        address: SocketAddr,
        /// Why.
        reason: String,
    },
    /// No reply in time: the request may or may not have been processed.
    #[error("request to {address} timed out after {timeout:?}")]
    Timeout {
        /// The server.
        address: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
}

/// One request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// `POST` for every SPIKE route.
    pub method: &'a str,
    /// Path and `?action=`.
    pub path_and_query: &'a str,
    /// `application/json`, or `application/octet-stream` for cipher streams.
    pub content_type: &'a str,
    /// The body.
    pub body: Vec<u8>,
    /// Extra headers.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Posts JSON to SPIKE API servers as one identity.
#[derive(Clone)]
pub struct HttpsClient {
    config: Arc<ClientConfig>,
    timeout: Duration,
    response_limit: usize,
}

impl HttpsClient {
    /// A client presenting `identity`, accepting only servers `expect` admits.
    pub fn new(identity: Identity, expect: PeerAuthorizer) -> Result<Self, TlsConfigError> {
        let mut config = client_config(identity, expect)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            timeout: REQUEST_TIMEOUT_DEFAULT,
            response_limit: RESPONSE_SIZE_MAX_BYTES,
        })
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client reading responses up to `bytes` long (backups).
    pub fn with_response_limit(mut self, bytes: usize) -> Self {
        self.response_limit = bytes;
        self
    }

    /// Sends any request and returns the raw reply.
    pub async fn send(
        &self,
        address: SocketAddr,
        request: Request<'_>,
    ) -> Result<RawReply, ClientError> {
        tokio::time::timeout(self.timeout, self.exchange(address, request))
            .await
            .map_err(|_| ClientError::Timeout {
                address,
                timeout: self.timeout,
            })?
    }

    async fn exchange(
        &self,
        address: SocketAddr,
        request: Request<'_>,
    ) -> Result<RawReply, ClientError> {
        let (stream, _) =
            connect(address, self.config.clone())
                .await
                .map_err(|e| ClientError::Connect {
                    address,
                    reason: e.to_string(),
                })?;
        let failed = |reason: String| ClientError::Exchange { address, reason };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| failed(e.to_string()))?;
        tokio::spawn(connection);
        let http_request =
            build_request(request, address, false).map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        read_reply(response, self.response_limit)
            .await
            .map_err(failed)
    }
}

/// The hyper request for `request` to `address`. HTTP/1.1 names the
/// server in `host` with a path-only URI; HTTP/2 (`absolute_uri`) carries
/// the scheme and authority in the URI instead.
pub(crate) fn build_request(
    request: Request<'_>,
    address: SocketAddr,
    absolute_uri: bool,
) -> Result<hyper::Request<Full<Bytes>>, hyper::http::Error> {
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .header("content-type", request.content_type);
    builder = if absolute_uri {
        builder.uri(format!("https://{address}{}", request.path_and_query))
    } else {
        builder
            .uri(request.path_and_query)
            .header("host", address.to_string())
    };
    for (name, value) in request.headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::from(request.body)))
}

/// Status, headers and at most `limit` bytes of body.
pub(crate) async fn read_reply(
    response: hyper::Response<hyper::body::Incoming>,
    limit: usize,
) -> Result<RawReply, String> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(RawReply {
        status,
        headers,
        bytes: bytes.to_vec(),
    })
}
