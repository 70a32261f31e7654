//! Shared fixtures for the integration tests: dev identities served over the
//! Workload API, the workspace's built binaries, TLS round trips and free
//! loopback ports.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use spike_dev_cluster::{ClusterFile, Launcher, Process, Replica, probe};
use spike_dev_identity::{IdentityDirectory, IdentitySpec, ServeOptions, WorkloadApiServer};
use spike_sdk::identity::{PeerAuthorizer, SpiffeId};
use spike_sdk::svid::{Identity, SvidSource};
use spike_sdk::tls::{
    CONNECTION_AGE_MAX_DEFAULT, PeerIdentity, TlsListener, client_config, connect, server_config,
};
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
            spiffe_id: None,
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
        let mut listener = TlsListener::new(
            Box::new(tcp),
            Arc::new(config),
            identity,
            CONNECTION_AGE_MAX_DEFAULT,
        )
        .expect("listener");
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
    pub stream: tokio_rustls::client::TlsStream<spike_sdk::net::Stream>,
}

impl Exchange {
    /// Sends one more ping on the open connection.
    pub async fn ping(&mut self) -> Result<(), String> {
        ping(&mut self.stream).await
    }
}

async fn ping(
    stream: &mut tokio_rustls::client::TlsStream<spike_sdk::net::Stream>,
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

/// A JSON reply from the SPIKE API, as a test reads it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body (`Null` if empty or not JSON).
    pub body: serde_json::Value,
    /// The `X-Spike-Leader` hint, if any.
    pub leader: Option<String>,
}

/// A SPIKE API client acting as one identity; it accepts only servers with
/// the Nexus role.
#[derive(Clone)]
pub struct ApiClient {
    client: spike_sdk::client::HttpsClient,
}

impl ApiClient {
    /// A client presenting `identity`.
    pub fn new(identity: &Identity) -> Self {
        let roots =
            spike_sdk::identity::TrustRoots::from_environment(&[]).expect("default trust roots");
        let expect = PeerAuthorizer::role(roots, spike_sdk::identity::Role::Nexus);
        Self {
            client: spike_sdk::client::HttpsClient::new(identity.clone(), expect)
                .expect("client config")
                .with_timeout(STEP_TIMEOUT),
        }
    }

    /// POSTs `body` to `path_and_query` on the node at `address`.
    pub async fn post(
        &self,
        address: SocketAddr,
        path_and_query: &str,
        body: serde_json::Value,
    ) -> Result<Reply, String> {
        self.post_with(address, path_and_query, body, &[]).await
    }

    /// Any request, raw.
    pub async fn raw(
        &self,
        address: SocketAddr,
        method: &str,
        path_and_query: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<spike_sdk::client::RawReply, String> {
        let request = spike_sdk::client::Request {
            method,
            path_and_query,
            content_type,
            body,
            headers: &[],
        };
        self.client
            .send(address, request)
            .await
            .map_err(|e| e.to_string())
    }

    /// POSTs with extra headers.
    pub async fn post_with(
        &self,
        address: SocketAddr,
        path_and_query: &str,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let request = spike_sdk::client::Request {
            method: "POST",
            path_and_query,
            content_type: spike_sdk::api::header::JSON,
            body: body.to_string().into_bytes(),
            headers,
        };
        let reply = self
            .client
            .send(address, request)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Reply {
            status: reply.status,
            body: serde_json::from_slice(&reply.bytes).unwrap_or(serde_json::Value::Null),
            leader: reply
                .header(spike_sdk::api::header::LEADER)
                .map(str::to_owned),
        })
    }
}

/// Runs `command` (a `spike`, say) with `stdin` as its input and its
/// output captured.
pub async fn output_with_stdin(
    mut command: tokio::process::Command,
    stdin: &[u8],
) -> std::process::Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the command");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).await.expect("write stdin");
    drop(input);
    child
        .wait_with_output()
        .await
        .expect("the command's output")
}

