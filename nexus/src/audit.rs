//! The audit sink: one hash-chained JSON line per API request and per key
//! change this replica commits as the leader (format and verifier in
//! `spike_sdk::audit`), written by one writer through a bounded queue.
//!
//! It fails closed. A record is group-committed (one write and one
//! `fdatasync` for every record queued meanwhile) and whoever recorded it
//! waits until it is on disk: the API answers a request only after its
//! record is durable. (`--audit-durability write` trades that for one
//! fsync less per request: records are written before the answer and
//! fsynced within a second; see [`AuditDurability`].) When a write or sync fails the sink is broken:
//! requests that were already running are answered 503
//! `audit_unavailable` (their records stay in memory, in order, and are
//! written first when the file takes writes again), and the API refuses
//! every new request before it runs. The writer tries the file again every
//! [`RETRY_INTERVAL`]; the first write that succeeds mends the sink.
//!
//! Each new file starts with a genesis record naming the replica and the
//! cluster's root key id; a file that exists is continued from its last
//! line. The replica keeps the file open: there is no rotation while it
//! runs (a renamed file keeps receiving lines); to rotate, stop the
//! replica, move the file away, and start it again.
//!
//! Lines may also go to syslog or a unix datagram socket ([`Forward`]),
//! after they are durable in the file (`--audit-forward`). That copy never holds anything up:
//! a line the socket does not take at once is counted and dropped.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use spike_sdk::audit::{
    AuditEvent, AuditRecord, BackupEvent, FORMAT, Genesis, KeyEvent, LINE_LEN_MAX, NO_ROOT_KEY,
    RequestEvent, genesis_hash, hash,
};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::AuditMetrics;

/// A second, best-effort destination for every audit line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditForward {
    /// The local syslog (`/dev/log`), facility authpriv, severity info.
    Syslog,
    /// A unix datagram socket: one line per datagram, as written.
    Unix(PathBuf),
}

impl AuditForward {
    /// Parses `syslog` or `unix:PATH`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "syslog" => Some(Self::Syslog),
            _ => text
                .strip_prefix("unix:")
                .filter(|path| !path.is_empty())
                .map(|path| Self::Unix(PathBuf::from(path))),
        }
    }
}

use AuditForward as Forward;

/// What a request's answer waits for (`--audit-durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AuditDurability {
    /// Its record is fsynced: no answer leaves whose record a crash or a
    /// power loss could take (the default).
    #[default]
    Fsync,
    /// Its record is written to the file (it survives the replica's
    /// crash, not the machine's), and the file is fsynced at least every
    /// [`SYNC_INTERVAL`] while records come and once they stop: a power
    /// loss can take the last second of records, as with Vault's file
    /// audit device, for one fsync less on every request.
    Write,
}

/// How long records written under [`AuditDurability::Write`] may wait
/// for their fsync.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Records waiting to be written, at most; recorders wait when it is full.
pub const QUEUE_MAX: usize = 4096;
/// Records written per `fdatasync`, at most.
const BATCH_MAX: usize = 256;
/// Records kept in memory while the file takes no writes, at most. Only
/// requests that were running when the sink broke (and key changes) add
/// to them, so this is not reached in practice; beyond it, records are
/// dropped with an error in the replica's log.
const PENDING_MAX: usize = 4096;
/// How often a broken sink tries the file again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// syslog priority: facility authpriv (10), severity info (6).
const SYSLOG_PRIORITY: u8 = 10 * 8 + 6;
/// Where syslog listens.
const SYSLOG_SOCKET: &str = "/dev/log";

/// The record could not be made durable: the request must not be
/// answered as if it were audited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log cannot be written")]
pub struct AuditUnavailable;

/// What a handler reports about one request.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    /// The caller's SPIFFE ID.
    pub caller: String,
    /// The URL path.
    pub route: String,
    /// The `?action=` value.
    pub action: String,
    /// Secret path or policy name, never a value.
    pub path: Option<String>,
    /// `ok` or the error code.
    pub result: String,
    /// HTTP status.
    pub status: u16,
    /// Time spent.
    pub duration_us: u64,
}

/// Who writes the log, for the genesis record of a new file.
#[derive(Debug, Clone)]
pub struct Origin {
    /// This replica's node id.
    pub node: u64,
    /// This replica's SPIFFE ID.
    pub spiffe_id: String,
    /// The cluster's committed root key id, if it has one.
    pub root_key_id: Option<u64>,
}

