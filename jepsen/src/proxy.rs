//! Per-link TCP proxies: network faults without root.
//!
//! Where network namespaces are impossible, every process runs on loopback
//! and each replica dials all its outgoing connections (peers, keepers,
//! forwarded requests) through an HTTP CONNECT proxy of its own here
//! (`nexus --connect-proxy`). The proxy a connection arrives on names its
//! source, the CONNECT target (looked up in `cluster.json`) its
//! destination, so every link can be faulted on its own:
//!
//! - a cut link stalls: new tunnels wait before connecting, open ones stop
//!   delivering (as packets that vanish while TCP keeps retrying) and
//!   deliver everything, in order, once healed;
//! - an impaired link delays each chunk by a fixed time, adds a
//!   retransmission timeout to a share of them (packet loss as TCP sees
//!   it), and/or paces them to a bandwidth.
//!
//! mTLS runs end to end through the tunnels; the proxies see ciphertext
//! only. They run on a thread and runtime of their own, so a harness
//! blocked on a child process never stalls the cluster's traffic. Only
//! loopback targets that are processes of this cluster are ever dialled.
//!
//! Limits: tunnels at once ([`TUNNELS_MAX`]; more are refused), a CONNECT
//! head of [`HEAD_MAX`] bytes read within [`HEAD_TIMEOUT`], and
//! [`CHUNKS_IN_FLIGHT`] chunks of up to [`CHUNK_MAX`] bytes held per
//! direction of a tunnel (beyond that the sender waits, as a full TCP
//! window makes it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use spike_dev_cluster::ClusterFile;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::recorder::Rng;

/// Tunnels open at once, over every proxy.
pub const TUNNELS_MAX: usize = 512;
/// Longest CONNECT request head.
pub const HEAD_MAX: usize = 8 * 1024;
/// Longest wait for a CONNECT request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Chunks held per direction of a tunnel.
pub const CHUNKS_IN_FLIGHT: usize = 16;
/// Largest chunk read at once.
pub const CHUNK_MAX: usize = 16 * 1024;
/// What a lost packet costs: TCP's minimum retransmission timeout.
const RETRANSMISSION: Duration = Duration::from_millis(200);

/// How a process's links are impaired (each of its links, both ways).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Share of chunks that pay a retransmission timeout, in percent.
    pub loss_percent: u8,
    /// Added to every chunk.
    pub delay: Duration,
    /// Bandwidth cap in kbit/s.
    pub rate_kbit: Option<u32>,
}

