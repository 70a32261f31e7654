//! Shared fixtures for the integration tests: dev identities served over the
//! Workload API, the workspace's built binaries, TLS round trips and free
//! loopback ports.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use spike_dev_identity::{IdentityDirectory, IdentitySpec, ServeOptions, WorkloadApiServer};
use spike_sdk::identity::{PeerAuthorizer, SpiffeId};
use spike_sdk::svid::{Identity, SvidSource};
use spike_sdk::tls::{PeerIdentity, TlsListener, client_config, connect, server_config};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest any single step of a test may wait for the system under test.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A temporary dev identity directory whose identities are served over the
/// Workload API, one socket each.
pub struct DevIdentities {
    /// The directory (removed on drop).
    pub dir: TempDir,
    /// Its layout.
    pub directory: IdentityDirectory,
    /// The running Workload API server.
    pub server: WorkloadApiServer,
}

impl DevIdentities {
    /// Creates identities for every role plus `extra` in `trust_domain` and
    /// serves them.
    pub async fn start(trust_domain: &str, extra: &[&str], options: ServeOptions) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let extra: Vec<IdentitySpec> = extra
            .iter()
            .map(|text| IdentitySpec::parse(text).expect("valid identity spec"))
            .collect();
        let directory =
            IdentityDirectory::create(dir.path(), trust_domain, &extra, Duration::from_secs(3600))
                .expect("dev identities");
        let server = WorkloadApiServer::start(&directory, options)
            .await
            .expect("dev Workload API");
        Self {
            dir,
            directory,
            server,
        }
    }

    /// The `SPIFFE_ENDPOINT_SOCKET` of identity `name`.
    pub fn endpoint(&self, name: &str) -> String {
        self.server
            .endpoint(name)
            .unwrap_or_else(|| panic!("no identity named {name}"))
    }

    /// Identity `name`, fetched through the Workload API as a process would.
    pub async fn identity(&self, name: &str) -> Identity {
        SvidSource::WorkloadApi {
            endpoint: self.endpoint(name),
        }
        .load(STEP_TIMEOUT)
        .await
        .unwrap_or_else(|error| panic!("identity {name}: {error}"))
    }
}

/// A built binary of the workspace (`cargo build --bins` runs first).
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let test_binary = std::env::current_exe().expect("path of the test binary");
    let profile_dir = test_binary
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` before the integration tests",
        path.display()
    );
    path
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// An echo server on loopback: every accepted connection reads four bytes,
/// answers `pong`, and reports the verified peer.
pub struct EchoServer {
    /// Where it listens.
    pub address: SocketAddr,
    /// Peers whose connections got through, in order.
    pub peers: tokio::sync::mpsc::UnboundedReceiver<PeerIdentity>,
}

impl EchoServer {
    /// Serves `identity`, admitting the peers `authorizer` accepts.
    pub async fn start(identity: Identity, authorizer: PeerAuthorizer) -> Self {
        let config = server_config(identity.clone(), authorizer).expect("server config");
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let mut listener =
            TlsListener::new(tcp, Arc::new(config), identity.spiffe_id()).expect("listener");
        let address = listener.local_address();
        let (sender, peers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(mut connection) = listener.accept().await {
                let _ = sender.send(connection.peer().clone());
                tokio::spawn(async move {
                    let mut ping = [0u8; 4];
                    while connection.read_exact(&mut ping).await.is_ok() {
                        if connection.write_all(b"pong").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self { address, peers }
    }
}

/// A client connection that completed mTLS and one ping/pong.
pub struct Exchange {
    /// The server as the client verified it.
    pub server: PeerIdentity,
    /// The server's leaf certificate, DER.
    pub server_leaf: Vec<u8>,
    /// The open connection, for more pings.
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl Exchange {
    /// Sends one more ping on the open connection.
    pub async fn ping(&mut self) -> Result<(), String> {
        ping(&mut self.stream).await
    }
}

async fn ping(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<(), String> {
    stream.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut pong = [0u8; 4];
    tokio::time::timeout(STEP_TIMEOUT, stream.read_exact(&mut pong))
        .await
        .map_err(|_| "timed out waiting for pong".to_owned())?
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Connects as `identity`, accepting only servers `expect` admits, and
/// pings once. In TLS 1.3 the server judges the client certificate after
/// the client's handshake completes, so a refusal by the server shows up
/// as an error on the first read.
pub async fn exchange(
    identity: &Identity,
    expect: PeerAuthorizer,
    address: SocketAddr,
) -> Result<Exchange, String> {
    let config = client_config(identity.clone(), expect).expect("client config");
    let (mut stream, server) = connect(address, Arc::new(config))
        .await
        .map_err(|e| e.to_string())?;
    let server_leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.to_vec())
        .ok_or("server sent no certificate")?;
    ping(&mut stream).await?;
    Ok(Exchange {
        server,
        server_leaf,
        stream,
    })
}

/// The SPIFFE ID `text`, for assertions.
pub fn spiffe_id(text: &str) -> SpiffeId {
    SpiffeId::new(text).expect("valid SPIFFE ID")
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(pub Option<std::process::Child>);

impl ChildGuard {
    /// Kills the process now and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until something accepts TCP connections on `address`.
pub async fn wait_for_port(address: SocketAddr) {
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while tokio::net::TcpStream::connect(address).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on {address} after {STEP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
