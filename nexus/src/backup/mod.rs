//! Scheduled backups: the leader writes an encrypted backup (the snapshot
//! file format, as `/v1/snapshot?action=save` returns it) into its backup
//! directory once per interval, whoever leads.
//!
//! The schedule is slots of the interval: slot k covers leader time
//! [k·interval, (k+1)·interval). The replicated state records the last
//! completed backup (`BackupCommand::Completed`: slot, index, file, node);
//! apply refuses a record whose slot does not start after the recorded
//! one, so each slot is recorded at most once. A leader takes the current
//! slot k only when the recorded slot starts before it; it writes and
//! verifies the file, then proposes the record. If the record is refused
//! (another leader recorded the slot first) it deletes its file; if
//! leadership moves before the record commits, the next leader finds slot k
//! unrecorded and takes it; every replica deletes its own file of the
//! recorded slot when the record names another. Slots that pass without
//! any record (no leader, or failures) are counted as missed, and the
//! leader takes the current slot, never a past one.
//!
//! A backup reads one redb read transaction (MVCC): apply never waits for
//! it. The file is read back whole to verify it, so a backup holds the
//! size of the store in memory once, briefly.

pub mod files;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use spike_sdk::audit::{BackupEvent, BackupOutcome};
use spike_sdk::domain::NodeId;

use crate::audit::AuditLog;
use crate::raft::format::FORMAT_NEWEST;
use crate::raft::state_machine::StateMachine;
use crate::raft::{LeaderError, Leadership};
use crate::state::command::{BackupCommand, BackupRecord, Command, Refusal, Request, Response};
use files::{BackupFileError, Written};

/// The on-disk format whose readers decode a backup record.
const BACKUP_RECORD_FORMAT: u32 = 3;
const _: () = assert!(BACKUP_RECORD_FORMAT <= FORMAT_NEWEST);
/// Shortest and longest pause between two looks at the schedule: a
/// fraction of the interval, so a new leader takes an unrecorded slot soon
/// after it starts leading.
const TICK_MIN: Duration = Duration::from_millis(100);
const TICK_MAX: Duration = Duration::from_secs(1);
/// How long the leader waits to have applied its read index.
const CATCH_UP_MAX: Duration = Duration::from_secs(5);

/// The schedule, from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSettings {
    /// One backup per interval.
    pub interval: Duration,
    /// Where this replica writes them when it leads.
    pub dir: PathBuf,
    /// Backups kept in `dir` (at least 1).
    pub retain: usize,
}

/// Why a backup was not taken or not recorded.
#[derive(Debug, thiserror::Error)]
enum BackupError {
    #[error(transparent)]
    File(#[from] BackupFileError),
    #[error("reading the replicated state failed: {0}")]
    State(String),
    #[error("the record was not committed: {0}")]
    Propose(String),
}

/// This replica's backup metrics (Prometheus types), registered whether or
/// not backups are scheduled, so alerts see a series either way.
#[derive(Debug, Clone, Default)]
pub struct BackupMetrics {
    succeeded: Counter,
    failed: Counter,
    last_success_timestamp_seconds: Gauge,
    last_duration_seconds: Gauge<f64, AtomicU64>,
    last_size_bytes: Gauge,
    slots_missed: Counter,
}

/// The scheduled-backup component of one replica.
pub struct Backups {
    settings: BackupSettings,
    node: NodeId,
    leadership: Leadership,
    machine: StateMachine,
    audit: AuditLog,
    metrics: BackupMetrics,
    /// The slot start (ms) of the last attempt that failed: not retried
    /// within its slot, so a broken directory costs one failure per
    /// interval, not one per tick.
    failed_slot_start_ms: Mutex<Option<u128>>,
    /// Files whose record's outcome is unknown (the leader lost its
    /// quorum while proposing it), by slot start (ms); at most
    /// [`UNCONFIRMED_MAX`].
    unconfirmed: Mutex<Vec<(u128, String)>>,
    /// The recorded slot start (ms) this replica last tidied its directory
    /// for: once per recorded slot is enough (and a broken directory warns
    /// once per slot, not per tick).
    tidied_for_ms: Mutex<Option<u128>>,
}

/// Most files kept waiting for their record's outcome; past it the oldest
/// is deleted (a leader cut off that long has long been replaced).
const UNCONFIRMED_MAX: usize = 16;

/// Whether a slot is due.
enum Due {
    /// Recorded already, or nothing to back up yet.
    No,
    /// Not recorded; `last` is the record before it, if any.
    Yes {
        /// The last record.
        last: Option<BackupRecord>,
    },
}

/// This replica's own view of the schedule, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalBackups {
    /// The interval.
    pub interval: Duration,
    /// The directory.
    pub dir: PathBuf,
    /// Backups kept.
    pub retain: usize,
    /// Backups this replica completed since it started.
    pub succeeded: u64,
    /// Attempts that failed here since it started.
    pub failed: u64,
}

