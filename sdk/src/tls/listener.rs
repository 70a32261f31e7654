//! An mTLS listener that yields connections together with the verified
//! SPIFFE ID of the peer, for axum and tonic servers alike.
//!
//! Handshakes run in their own tasks, bounded in number and time, so a slow
//! or hostile client cannot stall `accept` for everybody else; connections
//! are bounded by [`ConnectionLimits`] (in total, per peer, handshakes per
//! address).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::limits::{ConnectionGate, ConnectionLimits, ConnectionPermit};
use super::verifier::peer_spiffe_id;
use crate::identity::SpiffeId;
use crate::net::{self, Listener, Stream};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further TCP connections wait in the
/// kernel's backlog.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Most established connections waiting for the server to take them.
pub const READY_CONNECTIONS_MAX: usize = 64;

/// The authenticated peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's SPIFFE ID, verified against the trust bundle and admitted
    /// by the listener's authorizer.
    pub spiffe_id: SpiffeId,
    /// The peer's address.
    pub address: SocketAddr,
}

/// A server-side mTLS connection and its verified peer.
pub struct TlsConnection {
    stream: server::TlsStream<Stream>,
    peer: PeerIdentity,
    /// The connection's place under the listener's limits.
    _permit: ConnectionPermit,
}

impl std::fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnection")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    /// The verified peer.
    pub fn peer(&self) -> &PeerIdentity {
        &self.peer
    }
}

