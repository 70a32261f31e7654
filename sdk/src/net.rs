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

/// Dials every connection through an HTTP `CONNECT` proxy (an egress
/// proxy, or the fault-injection harness's per-link proxies); listening is
/// plain TCP. TLS runs end to end inside the tunnel, so the proxy sees only
/// ciphertext and cannot impersonate either side.
#[derive(Debug, Clone, Copy)]
pub struct HttpConnectProxy {
    proxy: SocketAddr,
}

/// Longest proxy answer head read; a longer one is refused.
const PROXY_ANSWER_MAX: usize = 8 * 1024;
/// Longest wait for the proxy to answer a `CONNECT`.
const PROXY_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl HttpConnectProxy {
    /// Dials through the proxy at `proxy`.
    pub fn new(proxy: SocketAddr) -> Self {
        Self { proxy }
    }

    async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> io::Result<Stream> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(proxy).await?;
        let _ = tcp.set_nodelay(true);
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        // Byte by byte: whatever follows the head belongs to the tunnel.
        let mut head = Vec::with_capacity(64);
        let read_head = async {
            while !head.ends_with(b"\r\n\r\n") {
                if head.len() >= PROXY_ANSWER_MAX {
                    return Err(proxy_error(proxy, "answered with an oversized head"));
                }
                head.push(tcp.read_u8().await?);
            }
            Ok(())
        };
        tokio::time::timeout(PROXY_ANSWER_TIMEOUT, read_head)
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("proxy {proxy} did not answer CONNECT {target}"),
                )
            })??;
        let status_line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
        let status_line = String::from_utf8_lossy(status_line);
        let mut words = status_line.split(' ');
        let version = words.next().unwrap_or_default();
        let status = words.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") || status != "200" {
            return Err(proxy_error(
                proxy,
                &format!("refused CONNECT {target}: {status_line}"),
            ));
        }
        Ok(Box::new(tcp))
    }
}

fn proxy_error(proxy: SocketAddr, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionRefused,
        format!("proxy {proxy} {what}"),
    )
}

impl Network for HttpConnectProxy {
    fn connect(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Stream>> {
        Box::pin(Self::tunnel(self.proxy, address))
    }

    fn bind(&self, address: SocketAddr) -> BoxFuture<'static, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            Ok(Box::new(tokio::net::TcpListener::bind(address).await?) as Box<dyn Listener>)
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A one-shot proxy that answers `answer` and then echoes.
    async fn proxy_answering(
        answer: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            while !request.ends_with(b"\r\n\r\n") {
                request.push(tcp.read_u8().await.expect("request"));
            }
            tcp.write_all(answer).await.expect("answer");
            let mut echo = [0u8; 5];
            if tcp.read_exact(&mut echo).await.is_ok() {
                let _ = tcp.write_all(&echo).await;
            }
            String::from_utf8(request).expect("utf-8")
        });
        (address, task)
    }

    #[tokio::test]
    async fn a_tunnel_carries_bytes_after_the_proxy_says_200() {
        let (proxy, task) = proxy_answering(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
        let target: SocketAddr = "10.1.2.3:8554".parse().expect("address");
        let mut stream = HttpConnectProxy::new(proxy)
            .connect(target)
            .await
            .expect("tunnel");
        stream.write_all(b"hello").await.expect("write");
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"hello");
        let request = task.await.expect("proxy");
        assert!(
            request.starts_with("CONNECT 10.1.2.3:8554 HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refusal_or_garbage_from_the_proxy_is_an_error() {
        for answer in [
            &b"HTTP/1.1 403 Forbidden\r\n\r\n"[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let (proxy, _task) = proxy_answering(answer).await;
            let error = HttpConnectProxy::new(proxy)
                .connect("127.0.0.1:1".parse().expect("address"))
                .await
                .err()
                .expect("refused");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
        }
    }
}
