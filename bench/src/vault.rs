//! A real secrets manager beside ours: a 3- or 5-node Vault cluster on its
//! integrated Raft storage (BoltDB, fsync on) with TLS 1.3 and client
//! certificates on loopback, initialised with one unseal key share,
//! unsealed and joined by this driver, and driven over Vault's HTTP API
//! (HTTP/2, one connection to the active node: Vault's standbys only
//! forward requests to it). Puts and gets go to a KV v2 mount, encrypt and
//! decrypt to a transit key (AES-256-GCM).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::etcd::Pki;
use crate::load::{Store, Workload};
use crate::teardown;

/// The transit key the encrypt and decrypt workloads use.
const TRANSIT_KEY: &str = "bench";

/// Largest response body read: KV reads of the benchmark's values and
/// transit answers are a few KiB.
const RESPONSE_LIMIT: usize = 1 << 20;

/// Each request of the load (and the TCP and TLS handshakes) gives up
/// after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A setup request (init, join, unseal, mounts) gives up after this long:
/// `sys/init` bootstraps Raft and a join waits for the leader's answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a started node may take to answer its health endpoint, and a
/// joined or restarted node to be unsealed.
const START_LIMIT: Duration = Duration::from_secs(60);

/// How long [`VaultCluster::active`] waits for an active node.
const ACTIVE_WAIT: Duration = Duration::from_secs(30);

/// The version `binary version` reports (`Vault v1.21.4 (...)` -> `1.21.4`).
pub fn version(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run vault at {} (bench/vault/build builds one; see --vault-bin)",
                binary.display()
            )
        })?;
    let said = String::from_utf8_lossy(&output.stdout);
    said.split_whitespace()
        .nth(1)
        .map(|word| {
            word.trim_start_matches('v')
                .trim_end_matches(',')
                .to_owned()
        })
        .with_context(|| format!("{} version says no version: {said}", binary.display()))
}

/// One node: its API and cluster ports and process.
struct Node {
    name: String,
    api: SocketAddr,
    cluster: SocketAddr,
    child: Option<Child>,
}

/// What `sys/init` hands out once: the unseal key (one share) and the
/// root token, wiped on drop and never printed.
struct Keys {
    unseal_base64: Zeroizing<String>,
    root_token: Zeroizing<String>,
}

/// A running Vault cluster, killed on drop.
pub struct VaultCluster {
    binary: PathBuf,
    dir: PathBuf,
    nodes: Vec<Node>,
    pki: Pki,
    tls: Arc<rustls::ClientConfig>,
    keys: Keys,
}

impl VaultCluster {
    /// Starts `replicas` nodes of `binary` in `dir` on ports from
    /// `base_port` (API BASE+2i, cluster BASE+2i+1), initialises the
    /// first, unseals it, joins and unseals the others, and mounts KV v2
    /// at `kv/` and transit at `transit/` with a key.
    pub async fn up(
        binary: &Path,
        dir: &Path,
        base_port: u16,
        replicas: usize,
    ) -> anyhow::Result<Self> {
        let pki = Pki::write(dir, "vault")?;
        let tls = Arc::new(pki.client_config()?);
        let nodes = (0..replicas)
            .map(|index| {
                let api = u16::try_from(index)
                    .ok()
                    .and_then(|i| base_port.checked_add(2 * i))
                    .filter(|port| *port < u16::MAX)
                    .context("vault node ports past 65535")?;
                Ok(Node {
                    name: format!("vault-{}", index + 1),
                    api: SocketAddr::from(([127, 0, 0, 1], api)),
                    cluster: SocketAddr::from(([127, 0, 0, 1], api + 1)),
                    child: None,
                })
            })
            .collect::<anyhow::Result<Vec<Node>>>()?;
        let mut cluster = Self {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            nodes,
            pki,
            tls,
            keys: Keys {
                unseal_base64: Zeroizing::default(),
                root_token: Zeroizing::default(),
            },
        };
        for index in 0..cluster.nodes.len() {
            cluster.write_config(index)?;
            cluster.start(index)?;
        }
        cluster.initialise().await?;
        Ok(cluster)
    }

