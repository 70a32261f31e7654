//! The storage quota (like etcd's backend quota): how many bytes the
//! replicated state takes here, and the leader's refusal of writes that
//! would add data past it.
//!
//! What is counted: the bytes of state.redb in use. redb never shrinks a
//! file (deleted data leaves free pages, reused by later writes), so the
//! file's length is the high-water mark, not what the store holds. While
//! the file is under [`PAGES_COUNTED_ABOVE_PERCENT`] of the quota its
//! length is the measure (cheap: one `stat`); above that, or while the
//! alarm is raised, the sampler asks redb for its allocated pages (a walk
//! of every tree, under a write transaction that holds apply back for its
//! length, so it runs only then and at most every [`SCAN_INTERVAL`]).
//! Deletes and destroys therefore clear the alarm without a restart;
//! giving the file's space back to the file system takes a compaction
//! (`SPIKE_NEXUS_COMPACT_ON_START`). The Raft log (log.redb) is not
//! counted: snapshots compact it every `SPIKE_NEXUS_SNAPSHOT_EVERY`
//! entries.
//!
//! The quota is a ceiling, not a trigger: a measure is a second or more
//! old, so between two the leader adds up what it has let through (each
//! write's [`cost`]) and refuses a write that would take the last measure
//! plus that sum past the quota. A write counts from the moment it is let
//! through until a measure taken after it landed (applied, or its outcome
//! unknown) sees it; one never proposed stops counting. The store then
//! passes its quota only by the misjudged part of the estimate (on a
//! follower, also by how its own pages differ). The file's length overstates what is in use (redb
//! grows it ahead of need), so before refusing on a length the leader has
//! the pages counted (at most once per [`FORCED_SCAN_INTERVAL`], waiting
//! at most [`FORCED_SCAN_WAIT`]) and decides on that. A refusal raises
//! the alarm; it stays raised until a measure finds room again for the
//! write refused (at most half the quota), so a store at its quota does
//! not flap. Meanwhile each write is still judged on its own: one that
//! fits goes through.
//!
//! The decision is the leader's, before it proposes ([`StorageQuota::check`]
//! in `Node::execute_here`): apply never looks at a file size, so every
//! replica applies the log alike.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::raft::state_machine::StateMachine;
use crate::state::command::{Command, PolicyCommand, SecretCommand};

/// How often the size of state.redb is looked at.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two page scans.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Share of the quota above which pages in use are counted instead of the
/// file's length.
pub const PAGES_COUNTED_ABOVE_PERCENT: u64 = 90;
/// Least time between two page counts a refusal asks for.
pub const FORCED_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a write waits for the page count its refusal asked for.
pub const FORCED_SCAN_WAIT: Duration = Duration::from_secs(2);
/// redb's page size, the least a write can take.
const PAGE_BYTES: u64 = 4096;

/// A write refused for the quota; nothing was proposed. Travels from the
/// leader to the forwarding replica.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error,
)]
#[error(
    "storage quota exceeded: the store holds {} of its {} quota (SPIKE_NEXUS_STORAGE_QUOTA); \
     writes that add data are refused until space is freed: destroy secret versions or delete \
     policies (redb reuses the freed pages), or raise the quota",
    spike_sdk::size::display(*used),
    spike_sdk::size::display(*quota)
)]
pub struct QuotaExceeded {
    /// Bytes in use, as last measured plus the writes let through since.
    pub used: u64,
    /// The quota.
    pub quota: u64,
}

/// A write let through, and its [`cost`] (0: it adds no data); hand it
/// back to [`StorageQuota::landed`] once its proposal ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "hand it to StorageQuota::landed once the proposal ended"]
pub struct Admitted(u64);

/// What `command` is expected to add to the store, or `None` when it adds
/// no data and so is never refused past the quota. Deletes, destroys and
/// undeletes (a mark cleared), key operations, membership facts and
/// settings go on. A restore replaces the store: refusing it half-way
/// would leave the cluster unusable, so it goes on too (a backup larger
/// than the quota is refused before it starts).
///
/// The estimate: the payload rounded up to a power of two (redb's buddy
/// allocator gives a value that many bytes of pages), plus one page for
/// the copy-on-write path of the tree.
pub fn cost(command: &Command) -> Option<u64> {
    let payload = match command {
        Command::Secret(SecretCommand::Put {
            path, ciphertext, ..
        })
        | Command::Secret(SecretCommand::PutCustomMetadata {
            path, ciphertext, ..
        }) => path.as_str().len() + ciphertext.len(),
        Command::Policy(PolicyCommand::Put {
            name, ciphertext, ..
        }) => name.as_str().len() + ciphertext.len(),
        _ => return None,
    };
    let payload = u64::try_from(payload).unwrap_or(u64::MAX);
    Some(payload.max(PAGE_BYTES).next_power_of_two() + PAGE_BYTES)
}

