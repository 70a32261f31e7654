//! An mTLS listener that yields connections together with the verified
//! SPIFFE ID of the peer, for axum and tonic servers alike.
//!
//! Handshakes run in their own tasks, bounded in number and time, so a slow
//! or hostile client cannot stall `accept` for everybody else.
//!
//! A connection is only as good as the identity verified at its handshake.
//! It ends when the peer's chain expires, when the trust bundle changes and
//! the chain no longer verifies against it, and at the latest at its maximum
//! age plus [`CONNECTION_AGE_GRACE`]: from then on every read and write
//! fails, whatever the protocol above is doing. Servers that can (HTTP/2
//! with GOAWAY) retire a connection gracefully at its maximum age
//! ([`TlsConnection::retire_at`]), so that well-behaved clients reconnect,
//! and are verified again, before the hard end.
//!
//! Connections are bounded by [`ConnectionLimits`] (in total, per peer,
//! handshakes per address).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector, client, server};

use super::limits::{ConnectionGate, ConnectionLimits, ConnectionPermit};
use super::stats::{HandshakeFailure, ListenerStats};
use super::verifier::{peer_spiffe_id, verify_client_chain};
use crate::identity::SpiffeId;
use crate::net::{self, Listener, Stream};
use crate::svid::{Identity, SvidMaterial};

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once; further TCP connections wait in the
/// kernel's backlog.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Most established connections waiting for the server to take them.
pub const READY_CONNECTIONS_MAX: usize = 64;
/// Default maximum age of a server-side connection: every client verifies
/// again at least this often. Under half the lifetime of SPIRE's default
/// SVIDs (1 h, rotated at half-life), so a connection is retired before
/// the SVID it was opened with expires.
pub const CONNECTION_AGE_MAX_DEFAULT: Duration = Duration::from_secs(15 * 60);
/// How long a connection past its maximum age has to finish what it is
/// doing before it is ended. Long enough for a Raft snapshot stream on the
/// cluster port (64 GiB at most); a stream cut here is retried on a new
/// connection, which has the whole maximum age ahead of it.
pub const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(5 * 60);

/// Why an established connection was ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lapse {
    /// A certificate of the peer's chain is past its notAfter.
    #[error("the peer's certificate chain has expired")]
    Expired,
    /// The trust bundle changed and the peer's chain no longer verifies.
    #[error("the peer's certificate chain no longer verifies against the trust bundle: {0}")]
    Untrusted(String),
    /// The connection outlived its maximum age and grace period.
    #[error("the connection outlived its maximum age")]
    TooOld,
}

/// The authenticated peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's SPIFFE ID, verified against the trust bundle and admitted
    /// by the listener's authorizer.
    pub spiffe_id: SpiffeId,
    /// The peer's address.
    pub address: SocketAddr,
}

/// A server-side mTLS connection and its verified peer. Reads and writes
/// fail once the peer's identity has lapsed (see [`Lapse`]).
pub struct TlsConnection {
    stream: server::TlsStream<Stream>,
    peer: PeerIdentity,
    retire_at: Instant,
    /// Resolves when the connection must end.
    lapse: Pin<Box<dyn Future<Output = Lapse> + Send>>,
    lapsed: Option<Lapse>,
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

    /// When the connection reaches its maximum age: a server should stop
    /// taking requests on it then and let it close (HTTP/2 GOAWAY); the
    /// listener ends it [`CONNECTION_AGE_GRACE`] later.
    pub fn retire_at(&self) -> Instant {
        self.retire_at
    }

    /// `Err` once the peer's identity has lapsed; registers `cx` to be woken
    /// when it does.
    fn check_lapse(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.lapsed.is_none()
            && let Poll::Ready(lapse) = self.lapse.as_mut().poll(cx)
        {
            tracing::info!(peer = %self.peer.spiffe_id, address = %self.peer.address, reason = %lapse, "connection ended");
            self.lapsed = Some(lapse);
        }
        match &self.lapsed {
            Some(lapse) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                lapse.clone(),
            )),
            None => Ok(()),
        }
    }
}

/// Accepts mTLS connections in the background; [`TlsListener::accept`]
/// returns them once their handshake has succeeded.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<TlsConnection>,
    local_address: SocketAddr,
    local_id: SpiffeId,
    stats: Arc<ListenerStats>,
    /// Held for its `Drop`: accepting stops with the listener.
    _accept_task: AcceptTask,
}