impl Impairment {
    /// Both ends' impairments at once: delays add up, the worse loss and
    /// the lower bandwidth hold.
    fn and(self, other: Self) -> Self {
        Self {
            loss_percent: self.loss_percent.max(other.loss_percent),
            delay: self.delay + other.delay,
            rate_kbit: match (self.rate_kbit, other.rate_kbit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

#[derive(Debug, Default)]
struct Links {
    /// Cut pairs, the lesser name first.
    cuts: BTreeSet<(String, String)>,
    impaired: BTreeMap<String, Impairment>,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

struct Shared {
    links: Mutex<Links>,
    /// Bumped on every change, so stalled tunnels look again.
    changed: watch::Sender<u64>,
    /// Process names by the addresses they listen on.
    book: Mutex<BTreeMap<SocketAddr, String>>,
    /// The cluster directory, whose `cluster.json` names the listeners.
    cluster_dir: PathBuf,
    tunnels: Arc<Semaphore>,
    seeds: AtomicU64,
}

impl Shared {
    fn lock_links(&self) -> std::sync::MutexGuard<'_, Links> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut Links)) {
        change(&mut self.lock_links());
        self.changed.send_modify(|version| *version += 1);
    }

    fn is_cut(&self, a: &str, b: &str) -> bool {
        self.lock_links().cuts.contains(&pair(a, b))
    }

    fn impairment(&self, a: &str, b: &str) -> Impairment {
        let links = self.lock_links();
        let of = |name: &str| links.impaired.get(name).copied().unwrap_or_default();
        of(a).and(of(b))
    }

    /// Returns once the link between `a` and `b` is not cut.
    async fn until_connected(&self, a: &str, b: &str) {
        // Subscribed before looking: no change can slip between.
        let mut changes = self.changed.subscribe();
        while self.is_cut(a, b) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// The process listening on `address`, rereading `cluster.json` when
    /// it is not known yet (replicas join during a run).
    fn name_of(&self, address: SocketAddr) -> Option<String> {
        let mut book = self.book.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(name) = book.get(&address) {
            return Some(name.clone());
        }
        let file = ClusterFile::load(&self.cluster_dir).ok()?;
        for process in file.processes {
            let cluster_addr = process.replica().map(|replica| replica.cluster_addr);
            for listening in [process.api_addr(), cluster_addr].into_iter().flatten() {
                book.insert(listening, process.name.clone());
            }
        }
        book.get(&address).cloned()
    }
}

/// The proxies of one cluster; stopped when dropped.
pub struct LinkProxies {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LinkProxies {
    /// Starts one proxy per source: `sources` names each with the loopback
    /// port it listens on. Destinations are looked up in the `cluster.json`
    /// of `cluster_dir`.
    pub fn start(sources: Vec<(String, u16)>, cluster_dir: PathBuf) -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            links: Mutex::new(Links::default()),
            changed: watch::channel(0).0,
            book: Mutex::new(BTreeMap::new()),
            cluster_dir,
            tunnels: Arc::new(Semaphore::new(TUNNELS_MAX)),
            seeds: AtomicU64::new(0x7072_6f78_7969_6e67),
        });
        // Bound here, so a port in use is an error now, not a silent gap.
        let mut listeners = Vec::new();
        for (name, port) in sources {
            let listener = std::net::TcpListener::bind(("127.0.0.1", port))
                .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
                .map_err(|e| anyhow::anyhow!("proxy for {name} on port {port}: {e}"))?;
            listeners.push((name, listener));
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("link-proxies".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    for (name, listener) in listeners {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => {
                                tokio::spawn(accept_loop(serving.clone(), name, listener));
                            }
                            Err(error) => eprintln!("proxy for {name}: {error}"),
                        }
                    }
                    let _ = stopped.await;
                });
                // Every tunnel ends with the runtime.
                runtime.shutdown_background();
            })?;
        Ok(Self {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Cuts the link between `a` and `b`, both ways.
    pub fn cut(&self, a: &str, b: &str) {
        self.shared.update(|links| {
            links.cuts.insert(pair(a, b));
        });
    }

    /// Impairs every link of `name` (replacing an earlier impairment).
    pub fn impair(&self, name: &str, impairment: Impairment) {
        self.shared.update(|links| {
            links.impaired.insert(name.to_owned(), impairment);
        });
    }

    /// Removes every cut and impairment.
    pub fn heal(&self) {
        self.shared.update(|links| *links = Links::default());
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, source: String, listener: TcpListener) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of descriptors, say: give the system a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Past the limit a tunnel is refused: the replica retries.
        let Ok(permit) = shared.tunnels.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        let source = source.clone();
        tokio::spawn(async move {
            let _ = tunnel(&shared, &source, inbound).await;
            drop(permit);
        });
    }
}

/// Reads a CONNECT head; returns the target.
async fn read_connect(inbound: &mut TcpStream) -> Result<SocketAddr, &'static str> {
    let mut head = Vec::with_capacity(128);
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= HEAD_MAX {
                return Err("400 Request Header Fields Too Large");
            }
            head.push(inbound.read_u8().await.map_err(|_| "")?);
        }
        Ok(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| "408 Request Timeout")??;
    let line = head.split(|byte| *byte == b'\r').next().unwrap_or_default();
    let line = std::str::from_utf8(line).map_err(|_| "400 Bad Request")?;
    match line.split(' ').collect::<Vec<_>>()[..] {
        ["CONNECT", target, version] if version.starts_with("HTTP/1.") => {
            target.parse().map_err(|_| "400 Bad Request")
        }
        _ => Err("405 Method Not Allowed"),
    }
}

async fn refuse(inbound: &mut TcpStream, status: &str) {
    if !status.is_empty() {
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        let _ = inbound.write_all(answer.as_bytes()).await;
    }
}

async fn tunnel(shared: &Arc<Shared>, source: &str, mut inbound: TcpStream) -> std::io::Result<()> {
    let _ = inbound.set_nodelay(true);
    let target = match read_connect(&mut inbound).await {
        Ok(target) => target,
        Err(status) => {
            refuse(&mut inbound, status).await;
            return Ok(());
        }
    };
    let destination = match shared.name_of(target) {
        Some(name) if target.ip().is_loopback() => name,
        _ => {
            refuse(&mut inbound, "403 Forbidden").await;
            return Ok(());
        }
    };
    // A cut link loses the connection attempt until it heals.
    shared.until_connected(source, &destination).await;
    let outbound = match TcpStream::connect(target).await {
        Ok(outbound) => outbound,
        Err(_) => {
            refuse(&mut inbound, "502 Bad Gateway").await;
            return Ok(());
        }
    };
    let _ = outbound.set_nodelay(true);
    inbound
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await?;
    let (from_source, to_source) = inbound.into_split();
    let (from_destination, to_destination) = outbound.into_split();
    let seed = shared.seeds.fetch_add(2, Ordering::Relaxed);
    tokio::join!(
        carry(
            shared,
            (source, &destination),
            from_source,
            to_destination,
            seed
        ),
        carry(
            shared,
            (&destination, source),
            from_destination,
            to_source,
            seed + 1
        ),
    );
    Ok(())
}

