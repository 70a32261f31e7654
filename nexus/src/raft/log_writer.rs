//! The log's writer: one thread (a task in the simulator) that commits the
//! log store's writes to redb in the order Raft issued them, many to a
//! commit.
//!
//! Why a writer of its own: openraft runs `append` inside the Raft core and
//! awaits it. Were the fsync inside that await, the leader would replicate
//! an entry only after its own fsync, and the follower's fsync would come
//! after that: two fsyncs in a row on every write, and the core idle
//! meanwhile. openraft asks instead that `append` only *submit* the entries
//! (readable at once; see [`Pending`]) and report the fsync through its
//! callback, so the leader's fsync runs while the entry is on its way to
//! the followers, and a quorum of any two flushed copies commits it, as
//! etcd's leader writes its WAL in parallel with replication.
//!
//! Group commit: the writer takes every write that queued while it was
//! busy (at most [`GROUP_MAX`]) into one transaction with one fsync, so
//! under load the log costs one fsync per batch, and at one client it adds
//! nothing (the queue is empty and the first write goes at once).
//!
//! Order and crashes: every write goes through the one queue (the fsynced
//! vote, truncation and purge wait for their commit; the unsynced
//! committed id does not), so nothing lands before what Raft issued ahead
//! of it, and a write that failed fails every later one: the log might
//! have a gap. Since a leader's own copy of an entry may now be lost in a
//! crash after followers acknowledged it, a restarted leader must not go
//! on leading in its old term (it would write a different entry under the
//! same log id): `enable_leader_restore` is off ([`super::start`]).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use openraft::storage::IOFlushed;
use redb::{Database, Durability};
use tokio::sync::{mpsc, oneshot};

use super::{EntryOf, LogIdOf, TypeConfig, io_error};
use crate::metrics::RaftMetrics;

/// Log index -> encoded entry: the table appends go to (the log store
/// reads it and keeps its other tables).
pub(super) const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");

/// Writes queued for the writer, at most; Raft waits (it awaits `append`)
/// while the queue is full.
pub(super) const QUEUE_MAX: usize = 256;
/// Writes committed in one transaction, at most.
pub(super) const GROUP_MAX: usize = 64;

/// One of the log store's writes: what to change, and whom to tell.
pub(super) struct Write {
    pub(super) change: Change,
    /// Whether the change must be fsynced before anyone is told.
    pub(super) durable: bool,
    pub(super) then: Then,
}

/// A change to some of the log's tables, made inside the group's
/// transaction.
pub(super) type TableChange =
    Box<dyn FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error> + Send>;

/// A change to the log's tables.
pub(super) enum Change {
    /// New entries (index, stored bytes); `restamp` stamps the database
    /// with a newer format in the same commit.
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        restamp: Option<u32>,
    },
    /// Anything else (vote, committed id, truncation, purge).
    Other {
        subject: &'static str,
        change: TableChange,
    },
}

/// Whom to tell once the change is committed.
pub(super) enum Then {
    /// Raft, through its callback; the entries up to `last` leave
    /// [`Pending`].
    Flushed {
        last: LogIdOf<TypeConfig>,
        restamp: Option<u32>,
        flushed: IOFlushed<TypeConfig>,
    },
    /// Whoever waits on `done`, if anyone.
    Done(Option<oneshot::Sender<io::Result<()>>>),
}

/// Entries appended but not yet on disk, so that readers (replication,
/// apply) see them at once, as openraft requires. The writer removes them
/// once committed; a truncation removes those it cuts off.
#[derive(Clone, Default)]
pub(super) struct Pending(Arc<Mutex<BTreeMap<u64, EntryOf<TypeConfig>>>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, EntryOf<TypeConfig>>> {
        // The map stays consistent even if a holder panicked: every change
        // is one insert or one removal.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn insert(&self, entries: impl IntoIterator<Item = EntryOf<TypeConfig>>) {
        let mut pending = self.lock();
        for entry in entries {
            pending.insert(openraft::entry::RaftEntry::index(&entry), entry);
        }
    }

    /// The pending entries within `range`, copied.
    pub(super) fn range(
        &self,
        range: (std::ops::Bound<u64>, std::ops::Bound<u64>),
    ) -> Vec<EntryOf<TypeConfig>> {
        self.lock().range(range).map(|(_, e)| e.clone()).collect()
    }

    /// The newest pending entry's log id.
    pub(super) fn last(&self) -> Option<LogIdOf<TypeConfig>> {
        self.lock()
            .last_key_value()
            .map(|(_, entry)| openraft::entry::RaftEntry::log_id(entry))
    }

    /// Forgets the pending entries from `first` on (a truncation).
    pub(super) fn cut_from(&self, first: u64) {
        drop(self.lock().split_off(&first));
    }

    /// Forgets the pending entries up to `last` (a purge).
    pub(super) fn cut_through(&self, last: u64) {
        let mut pending = self.lock();
        let kept = pending.split_off(&last.saturating_add(1));
        *pending = kept;
    }

    /// Forgets the entries up to `last` now on disk; an entry at a
    /// written index that is not the one written (a truncation and a new
    /// append raced the commit) stays.
    fn written(&self, last: &LogIdOf<TypeConfig>) {
        let mut pending = self.lock();
        let on_disk = pending
            .get(&last.index())
            .is_none_or(|entry| openraft::entry::RaftEntry::log_id(entry) == *last);
        if on_disk {
            let kept = pending.split_off(&last.index().saturating_add(1));
            *pending = kept;
        }
    }
}