impl TlsListener {
    /// Starts accepting on `listener` with `config`, a [`super::server_config`]
    /// of `identity`, whose bundle updates re-check open connections.
    /// Connections live at most `max_age` (plus [`CONNECTION_AGE_GRACE`]),
    /// under the default [`ConnectionLimits`].
    pub fn new(
        listener: Box<dyn Listener>,
        config: Arc<ServerConfig>,
        identity: Identity,
        max_age: Duration,
    ) -> io::Result<Self> {
        Self::with_limits(
            listener,
            config,
            identity,
            max_age,
            ConnectionLimits::DEFAULT,
        )
    }

    /// Like [`TlsListener::new`], under `limits`.
    pub fn with_limits(
        listener: Box<dyn Listener>,
        config: Arc<ServerConfig>,
        identity: Identity,
        max_age: Duration,
        limits: ConnectionLimits,
    ) -> io::Result<Self> {
        let local_address = listener.local_addr()?;
        let local_id = identity.spiffe_id();
        let (sender, ready) = mpsc::channel(READY_CONNECTIONS_MAX);
        let stats = Arc::new(ListenerStats::default());
        let accept_task = AcceptTask(tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            Lifetime { identity, max_age },
            sender,
            ConnectionGate::new(limits, stats.clone()),
        )));
        Ok(Self {
            ready,
            local_address,
            local_id,
            stats,
            _accept_task: accept_task,
        })
    }

    /// What this listener counts (failed handshakes, refusals, open
    /// connections); live, so a server keeps it to read when scraped.
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.stats.clone()
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

/// What bounds the life of the listener's connections.
#[derive(Debug, Clone)]
struct Lifetime {
    identity: Identity,
    max_age: Duration,
}

async fn accept_loop(
    mut listener: Box<dyn Listener>,
    acceptor: TlsAcceptor,
    lifetime: Lifetime,
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
        let lifetime = lifetime.clone();
        let ready = ready.clone();
        let gate = gate.clone();
        // The peer is known once the handshake has verified it.
        let span = tracing::info_span!("connection", peer = tracing::field::Empty, %address);
        let accepted = async move {
            let _permit = permit;
            let handshaken = handshake(acceptor, tcp, address, lifetime, &gate).await;
            drop(address_permit);
            match handshaken {
                Ok(connection) => {
                    tracing::Span::current()
                        .record("peer", tracing::field::display(&connection.peer.spiffe_id));
                    tracing::trace!("TLS handshake done");
                    let _ = ready.send(connection).await;
                }
                Err(error) => {
                    if let Some(reason) = HandshakeFailure::of(&error) {
                        gate.stats().handshake_failed(reason);
                    }
                    tracing::debug!(%error, "TLS handshake refused");
                }
            }
        };
        tokio::spawn(tracing::Instrument::instrument(accepted, span));
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: Stream,
    address: SocketAddr,
    lifetime: Lifetime,
    gate: &Arc<ConnectionGate>,
) -> io::Result<TlsConnection> {
    // Subscribed before the verifier reads the bundle, so any bundle
    // published after that read wakes a re-check.
    let mut bundles = lifetime.identity.subscribe();
    bundles.mark_unchanged();
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let accepted_at = Instant::now();
    let chain = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(<[_]>::to_vec)
        .unwrap_or_default();
    let spiffe_id = peer_id_of(Some(chain.as_slice()))?;
    // Dropping the stream closes a connection over the limits.
    let permit = gate.connection(&spiffe_id).ok_or_else(|| {
        io::Error::new(io::ErrorKind::ConnectionRefused, "connection limit reached")
    })?;
    let expires_at = chain_not_after(&chain).map(deadline_of)?;
    let retire_at = accepted_at + lifetime.max_age;
    let lapse = Box::pin(until_lapse(
        chain,
        bundles,
        expires_at,
        retire_at + CONNECTION_AGE_GRACE,
    ));
    Ok(TlsConnection {
        stream,
        peer: PeerIdentity { spiffe_id, address },
        retire_at,
        lapse,
        lapsed: None,
        _permit: permit,
    })
}