/// What the writer and the recorders share.
#[derive(Default)]
struct Health {
    /// Whether the last write succeeded.
    healthy: AtomicBool,
    /// Lines the forward destination did not take.
    forward_dropped: AtomicU64,
}

/// One record and whoever waits for it to be durable.
struct Job {
    event: AuditEvent,
    done: oneshot::Sender<Result<(), AuditUnavailable>>,
}

/// Handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Job>,
    health: Arc<Health>,
}

impl AuditLog {
    /// Opens (appending to) the log at `path`, writes the genesis record if
    /// the file is new, and starts its writer. Fails if the file cannot be
    /// opened or the genesis record cannot be made durable.
    /// Commit timings and write failures go to `metrics`.
    pub fn open(
        path: &Path,
        origin: Origin,
        forward: Option<Forward>,
        durability: AuditDurability,
        metrics: AuditMetrics,
    ) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        let (seq, prev) = last_link(&mut file)?;
        let durable_len = file.seek(SeekFrom::End(0))?;
        let health = Arc::new(Health::default());
        let forward = forward.map(Forwarder::new).transpose()?;
        let mut writer = Writer {
            file,
            node: origin.node,
            durable_len,
            durability,
            synced_at: None,
            seq,
            prev,
            pending: Vec::new(),
            health: health.clone(),
            forward,
            metrics,
        };
        if durable_len == 0 {
            let root_key_id = origin
                .root_key_id
                .map_or_else(|| NO_ROOT_KEY.to_owned(), |id| id.to_string());
            writer
                .pending
                .push(Pending::now(AuditEvent::Genesis(Genesis {
                    format: FORMAT.to_owned(),
                    spiffe_id: origin.spiffe_id,
                    root_key_id,
                })));
            let lines = writer.flush()?;
            writer.forward(&lines);
        }
        health.healthy.store(true, Ordering::SeqCst);
        let (sender, receiver) = mpsc::channel(QUEUE_MAX);
        let run = writer.run(receiver);
        use tokio::runtime::{Handle, RuntimeFlavor};
        let handle = Handle::try_current().map_err(io::Error::other)?;
        match handle.runtime_flavor() {
            // A single-threaded runtime (the simulator) writes in a task of
            // its own: a second thread would make the order of events
            // depend on the OS scheduler whenever the queue fills.
            RuntimeFlavor::CurrentThread => {
                tokio::spawn(run);
            }
            // Otherwise a thread of its own, not the blocking pool: it
            // lives as long as the process and blocks in file I/O, while
            // the runtime drives its timer.
            _ => {
                std::thread::Builder::new()
                    .name("audit-writer".to_owned())
                    .spawn(move || handle.block_on(run))?;
            }
        }
        Ok(Self { sender, health })
    }

    /// Whether the last write succeeded: while it did not, nothing new may
    /// run.
    pub fn is_healthy(&self) -> bool {
        self.health.healthy.load(Ordering::SeqCst)
    }

    /// Records waiting for the writer now.
    pub fn queue_depth(&self) -> u64 {
        (QUEUE_MAX - self.sender.capacity()) as u64
    }

    /// Lines the forward destination did not take, since start.
    pub fn forward_dropped(&self) -> u64 {
        self.health.forward_dropped.load(Ordering::Relaxed)
    }

    /// Records one request and waits until the record is durable.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditUnavailable> {
        self.commit(AuditEvent::Request(RequestEvent {
            caller: entry.caller,
            route: entry.route,
            action: entry.action,
            path: entry.path,
            result: entry.result,
            status: entry.status,
            duration_us: entry.duration_us,
        }))
        .await
    }

    /// Records a key change and waits until the record is durable.
    pub async fn record_key(&self, event: KeyEvent) -> Result<(), AuditUnavailable> {
        self.commit(AuditEvent::Key(event)).await
    }

    /// Records a scheduled backup and waits until the record is durable.
    pub async fn record_backup(&self, event: BackupEvent) -> Result<(), AuditUnavailable> {
        self.commit(AuditEvent::Backup(event)).await
    }

    async fn commit(&self, event: AuditEvent) -> Result<(), AuditUnavailable> {
        let (done, durable) = oneshot::channel();
        if self.sender.send(Job { event, done }).await.is_err() {
            tracing::error!("audit writer stopped");
            return Err(AuditUnavailable);
        }
        durable.await.unwrap_or(Err(AuditUnavailable))
    }
}

