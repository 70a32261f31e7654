//! The audit sink: one hash-chained JSON line per API request (format and
//! verifier in `spike_sdk::audit`), written by one task through a bounded
//! queue. Requests wait when the queue is full rather than go unaudited.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use spike_sdk::audit::{AuditRecord, LINE_LEN_MAX, genesis_hash, hash};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;

/// Requests waiting to be written, at most.
pub const QUEUE_MAX: usize = 4096;
/// Lines written per fsync, at most.
const BATCH_MAX: usize = 256;

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

/// Handle to the audit writer.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<AuditEntry>,
}

impl AuditLog {
    /// Opens (appending to) the log at `path` and starts its writer.
    pub fn open(path: &Path, node: u64) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        let (seq, prev) = last_link(&mut file)?;
        let (sender, mut receiver) = mpsc::channel(QUEUE_MAX);
        let mut writer = Writer {
            file,
            node,
            seq,
            prev,
        };
        use tokio::runtime::{Handle, RuntimeFlavor};
        match Handle::try_current() {
            // A single-threaded runtime (the simulator) writes in a task of
            // its own: a second thread would make the order of events
            // depend on the OS scheduler whenever the queue fills.
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::CurrentThread => {
                tokio::spawn(async move {
                    while let Some(first) = receiver.recv().await {
                        writer.write(take_batch(first, &mut receiver));
                    }
                });
            }
            // Otherwise a thread of its own, not the blocking pool: it
            // lives as long as the process.
            _ => {
                std::thread::Builder::new()
                    .name("audit-writer".to_owned())
                    .spawn(move || {
                        while let Some(first) = receiver.blocking_recv() {
                            writer.write(take_batch(first, &mut receiver));
                        }
                    })?;
            }
        }
        Ok(Self { sender })
    }

    /// Records one request; waits if the writer is behind.
    pub async fn record(&self, entry: AuditEntry) {
        if self.sender.send(entry).await.is_err() {
            tracing::error!("audit writer stopped; request not audited");
        }
    }
}

/// The sequence number and hash of the last line already in the file.
fn last_link(file: &mut File) -> io::Result<(u64, String)> {
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
    match serde_json::from_str::<AuditRecord>(last) {
        Ok(record) => Ok((record.seq, hash(last.as_bytes()))),
        // A line torn by a crash: chain on from it, so the verifier shows
        // exactly where the crash was.
        Err(_) => {
            tracing::warn!("the audit log ends with a torn line; continuing after it");
            file.write_all(b"\n")?;
            Ok((0, hash(last.as_bytes())))
        }
    }
}

/// `first` and whatever else is queued, up to [`BATCH_MAX`].
fn take_batch(first: AuditEntry, receiver: &mut mpsc::Receiver<AuditEntry>) -> Vec<AuditEntry> {
    let mut batch = vec![first];
    while batch.len() < BATCH_MAX {
        match receiver.try_recv() {
            Ok(entry) => batch.push(entry),
            Err(_) => break,
        }
    }
    batch
}

/// The end of the chain and the file it is appended to.
struct Writer {
    file: File,
    node: u64,
    seq: u64,
    prev: String,
}

impl Writer {
    /// Appends `batch` and fsyncs once.
    fn write(&mut self, batch: Vec<AuditEntry>) {
        let mut text = String::new();
        for entry in batch {
            self.seq += 1;
            let record = AuditRecord {
                seq: self.seq,
                time: OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default(),
                node: self.node,
                caller: entry.caller,
                route: entry.route,
                action: entry.action,
                path: entry.path,
                result: entry.result,
                status: entry.status,
                duration_us: entry.duration_us,
                prev: self.prev.clone(),
            };
            let line = match serde_json::to_string(&record) {
                Ok(line) => line,
                Err(error) => {
                    tracing::error!(%error, "audit record not serializable");
                    continue;
                }
            };
            self.prev = hash(line.as_bytes());
            text.push_str(&line);
            text.push('\n');
        }
        if let Err(error) = self
            .file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.sync_data())
        {
            tracing::error!(%error, "audit log write failed");
        }
    }
}
