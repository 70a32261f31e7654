//! One multiplexed HTTP/2 connection per Nexus node, reused by every
//! request, so a request pays no TCP or TLS handshake. A connection is
//! replaced when it closes, after [`CONNECTION_AGE_MAX`], and once the
//! server's SVID has expired, so a rotated SVID (ours or the server's) is
//! in use within that bound, and an expired server is never trusted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

use hyper::client::conn::http2::SendRequest;
use rustls::ClientConfig;

use super::transfer::{RequestBody, write_body};
use super::{ClientError, RawReply, Request, build_request, read_reply};
use crate::tls::connect_server;

/// Longest one pooled connection is used before a fresh handshake.
pub const CONNECTION_AGE_MAX: Duration = Duration::from_secs(600);

struct Connection {
    sender: SendRequest<RequestBody>,
    opened: Instant,
    /// The server's chain expires then.
    server_expires_at: SystemTime,
}

/// HTTP/2 connections to Nexus nodes, keyed by address.
/// Ordered, so they are dropped (and their connections closed) in the
/// same order every time: the deterministic simulator depends on it.
pub(crate) struct Pool {
    config: Arc<ClientConfig>,
    connections: Mutex<BTreeMap<SocketAddr, Connection>>,
    connect_timeout: Duration,
    timeout: Duration,
    response_limit: usize,
}

impl Pool {
    pub(crate) fn new(
        mut config: ClientConfig,
        connect_timeout: Duration,
        timeout: Duration,
        response_limit: usize,
    ) -> Self {
        config.alpn_protocols = vec![b"h2".to_vec()];
        Self {
            config: Arc::new(config),
            connections: Mutex::new(BTreeMap::new()),
            connect_timeout,
            timeout,
            response_limit,
        }
    }

    /// Sends one request to `address` within the timeout.
    pub(crate) async fn send(
        &self,
        address: SocketAddr,
        request: Request<'_>,
    ) -> Result<RawReply, ClientError> {
        self.send_within(address, request, None, None, self.timeout)
            .await
            .map(|(reply, _)| reply)
    }

    /// Sends one request to `address` within `timeout`, its body read from
    /// `body` when given (else `request.body`); a 200 answer's body goes
    /// to the file in `out` (at most its limit of bytes) instead of
    /// memory; either goes over a connection of its own. Returns the reply
    /// and the length of its body.
    pub(crate) async fn send_within(
        &self,
        address: SocketAddr,
        request: Request<'_>,
        body: Option<RequestBody>,
        out: Option<(&mut tokio::fs::File, u64)>,
        timeout: std::time::Duration,
    ) -> Result<(RawReply, u64), ClientError> {
        let outcome =
            tokio::time::timeout(timeout, self.exchange(address, request, body, out)).await;
        let outcome = outcome.unwrap_or(Err(ClientError::Timeout { address, timeout }));
        if outcome.is_err() {
            // The connection may be wedged: later requests dial afresh.
            // Requests in flight on it keep their own handle and finish.
            self.forget(address);
        }
        outcome
    }

    fn forget(&self, address: SocketAddr) {
        self.lock().remove(&address);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SocketAddr, Connection>> {
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn sender(&self, address: SocketAddr) -> Result<SendRequest<RequestBody>, ClientError> {
        if let Some(connection) = self.lock().get(&address)
            && !connection.sender.is_closed()
            && connection.opened.elapsed() < CONNECTION_AGE_MAX
            && SystemTime::now() < connection.server_expires_at
        {
            return Ok(connection.sender.clone());
        }
        // Two callers may dial at once; the later connection wins the slot
        // and the other is dropped when its requests finish.
        let (sender, server_expires_at) = self.dial(address).await?;
        self.lock().insert(
            address,
            Connection {
                sender: sender.clone(),
                opened: Instant::now(),
                server_expires_at,
            },
        );
        Ok(sender)
    }

    /// A new connection to `address`, not pooled: it closes once its
    /// sender is dropped.
    async fn dial(
        &self,
        address: SocketAddr,
    ) -> Result<(SendRequest<RequestBody>, SystemTime), ClientError> {
        let dial = async {
            let stream = connect_server(address, self.config.clone())
                .await
                .map_err(|e| e.to_string())?;
            let server_expires_at = stream.expires_at();
            let (sender, connection) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                hyper_util::rt::TokioIo::new(stream),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok((sender, connection, server_expires_at))
        };
        let (sender, connection, server_expires_at) =
            tokio::time::timeout(self.connect_timeout, dial)
                .await
                .unwrap_or_else(|_| Err(format!("no connection within {:?}", self.connect_timeout)))
                .map_err(|reason| ClientError::Connect { address, reason })?;
        tokio::spawn(connection);
        Ok((sender, server_expires_at))
    }

    async fn exchange(
        &self,
        address: SocketAddr,
        request: Request<'_>,
        body: Option<RequestBody>,
        out: Option<(&mut tokio::fs::File, u64)>,
    ) -> Result<(RawReply, u64), ClientError> {
        // A transfer (a file up or down) gets a connection of its own: a
        // pooled one may be near the age at which the server ends it.
        let mut sender = if body.is_some() || out.is_some() {
            self.dial(address).await?.0
        } else {
            self.sender(address).await?
        };
        let failed = |reason: String| ClientError::Exchange { address, reason };
        sender.ready().await.map_err(|e| failed(e.to_string()))?;
        let http_request =
            build_request(request, address, true).map_err(|e| failed(e.to_string()))?;
        let http_request = match body {
            Some(body) => http_request.map(|_| body),
            None => http_request.map(RequestBody::from),
        };
        let response = sender
            .send_request(http_request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        match out {
            Some((file, limit)) if response.status() == hyper::StatusCode::OK => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let written = write_body(response, file, limit).await.map_err(failed)?;
                let reply = RawReply {
                    status,
                    headers,
                    bytes: Vec::new(),
                };
                Ok((reply, written))
            }
            _ => {
                let reply = read_reply(response, self.response_limit)
                    .await
                    .map_err(failed)?;
                let length = reply.bytes.len() as u64;
                Ok((reply, length))
            }
        }
    }
}