/// The sequence number and hash of the last line already in the file.
fn last_link(file: &mut File) -> io::Result<(u64, String)> {
    /// All a continuation needs of the last line.
    #[derive(serde::Deserialize)]
    struct Link {
        seq: u64,
    }
    let length = file.seek(SeekFrom::End(0))?;
    if length == 0 {
        return Ok((0, genesis_hash()));
    }
    let start = length.saturating_sub(2 * LINE_LEN_MAX as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    let Some(last) = text.lines().rev().find(|line| !line.trim().is_empty()) else {
        return Ok((0, genesis_hash()));
    };
    let link = serde_json::from_str::<Link>(last);
    if !tail.ends_with(b"\n") {
        file.write_all(b"\n")?;
        file.sync_data()?;
    }
    match link {
        Ok(link) => Ok((link.seq, hash(last.as_bytes()))),
        // A line torn by a crash (never acknowledged: replies wait for the
        // sync): chain on from it, so the verifier shows exactly where the
        // crash was.
        Err(_) => {
            tracing::warn!("the audit log ends with a torn line; continuing after it");
            Ok((0, hash(last.as_bytes())))
        }
    }
}

/// A record waiting to be written, stamped when it was made.
#[derive(Clone)]
struct Pending {
    time: String,
    event: AuditEvent,
}

impl Pending {
    fn now(event: AuditEvent) -> Self {
        Self {
            time: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            event,
        }
    }
}

/// The end of the durable chain, the records not yet on disk, and the file.
struct Writer {
    file: File,
    node: u64,
    /// The file's length up to the last line written (and synced, unless
    /// `durability` is `Write`).
    durable_len: u64,
    durability: AuditDurability,
    /// Under `Write`: when the file was last fsynced, or `None` while
    /// everything written is synced.
    synced_at: Option<std::time::Instant>,
    /// Sequence number and hash of the last line synced.
    seq: u64,
    prev: String,
    /// Records not yet synced, in order.
    pending: Vec<Pending>,
    health: Arc<Health>,
    forward: Option<Forwarder>,
    metrics: AuditMetrics,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        loop {
            let first = if !self.pending.is_empty() {
                // Broken: try the file again when a record comes or the
                // retry interval passes, whichever is first.
                match tokio::time::timeout(RETRY_INTERVAL, receiver.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        self.commit(Vec::new());
                        continue;
                    }
                }
            } else if self.synced_at.is_some() {
                // Written, not yet synced: sync once records stop coming.
                match tokio::time::timeout(SYNC_INTERVAL, receiver.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        self.sync_written();
                        continue;
                    }
                }
            } else {
                receiver.recv().await
            };
            let Some(first) = first else {
                // Every handle is gone: one last try for what is pending.
                if !self.pending.is_empty() {
                    self.commit(Vec::new());
                }
                self.sync_written();
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_MAX {
                match receiver.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Appends `batch` to what is pending, writes and syncs it all, and
    /// tells each job's recorder how that went.
    fn commit(&mut self, batch: Vec<Job>) {
        let mut waiting = Vec::with_capacity(batch.len());
        for job in batch {
            if self.pending.len() >= PENDING_MAX {
                tracing::error!(
                    pending = self.pending.len(),
                    "audit log unwritable for too long; a record is dropped"
                );
                let _ = job.done.send(Err(AuditUnavailable));
                continue;
            }
            self.pending.push(Pending::now(job.event));
            waiting.push(job.done);
        }
        let was_healthy = self.health.healthy.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let flushed = self.flush();
        match &flushed {
            Ok(_) => self.metrics.committed(started.elapsed()),
            Err(_) => self.metrics.failed(),
        }
        let outcome = match flushed {
            Ok(lines) => {
                if !was_healthy {
                    tracing::warn!("audit log writable again; requests are served");
                }
                self.health.healthy.store(true, Ordering::SeqCst);
                self.forward(&lines);
                Ok(())
            }
            Err(error) => {
                self.health.healthy.store(false, Ordering::SeqCst);
                if was_healthy {
                    tracing::error!(
                        %error,
                        pending = self.pending.len(),
                        "audit log write failed; requests are refused until it is writable"
                    );
                }
                Err(AuditUnavailable)
            }
        };
        for done in waiting {
            // A recorder that went away (its connection closed) needs no
            // answer.
            let _ = done.send(outcome);
        }
    }

    /// Sends durable lines to the second destination, if there is one.
    fn forward(&self, lines: &[String]) {
        if let Some(forward) = &self.forward {
            for line in lines {
                forward.send(line, &self.health);
            }
        }
    }

    /// Under `Write`: fsyncs what was written since the last sync. A
    /// failure breaks the sink like a failed write (nothing new runs) and
    /// is tried again every [`SYNC_INTERVAL`].
    fn sync_written(&mut self) {
        if self.synced_at.is_none() {
            return;
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.synced_at = None;
                if !self.health.healthy.swap(true, Ordering::SeqCst) {
                    tracing::warn!("audit log writable again; requests are served");
                }
            }
            Err(error) => {
                self.metrics.failed();
                if self.health.healthy.swap(false, Ordering::SeqCst) {
                    tracing::error!(%error, "audit log sync failed; requests are refused until it syncs");
                }
            }
        }
    }

    /// Writes every pending record after the last synced line and syncs;
    /// returns the lines written. On failure nothing moves: the next try
    /// cuts whatever part of this one reached the file and writes it all
    /// again.
    fn flush(&mut self) -> io::Result<Vec<String>> {
        let (mut seq, mut prev) = (self.seq, self.prev.clone());
        let mut lines = Vec::with_capacity(self.pending.len());
        let mut text = String::new();
        for pending in &self.pending {
            seq += 1;
            let record = AuditRecord {
                seq,
                time: pending.time.clone(),
                node: self.node,
                event: pending.event.clone(),
                prev,
            };
            let line = serde_json::to_string(&record).map_err(io::Error::other)?;
            prev = hash(line.as_bytes());
            text.push_str(&line);
            text.push('\n');
            lines.push(line);
        }
        if self.file.metadata()?.len() > self.durable_len {
            self.file.set_len(self.durable_len)?;
        }
        self.file.write_all(text.as_bytes())?;
        let now = std::time::Instant::now();
        if sync_due(self.durability, self.synced_at, now) {
            self.file.sync_data()?;
            self.synced_at = None;
        } else {
            self.synced_at.get_or_insert(now);
        }
        self.durable_len += text.len() as u64;
        (self.seq, self.prev) = (seq, prev);
        self.pending.clear();
        Ok(lines)
    }
}

/// Whether a write must be fsynced before its records are answered: always
/// under `Fsync`; under `Write`, once the oldest unsynced write is
/// [`SYNC_INTERVAL`] old.
fn sync_due(
    durability: AuditDurability,
    unsynced_since: Option<std::time::Instant>,
    now: std::time::Instant,
) -> bool {
    match (durability, unsynced_since) {
        (AuditDurability::Fsync, _) => true,
        (AuditDurability::Write, None) => false,
        (AuditDurability::Write, Some(since)) => now.duration_since(since) >= SYNC_INTERVAL,
    }
}

/// The second destination: non-blocking sends that never hold up the file.
struct Forwarder {
    socket: UnixDatagram,
    target: PathBuf,
    /// syslog's framing: `<PRI>spike-nexus[PID]: ` before the line.
    syslog_tag: Option<String>,
}

impl Forwarder {
    fn new(forward: Forward) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(match forward {
            Forward::Syslog => Self {
                socket,
                target: PathBuf::from(SYSLOG_SOCKET),
                syslog_tag: Some(format!(
                    "<{SYSLOG_PRIORITY}>spike-nexus[{}]: ",
                    std::process::id()
                )),
            },
            Forward::Unix(target) => Self {
                socket,
                target,
                syslog_tag: None,
            },
        })
    }

    fn send(&self, line: &str, health: &Health) {
        let sent = match &self.syslog_tag {
            Some(tag) => self
                .socket
                .send_to(format!("{tag}{line}").as_bytes(), &self.target),
            None => self.socket.send_to(line.as_bytes(), &self.target),
        };
        if let Err(error) = sent {
            let dropped = health.forward_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // The first drop and then one in a thousand: a dead socket
            // must not flood the replica's own log.
            if dropped == 1 || dropped.is_multiple_of(1000) {
                tracing::warn!(
                    %error,
                    target = %self.target.display(),
                    dropped,
                    "audit line not forwarded (the file has it)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            node: 3,
            spiffe_id: "spiffe://spike.ist/spike/nexus/3".to_owned(),
            root_key_id: Some(7),
        }
    }

    fn entry(path: &str) -> AuditEntry {
        AuditEntry {
            caller: "spiffe://spike.ist/spike/pilot/role/superuser".to_owned(),
            route: "/v1/store/secret".to_owned(),
            action: String::new(),
            path: Some(path.to_owned()),
            result: "ok".to_owned(),
            status: 200,
            duration_us: 1,
        }
    }

    /// The log at `path`, without a forward, metrics unwatched.
    fn open_at(path: &Path, durability: AuditDurability) -> io::Result<AuditLog> {
        AuditLog::open(path, origin(), None, durability, AuditMetrics::default())
    }

    fn verify(path: &Path) -> spike_sdk::audit::Verified {
        let file = std::io::BufReader::new(File::open(path).expect("open"));
        spike_sdk::audit::verify(file).expect("intact")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_file_starts_with_genesis_and_a_restart_continues_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = open_at(&path, AuditDurability::Fsync).expect("open");
        log.record(entry("a")).await.expect("durable");
        // The record is on disk when record returns.
        let verified = verify(&path);
        assert_eq!(verified.records, 2);
        assert_eq!(verified.node, 3);
        assert_eq!(verified.genesis.root_key_id, "7");
        assert_eq!(
            verified.genesis.spiffe_id,
            "spiffe://spike.ist/spike/nexus/3"
        );
        drop(log);
        let again = open_at(&path, AuditDurability::Fsync).expect("reopen");
        again.record(entry("b")).await.expect("durable");
        assert_eq!(verify(&path).records, 3, "one genesis, then continued");
    }

    #[test]
    fn under_write_durability_a_write_is_synced_once_the_oldest_unsynced_is_a_second_old() {
        let now = std::time::Instant::now();
        assert!(sync_due(AuditDurability::Fsync, None, now));
        assert!(!sync_due(AuditDurability::Write, None, now));
        assert!(!sync_due(
            AuditDurability::Write,
            Some(now - SYNC_INTERVAL / 2),
            now
        ));
        assert!(sync_due(
            AuditDurability::Write,
            Some(now - SYNC_INTERVAL),
            now
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_write_durability_records_are_in_the_file_when_answered() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let log = open_at(&path, AuditDurability::Write).expect("open");
        for i in 0..3 {
            log.record(entry(&format!("p/{i}"))).await.expect("written");
            assert_eq!(
                verify(&path).records,
                i + 2,
                "genesis and every record so far"
            );
        }
        drop(log);
        let again = open_at(&path, AuditDurability::Fsync).expect("reopen");
        again.record(entry("p/3")).await.expect("durable");
        assert_eq!(verify(&path).records, 5, "the chain goes on across modes");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_share_syncs_and_all_land() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let metrics = crate::metrics::Metrics::new();
        let registry = metrics.registry(1);
        let log = AuditLog::open(
            &path,
            origin(),
            None,
            AuditDurability::Fsync,
            metrics.audit.clone(),
        )
        .expect("open");
        let recorders: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record(entry(&format!("p/{i}"))).await })
            })
            .collect();
        for recorder in recorders {
            recorder.await.expect("task").expect("durable");
        }
        assert_eq!(verify(&path).records, 201);
        // Group commits: far fewer syncs than records, every one timed.
        let text = crate::metrics::encode(&registry).expect("encodes");
        let commits: u64 = text
            .lines()
            .find_map(|line| {
                line.strip_prefix("spike_audit_commit_duration_seconds_count{node=\"1\"} ")
            })
            .and_then(|count| count.parse().ok())
            .unwrap_or_else(|| panic!("no commit count in {text}"));
        assert!(
            (1..200).contains(&commits),
            "{commits} commits for 200 records"
        );
        assert_eq!(log.queue_depth(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_are_forwarded_to_a_socket_and_a_dead_socket_holds_nothing_up() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("audit.log");
        let socket_path = dir.path().join("audit.sock");
        let receiver = UnixDatagram::bind(&socket_path).expect("bind");
        let log = AuditLog::open(
            &path,
            origin(),
            Some(Forward::Unix(socket_path.clone())),
            AuditDurability::Fsync,
            AuditMetrics::default(),
        )
        .expect("open");
        log.record(entry("a")).await.expect("durable");
        let file = std::fs::read_to_string(&path).expect("read");
        let mut buffer = vec![0; LINE_LEN_MAX];
        for line in file.lines() {
            let length = receiver.recv(&mut buffer).expect("datagram");
            assert_eq!(&buffer[..length], line.as_bytes());
        }
        drop(receiver);
        std::fs::remove_file(&socket_path).expect("remove socket");
        log.record(entry("b"))
            .await
            .expect("durable without the socket");
        assert_eq!(verify(&path).records, 3);
        assert_eq!(log.health.forward_dropped.load(Ordering::Relaxed), 1);
    }
}
