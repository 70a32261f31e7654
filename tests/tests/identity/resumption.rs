//! A verified identity lasts no longer than its certificate and the current
//! bundle allow, on every mTLS port (the Nexus API and cluster ports, the
//! keeper port): a client whose SVID expired, or whose CA was dropped from
//! the bundle, is refused on its next request, whether it tries to resume
//! a TLS session from when it was valid or keeps a connection open from
//! then.
//!
//! The servers are the real binaries on SVID files the test controls, so it
//! can remove a CA from their bundle; the client is a raw rustls client
//! that presents whatever it is given and keeps a session cache.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use spike_dev_identity::{DevCa, MintedSvid};
use spike_tests::{ChildGuard, STEP_TIMEOUT, binary, free_port, wait_for_port};
use time::OffsetDateTime;

use super::raw_tls::client_presenting;

const TRUST_DOMAIN: &str = "spike.ist";
const NEXUS_ID: &str = "spiffe://spike.ist/spike/nexus";
const KEEPER_ID: &str = "spiffe://spike.ist/spike/keeper";

/// The three mTLS ports, each with a request that any admitted peer gets an
/// HTTP answer to (whatever its status): an answer means the TLS layer let
/// the client in, a failed connection or stream means it did not.
#[derive(Debug, Clone, Copy)]
enum Port {
    Api,
    Cluster,
    Keeper,
}

impl Port {
    const ALL: [Port; 3] = [Port::Api, Port::Cluster, Port::Keeper];

    fn request(self) -> hyper::Request<Empty<Bytes>> {
        let builder = hyper::Request::builder().header("host", "spike");
        let builder = match self {
            Port::Api => builder
                .method("GET")
                .uri("https://spike/v1/store/secrets?action=get"),
            Port::Cluster => builder
                .method("POST")
                .uri("https://spike/spike.cluster.v1.Cluster/ReadIndex")
                .header("content-type", "application/grpc"),
            Port::Keeper => builder
                .method("POST")
                .uri("https://spike/spike.keeper.v1.Keeper/FetchShare")
                .header("content-type", "application/grpc"),
        };
        builder.body(Empty::new()).expect("request")
    }
}

/// SVID files of one server process.
struct SvidFiles {
    cert: PathBuf,
    key: PathBuf,
    bundle: PathBuf,
}

impl SvidFiles {
    fn write(dir: &Path, name: &str, svid: &MintedSvid, bundle: &[&DevCa]) -> Self {
        let files = Self {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            bundle: dir.join(format!("{name}-bundle.crt")),
        };
        std::fs::write(&files.cert, &svid.chain_pem).expect("write certificate");
        std::fs::write(&files.key, &svid.key_pem).expect("write key");
        files.write_bundle(bundle);
        files
    }

    /// Replaces the bundle in one rename, as spiffe-helper does, so the
    /// server never reads half a file.
    fn write_bundle(&self, authorities: &[&DevCa]) {
        let pem: String = authorities.iter().map(|ca| ca.cert_pem()).collect();
        let staged = self.bundle.with_extension("tmp");
        std::fs::write(&staged, pem).expect("write bundle");
        std::fs::rename(&staged, &self.bundle).expect("replace bundle");
    }

    fn flags(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        vec![
            "--svid-cert".to_owned(),
            path(&self.cert),
            "--svid-key".to_owned(),
            path(&self.key),
            "--svid-bundle".to_owned(),
            path(&self.bundle),
        ]
    }
}

/// A one-replica nexus and a keeper, both issued by `issuer` and trusting
/// the CAs of `bundle`.
struct Servers {
    _dir: tempfile::TempDir,
    nexus_files: SvidFiles,
    keeper_files: SvidFiles,
    api: SocketAddr,
    cluster: SocketAddr,
    keeper: SocketAddr,
    _processes: Vec<ChildGuard>,
}

impl Servers {
    /// `flags` go to both processes.
    async fn start(issuer: &DevCa, bundle: &[&DevCa], flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ttl = Duration::from_secs(3600);
        let nexus_svid = issuer.mint(NEXUS_ID, ttl).expect("nexus SVID");
        let keeper_svid = issuer.mint(KEEPER_ID, ttl).expect("keeper SVID");
        let nexus_files = SvidFiles::write(dir.path(), "nexus", &nexus_svid, bundle);
        let keeper_files = SvidFiles::write(dir.path(), "keeper", &keeper_svid, bundle);
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let (api, cluster, keeper) = (
            loopback(free_port()),
            loopback(free_port()),
            loopback(free_port()),
        );

        let data_dir = dir.path().join("nexus-data");
        let mut nexus_args = nexus_files.flags();
        nexus_args.extend([
            "--peers".to_owned(),
            format!("1={cluster}/{api}"),
            // A keeper that never answers: the replica serves without a
            // root key, which is all the TLS layer needs.
            "--keepers".to_owned(),
            loopback(free_port()).to_string(),
            "--shares=1".to_owned(),
            "--threshold=1".to_owned(),
            "--allow-insecure-threshold".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ]);
        nexus_args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let mut keeper_args = keeper_files.flags();
        keeper_args.extend([
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--port".to_owned(),
            keeper.port().to_string(),
        ]);
        keeper_args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let processes = vec![spawn("nexus", &nexus_args), spawn("keeper", &keeper_args)];
        for address in [api, cluster, keeper] {
            wait_for_port(address).await;
        }
        Self {
            _dir: dir,
            nexus_files,
            keeper_files,
            api,
            cluster,
            keeper,
            _processes: processes,
        }
    }

