//! Where connections come from: the operating system's TCP, unless a
//! simulation has installed a network of its own.
//!
//! Every SPIKE connection (Raft between replicas, Nexus to keepers, clients
//! to Nexus) is dialled by [`connect`] and accepted from a listener made by
//! [`bind`]; TLS runs on top, unchanged. The deterministic simulator
//! installs its simulated network once per process with [`install`], so the
//! same code runs over links it can cut, delay and drop, and no replica can
//! tell the difference. Production never installs one.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::OnceLock;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream to or from a peer.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A connected stream, whatever network it runs on.
pub type Stream = Box<dyn Io>;

/// A boxed future, as the object-safe traits below return them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A listening socket.
pub trait Listener: Send + 'static {
    /// The next connection and the peer's address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>>;
    /// The address it listens on.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A network that can dial and listen.
pub trait Network: Send + Sync + 'static {
    /// Opens a stream to `address`.
    fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>>;
    /// Listens on `address`.
    fn bind(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>>;
}

static NETWORK: OnceLock<Box<dyn Network>> = OnceLock::new();

/// A network was already installed (or a connection already made).
#[derive(Debug)]
pub struct AlreadyInstalled;

impl fmt::Display for AlreadyInstalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a network is already installed in this process")
    }
}

impl std::error::Error for AlreadyInstalled {}

/// Routes every later connection of this process through `network`. Only a
/// simulator calls this, once, before anything connects or listens.
pub fn install(network: Box<dyn Network>) -> Result<(), AlreadyInstalled> {
    NETWORK.set(network).map_err(|_| AlreadyInstalled)
}

/// Opens a stream to `address` (TCP with Nagle off, unless a network is
/// installed).
pub async fn connect(address: SocketAddr) -> io::Result<Stream> {
    if let Some(network) = NETWORK.get() {
        return network.connect(address).await;
    }
    let tcp = tokio::net::TcpStream::connect(address).await?;
    // Requests are small and latency-bound.
    let _ = tcp.set_nodelay(true);
    Ok(Box::new(tcp))
}

/// Listens on `address` (TCP, unless a network is installed).
pub async fn bind(address: SocketAddr) -> io::Result<Box<dyn Listener>> {
    if let Some(network) = NETWORK.get() {
        return network.bind(address).await;
    }
    Ok(Box::new(tokio::net::TcpListener::bind(address).await?))
}

impl Listener for tokio::net::TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(Stream, SocketAddr)>> {
        Box::pin(async move {
            let (tcp, address) = tokio::net::TcpListener::accept(self).await?;
            let _ = tcp.set_nodelay(true);
            Ok((Box::new(tcp) as Stream, address))
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }
}