/// Resolves when a connection whose peer presented `chain` must end: at
/// the chain's expiry (`None`: beyond what a deadline can hold), when a new
/// bundle no longer verifies it, or at `end_of_age`.
async fn until_lapse(
    chain: Vec<CertificateDer<'static>>,
    mut bundles: watch::Receiver<Arc<SvidMaterial>>,
    expires_at: Option<Instant>,
    end_of_age: Instant,
) -> Lapse {
    let expiry = async {
        match expires_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let distrust = async {
        // An identity that never changes drops its sender at once; then
        // there is nothing to watch.
        while bundles.changed().await.is_ok() {
            let material = bundles.borrow_and_update().clone();
            let Some((leaf, intermediates)) = chain.split_first() else {
                return Lapse::Untrusted("no certificate".to_owned());
            };
            if let Err(error) = verify_client_chain(&material, leaf, intermediates, UnixTime::now())
            {
                return Lapse::Untrusted(error.to_string());
            }
        }
        std::future::pending().await
    };
    tokio::select! {
        () = expiry => Lapse::Expired,
        () = tokio::time::sleep_until(end_of_age) => Lapse::TooOld,
        lapse = distrust => lapse,
    }
}

/// The earliest notAfter of `chain` (the verifier has checked every
/// certificate in it, so it parses).
pub(crate) fn chain_not_after(chain: &[CertificateDer<'_>]) -> io::Result<SystemTime> {
    let mut earliest = None;
    for certificate in chain {
        let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let seconds = parsed.validity().not_after.timestamp();
        let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.max(0).unsigned_abs());
        earliest = Some(earliest.map_or(not_after, |e: SystemTime| e.min(not_after)));
    }
    earliest.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "peer presented no certificate",
        )
    })
}

/// `at` on the runtime's clock; `None` when it is too far away to hold.
fn deadline_of(at: SystemTime) -> Option<Instant> {
    match at.duration_since(SystemTime::now()) {
        Ok(left) => Instant::now().checked_add(left),
        Err(_) => Some(Instant::now()),
    }
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

/// A connection we opened to a server whose identity the handshake
/// verified. Every read and write fails once the server's certificate
/// chain has expired, so a client trusts a server no longer than its SVID
/// (a keeper whose registration entry was deleted gets no more shares
/// over a connection opened before). The check is made when the
/// connection is used, against the wall clock, with no timer: an idle
/// connection ends at its next use, and nothing is scheduled that a
/// simulated run would have to replay.
pub struct ServerConnection {
    stream: client::TlsStream<Stream>,
    server: PeerIdentity,
    expires_at: SystemTime,
    lapsed: bool,
}

impl std::fmt::Debug for ServerConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl ServerConnection {
    /// The verified server.
    pub fn server(&self) -> &PeerIdentity {
        &self.server
    }

    /// When the server's chain expires (the connection ends then).
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    fn check_lapse(&mut self, _cx: &mut Context<'_>) -> io::Result<()> {
        if !self.lapsed && SystemTime::now() >= self.expires_at {
            tracing::info!(server = %self.server.spiffe_id, address = %self.server.address, reason = %Lapse::Expired, "connection ended");
            self.lapsed = true;
        }
        if self.lapsed {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                Lapse::Expired,
            ));
        }
        Ok(())
    }
}

/// Connects like [`connect`]; the connection ends when the server's chain
/// expires (see [`ServerConnection`]).
pub async fn connect_server(
    address: SocketAddr,
    config: Arc<ClientConfig>,
) -> io::Result<ServerConnection> {
    let (stream, server) = connect(address, config).await?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let expires_at = chain_not_after(chain)?;
    Ok(ServerConnection {
        stream,
        server,
        expires_at,
        lapsed: false,
    })
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

/// Reads and writes of a connection whose peer's identity may lapse: each
/// checks first (`check_lapse`), then goes to the TLS stream.
macro_rules! lapsing_io {
    ($connection:ty) => {
        impl AsyncRead for $connection {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                this.check_lapse(cx)?;
                Pin::new(&mut this.stream).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $connection {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                this.check_lapse(cx)?;
                Pin::new(&mut this.stream).poll_write(cx, buf)
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                this.check_lapse(cx)?;
                Pin::new(&mut this.stream).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                this.check_lapse(cx)?;
                Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.stream.is_write_vectored()
            }
        }
    };
}

lapsing_io!(TlsConnection);
lapsing_io!(ServerConnection);

#[cfg(feature = "axum")]
mod axum_support {
    use super::*;
    use axum::extract::connect_info::Connected;
    use axum::serve::{IncomingStream, Listener};

    /// `axum::serve(listener, router.into_make_service_with_connect_info::<PeerIdentity>())`
    /// gives every handler `ConnectInfo<PeerIdentity>`; it does not retire
    /// a connection gracefully at its maximum age (Nexus's own server
    /// loop does), so the listener's hard end is all its clients see.
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