/// The stdout of a run that had to succeed; `what` names it if it did not.
pub fn stdout_of_success(output: &std::process::Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Writes `{"v": value}` at `path` through `node` as `client`.
pub async fn put(client: &ApiClient, node: SocketAddr, path: &str, value: &str) -> Reply {
    client
        .post(
            node,
            "/v1/store/secrets",
            json!({ "path": path, "values": { "v": value } }),
        )
        .await
        .expect("put reaches the node")
}

/// Reads `path` through `node` as `client`.
pub async fn get(client: &ApiClient, node: SocketAddr, path: &str) -> Reply {
    client
        .post(
            node,
            "/v1/store/secrets?action=get",
            json!({ "path": path }),
        )
        .await
        .expect("get reaches the node")
}

/// The value a successful get returned.
pub fn value_of(reply: &Reply) -> Option<String> {
    (reply.status == 200).then(|| reply.body["data"]["v"].as_str().map(str::to_owned))?
}

/// `snapshot save` through `node` as `client`: the backup's bytes in the
/// reply.
pub async fn save_backup(client: &ApiClient, node: SocketAddr) -> spike_sdk::client::RawReply {
    client
        .raw(
            node,
            "POST",
            "/v1/snapshot?action=save",
            "application/octet-stream",
            Vec::new(),
        )
        .await
        .expect("save reaches the node")
}

/// A cluster started with `spike-dev-cluster` in a temporary directory, taken
/// down when dropped.
pub struct LocalCluster {
    /// The cluster directory.
    pub dir: TempDir,
    /// `cluster.json` as last read.
    pub file: ClusterFile,
    launcher: Launcher,
}

/// Each cluster of a test binary gets its own block of 200 ports, all below
/// Linux's ephemeral range (32768 and up), so no outgoing connection can
/// hold one of them.
fn next_base_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let spread = (std::process::id() % 10) as u16;
    for _ in 0..110 {
        let slot = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = 10_000 + ((spread * 11 + slot) % 110) * 200;
        // Skip a block something else (a dev cluster, say) already uses.
        let free =
            (0..200).all(|offset| StdTcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free block of loopback ports below 32768")
}

impl LocalCluster {
    /// Starts a cluster (`spike-dev-cluster up`) with `args` and waits until it
    /// serves.
    pub fn up(args: &[&str]) -> Self {
        Self::up_in(tempfile::tempdir().expect("cluster directory"), args)
    }

    /// Like [`Self::up`], in `dir` (for a test that needs to know where
    /// `cluster.json` will be before the cluster starts).
    pub fn up_in(dir: TempDir, args: &[&str]) -> Self {
        let launcher_binary = binary(spike_dev_cluster::driver::BINARY);
        let bin_dir = launcher_binary.parent().expect("binaries in a directory");
        let launcher = Launcher::new(bin_dir, dir.path());
        let base_port = next_base_port().to_string();
        let mut all = vec!["--base-port", &base_port];
        all.extend_from_slice(args);
        match launcher.up(&all) {
            Ok(file) => Self {
                dir,
                file,
                launcher,
            },
            Err(error) => {
                // Whatever did start goes away again.
                let _ = launcher.down();
                panic!("{error}");
            }
        }
    }

    /// Runs `spike-dev-cluster ACTION NAME` (start, stop, kill, join, retire).
    pub fn act(&mut self, action: &str, name: &str) {
        if let Err(complaint) = self.try_act(action, name) {
            panic!("{complaint}");
        }
    }

    /// Like [`Self::act`], with the output or the complaint returned.
    pub fn try_act(&mut self, action: &str, name: &str) -> Result<String, String> {
        let outcome = self.try_spike(action, &[name]);
        self.reload();
        outcome
    }

    /// Runs `spike-dev-cluster ACTION ARGS...` on this cluster: its output,
    /// or its complaint.
    pub fn try_spike(&self, action: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec![action];
        all.extend_from_slice(args);
        self.launcher.run(&all).map_err(|error| error.to_string())
    }

    /// Impairs process `name`'s links (`spike-dev-cluster impair`, --netns
    /// clusters).
    pub fn impair(&self, name: &str, args: &[&str]) {
        let mut all = vec![name];
        all.extend_from_slice(args);
        if let Err(complaint) = self.try_spike("impair", &all) {
            panic!("{complaint}");
        }
    }

    /// Removes every cut and impairment (`spike-dev-cluster heal`).
    pub fn heal(&self) {
        if let Err(complaint) = self.try_spike("heal", &[]) {
            panic!("{complaint}");
        }
    }

    /// Rereads `cluster.json`.
    pub fn reload(&mut self) {
        self.file = self
            .launcher
            .load()
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// The dev Workload API socket serving identity `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.file.socket(name)
    }

    /// A `spike` command acting as identity `name` against this cluster:
    /// only its Workload API variables (the socket, and on SPIRE the SPIFFE
    /// ID to pick) are set, nothing else is inherited.
    pub fn spike_as(&self, name: &str) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(binary("spike"));
        command.env_clear();
        let (endpoint, spiffe_id) = self
            .file
            .workload_api(name)
            .unwrap_or_else(|error| panic!("{error}"));
        command.env("SPIFFE_ENDPOINT_SOCKET", endpoint);
        if let Some(spiffe_id) = spiffe_id {
            command.env("SPIKE_SPIFFE_ID", spiffe_id.to_string());
        }
        command
    }

    /// Process `name` as `cluster.json` lists it.
    pub fn process(&self, name: &str) -> &Process {
        self.file
            .process(name)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Replica `id` as `cluster.json` lists it.
    pub fn replica(&self, id: u64) -> &Replica {
        self.file
            .replicas()
            .find(|(_, replica)| replica.id == id)
            .map(|(_, replica)| replica)
            .unwrap_or_else(|| panic!("no replica {id}"))
    }

    /// The API address of replica `id`.
    pub fn api(&self, id: u64) -> SocketAddr {
        self.replica(id).api_addr
    }

    /// The data directory of replica `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.replica(id).data_dir.clone()
    }

    /// Names of every replica (spares and retired ones too).
    pub fn replica_names(&self) -> Vec<String> {
        self.file
            .replicas()
            .map(|(process, _)| process.name.clone())
            .collect()
    }

    /// Names of every keeper.
    pub fn keeper_names(&self) -> Vec<String> {
        self.file
            .keepers()
            .map(|(process, _)| process.name.clone())
            .collect()
    }

    /// Identity `name` (a role like `superuser`, or a process name) from the
    /// cluster's Workload API.
    pub async fn identity(&self, name: &str) -> Identity {
        self.file
            .svid_source(name)
            .unwrap_or_else(|error| panic!("{error}"))
            .load(STEP_TIMEOUT)
            .await
            .unwrap_or_else(|error| panic!("identity {name}: {error}"))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the running process `name`:
    /// a stopped process keeps its sockets open but answers nothing, like a
    /// node behind a network partition.
    pub fn signal(&self, name: &str, signal: &str) {
        let pid = self
            .process(name)
            .pid
            .unwrap_or_else(|| panic!("{name} does not run"));
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {name} (pid {pid})");
    }

    /// Whether replica `id` says it holds the root key.
    pub fn ready(&self, id: u64) -> bool {
        probe::ready(self.replica(id).health_addr, probe::PROBE_TIMEOUT)
    }

    /// Waits until replica `id` holds the root key; returns how long it took.
    pub async fn wait_ready(&self, id: u64, limit: Duration) -> Duration {
        let began = tokio::time::Instant::now();
        while !self.ready(id) {
            if began.elapsed() >= limit {
                let log = std::fs::read_to_string(&self.process(&format!("nexus-{id}")).log)
                    .unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|line| line.contains("nexus::"))
                    .rev()
                    .take(8)
                    .collect();
                panic!(
                    "nexus-{id} not ready after {limit:?}; its last words:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        began.elapsed()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.launcher.down();
    }
}