    fn address(&self, port: Port) -> SocketAddr {
        match port {
            Port::Api => self.api,
            Port::Cluster => self.cluster,
            Port::Keeper => self.keeper,
        }
    }

    fn write_bundle(&self, authorities: &[&DevCa]) {
        self.nexus_files.write_bundle(authorities);
        self.keeper_files.write_bundle(authorities);
    }
}

fn spawn(program: &str, args: &[String]) -> ChildGuard {
    let child = std::process::Command::new(binary(program))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    ChildGuard(Some(child))
}

/// A client presenting `svid`; `resume` keeps rustls's default session
/// cache (one per config, so one per port), otherwise every handshake is
/// full.
fn client(svid: &MintedSvid, resume: bool) -> Arc<ClientConfig> {
    let mut config = client_presenting(svid);
    config.alpn_protocols = vec![b"h2".to_vec()];
    if !resume {
        config.resumption = Resumption::disabled();
    }
    Arc::new(config)
}

/// An HTTP/2 connection over a raw rustls client.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    resumed: bool,
    /// The HTTP/2 connection; it finishes `Ok` when the server closed it
    /// gracefully (GOAWAY), `Err` when the connection was cut.
    driver: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Connection {
    /// Connects and completes the TLS handshake. In TLS 1.3 the server
    /// judges the client's certificate after the client has finished, so a
    /// refusal shows on the first request, not here.
    async fn open(address: SocketAddr, config: Arc<ClientConfig>) -> Result<Self, String> {
        let step = async {
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(address.ip().into()), tcp)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            let driver = tokio::spawn(connection);
            Ok(Self {
                sender,
                resumed,
                driver,
            })
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .map_err(|_| "timed out connecting".to_owned())?
    }

    /// Sends `port`'s request; `Ok` with the status when the server
    /// answered at all.
    async fn request(&mut self, port: Port) -> Result<u16, String> {
        let step = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection: {e}"))?;
            let response = self
                .sender
                .send_request(port.request())
                .await
                .map_err(|e| format!("request: {e}"))?;
            Ok(response.status().as_u16())
        };
        tokio::time::timeout(STEP_TIMEOUT, step)
            .await
            .map_err(|_| "timed out waiting for an answer".to_owned())?
    }
}

/// What a client does with a valid SVID before it loses its validity:
/// per port, one connection that ends (leaving a session in the cache of
/// `resuming`) and one that stays open.
struct WhileValid {
    resuming: Vec<Arc<ClientConfig>>,
    open: Vec<Connection>,
}

impl WhileValid {
    async fn connect(servers: &Servers, svid: &MintedSvid) -> Self {
        let mut resuming = Vec::new();
        let mut open = Vec::new();
        for port in Port::ALL {
            let address = servers.address(port);
            let config = client(svid, true);
            let mut first = Connection::open(address, config.clone())
                .await
                .unwrap_or_else(|e| panic!("{port:?}: first connection: {e}"));
            // Reading the answer also reads any session ticket the server
            // sent after the handshake.
            first
                .request(port)
                .await
                .unwrap_or_else(|e| panic!("{port:?}: a valid client is admitted: {e}"));
            drop(first);
            resuming.push(config);

            let mut long_lived = Connection::open(address, client(svid, false))
                .await
                .unwrap_or_else(|e| panic!("{port:?}: long-lived connection: {e}"));
            long_lived
                .request(port)
                .await
                .unwrap_or_else(|e| panic!("{port:?}: a valid client is admitted: {e}"));
            open.push(long_lived);
        }
        Self { resuming, open }
    }