/// The quota on this replica: its last measure, the estimate since, the
/// alarm, and metrics.
pub struct StorageQuota {
    quota: u64,
    used: AtomicU64,
    /// The [`cost`] of the writes let through and not yet counted by a
    /// measure: in flight, or landed since the last measure.
    pending: AtomicU64,
    /// The part of `pending` whose proposals have finished (applied, or
    /// their outcome unknown): a measure taken after counts them. Writes
    /// still in flight stay pending across a measure, which may not see
    /// them yet.
    landed: AtomicU64,
    exceeded: AtomicBool,
    /// The room a raised alarm waits for: the refused write's cost.
    wanted: AtomicU64,
    /// Whether `used` is a count of pages (not the file's length).
    pages_counted: AtomicBool,
    /// A refusal on the file's length asks for a page count.
    count_pages: tokio::sync::Notify,
    /// Bumped at each measure, for the writes that wait for one.
    measures: tokio::sync::watch::Sender<u64>,
    used_gauge: Gauge<i64, AtomicI64>,
    quota_gauge: Gauge<i64, AtomicI64>,
    exceeded_gauge: Gauge<i64, AtomicI64>,
    file_gauge: Gauge<i64, AtomicI64>,
    refused: Counter,
}

impl StorageQuota {
    /// A quota of `quota` bytes (0: none).
    pub fn new(quota: u64) -> Self {
        let this = Self {
            quota,
            used: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            landed: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            wanted: AtomicU64::new(0),
            pages_counted: AtomicBool::new(false),
            count_pages: tokio::sync::Notify::new(),
            measures: tokio::sync::watch::Sender::new(0),
            used_gauge: Gauge::default(),
            quota_gauge: Gauge::default(),
            exceeded_gauge: Gauge::default(),
            file_gauge: Gauge::default(),
            refused: Counter::default(),
        };
        this.quota_gauge.set(gauge_value(quota));
        this
    }