/// Where the writer commits.
pub(super) struct Target {
    /// Weak: dropping the last log store closes the database even while
    /// the writer task has not yet noticed that its queue closed.
    pub(super) db: Weak<Database>,
    pub(super) pending: Pending,
    pub(super) stamped: Arc<std::sync::atomic::AtomicU32>,
    pub(super) metrics: RaftMetrics,
}

/// Starts the writer; it ends when every sender of the returned queue is
/// gone. On a real replica's multi-threaded runtime it is a thread of its
/// own, which blocks in fsync while Raft goes on, one wake-up from the
/// Raft core each way; under a current-thread runtime (the simulator,
/// unit tests) a task that commits inline, so the order of events never
/// depends on the operating system's scheduler.
pub(super) fn spawn(target: Target) -> io::Result<mpsc::Sender<Write>> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let (sender, mut queue) = mpsc::channel(QUEUE_MAX);
    let mut writer = Writer {
        target,
        broken: None,
    };
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::CurrentThread) => {
            tokio::spawn(async move {
                while let Some(first) = queue.recv().await {
                    writer.write(first, &mut queue);
                }
            });
        }
        _ => {
            std::thread::Builder::new()
                .name("raft-log-writer".to_owned())
                .spawn(move || {
                    while let Some(first) = queue.blocking_recv() {
                        writer.write(first, &mut queue);
                    }
                })?;
        }
    }
    Ok(sender)
}

/// The writer's state.
struct Writer {
    target: Target,
    /// Set by a failed commit: the log may have a gap, so nothing after it
    /// may land.
    broken: Option<String>,
}

impl Writer {
    /// Commits `first` and every write queued behind it (up to
    /// [`GROUP_MAX`]) in one transaction, then tells whoever waits.
    fn write(&mut self, first: Write, queue: &mut mpsc::Receiver<Write>) {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        let durable = group.iter().any(|write| write.durable);
        let (changes, thens): (Vec<Change>, Vec<Then>) = group
            .into_iter()
            .map(|write| (write.change, write.then))
            .unzip();
        let outcome = match &self.broken {
            Some(reason) => Err(reason.clone()),
            None => commit(&self.target, changes, durable).map_err(|error| {
                let reason = error.to_string();
                self.broken = Some(reason.clone());
                reason
            }),
        };
        finish(&self.target, thens, &outcome);
    }
}

/// One transaction for the whole group, in the order issued (a truncation
/// cuts what an append before it wrote), fsynced if any write needs it.
fn commit(target: &Target, changes: Vec<Change>, durable: bool) -> io::Result<()> {
    let subject = "commit log writes";
    let db = target
        .db
        .upgrade()
        .ok_or_else(|| io_error(subject, "the log database is closed"))?;
    let mut txn = db.begin_write().map_err(|e| io_error(subject, e))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability)
        .map_err(|e| io_error(subject, e))?;
    let mut restamp = None;
    for change in changes {
        match change {
            Change::Append {
                entries,
                restamp: stamp,
            } => {
                let what = "append log entries";
                let mut table = txn.open_table(LOG).map_err(|e| io_error(what, e))?;
                for (index, bytes) in &entries {
                    table
                        .insert(*index, bytes.as_slice())
                        .map_err(|e| io_error(what, e))?;
                }
                restamp = restamp.max(stamp);
            }
            Change::Other { subject, change } => {
                change(&txn).map_err(|e| io_error(subject, e))?;
            }
        }
    }
    // The first entry of a newer format stamps the database with it in
    // the same commit: an older build then refuses the whole log at start
    // rather than at that entry.
    if let Some(format) = restamp {
        super::format::restamp(&txn, format).map_err(|e| io_error(subject, e))?;
    }
    let started = Instant::now();
    txn.commit().map_err(|e| io_error(subject, e))?;
    if durable {
        target.metrics.log_synced(started.elapsed());
    }
    Ok(())
}

/// Tells everyone waiting on the group how its commit went.
fn finish(target: &Target, thens: Vec<Then>, outcome: &Result<(), String>) {
    for then in thens {
        match then {
            Then::Flushed {
                last,
                restamp,
                flushed,
            } => match outcome {
                Ok(()) => {
                    target.pending.written(&last);
                    if let Some(format) = restamp {
                        target
                            .stamped
                            .fetch_max(format, std::sync::atomic::Ordering::AcqRel);
                    }
                    flushed.io_completed(Ok(()));
                }
                Err(reason) => flushed.io_completed(Err(io::Error::other(reason.clone()))),
            },
            Then::Done(done) => {
                if let Some(done) = done {
                    // Whoever waited may have gone (Raft shutting down).
                    let _ = done.send(outcome.clone().map_err(io::Error::other));
                }
            }
        }
    }
}