    /// Every way back in is refused now: a new full handshake, a resumed
    /// session from when the SVID was valid, and the next request on a
    /// connection opened then.
    async fn assert_refused(mut self, servers: &Servers, svid: &MintedSvid) {
        let mut admitted = Vec::new();
        for (index, port) in Port::ALL.into_iter().enumerate() {
            let address = servers.address(port);

            if let Ok(mut fresh) = Connection::open(address, client(svid, false)).await
                && let Ok(status) = fresh.request(port).await
            {
                admitted.push(format!("{port:?}: a new connection got HTTP {status}"));
            }

            match Connection::open(address, self.resuming[index].clone()).await {
                Ok(mut again) => {
                    let kind = if again.resumed { "resumed" } else { "full" };
                    if let Ok(status) = again.request(port).await {
                        admitted.push(format!(
                            "{port:?}: a {kind} handshake with the cached session got HTTP {status}"
                        ));
                    }
                }
                Err(error) => eprintln!("{port:?}: resumption attempt refused: {error}"),
            }

            if let Ok(status) = self.open[index].request(port).await {
                admitted.push(format!(
                    "{port:?}: the connection opened while valid still got HTTP {status}"
                ));
            }
        }
        assert!(
            admitted.is_empty(),
            "still admitted:\n{}",
            admitted.join("\n")
        );
    }
}

#[tokio::test]
async fn an_expired_svid_is_refused_on_every_port_with_or_without_a_cached_session() {
    let ca = DevCa::generate(TRUST_DOMAIN).expect("CA");
    let servers = Servers::start(&ca, &[&ca], &[]).await;

    // Valid for a few seconds: enough for the connections below.
    let now = OffsetDateTime::now_utc();
    let expires = now + Duration::from_secs(4);
    let svid = ca
        .mint_with_validity(NEXUS_ID, now - Duration::from_secs(60), expires)
        .expect("short-lived SVID");
    let before = WhileValid::connect(&servers, &svid).await;
    assert!(
        OffsetDateTime::now_utc() < expires,
        "the connections took longer than the SVID's life; the test proves nothing"
    );

    // Certificate times have one-second resolution and notAfter is inclusive.
    let left = expires - OffsetDateTime::now_utc() + Duration::from_millis(1500);
    tokio::time::sleep(left.try_into().expect("positive")).await;
    before.assert_refused(&servers, &svid).await;
}

#[tokio::test]
async fn a_client_whose_ca_left_the_bundle_is_refused_on_every_port_with_or_without_a_cached_session()
 {
    // The servers' own SVIDs come from the CA that stays; the client's
    // from the one that is dropped, as after a CA compromise.
    let staying = DevCa::generate(TRUST_DOMAIN).expect("CA");
    let dropped = DevCa::generate(TRUST_DOMAIN).expect("CA");
    let servers = Servers::start(&staying, &[&staying, &dropped], &[]).await;
    let svid = dropped
        .mint(NEXUS_ID, Duration::from_secs(3600))
        .expect("client SVID");
    let before = WhileValid::connect(&servers, &svid).await;

    servers.write_bundle(&[&staying]);
    // The servers poll their files; wait until each refuses a new
    // connection, so what follows runs against the new bundle.
    for port in Port::ALL {
        let address = servers.address(port);
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            let admitted = match Connection::open(address, client(&svid, false)).await {
                Ok(mut fresh) => fresh.request(port).await.is_ok(),
                Err(_) => false,
            };
            if !admitted {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{port:?}: the server never took up the new bundle"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    before.assert_refused(&servers, &svid).await;
}

/// Every connection re-authenticates periodically: at its maximum age the
/// server closes it gracefully (GOAWAY, long before the listener's hard
/// end a grace period later), and the client gets back in with a new,
/// verified, handshake.
#[tokio::test]
async fn every_port_retires_a_connection_gracefully_at_its_maximum_age() {
    const MAX_AGE: Duration = Duration::from_secs(2);
    let ca = DevCa::generate(TRUST_DOMAIN).expect("CA");
    let servers = Servers::start(&ca, &[&ca], &["--max-connection-age", "2s"]).await;
    let svid = ca
        .mint(NEXUS_ID, Duration::from_secs(3600))
        .expect("client SVID");

    let mut open = Vec::new();
    for port in Port::ALL {
        let mut connection = Connection::open(servers.address(port), client(&svid, false))
            .await
            .unwrap_or_else(|e| panic!("{port:?}: connect: {e}"));
        connection
            .request(port)
            .await
            .unwrap_or_else(|e| panic!("{port:?}: a valid client is admitted: {e}"));
        open.push((port, tokio::time::Instant::now(), connection));
    }
    for (port, opened, connection) in open {
        let closed = tokio::time::timeout(MAX_AGE + STEP_TIMEOUT, connection.driver)
            .await
            .unwrap_or_else(|_| panic!("{port:?}: the connection outlived its maximum age"))
            .expect("connection task");
        let age = opened.elapsed();
        assert!(
            age + Duration::from_millis(500) >= MAX_AGE,
            "{port:?}: closed after {age:?}, before its maximum age"
        );
        closed.unwrap_or_else(|e| panic!("{port:?}: the connection was cut, not retired: {e}"));

        let mut again = Connection::open(servers.address(port), client(&svid, false))
            .await
            .unwrap_or_else(|e| panic!("{port:?}: reconnect: {e}"));
        again
            .request(port)
            .await
            .unwrap_or_else(|e| panic!("{port:?}: the client gets back in: {e}"));
    }
}