    fn write_config(&self, index: usize) -> anyhow::Result<()> {
        let node = &self.nodes[index];
        let data = self.dir.join(&node.name);
        std::fs::create_dir_all(&data)?;
        let file = |name: &str| self.dir.join(name).display().to_string();
        // HCL strings are JSON strings: serde_json quotes the paths.
        // performance_multiplier 1: Raft's own timings (1 s election
        // timeout, as etcd's); Vault's default 5 stretches them for slow
        // networks and would put 5 s into every failover.
        let quoted = |text: String| Value::String(text).to_string();
        let config = format!(
            r#"storage "raft" {{
  path                   = {data}
  node_id                = {name}
  performance_multiplier = 1
}}
listener "tcp" {{
  address                            = {api}
  cluster_address                    = {cluster}
  tls_cert_file                      = {cert}
  tls_key_file                       = {key}
  tls_min_version                    = "tls13"
  tls_client_ca_file                 = {ca}
  tls_require_and_verify_client_cert = true
}}
api_addr      = {api_url}
cluster_addr  = {cluster_url}
disable_mlock = true
ui            = false
log_level     = "warn"
"#,
            data = quoted(data.display().to_string()),
            name = quoted(node.name.clone()),
            api = quoted(node.api.to_string()),
            cluster = quoted(node.cluster.to_string()),
            cert = quoted(file("leaf.pem")),
            key = quoted(file("leaf.key")),
            ca = quoted(file("ca.pem")),
            api_url = quoted(format!("https://{}", node.api)),
            cluster_url = quoted(format!("https://{}", node.cluster)),
        );
        std::fs::write(self.config_path(index), config)?;
        Ok(())
    }

    fn config_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("{}.hcl", self.nodes[index].name))
    }

    fn start(&mut self, index: usize) -> anyhow::Result<()> {
        let name = &self.nodes[index].name;
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("server")
            .arg(format!("-config={}", self.config_path(index).display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = teardown::spawn(&mut command).with_context(|| {
            format!(
                "vault at {} (bench/vault/build builds one; see --vault-bin)",
                self.binary.display()
            )
        })?;
        self.nodes[index].child = Some(child);
        Ok(())
    }

    /// `sys/init` with one key share on the first node, then its unseal;
    /// the others join it over Raft and are unsealed; then the mounts.
    async fn initialise(&mut self) -> anyhow::Result<()> {
        let first = self.nodes[0].api;
        self.wait_health(0, |status| status == StatusCode::NOT_IMPLEMENTED)
            .await?;
        let init = self
            .call(
                first,
                Method::PUT,
                "sys/init",
                None,
                Some(json!({ "secret_shares": 1, "secret_threshold": 1 })),
            )
            .await?;
        let unseal = init["keys_base64"][0]
            .as_str()
            .context("sys/init gave no unseal key")?;
        let root = init["root_token"]
            .as_str()
            .context("sys/init gave no root token")?;
        self.keys = Keys {
            unseal_base64: Zeroizing::new(unseal.to_owned()),
            root_token: Zeroizing::new(root.to_owned()),
        };
        self.unseal(0).await?;
        self.wait_health(0, |status| status == StatusCode::OK)
            .await?;
        let leader_api = format!("https://{first}");
        let leaf_key = std::fs::read_to_string(self.dir.join("leaf.key"))?;
        for index in 1..self.nodes.len() {
            self.wait_health(index, |status| status == StatusCode::NOT_IMPLEMENTED)
                .await?;
            let joined = self
                .call(
                    self.nodes[index].api,
                    Method::POST,
                    "sys/storage/raft/join",
                    None,
                    Some(json!({
                        "leader_api_addr": leader_api,
                        "leader_ca_cert": self.pki.ca_pem,
                        "leader_client_cert": self.pki.leaf_pem,
                        "leader_client_key": leaf_key,
                    })),
                )
                .await?;
            if joined["joined"] != Value::Bool(true) {
                bail!("{} did not join: {joined}", self.nodes[index].name);
            }
            self.unseal(index).await?;
            self.wait_health(index, |status| status == StatusCode::TOO_MANY_REQUESTS)
                .await?;
        }
        self.wait_voters().await?;
        let token = Some(self.keys.root_token.as_str());
        let mounts = [
            (
                "sys/mounts/kv",
                json!({ "type": "kv", "options": { "version": "2" } }),
            ),
            ("sys/mounts/transit", json!({ "type": "transit" })),
            (
                &*format!("transit/keys/{TRANSIT_KEY}"),
                json!({ "type": "aes256-gcm96" }),
            ),
        ];
        for (path, body) in mounts {
            self.call(first, Method::POST, path, token, Some(body))
                .await?;
        }
        Ok(())
    }

    /// Waits until every node votes: a joined node starts as a non-voter
    /// and autopilot promotes it once it has been healthy for its
    /// stabilisation time (10 s by default). A kill of the leader before
    /// that would leave no quorum.
    async fn wait_voters(&self) -> anyhow::Result<()> {
        let began = Instant::now();
        loop {
            let answer = self
                .call(
                    self.nodes[0].api,
                    Method::GET,
                    "sys/storage/raft/configuration",
                    Some(self.keys.root_token.as_str()),
                    None,
                )
                .await?;
            let servers = answer["data"]["config"]["servers"]
                .as_array()
                .context("sys/storage/raft/configuration names no servers")?;
            let voters = servers
                .iter()
                .filter(|server| server["voter"] == Value::Bool(true))
                .count();
            if voters == self.nodes.len() {
                return Ok(());
            }
            if began.elapsed() > START_LIMIT {
                bail!(
                    "{voters} of {} vault nodes vote after {START_LIMIT:?}",
                    self.nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sends the unseal key share to node `index`. A node that has just
    /// joined still says sealed: it unseals once the leader has answered
    /// its Raft join challenge, so callers wait for its health instead.
    async fn unseal(&self, index: usize) -> anyhow::Result<()> {
        let body = json!({ "key": self.keys.unseal_base64.as_str() });
        self.call(
            self.nodes[index].api,
            Method::PUT,
            "sys/unseal",
            None,
            Some(body),
        )
        .await
        .map(drop)
    }

    /// Waits until node `index`'s `sys/health` answers with a status that
    /// `wanted` accepts (200 active, 429 standby, 501 not initialised,
    /// 503 sealed).
    async fn wait_health(
        &self,
        index: usize,
        wanted: impl Fn(StatusCode) -> bool,
    ) -> anyhow::Result<Duration> {
        let node = &self.nodes[index];
        let began = Instant::now();
        loop {
            if let Ok(status) = health(node.api, &self.tls).await
                && wanted(status)
            {
                return Ok(began.elapsed());
            }
            if began.elapsed() > START_LIMIT {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.log", node.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                bail!(
                    "{} not in the state wanted after {START_LIMIT:?}; its last log lines, newest first:\n{}",
                    node.name,
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request on a connection of its own; the JSON answer of a 2xx
    /// (`null` for 204).
    async fn call(
        &self,
        address: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let sender = connect(address, &self.tls).await?;
        let (status, answer) = send(&sender, address, method, path, token, body, SETUP_TIMEOUT)
            .await
            .map_err(anyhow::Error::msg)?;
        if !status.is_success() {
            bail!(
                "vault {path} at {address}: {status}: {}",
                String::from_utf8_lossy(&answer)
            );
        }
        if answer.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&answer).with_context(|| format!("vault {path}: not JSON"))
    }

    /// A client of the cluster with the root token.
    pub fn client(&self) -> VaultStore {
        VaultStore {
            nodes: self.nodes.iter().map(|node| node.api).collect(),
            tls: self.tls.clone(),
            token: self.keys.root_token.clone(),
            active: Mutex::new(None),
        }
    }

    /// The index of the active node, asked of the nodes until one says so.
    pub async fn active(&self) -> anyhow::Result<usize> {
        let began = Instant::now();
        loop {
            for (index, node) in self.nodes.iter().enumerate() {
                if node.child.is_some()
                    && matches!(health(node.api, &self.tls).await, Ok(StatusCode::OK))
                {
                    return Ok(index);
                }
            }
            if began.elapsed() > ACTIVE_WAIT {
                bail!("no vault node says it is active after {ACTIVE_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// kill -9 of node `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts node `index` on its data and unseals it (a Shamir-sealed
    /// Vault starts sealed); returns how long until it serves as active or
    /// standby.
    pub async fn restart_and_wait(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.start(index)?;
        self.wait_health(index, |status| status == StatusCode::SERVICE_UNAVAILABLE)
            .await?;
        self.unseal(index).await?;
        self.wait_health(index, |status| {
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS
        })
        .await?;
        let took = began.elapsed();
        if took > limit {
            bail!(
                "{} took {took:?} to serve after its restart",
                self.nodes[index].name
            );
        }
        Ok(took)
    }

    /// Each node's name and data directory.
    pub fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        self.nodes
            .iter()
            .map(|node| (node.name.clone(), self.dir.join(&node.name)))
            .collect()
    }

    /// Resident memory (KiB) of each node.
    pub fn resident_kib(&self) -> Vec<(String, u64)> {
        self.nodes
            .iter()
            .filter_map(|node| {
                let rss = crate::load::resident_kib(node.child.as_ref()?.id())?;
                Some((node.name.clone(), rss))
            })
            .collect()
    }
}

impl Drop for VaultCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
    }
}

/// `sys/health`'s status code at `address` (it answers without a token).
async fn health(
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<StatusCode, String> {
    let sender = connect(address, tls).await.map_err(|e| e.to_string())?;
    send(
        &sender,
        address,
        Method::GET,
        "sys/health",
        None,
        None,
        REQUEST_TIMEOUT,
    )
    .await
    .map(|(status, _)| status)
}

/// An HTTP/2 connection over TLS to `address`.
async fn connect(
    address: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::IpAddress(address.ip().into());
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await?;
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await?;
        tokio::spawn(connection);
        anyhow::Ok(sender)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, handshake)
        .await
        .with_context(|| format!("vault at {address}: no TLS connection in {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("vault at {address}"))
}

/// One request to `/v1/{path}`: the status and the body (bounded).
async fn send(
    sender: &SendRequest<Full<Bytes>>,
    address: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    limit: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("https://{address}/v1/{path}"));
    if let Some(token) = token {
        request = request.header("x-vault-token", token);
    }
    let body = match body {
        Some(value) => {
            request = request.header("content-type", "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = sender
            .clone()
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), RESPONSE_LIMIT)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("vault {path}: no answer in {limit:?}"))?
}

/// Vault's HTTP API as a [`Store`]: every request to the active node, over
/// one HTTP/2 connection found again after a failover.
pub struct VaultStore {
    nodes: Vec<SocketAddr>,
    tls: Arc<rustls::ClientConfig>,
    token: Zeroizing<String>,
    /// The active node's address and connection, once found.
    active: Mutex<Option<(SocketAddr, SendRequest<Full<Bytes>>)>>,
}

impl VaultStore {
    /// The connection to the active node: the one in use while it is open,
    /// else a new one to the node whose health says it is active.
    async fn active(&self) -> Result<(SocketAddr, SendRequest<Full<Bytes>>), String> {
        if let Some((address, sender)) = self
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && !sender.is_closed()
        {
            return Ok((*address, sender.clone()));
        }
        for address in &self.nodes {
            let Ok(sender) = connect(*address, &self.tls).await else {
                continue;
            };
            let health = send(
                &sender,
                *address,
                Method::GET,
                "sys/health",
                None,
                None,
                REQUEST_TIMEOUT,
            );
            let Ok((status, _)) = health.await else {
                continue;
            };
            if status == StatusCode::OK {
                *self.active.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((*address, sender.clone()));
                return Ok((*address, sender));
            }
        }
        Err("no vault node is active".to_owned())
    }

    /// A request to the active node; the JSON answer of a 2xx. Any other
    /// answer drops the connection, so the next request looks for the
    /// active node again (a standby that was active answers 5xx or
    /// forwards).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Bytes, String> {
        let (address, sender) = self.active().await?;
        let answer = send(
            &sender,
            address,
            method,
            path,
            Some(self.token.as_str()),
            body,
            REQUEST_TIMEOUT,
        )
        .await;
        match answer {
            Ok((status, body)) if status.is_success() => Ok(body),
            failed => {
                *self.active.lock().unwrap_or_else(PoisonError::into_inner) = None;
                Err(match failed {
                    Ok((status, body)) => {
                        format!("vault {path}: {status}: {}", String::from_utf8_lossy(&body))
                    }
                    Err(error) => error,
                })
            }
        }
    }
}

impl Store for VaultStore {
    async fn put(&self, key: u64, value: &str) -> Result<(), String> {
        let body = json!({ "data": { "v": value } });
        self.call(Method::POST, &format!("kv/data/bench/k{key}"), Some(body))
            .await
            .map(drop)
    }

    /// Vault answers every read from its active node (a standby forwards
    /// it), from its local Raft state under the active node's lock (no
    /// read index): there is no stale read, and get-stale is skipped.
    async fn get(&self, key: u64, _stale: bool) -> Result<(), String> {
        self.call(Method::GET, &format!("kv/data/bench/k{key}"), None)
            .await
            .map(drop)
    }

    fn offers(&self, workload: Workload) -> bool {
        workload != Workload::GetStale
    }

    async fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, String> {
        let body = json!({ "plaintext": BASE64.encode(plaintext) });
        let answer = self
            .call(
                Method::POST,
                &format!("transit/encrypt/{TRANSIT_KEY}"),
                Some(body),
            )
            .await?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        answer["data"]["ciphertext"]
            .as_str()
            .map(|ciphertext| ciphertext.as_bytes().to_vec())
            .ok_or_else(|| "transit encrypt gave no ciphertext".to_owned())
    }

    async fn decrypt(&self, ciphertext: &[u8]) -> Result<(), String> {
        let ciphertext = std::str::from_utf8(ciphertext).map_err(|e| e.to_string())?;
        let answer = self
            .call(
                Method::POST,
                &format!("transit/decrypt/{TRANSIT_KEY}"),
                Some(json!({ "ciphertext": ciphertext })),
            )
            .await?;
        let answer: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        if answer["data"]["plaintext"].is_string() {
            Ok(())
        } else {
            Err("transit decrypt gave no plaintext".to_owned())
        }
    }
}
