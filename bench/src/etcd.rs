//! The other side: a 3- or 5-member etcd cluster on loopback with client and peer
//! mTLS and fsync on (etcd's default), driven over its native gRPC API the
//! way `clientv3` does: one HTTP/2 connection per member, requests spread
//! round-robin (etcd forwards to its leader internally).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tonic::transport::{Channel, Endpoint};

use crate::load::Store;
use crate::teardown;

mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

use proto::cluster_client::ClusterClient;
use proto::kv_client::KvClient;
use proto::maintenance_client::MaintenanceClient;

/// Certificates for a peer's cluster and its client: one CA, one leaf for
/// everything with an IP SAN of 127.0.0.1 (etcd checks it on peers too).
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    pub(crate) leaf_pem: String,
    leaf_der: Vec<u8>,
    leaf_key_der: Vec<u8>,
}

impl Pki {
    /// A new CA named for `peer` and its leaf, written to `dir` as
    /// ca.pem, leaf.pem and leaf.key.
    pub(crate) fn write(dir: &Path, peer: &str) -> anyhow::Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("spike-bench {peer} CA"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "spike-bench");
        params.subject_alt_names = vec![SanType::IpAddress([127, 0, 0, 1].into())];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let leaf = params.signed_by(&leaf_key, &issuer)?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
        std::fs::write(dir.join("leaf.pem"), leaf.pem())?;
        std::fs::write(dir.join("leaf.key"), leaf_key.serialize_pem())?;
        Ok(Self {
            ca_pem: ca.pem(),
            leaf_pem: leaf.pem(),
            leaf_der: leaf.der().to_vec(),
            leaf_key_der: leaf_key.serialize_der(),
        })
    }

    /// TLS 1.3 with the leaf as client certificate, offering HTTP/2.
    pub(crate) fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::pem::PemObject::from_pem_slice(self.ca_pem.as_bytes())
            .context("CA PEM")?;
        roots.add(ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from(self.leaf_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.leaf_key_der.clone())),
            )?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The version `binary --version` reports (`etcd Version: 3.6.8`).
pub fn version(binary: &Path) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run etcd at {} (bench/run builds one; see --etcd-bin)",
                binary.display()
            )
        })?;
    let said = String::from_utf8_lossy(&output.stdout);
    said.lines()
        .find_map(|line| line.strip_prefix("etcd Version:"))
        .map(|version| version.trim().to_owned())
        .with_context(|| format!("{} --version says no version: {said}", binary.display()))
}

/// How long [`EtcdCluster::leader`] waits for an elected leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// How long a `member add` is asked again while etcd finds its cluster
/// unhealthy (a member connected for less than 5 s).
const MEMBER_ADD_WAIT: Duration = Duration::from_secs(30);

/// One member: its client and peer ports and process.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

/// Member `index`'s name and ports: client BASE+2i, peer BASE+2i+1.
fn member(base_port: u16, index: usize) -> anyhow::Result<Member> {
    let client = u16::try_from(index)
        .ok()
        .and_then(|i| base_port.checked_add(2 * i))
        .filter(|port| *port < u16::MAX)
        .context("etcd member ports past 65535")?;
    Ok(Member {
        name: format!("etcd-{}", index + 1),
        client: SocketAddr::from(([127, 0, 0, 1], client)),
        peer: SocketAddr::from(([127, 0, 0, 1], client + 1)),
        child: None,
    })
}

/// A running etcd cluster, killed on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    dir: PathBuf,
    base_port: u16,
    members: Vec<Member>,
    config: Arc<rustls::ClientConfig>,
}

/// A member added to a loaded cluster, serving its data.
pub struct Added {
    /// Its name.
    pub name: String,
    /// From its `member add` (the one etcd accepted) to its first
    /// linearizable read.
    pub serving: Duration,
    /// The leader's Raft index when it was added.
    pub leader_index: u64,
    /// The leader's database size when it was added, if the new member
    /// got a snapshot (it holds a `.snap` file): etcd sends a member
    /// behind its compacted log the whole database. None: it caught up
    /// from the log.
    pub snapshot_bytes: Option<u64>,
}