    /// The quota, bytes (0: none).
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// Bytes in use, as last measured.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether the alarm is raised.
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }

    /// The leader's decision before proposing `command`: refused when it
    /// would take the store past the quota, which raises the alarm. What
    /// is let through is counted as pending until [`Self::landed`] says
    /// how its proposal ended.
    pub async fn check(&self, command: &Command) -> Result<Admitted, QuotaExceeded> {
        let Some(cost) = cost(command).filter(|_| self.quota > 0) else {
            return Ok(Admitted(0));
        };
        if self.let_through(cost).is_ok() {
            return Ok(Admitted(cost));
        }
        if !self.pages_counted.load(Ordering::Relaxed) {
            // Judged on the file's length: have the pages counted first.
            let mut measures = self.measures.subscribe();
            self.count_pages.notify_one();
            let _ = tokio::time::timeout(FORCED_SCAN_WAIT, measures.changed()).await;
        }
        let held = match self.let_through(cost) {
            Ok(()) => return Ok(Admitted(cost)),
            Err(held) => held,
        };
        self.wanted.store(cost, Ordering::Relaxed);
        self.set_alarm(true, held);
        self.refused.inc();
        Err(QuotaExceeded {
            used: held,
            quota: self.quota,
        })
    }

    /// How the proposal of a write let through ended: `proposed` (applied,
    /// or its outcome unknown), it counts until a measure taken from now
    /// on; not proposed, it never counts.
    pub fn landed(&self, admitted: Admitted, proposed: bool) {
        let Admitted(cost) = admitted;
        if cost == 0 {
            return;
        }
        if proposed {
            self.landed.fetch_add(cost, Ordering::Relaxed);
        } else {
            let _ = self
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                    Some(pending.saturating_sub(cost))
                });
        }
    }

    /// Counts `cost` in if it fits; otherwise what the store holds by the
    /// estimate.
    fn let_through(&self, cost: u64) -> Result<(), u64> {
        let used = self.used();
        let pending = self
            .pending
            .fetch_add(cost, Ordering::Relaxed)
            .saturating_add(cost);
        if used.saturating_add(pending) <= self.quota {
            return Ok(());
        }
        self.pending.fetch_sub(cost, Ordering::Relaxed);
        Err(used.saturating_add(pending - cost))
    }

    /// Records a fresh measure (of pages in use when `pages`, else the
    /// file's length), which counts the writes that had landed when
    /// `counted` was read ([`Self::landed_so_far`]): raises the alarm past
    /// the quota, clears it once there is room for the write refused (at
    /// most half the quota).
    pub fn record(&self, used: u64, file_bytes: u64, counted: u64, pages: bool) {
        let less = |value: u64| Some(value.saturating_sub(counted));
        let _ = self
            .landed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less);
        let pending = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, less)
            .map_or(0, |before| before.saturating_sub(counted));
        self.used.store(used, Ordering::Relaxed);
        self.pages_counted.store(pages, Ordering::Relaxed);
        self.used_gauge.set(gauge_value(used));
        self.file_gauge.set(gauge_value(file_bytes));
        self.measures.send_modify(|count| *count += 1);
        if self.quota > 0 && used > self.quota {
            self.set_alarm(true, used);
            return;
        }
        let wanted = self.wanted.load(Ordering::Relaxed).min(self.quota / 2);
        let room = self.quota.saturating_sub(used.saturating_add(pending));
        if self.quota == 0 || room >= wanted {
            self.set_alarm(false, used);
        }
    }

    /// Raises or clears the alarm (a warning once per change).
    fn set_alarm(&self, over: bool, used: u64) {
        if self.exceeded.swap(over, Ordering::Relaxed) != over {
            let (used, quota) = (
                spike_sdk::size::display(used),
                spike_sdk::size::display(self.quota),
            );
            if over {
                tracing::warn!(
                    %used, %quota,
                    "storage quota reached: writes that would take the store past it are refused \
                     until space is freed"
                );
            } else {
                tracing::warn!(%used, %quota, "storage back under its quota: writes accepted again");
            }
        }
        self.exceeded_gauge.set(i64::from(over));
    }

    /// Registers the quota's metrics (names without the registry's
    /// `spike_` prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "storage_used_bytes",
            "Bytes of state.redb in use, as the storage quota counts them",
            self.used_gauge.clone(),
        );
        registry.register(
            "storage_file_bytes",
            "Length of state.redb on disk (free pages included; shrinks only by compaction)",
            self.file_gauge.clone(),
        );
        registry.register(
            "storage_quota_bytes",
            "The storage quota (SPIKE_NEXUS_STORAGE_QUOTA); 0 is none",
            self.quota_gauge.clone(),
        );
        registry.register(
            "storage_quota_exceeded",
            "1 while the store is at its storage quota: a write was refused, and space has not been freed since",
            self.exceeded_gauge.clone(),
        );
        registry.register(
            "storage_quota_refused",
            "Writes this replica refused, as the leader, for the storage quota",
            self.refused.clone(),
        );
    }

    /// The cost of the writes landed since the last measure, read just
    /// before taking one.
    pub fn landed_so_far(&self) -> u64 {
        self.landed.load(Ordering::Relaxed)
    }

    /// Whether a file of `file_bytes` is measured by its pages in use.
    fn counts_pages(&self, file_bytes: u64) -> bool {
        self.quota > 0
            && (self.exceeded() || file_bytes > self.quota / 100 * PAGES_COUNTED_ABOVE_PERCENT)
    }

    /// Measures state.redb every [`SAMPLE_INTERVAL`], and counts its
    /// pages when a refusal asks, for ever.
    pub async fn run(self: Arc<Self>, machine: StateMachine) {
        let mut last_scan: Option<Instant> = None;
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let asked = tokio::select! {
                _ = ticks.tick() => false,
                () = self.count_pages.notified() => true,
            };
            // Read before measuring: the writes landed by now are in what
            // the measure sees.
            let pending = self.landed_so_far();
            let path: PathBuf = machine.path().to_owned();
            // A simulated disk has no file: nothing to measure.
            let Ok(file_bytes) = std::fs::metadata(&path).map(|meta| meta.len()) else {
                continue;
            };
            let since_scan = last_scan.map(|at| at.elapsed());
            let scan = if asked {
                since_scan.is_none_or(|since| since >= FORCED_SCAN_INTERVAL)
            } else {
                self.counts_pages(file_bytes)
                    && since_scan.is_none_or(|since| since >= SCAN_INTERVAL)
            };
            if !scan {
                if self.counts_pages(file_bytes) && last_scan.is_some() {
                    // The last count stands, and so does the estimate since.
                    self.file_gauge.set(gauge_value(file_bytes));
                    self.measures.send_modify(|count| *count += 1);
                } else {
                    self.record(file_bytes, file_bytes, pending, false);
                }
                continue;
            }
            let scanning = machine.clone();
            match crate::raft::run_blocking("measure state", move || scanning.in_use_bytes()).await
            {
                Ok(Ok(in_use)) => {
                    last_scan = Some(Instant::now());
                    self.record(in_use.min(file_bytes), file_bytes, pending, true);
                }
                Ok(Err(error)) | Err(error) => {
                    tracing::warn!(%error, "cannot measure the state's pages in use; counting the file");
                    self.record(file_bytes, file_bytes, pending, false);
                }
            }
        }
    }
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spike_sdk::domain::{DataKeyId, PolicyRef, SecretPath};

    /// `check`, and the write applied.
    async fn admit(quota: &StorageQuota, command: &Command) -> Result<(), QuotaExceeded> {
        let admitted = quota.check(command).await?;
        quota.landed(admitted, true);
        Ok(())
    }

    fn put() -> Command {
        Command::Secret(SecretCommand::Put {
            path: "a/b".parse::<SecretPath>().expect("path"),
            ciphertext: vec![1],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 10,
        })
    }

    fn put_of(bytes: usize) -> Command {
        Command::Secret(SecretCommand::Put {
            path: "a/b".parse::<SecretPath>().expect("path"),
            ciphertext: vec![1; bytes],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 10,
        })
    }

    #[tokio::test]
    async fn past_the_quota_only_writes_that_add_data_are_refused_until_it_is_freed() {
        let quota = StorageQuota::new(100_000);
        quota.record(90_000, 90_000, 0, true);
        assert_eq!(admit(&quota, &put()).await, Ok(()));
        quota.record(100_001, 409_600, 0, true);
        assert!(quota.exceeded(), "past the quota by measure");
        let refused = admit(&quota, &put()).await.expect_err("over");
        assert_eq!(refused.quota, 100_000);
        assert!(refused.used >= 100_001, "{refused:?}");
        let message = refused.to_string();
        assert!(message.contains("97.7 KiB"), "{message}");
        assert!(message.contains("destroy"), "{message}");
        let destroy = Command::Secret(SecretCommand::Destroy {
            path: "a/b".parse::<SecretPath>().expect("path"),
            versions: vec![],
        });
        let delete_policy = Command::Policy(PolicyCommand::Delete {
            policy: "p".parse::<PolicyRef>().expect("ref"),
        });
        assert_eq!(admit(&quota, &destroy).await, Ok(()));
        assert_eq!(admit(&quota, &delete_policy).await, Ok(()));
        assert!(quota.exceeded());
        // Under the quota, but without room for the write refused (8 KiB
        // by the estimate, capped at 5 % of the quota): still raised.
        quota.record(96_000, 409_600, 8192, true);
        assert!(quota.exceeded());
        quota.record(91_000, 409_600, 0, true);
        assert!(!quota.exceeded());
        assert_eq!(admit(&quota, &put()).await, Ok(()));
        // No quota: never refused.
        let none = StorageQuota::new(0);
        none.record(u64::MAX, u64::MAX, 0, true);
        assert_eq!(admit(&none, &put()).await, Ok(()));
    }

    #[tokio::test]
    async fn writes_let_through_between_measures_count_toward_the_quota() {
        let quota = StorageQuota::new(1 << 20);
        quota.record(0, 0, 0, true);
        let each = cost(&put_of(100 * 1024)).expect("adds data");
        assert_eq!(each, 128 * 1024 + 4096);
        // Eight fit in 1 MiB by the estimate; the ninth does not, though
        // no measure has been taken since the first.
        let mut let_through = 0;
        while admit(&quota, &put_of(100 * 1024)).await.is_ok() {
            let_through += 1;
            assert!(let_through < 100, "never refused");
        }
        assert_eq!(let_through, 7);
        assert!(quota.exceeded(), "the refusal raises the alarm");
        // A smaller write that fits still goes through.
        assert_eq!(admit(&quota, &put_of(10)).await, Ok(()));
        // A measure that counts them (and finds the store small after all,
        // say the writes were overwrites) clears it.
        let landed = quota.landed_so_far();
        quota.record(200 * 1024, 1 << 20, landed, true);
        assert!(!quota.exceeded());
        assert_eq!(quota.pending.load(Ordering::Relaxed), 0);
        assert_eq!(admit(&quota, &put_of(100 * 1024)).await, Ok(()));
        // A write still in flight when a measure is taken stays pending
        // (the measure may not see it); one never proposed stops counting.
        let in_flight = quota.check(&put_of(100 * 1024)).await.expect("fits");
        assert_eq!(quota.pending.load(Ordering::Relaxed), 2 * each);
        quota.record(200 * 1024, 1 << 20, quota.landed_so_far(), true);
        assert_eq!(quota.pending.load(Ordering::Relaxed), each, "in flight");
        quota.landed(in_flight, false);
        assert_eq!(quota.pending.load(Ordering::Relaxed), 0);
        // Judged on the file's length, a write is refused only after the
        // page count it asks for (here none comes: after the wait).
        quota.record(1 << 20, 1 << 20, 0, false);
        let began = std::time::Instant::now();
        assert!(admit(&quota, &put_of(10)).await.is_err());
        assert!(began.elapsed() >= FORCED_SCAN_WAIT);
        // Nothing else is estimated to add data.
        let destroy = Command::Secret(SecretCommand::Destroy {
            path: "a/b".parse::<SecretPath>().expect("path"),
            versions: vec![],
        });
        assert_eq!(cost(&destroy), None);
    }
}