/// Accepts mTLS connections in the background; [`TlsListener::accept`]
/// returns them once their handshake has succeeded.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<TlsConnection>,
    local_address: SocketAddr,
    local_id: SpiffeId,
    /// Held for its `Drop`: accepting stops with the listener.
    _accept_task: AcceptTask,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config` under the default
    /// [`ConnectionLimits`]. `local_id` is our own SPIFFE ID, reported by
    /// [`TlsListener::local_identity`].
    pub fn new(
        listener: Box<dyn Listener>,
        config: Arc<ServerConfig>,
        local_id: SpiffeId,
    ) -> io::Result<Self> {
        Self::with_limits(listener, config, local_id, ConnectionLimits::DEFAULT)
    }

    /// Like [`TlsListener::new`], under `limits`.
    pub fn with_limits(
        listener: Box<dyn Listener>,
        config: Arc<ServerConfig>,
        local_id: SpiffeId,
        limits: ConnectionLimits,
    ) -> io::Result<Self> {
        let local_address = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_CONNECTIONS_MAX);
        let accept_task = AcceptTask(tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            sender,
            ConnectionGate::new(limits),
        )));
        Ok(Self {
            ready,
            local_address,
            local_id,
            _accept_task: accept_task,
        })
    }

    /// The next authenticated connection.
    pub async fn accept(&mut self) -> Option<TlsConnection> {
        self.ready.recv().await
    }

    /// The address we listen on.
    pub fn local_address(&self) -> SocketAddr {
        self.local_address
    }

    /// Our SPIFFE ID and listening address.
    pub fn local_identity(&self) -> PeerIdentity {
        PeerIdentity {
            spiffe_id: self.local_id.clone(),
            address: self.local_address,
        }
    }

    /// The connections as a stream, for `tonic`'s `serve_with_incoming`.
    #[cfg(feature = "tonic")]
    pub fn into_stream(
        self,
    ) -> impl tokio_stream::Stream<Item = Result<TlsConnection, io::Error>> + Send + 'static {
        use tokio_stream::StreamExt;
        let TlsListener {
            ready,
            _accept_task: accept_task,
            ..
        } = self;
        // The guard rides along so accepting goes on as long as the stream lives.
        tokio_stream::wrappers::ReceiverStream::new(ready).map(move |connection| {
            let _accepting = &accept_task;
            Ok(connection)
        })
    }
}

/// Aborts the accept task when the listener (or its stream) is dropped.
#[derive(Debug)]
struct AcceptTask(JoinHandle<()>);

impl Drop for AcceptTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(
    mut listener: Box<dyn Listener>,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<TlsConnection>,
    gate: Arc<ConnectionGate>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (tcp, address) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if ready.is_closed() {
            return;
        }
        let Some(address_permit) = gate.handshake(address.ip()) else {
            tracing::debug!(%address, "too many handshakes from this address; closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let gate = gate.clone();
        // The peer is known once the handshake has verified it.
        let span = tracing::info_span!("connection", peer = tracing::field::Empty, %address);
        let accepted = async move {
            let _permit = permit;
            let handshaken = handshake(acceptor, tcp, address).await;
            drop(address_permit);
            match handshaken {
                Ok((stream, peer)) => {
                    tracing::Span::current()
                        .record("peer", tracing::field::display(&peer.spiffe_id));
                    // Dropping the stream closes a connection over the limits.
                    let Some(permit) = gate.connection(&peer.spiffe_id) else {
                        tracing::debug!("connection limit reached; closed");
                        return;
                    };
                    tracing::trace!("TLS handshake done");
                    let connection = TlsConnection {
                        stream,
                        peer,
                        _permit: permit,
                    };
                    let _ = ready.send(connection).await;
                }
                Err(error) => tracing::debug!(%error, "TLS handshake refused"),
            }
        };
        tokio::spawn(tracing::Instrument::instrument(accepted, span));
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: Stream,
    address: SocketAddr,
) -> io::Result<(server::TlsStream<Stream>, PeerIdentity)> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let spiffe_id = peer_id_of(stream.get_ref().1.peer_certificates())?;
    Ok((stream, PeerIdentity { spiffe_id, address }))
}

fn peer_id_of(
    certificates: Option<&[rustls::pki_types::CertificateDer<'static>]>,
) -> io::Result<SpiffeId> {
    // The verifier demanded and checked a client certificate, so a missing
    // one here means the configuration was not ours.
    let leaf = certificates
        .and_then(|chain| chain.first())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "peer presented no certificate",
            )
        })?;
    peer_spiffe_id(leaf).map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))
}

/// Connects to `address` with `config` and returns the stream and the
/// server's verified identity. The TLS server name is not checked (SVIDs have
/// none); `config`'s authorizer decides which server IDs are acceptable.
pub async fn connect(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<(client::TlsStream<Stream>, PeerIdentity)> {
    let tcp = net::connect(address).await?;
    let stream = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(config).connect(ServerName::IpAddress(address.ip().into()), tcp),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?
    .map_err(explain_rejection)?;
    let spiffe_id = peer_id_of(stream.get_ref().1.peer_certificates())?;
    Ok((stream, PeerIdentity { spiffe_id, address }))
}

/// Turns "invalid peer certificate: Other(OtherError(PeerRejected {..}))"
/// into "peer spiffe://... is not a SPIKE nexus".
fn explain_rejection(error: io::Error) -> io::Error {
    let rejected = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|tls| match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other
                .0
                .downcast_ref::<crate::identity::PeerRejected>()
                .cloned(),
            _ => None,
        });
    match rejected {
        Some(rejected) => io::Error::new(io::ErrorKind::PermissionDenied, rejected),
        None => error,
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(feature = "axum")]
mod axum_support {
    use super::*;
    use axum::extract::connect_info::Connected;
    use axum::serve::{IncomingStream, Listener};

    /// `axum::serve(listener, router.into_make_service_with_connect_info::<PeerIdentity>())`
    /// gives every handler `ConnectInfo<PeerIdentity>`.
    impl Listener for TlsListener {
        type Io = TlsConnection;
        type Addr = PeerIdentity;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            match TlsListener::accept(self).await {
                Some(connection) => {
                    let peer = connection.peer.clone();
                    (connection, peer)
                }
                // The accept task only ends when the listener is dropped.
                None => std::future::pending().await,
            }
        }

        fn local_addr(&self) -> io::Result<Self::Addr> {
            Ok(self.local_identity())
        }
    }

    impl Connected<IncomingStream<'_, TlsListener>> for PeerIdentity {
        fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
            stream.remote_addr().clone()
        }
    }
}

#[cfg(feature = "tonic")]
impl tonic::transport::server::Connected for TlsConnection {
    /// Handlers read it with `request.extensions().get::<PeerIdentity>()`.
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}