/// Carries one direction of a tunnel, faulted as the link between `ends`
/// is; ends when either side closes or fails.
async fn carry(
    shared: &Shared,
    (from, to): (&str, &str),
    mut reader: impl AsyncRead + Unpin,
    mut writer: impl AsyncWrite + Unpin,
    seed: u64,
) {
    let (chunks, mut held) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_IN_FLIGHT);
    let reading = async move {
        let mut rng = Rng::new(seed);
        let mut buffer = vec![0u8; CHUNK_MAX];
        let mut last_release = Instant::now();
        loop {
            let read = match reader.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            let impairment = shared.impairment(from, to);
            let mut release = Instant::now() + impairment.delay;
            if rng.below(100) < u64::from(impairment.loss_percent) {
                release += RETRANSMISSION;
            }
            if let Some(rate) = impairment.rate_kbit {
                let bits = read as u64 * 8;
                let on_the_wire = Duration::from_micros(bits * 1000 / u64::from(rate.max(1)));
                release = release.max(last_release + on_the_wire);
            }
            // In order, as TCP delivers.
            release = release.max(last_release);
            last_release = release;
            if chunks
                .send((release, buffer[..read].to_vec()))
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let writing = async move {
        while let Some((release, chunk)) = held.recv().await {
            shared.until_connected(from, to).await;
            tokio::time::sleep_until(release).await;
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(reading, writing);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster directory whose `cluster.json` has an echo server at
    /// `address` for `nexus-2`.
    fn cluster_dir(dir: &std::path::Path, address: SocketAddr) -> PathBuf {
        use spike_dev_cluster::Role;
        use spike_dev_cluster::plan::{Shape, plan};
        let shape = Shape {
            replicas: 2,
            keepers: 1,
            threshold: 1,
            ..Shape::default()
        };
        let mut file = plan(dir, shape).expect("plan");
        let index = file.index_of("nexus-2").expect("nexus-2");
        if let Role::Nexus(replica) = &mut file.processes[index].role {
            replica.api_addr = address;
        }
        file.save().expect("write cluster.json");
        dir.to_owned()
    }

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = tcp.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        address
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port")
    }

    async fn round_trip(stream: &mut spike_sdk::net::Stream, within: Duration) -> bool {
        if stream.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut echo = [0u8; 4];
        matches!(
            tokio::time::timeout(within, stream.read_exact(&mut echo)).await,
            Ok(Ok(_))
        ) && &echo == b"ping"
    }

    /// `nexus-1`'s proxy in front of an echo server named `nexus-2`, and
    /// a tunnel through it.
    struct Proxied {
        _dir: tempfile::TempDir,
        echo: SocketAddr,
        port: u16,
        proxies: LinkProxies,
        through: spike_sdk::net::HttpConnectProxy,
        stream: spike_sdk::net::Stream,
    }

    impl Proxied {
        async fn start() -> Self {
            use spike_sdk::net::Network;
            let dir = tempfile::tempdir().expect("dir");
            let echo = echo_server().await;
            let port = free_port();
            let proxies = LinkProxies::start(
                vec![("nexus-1".to_owned(), port)],
                cluster_dir(dir.path(), echo),
            )
            .expect("proxies");
            let through = spike_sdk::net::HttpConnectProxy::new(([127, 0, 0, 1], port).into());
            let stream = through.connect(echo).await.expect("tunnel");
            Self {
                _dir: dir,
                echo,
                port,
                proxies,
                through,
                stream,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cut_links_stall_and_deliver_everything_once_healed() {
        use spike_sdk::net::Network;
        let Proxied {
            _dir,
            echo,
            proxies,
            through,
            mut stream,
            ..
        } = Proxied::start().await;
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await);

        proxies.cut("nexus-2", "nexus-1");
        assert!(
            !round_trip(&mut stream, Duration::from_millis(300)).await,
            "an open tunnel carried bytes over a cut link"
        );
        let dialling = tokio::spawn(async move { through.connect(echo).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !dialling.is_finished(),
            "a new tunnel opened over a cut link"
        );

        proxies.heal();
        assert!(
            dialling.await.expect("dial task"),
            "no tunnel after healing"
        );
        // The stalled ping arrives, then a new one.
        let mut echo_bytes = [0u8; 4];
        stream.read_exact(&mut echo_bytes).await.expect("late echo");
        assert_eq!(&echo_bytes, b"ping");
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn impaired_links_are_late_and_strangers_are_refused() {
        use spike_sdk::net::Network;
        let Proxied {
            _dir,
            port,
            proxies,
            through,
            mut stream,
            ..
        } = Proxied::start().await;
        proxies.impair(
            "nexus-2",
            Impairment {
                delay: Duration::from_millis(150),
                ..Impairment::default()
            },
        );
        let began = Instant::now();
        assert!(round_trip(&mut stream, Duration::from_secs(5)).await);
        // Each way pays the delay.
        assert!(began.elapsed() >= Duration::from_millis(300));

        // Only this cluster's processes, on loopback, are reachable.
        let stranger = echo_server().await;
        let refused = through.connect(stranger).await.err().expect("refused");
        assert!(refused.to_string().contains("403"), "{refused}");
        let mut raw = TcpStream::connect(("127.0.0.1", port)).await.expect("dial");
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut answer = String::new();
        raw.read_to_string(&mut answer).await.expect("answer");
        assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    }
}