impl EtcdCluster {
    /// Starts `replicas` members of `binary` in `dir` on ports from
    /// `base_port`.
    pub fn up(binary: &Path, dir: &Path, base_port: u16, replicas: usize) -> anyhow::Result<Self> {
        let pki = Pki::write(dir, "etcd")?;
        let members = (0..replicas)
            .map(|index| member(base_port, index))
            .collect::<anyhow::Result<Vec<Member>>>()?;
        let mut cluster = Self {
            binary: binary.to_owned(),
            dir: dir.to_owned(),
            base_port,
            members,
            config: Arc::new(pki.client_config()?),
        };
        for index in 0..cluster.members.len() {
            cluster.start(index, "new")?;
        }
        Ok(cluster)
    }

    fn start(&mut self, index: usize, state: &str) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=https://{}", m.name, m.peer))
            .collect();
        let member = &self.members[index];
        let tls = |flag: &str, file: &str| format!("--{flag}={}", self.dir.join(file).display());
        let log = std::fs::File::create(self.dir.join(format!("{}.log", member.name)))?;
        let mut command = Command::new(&self.binary);
        command
            .arg(format!("--name={}", member.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.join(&member.name).display()
            ))
            .arg(format!("--listen-client-urls=https://{}", member.client))
            .arg(format!("--advertise-client-urls=https://{}", member.client))
            .arg(format!("--listen-peer-urls=https://{}", member.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=https://{}",
                member.peer
            ))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--client-cert-auth")
            .arg(tls("trusted-ca-file", "ca.pem"))
            .arg(tls("cert-file", "leaf.pem"))
            .arg(tls("key-file", "leaf.key"))
            .arg("--peer-client-cert-auth")
            .arg(tls("peer-trusted-ca-file", "ca.pem"))
            .arg(tls("peer-cert-file", "leaf.pem"))
            .arg(tls("peer-key-file", "leaf.key"))
            .arg("--log-level=warn")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = teardown::spawn(&mut command).with_context(|| {
            format!(
                "etcd at {} (bench/run builds one; see --etcd-bin)",
                self.binary.display()
            )
        })?;
        self.members[index].child = Some(child);
        Ok(())
    }

    /// A client over every member.
    pub fn client(&self) -> EtcdStore {
        let channels = self
            .members
            .iter()
            .map(|m| channel(m.client, self.config.clone()))
            .collect();
        EtcdStore {
            channels,
            next: AtomicUsize::new(0),
        }
    }

    /// Waits until a linearizable read succeeds.
    pub async fn wait_ready(&self, limit: Duration) -> anyhow::Result<Duration> {
        let store = self.client();
        let began = Instant::now();
        loop {
            if store.get(u64::MAX, false).await.is_ok() {
                return Ok(began.elapsed());
            }
            if began.elapsed() > limit {
                bail!("etcd not ready after {limit:?}; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index of the current leader, asked of the members until one
    /// says it leads (an election after a restart takes a moment).
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let began = Instant::now();
        loop {
            if let Some(index) = self.leader_now().await {
                return Ok(index);
            }
            if began.elapsed() > LEADER_WAIT {
                bail!("no etcd member says it leads after {LEADER_WAIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The member that says it leads, if one does now.
    async fn leader_now(&self) -> Option<usize> {
        for member in &self.members {
            if member.child.is_none() {
                continue;
            }
            let mut client = MaintenanceClient::new(channel(member.client, self.config.clone()));
            let Ok(status) = client.status(proto::StatusRequest {}).await else {
                continue;
            };
            let status = status.into_inner();
            let mine = status.header.map(|h| h.member_id);
            if mine == Some(status.leader) {
                return self.members.iter().position(|m| m.name == member.name);
            }
            // Ask the leader itself next round; follower answers name it only by id.
        }
        None
    }

    /// kill -9 of member `index`.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts member `index` on its data; returns how long until it
    /// serves a linearizable read.
    pub async fn restart_and_wait(
        &mut self,
        index: usize,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let began = Instant::now();
        self.start(index, "existing")?;
        let member = self.member_client(index);
        while member.get(0, false).await.is_err() {
            if began.elapsed() > limit {
                bail!(
                    "{} does not serve {limit:?} after its restart",
                    self.members[index].name
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(began.elapsed())
    }

    /// Each member's name and data directory.
    pub fn data_dirs(&self) -> Vec<(String, PathBuf)> {
        self.members
            .iter()
            .map(|m| (m.name.clone(), self.dir.join(&m.name)))
            .collect()
    }

    /// `member add` of a new member (a voter: etcd's learners serve no
    /// linearizable reads), then its start with the new membership; waits
    /// until it serves a linearizable read, that is, until it has applied
    /// everything committed before the read (from the leader's snapshot,
    /// when the leader has compacted its log past it).
    pub async fn add_member_and_wait(&mut self, limit: Duration) -> anyhow::Result<Added> {
        let leader = self.leader().await?;
        let mut maintenance =
            MaintenanceClient::new(channel(self.members[leader].client, self.config.clone()));
        let status = maintenance
            .status(proto::StatusRequest {})
            .await
            .context("etcd status of the leader")?
            .into_inner();
        let index = self.members.len();
        let added = member(self.base_port, index)?;
        let mut cluster =
            ClusterClient::new(channel(self.members[leader].client, self.config.clone()));
        // etcd refuses a voter while any member has been connected for
        // less than 5 s ("unhealthy cluster"), as after the restart trial.
        let asked = Instant::now();
        let began = loop {
            let add = cluster
                .member_add(proto::MemberAddRequest {
                    peer_ur_ls: vec![format!("https://{}", added.peer)],
                    is_learner: false,
                })
                .await;
            match add {
                Ok(_) => break Instant::now(),
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && asked.elapsed() < MEMBER_ADD_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => {
                    return Err(status)
                        .with_context(|| format!("etcd member add of {}", added.name));
                }
            }
        };
        let name = added.name.clone();
        self.members.push(added);
        self.start(index, "existing")?;
        let member = self.member_client(index);
        while member.get(0, false).await.is_err() {
            if began.elapsed() > limit {
                bail!(
                    "{name} does not serve {limit:?} after its member add; see {}",
                    self.dir.join(format!("{name}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let serving = began.elapsed();
        // A member applying the log takes a snapshot of its own only after
        // 10,000 entries (--snapshot-count), and a leader with that many
        // has compacted its log: a .snap file here is the leader's.
        let snap = self.dir.join(&name).join("member").join("snap");
        let got_snapshot = std::fs::read_dir(&snap).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|entry| entry.path().extension().is_some_and(|e| e == "snap"))
        });
        Ok(Added {
            name,
            serving,
            leader_index: status.raft_index,
            snapshot_bytes: got_snapshot.then(|| u64::try_from(status.db_size).unwrap_or(0)),
        })
    }

    /// A client of member `index` alone.
    pub fn member_client(&self, index: usize) -> EtcdStore {
        EtcdStore {
            channels: vec![channel(self.members[index].client, self.config.clone())],
            next: AtomicUsize::new(0),
        }
    }

    /// Resident memory (KiB) of each member.
    pub fn resident_kib(&self) -> Vec<(String, u64)> {
        self.members
            .iter()
            .filter_map(|m| {
                let rss = crate::load::resident_kib(m.child.as_ref()?.id())?;
                Some((m.name.clone(), rss))
            })
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

fn channel(address: SocketAddr, config: Arc<rustls::ClientConfig>) -> Channel {
    let connector = tower::service_fn(move |_uri| {
        let config = config.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::IpAddress(address.ip().into());
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    Endpoint::from_shared(format!("http://{address}"))
        .unwrap_or_else(|_| unreachable!("a socket address always forms a valid URI"))
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector)
}

/// etcd's KV API as a [`Store`].
pub struct EtcdStore {
    channels: Vec<Channel>,
    next: AtomicUsize,
}

impl EtcdStore {
    fn kv(&self) -> KvClient<Channel> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        KvClient::new(self.channels[index].clone())
    }
}

fn key_of(key: u64) -> Vec<u8> {
    format!("bench/k{key}").into_bytes()
}

impl Store for EtcdStore {
    async fn put(&self, key: u64, value: &str) -> Result<(), String> {
        let request = proto::PutRequest {
            key: key_of(key),
            value: value.as_bytes().to_vec(),
            lease: 0,
        };
        self.kv()
            .put(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn get(&self, key: u64, stale: bool) -> Result<(), String> {
        let request = proto::RangeRequest {
            key: key_of(key),
            serializable: stale,
            ..Default::default()
        };
        self.kv()
            .range(request)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