impl Backups {
    /// The component for `settings`.
    pub fn new(
        settings: BackupSettings,
        node: NodeId,
        leadership: Leadership,
        machine: StateMachine,
        audit: AuditLog,
        metrics: BackupMetrics,
    ) -> Self {
        Self {
            settings,
            node,
            leadership,
            machine,
            audit,
            metrics,
            failed_slot_start_ms: Mutex::new(None),
            unconfirmed: Mutex::new(Vec::new()),
            tidied_for_ms: Mutex::new(None),
        }
    }

    /// What status shows of this replica's schedule.
    pub fn local(&self) -> LocalBackups {
        LocalBackups {
            interval: self.settings.interval,
            dir: self.settings.dir.clone(),
            retain: self.settings.retain,
            succeeded: self.metrics.succeeded.get(),
            failed: self.metrics.failed.get(),
        }
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.settings.interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Runs the schedule until the task is aborted: every replica tidies
    /// its own directory against the record; the leader takes due slots.
    pub async fn run(self: Arc<Self>) {
        let tick = (self.settings.interval / 8).clamp(TICK_MIN, TICK_MAX);
        tracing::info!(
            interval = ?self.settings.interval,
            dir = %self.settings.dir.display(),
            retain = self.settings.retain,
            "scheduled backups on"
        );
        loop {
            tokio::time::sleep(tick).await;
            self.discard_superseded().await;
            if self.leadership.is_leader() {
                self.take_due_slot().await;
            }
        }
    }

    /// Deletes this replica's own files that are not, or may not be, the
    /// record of their slot: a file of the recorded slot that the record
    /// does not name (this replica wrote it as a leader whose record never
    /// committed, and the next leader took the slot), and a file whose
    /// record's outcome was unknown once the record has moved past its
    /// slot without naming it (the slot may have been taken by another
    /// leader: no slot keeps two files).
    async fn discard_superseded(&self) {
        let Ok(Some(last)) = self.machine.reader().last_backup() else {
            return;
        };
        let doubtful: Vec<String> = {
            let mut unconfirmed = self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
            let (decided, waiting): (Vec<_>, Vec<_>) = unconfirmed
                .drain(..)
                .partition(|(start, _)| last.slot_start_ms() >= *start);
            *unconfirmed = waiting;
            decided
                .into_iter()
                .filter(|(_, file)| *file != last.file)
                .map(|(_, file)| file)
                .collect()
        };
        let tidied = self
            .tidied_for_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(last.slot_start_ms());
        if tidied == Some(last.slot_start_ms()) && doubtful.is_empty() {
            return;
        }
        let dir = self.settings.dir.clone();
        let stamp = files::stamp_of_slot(last.slot_start_ms());
        let recorded = last.file.clone();
        let work = move || -> Result<Vec<String>, BackupFileError> {
            let mut removed = Vec::new();
            for file in files::list(&dir)? {
                let same_slot = files::parse_name(&file).is_some_and(|(s, _)| s == stamp);
                if (same_slot && file != recorded) || doubtful.contains(&file) {
                    files::remove(&dir, &file)?;
                    removed.push(file);
                }
            }
            Ok(removed)
        };
        match crate::raft::run_blocking("discard superseded backups", work).await {
            Ok(Ok(removed)) => {
                for file in removed {
                    tracing::warn!(%file, slot = last.slot, recorded = %last.file, "deleted a backup whose slot another leader may have recorded");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot tidy the backup directory"),
            Err(error) => tracing::warn!(%error, "cannot tidy the backup directory"),
        }
    }

    /// Takes the current slot if it is due: not recorded, and not failed
    /// here already.
    async fn take_due_slot(&self) {
        let interval_ms = self.interval_ms();
        let now_ms = u128::from(crate::clock::now_ns()) / 1_000_000;
        let slot = u64::try_from(now_ms / u128::from(interval_ms)).unwrap_or(u64::MAX);
        let slot_start_ms = u128::from(slot) * u128::from(interval_ms);
        if *self
            .failed_slot_start_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            == Some(slot_start_ms)
        {
            return;
        }
        // Applied state is never ahead of the log: a slot recorded here is
        // recorded, and most ticks end here without a read index.
        if !matches!(self.due(slot_start_ms), Ok(Due::Yes { .. })) {
            return;
        }
        // See everything committed, so a slot the last leader recorded is
        // not taken again.
        let Ok(index) = self.leadership.read_index().await else {
            return;
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP_MAX;
        if !self.machine.applied().reached(index, deadline).await {
            return;
        }
        match self.due(slot_start_ms) {
            Ok(Due::Yes { last }) => {
                let missed = last.map_or(0, |last| {
                    slots_missed(last.slot_start_ms(), slot_start_ms, interval_ms)
                });
                self.take(slot, slot_start_ms, missed).await;
            }
            Ok(Due::No) => {}
            Err(error) => tracing::warn!(%error, "cannot read the backup schedule"),
        }
    }

    /// Whether the slot starting at `slot_start_ms` is due as this
    /// replica's applied state sees it. Not while the cluster has no root
    /// key (nothing a restore could use), is being restored, or writes a
    /// format older replicas could not read the record in.
    fn due(&self, slot_start_ms: u128) -> Result<Due, crate::state::store::StoreError> {
        let reader = self.machine.reader();
        if reader.cluster_format()? < BACKUP_RECORD_FORMAT {
            return Ok(Due::No);
        }
        let meta = reader.cluster_meta()?;
        if meta.root_key.is_none() || meta.restoring.is_some() {
            return Ok(Due::No);
        }
        let last = reader.last_backup()?;
        if last
            .as_ref()
            .is_some_and(|last| last.slot_start_ms() >= slot_start_ms)
        {
            return Ok(Due::No);
        }
        Ok(Due::Yes { last })
    }

    async fn take(&self, slot: u64, slot_start_ms: u128, missed: u64) {
        let began = Instant::now();
        let interval_ms = self.interval_ms();
        let machine = self.machine.clone();
        let dir = self.settings.dir.clone();
        let written = crate::raft::run_blocking("write backup", move || {
            files::write(&machine, &dir, slot, slot_start_ms)
        })
        .await;
        let written = match written {
            Ok(Ok(written)) => written,
            Ok(Err(error)) => return self.failed(slot, slot_start_ms, None, error.into()).await,
            Err(error) => {
                return self
                    .failed(
                        slot,
                        slot_start_ms,
                        None,
                        BackupError::State(error.to_string()),
                    )
                    .await;
            }
        };
        let record = BackupRecord {
            slot,
            interval_ms,
            index: written.index,
            root_key_id: written.root_key_id,
            file: written.file.clone(),
            node: self.node,
            size_bytes: written.size_bytes,
            sha256: written.sha256,
        };
        let request = Request {
            command: Command::Backup(BackupCommand::Completed(record)),
            session: None,
            time_ns: 0,
        };
        match self.leadership.write(request).await {
            Ok(Response::Done) => {
                self.completed(slot, slot_start_ms, &written, began.elapsed(), missed)
                    .await;
            }
            Ok(Response::Refused(refusal @ Refusal::BackupSlotTaken { .. })) => {
                self.discard(&written.file);
                self.audit(event(
                    BackupOutcome::Discarded,
                    slot,
                    slot_start_ms,
                    Some(&written),
                    Some(refusal.to_string()),
                ))
                .await;
                tracing::info!(slot, file = %written.file, %refusal, "another leader recorded this slot; deleted this replica's backup of it");
            }
            Ok(other) => {
                self.discard(&written.file);
                let reason = BackupError::Propose(format!("unexpected answer {other:?}"));
                self.failed(slot, slot_start_ms, Some(&written), reason)
                    .await;
            }
            // Nothing was proposed: the next leader takes the slot.
            Err(error @ (LeaderError::NotLeader { .. } | LeaderError::FormatNotYet { .. })) => {
                self.discard(&written.file);
                tracing::info!(slot, %error, "backup not recorded; deleted");
            }
            // The record may still commit: the file stays until the
            // record shows whether it did (`discard_superseded`).
            Err(error @ LeaderError::OutcomeUnknown(_)) => {
                tracing::warn!(slot, file = %written.file, %error, "backup record outcome unknown; the file stays only if the record names it");
                let oldest = {
                    let mut unconfirmed =
                        self.unconfirmed.lock().unwrap_or_else(|e| e.into_inner());
                    unconfirmed.push((slot_start_ms, written.file.clone()));
                    (unconfirmed.len() > UNCONFIRMED_MAX).then(|| unconfirmed.remove(0))
                };
                if let Some((_, file)) = oldest {
                    self.discard(&file);
                }
            }
        }
    }

    async fn completed(
        &self,
        slot: u64,
        slot_start_ms: u128,
        written: &Written,
        took: Duration,
        missed: u64,
    ) {
        let metrics = &self.metrics;
        metrics.succeeded.inc();
        metrics.slots_missed.inc_by(missed);
        let now_s = crate::clock::now_ns() / 1_000_000_000;
        metrics
            .last_success_timestamp_seconds
            .set(i64::try_from(now_s).unwrap_or(i64::MAX));
        metrics.last_duration_seconds.set(took.as_secs_f64());
        metrics
            .last_size_bytes
            .set(i64::try_from(written.size_bytes).unwrap_or(i64::MAX));
        if missed > 0 {
            tracing::warn!(slot, missed, "backup slots passed without a backup");
        }
        tracing::info!(
            slot,
            file = %written.file,
            index = written.index,
            size_bytes = written.size_bytes,
            took_ms = took.as_millis() as u64,
            "scheduled backup written"
        );
        self.audit(event(
            BackupOutcome::Completed,
            slot,
            slot_start_ms,
            Some(written),
            None,
        ))
        .await;
        let dir = self.settings.dir.clone();
        let retain = self.settings.retain;
        match crate::raft::run_blocking("prune backups", move || files::prune(&dir, retain)).await {
            Ok(Ok(deleted)) => {
                for file in deleted {
                    tracing::info!(%file, "deleted an old backup (retention)");
                }
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot prune old backups"),
            Err(error) => tracing::warn!(%error, "cannot prune old backups"),
        }
    }

    async fn failed(
        &self,
        slot: u64,
        slot_start_ms: u128,
        written: Option<&Written>,
        error: BackupError,
    ) {
        self.metrics.failed.inc();
        *self
            .failed_slot_start_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(slot_start_ms);
        tracing::error!(slot, %error, "scheduled backup failed; the next slot tries again");
        self.audit(event(
            BackupOutcome::Failed,
            slot,
            slot_start_ms,
            written,
            Some(error.to_string()),
        ))
        .await;
    }

    fn discard(&self, file: &str) {
        if let Err(error) = files::remove(&self.settings.dir, file) {
            tracing::warn!(%error, "cannot delete an unrecorded backup");
        }
    }

    async fn audit(&self, event: BackupEvent) {
        if self.audit.record_backup(event).await.is_err() {
            tracing::error!("a scheduled backup could not be audited");
        }
    }
}

impl BackupMetrics {
    /// Adds the backup metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        register(self, registry);
    }
}

fn register(metrics: &BackupMetrics, registry: &mut Registry) {
    registry.register(
        "backups_succeeded",
        "Scheduled backups this replica wrote, verified and recorded as the leader",
        metrics.succeeded.clone(),
    );
    registry.register(
        "backups_failed",
        "Scheduled backups this replica failed to write, verify or record as the leader",
        metrics.failed.clone(),
    );
    registry.register(
        "backup_last_success_timestamp_seconds",
        "Unix time of the last scheduled backup this replica completed (0: none since start)",
        metrics.last_success_timestamp_seconds.clone(),
    );
    registry.register(
        "backup_last_duration_seconds",
        "Time the last scheduled backup this replica completed took, from read to record",
        metrics.last_duration_seconds.clone(),
    );
    registry.register(
        "backup_last_size_bytes",
        "Size of the last scheduled backup file this replica completed",
        metrics.last_size_bytes.clone(),
    );
    registry.register(
        "backup_slots_missed",
        "Schedule slots that passed without a recorded backup, counted by the leader that took the next one",
        metrics.slots_missed.clone(),
    );
}

/// Slots of `interval_ms` that started after the recorded slot (starting
/// at `recorded_start_ms`) and before the one starting at `slot_start_ms`.
fn slots_missed(recorded_start_ms: u128, slot_start_ms: u128, interval_ms: u64) -> u64 {
    let gap = slot_start_ms.saturating_sub(recorded_start_ms) / u128::from(interval_ms.max(1));
    u64::try_from(gap.saturating_sub(1)).unwrap_or(u64::MAX)
}

fn event(
    outcome: BackupOutcome,
    slot: u64,
    slot_start_ms: u128,
    written: Option<&Written>,
    reason: Option<String>,
) -> BackupEvent {
    BackupEvent {
        outcome,
        slot,
        slot_time: files::rfc3339(slot_start_ms),
        file: written.map(|w| w.file.clone()),
        index: written.map(|w| w.index),
        root_key_id: written.map(|w| w.root_key_id.0),
        size_bytes: written.map(|w| w.size_bytes),
        sha256: written.map(|w| hex::encode(w.sha256)),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_between_the_recorded_one_and_the_taken_one_are_missed() {
        assert_eq!(slots_missed(10_000, 12_000, 2_000), 0, "the next slot");
        assert_eq!(slots_missed(10_000, 18_000, 2_000), 3);
        // After a change of the interval, counted in the new interval.
        assert_eq!(slots_missed(10_000, 20_000, 5_000), 1);
        assert_eq!(slots_missed(20_000, 20_000, 5_000), 0);
    }

    #[test]
    fn the_metrics_are_registered_under_their_names() {
        let metrics = BackupMetrics::default();
        metrics.failed.inc();
        let mut registry = Registry::with_prefix("spike");
        register(&metrics, &mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "spike_backups_succeeded_total 0",
            "spike_backups_failed_total 1",
            "spike_backup_last_success_timestamp_seconds 0",
            "spike_backup_last_duration_seconds 0.0",
            "spike_backup_last_size_bytes 0",
            "spike_backup_slots_missed_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
