//! The storage quota (like etcd's backend quota): how many bytes the
//! replicated state takes here, and the leader's refusal of writes that
//! would add data past it.
//!
//! What is counted: the bytes of state.redb in use. redb never shrinks a
//! file (deleted data leaves free pages, reused by later writes), so the
//! file's length is the high-water mark, not what the store holds. While
//! the file is within the quota its length is the measure (cheap: one
//! `stat`); once it is over, the sampler asks redb for its allocated pages
//! (a walk of every page, under a write transaction that holds apply back
//! for its length, so it runs only then and at most every
//! [`SCAN_INTERVAL`]). Deletes and destroys therefore clear the alarm
//! without a restart; giving the file's space back to the file system
//! takes a compaction (`SPIKE_NEXUS_COMPACT_ON_START`). The Raft log
//! (log.redb) is not counted: snapshots compact it every
//! `SPIKE_NEXUS_SNAPSHOT_EVERY` entries.
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
/// Least time between two page scans while the file is over the quota.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(5);

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
    /// Bytes in use, as last measured.
    pub used: u64,
    /// The quota.
    pub quota: u64,
}

/// Whether `command` adds data, and so is refused past the quota. Deletes,
/// destroys and undeletes (a mark cleared), key operations, membership
/// facts and settings go on. A restore replaces the store: refusing it
/// half-way would leave the cluster unusable, so it goes on too.
pub fn adds_data(command: &Command) -> bool {
    matches!(
        command,
        Command::Secret(SecretCommand::Put { .. }) | Command::Policy(PolicyCommand::Put { .. })
    )
}

/// The quota on this replica: its last measure, the alarm, and metrics.
pub struct StorageQuota {
    quota: u64,
    used: AtomicU64,
    exceeded: AtomicBool,
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
            exceeded: AtomicBool::new(false),
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

    /// The leader's decision before proposing `command`.
    pub fn check(&self, command: &Command) -> Result<(), QuotaExceeded> {
        if self.exceeded() && adds_data(command) {
            self.refused.inc();
            return Err(QuotaExceeded {
                used: self.used(),
                quota: self.quota,
            });
        }
        Ok(())
    }

    /// Records a measure: raises or clears the alarm (a warning once per
    /// change).
    pub fn record(&self, used: u64, file_bytes: u64) {
        self.used.store(used, Ordering::Relaxed);
        self.used_gauge.set(gauge_value(used));
        self.file_gauge.set(gauge_value(file_bytes));
        let over = self.quota > 0 && used > self.quota;
        if self.exceeded.swap(over, Ordering::Relaxed) != over {
            let (used, quota) = (
                spike_sdk::size::display(used),
                spike_sdk::size::display(self.quota),
            );
            if over {
                tracing::warn!(
                    %used, %quota,
                    "storage quota exceeded: writes that add data are refused until space is freed"
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
            "1 while the store is past its storage quota and writes that add data are refused",
            self.exceeded_gauge.clone(),
        );
        registry.register(
            "storage_quota_refused",
            "Writes this replica refused, as the leader, for the storage quota",
            self.refused.clone(),
        );
    }

    /// Measures state.redb every [`SAMPLE_INTERVAL`], for ever.
    pub async fn run(self: Arc<Self>, machine: StateMachine) {
        let mut last_scan: Option<Instant> = None;
        let mut last_scanned = 0;
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let path: PathBuf = machine.path().to_owned();
            // A simulated disk has no file: nothing to measure.
            let Ok(file_bytes) = std::fs::metadata(&path).map(|meta| meta.len()) else {
                continue;
            };
            if self.quota == 0 || file_bytes <= self.quota {
                self.record(file_bytes, file_bytes);
                continue;
            }
            if last_scan.is_some_and(|at| at.elapsed() < SCAN_INTERVAL) {
                self.record(last_scanned, file_bytes);
                continue;
            }
            let scanning = machine.clone();
            match crate::raft::run_blocking("measure state", move || scanning.in_use_bytes()).await
            {
                Ok(Ok(in_use)) => {
                    last_scan = Some(Instant::now());
                    last_scanned = in_use.min(file_bytes);
                    self.record(last_scanned, file_bytes);
                }
                Ok(Err(error)) | Err(error) => {
                    tracing::warn!(%error, "cannot measure the state's pages in use; counting the file");
                    self.record(file_bytes, file_bytes);
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

    fn put() -> Command {
        Command::Secret(SecretCommand::Put {
            path: "a/b".parse::<SecretPath>().expect("path"),
            ciphertext: vec![1],
            data_key_id: DataKeyId(1),
            cas: None,
            max_versions: 10,
        })
    }

    #[test]
    fn past_the_quota_only_writes_that_add_data_are_refused_until_it_is_freed() {
        let quota = StorageQuota::new(1000);
        quota.record(900, 900);
        assert_eq!(quota.check(&put()), Ok(()));
        quota.record(1001, 4096);
        let refused = quota.check(&put()).expect_err("over");
        assert_eq!((refused.used, refused.quota), (1001, 1000));
        let message = refused.to_string();
        assert!(
            message.contains("1001 B") && message.contains("1000 B"),
            "{message}"
        );
        assert!(message.contains("destroy"), "{message}");
        let destroy = Command::Secret(SecretCommand::Destroy {
            path: "a/b".parse::<SecretPath>().expect("path"),
            versions: vec![],
        });
        let delete_policy = Command::Policy(PolicyCommand::Delete {
            policy: "p".parse::<PolicyRef>().expect("ref"),
        });
        assert_eq!(quota.check(&destroy), Ok(()));
        assert_eq!(quota.check(&delete_policy), Ok(()));
        assert!(quota.exceeded());
        quota.record(999, 4096);
        assert!(!quota.exceeded());
        assert_eq!(quota.check(&put()), Ok(()));
        // No quota: never refused.
        let none = StorageQuota::new(0);
        none.record(u64::MAX, u64::MAX);
        assert_eq!(none.check(&put()), Ok(()));
    }
}
