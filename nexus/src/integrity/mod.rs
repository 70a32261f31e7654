//! Corruption checks, as etcd does them: replicas compare digests of
//! their state at the same log index, and one whose digest differs from
//! what a majority of the voters recorded raises an alarm and stops
//! serving.
//!
//! The leader proposes a `DigestCheckpoint` entry every check interval
//! (`--corruption-check-interval`). Every replica that applies it records
//! the digest of its state exactly as of that entry (`state::digest`; the
//! state machine ends its apply batch there and hashes inside that
//! transaction), in memory and in a table of its own that the digest and
//! snapshots leave out. Every replica asks the voters for their recent
//! digests (the cluster port's `StateDigests` RPC; a replica of an older
//! release answers "unimplemented" and takes no part) and compares them
//! with its own, index by index: a digest a majority of the voters holds
//! at an index is the cluster's; a replica that holds another one there
//! is corrupt. At start-up a replica whose applied index is that of its
//! last recorded digest hashes its state again and compares.
//!
//! The alarm, once raised, stays until the process ends: the replica
//! answers 503 `state_corrupt` to every route that reads or writes data,
//! fails `/readyz`, logs one error, sets `spike_state_corrupt`, shows in
//! `spike cluster status`, and hands leadership away whenever it holds it.
//! After a restart the checks run again: a replica whose files are still
//! wrong is caught again (its recorded digests or its next checkpoint
//! differ); the fix is to replace it (docs/operations.md).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use spike_sdk::domain::SecretPath;
use tonic::Status;

use crate::raft::codec::encode;
use crate::state::digest::StateDigest;
use crate::transport::proto::Frame;

pub mod check;

/// Digests a replica keeps (and answers with): enough that every replica
/// has applied some of the same checkpoints when it compares.
pub const CHECKPOINTS_KEPT: usize = 16;
/// How long a replica waits for one peer's digests.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait between proposing a checkpoint and comparing, so the
/// followers have applied it.
const COMPARE_DELAY_MAX: Duration = Duration::from_secs(2);

/// A replica's digest of its state at one log index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The index of the `DigestCheckpoint` entry.
    pub index: u64,
    /// The digest of the state as of that entry.
    pub digest: StateDigest,
}

/// The `StateDigests` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestsReply {
    /// The replica's recent checkpoints, oldest first.
    pub checkpoints: Vec<Checkpoint>,
    /// Whether it raised the alarm on itself.
    pub corrupt: bool,
}

/// Why a replica holds itself corrupt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// The log index the mismatch was found at.
    pub index: u64,
    /// What differed, for people.
    pub reason: String,
}

/// The corruption alarm of one replica and the digests it recorded;
/// clones share them.
#[derive(Clone)]
pub struct Integrity {
    inner: Arc<Inner>,
}

struct Inner {
    checkpoints: Mutex<VecDeque<Checkpoint>>,
    alarm: Mutex<Option<Alarm>>,
    corrupt: AtomicBool,
    /// The newest checkpoint at which a majority of the voters held our
    /// digest (0: none yet).
    agreed: AtomicU64,
    /// TEST ONLY: the secret this replica's apply alters.
    diverge: Option<SecretPath>,
    metrics: Metrics,
}

struct Metrics {
    corrupt: Gauge,
    checkpoint_index: Gauge,
    checkpoints: Counter,
    comparisons: Counter,
    peers_diverged: Gauge,
    digest_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            corrupt: Gauge::default(),
            checkpoint_index: Gauge::default(),
            checkpoints: Counter::default(),
            comparisons: Counter::default(),
            peers_diverged: Gauge::default(),
            digest_seconds: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        }
    }
}

impl Default for Integrity {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Integrity {
    /// No alarm, no digests; `diverge` (TEST ONLY) names a secret whose
    /// stored ciphertext this replica's apply alters, to plant a
    /// divergence the checks must find.
    pub fn new(diverge: Option<SecretPath>) -> Self {
        Self {
            inner: Arc::new(Inner {
                checkpoints: Mutex::new(VecDeque::with_capacity(CHECKPOINTS_KEPT)),
                alarm: Mutex::new(None),
                corrupt: AtomicBool::new(false),
                agreed: AtomicU64::new(0),
                diverge,
                metrics: Metrics::default(),
            }),
        }
    }

    fn checkpoints_locked(&self) -> MutexGuard<'_, VecDeque<Checkpoint>> {
        // A list of digests stays meaningful even if a holder panicked.
        self.inner
            .checkpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the digest this replica made at a checkpoint entry, and how
    /// long hashing took.
    pub fn record(&self, checkpoint: Checkpoint, took: Duration) {
        let metrics = &self.inner.metrics;
        metrics.checkpoints.inc();
        metrics
            .checkpoint_index
            .set(i64::try_from(checkpoint.index).unwrap_or(i64::MAX));
        metrics.digest_seconds.observe(took.as_secs_f64());
        let mut checkpoints = self.checkpoints_locked();
        checkpoints.retain(|kept| kept.index != checkpoint.index);
        checkpoints.push_back(checkpoint);
        while checkpoints.len() > CHECKPOINTS_KEPT {
            checkpoints.pop_front();
        }
    }

    /// The digests recorded before a restart, oldest first.
    pub fn load(&self, recorded: Vec<Checkpoint>) {
        let mut checkpoints = self.checkpoints_locked();
        checkpoints.extend(recorded);
        while checkpoints.len() > CHECKPOINTS_KEPT {
            checkpoints.pop_front();
        }
    }

    /// The recorded digests, oldest first.
    pub fn checkpoints(&self) -> Vec<Checkpoint> {
        self.checkpoints_locked().iter().copied().collect()
    }

    /// Raises the alarm (once; a later mismatch keeps the first reason).
    pub fn raise(&self, alarm: Alarm) {
        let mut current = self
            .inner
            .alarm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.is_some() {
            return;
        }
        tracing::error!(
            index = alarm.index,
            reason = %alarm.reason,
            "CORRUPTION: this replica's state differs from the cluster's; it stops serving \
             data and must be replaced (docs/operations.md, \"A replica raised the corruption alarm\")"
        );
        *current = Some(alarm);
        self.inner.corrupt.store(true, Ordering::SeqCst);
        self.inner.metrics.corrupt.set(1);
    }

    /// Whether the alarm is raised.
    pub fn is_corrupt(&self) -> bool {
        self.inner.corrupt.load(Ordering::SeqCst)
    }

    /// The alarm, if raised.
    pub fn alarm(&self) -> Option<Alarm> {
        self.inner
            .alarm
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The newest checkpoint at which a majority of the voters held this
    /// replica's digest, if any yet.
    pub fn agreed_index(&self) -> Option<u64> {
        Some(self.inner.agreed.load(Ordering::SeqCst)).filter(|index| *index > 0)
    }

    /// TEST ONLY: the secret this replica's apply alters.
    pub fn diverge_path(&self) -> Option<&SecretPath> {
        self.inner.diverge.as_ref()
    }

    /// Adds this replica's corruption-check metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        let metrics = &self.inner.metrics;
        registry.register(
            "state_corrupt",
            "1 if this replica's state differs from the cluster's (the corruption alarm)",
            metrics.corrupt.clone(),
        );
        registry.register(
            "state_digest_checkpoint_index",
            "Log index of the last digest checkpoint this replica applied",
            metrics.checkpoint_index.clone(),
        );
        registry.register(
            "state_digest_checkpoints",
            "Digest checkpoints this replica applied and hashed",
            metrics.checkpoints.clone(),
        );
        registry.register(
            "state_digest_comparisons",
            "Comparisons with the voters' digests that reached a majority",
            metrics.comparisons.clone(),
        );
        registry.register(
            "state_digest_peers_diverged",
            "Voters whose digest differed from the majority's at the last compared checkpoint",
            metrics.peers_diverged.clone(),
        );
        registry.register(
            "state_digest_duration_seconds",
            "Time to hash the state at a digest checkpoint",
            metrics.digest_seconds.clone(),
        );
    }

    /// The `StateDigests` reply of this replica.
    pub fn reply(&self) -> Result<Frame, Status> {
        let reply = DigestsReply {
            checkpoints: self.checkpoints(),
            corrupt: self.is_corrupt(),
        };
        encode(&reply)
            .map(|payload| Frame { payload })
            .map_err(|e| Status::internal(e.to_string()))
    }
}

/// What the voters' digests say of this replica's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No checkpoint of ours is one a majority of the voters agrees on.
    Undecided,
    /// At `index` ours is the majority's; `diverged` voters hold another.
    Agrees {
        /// The newest such checkpoint.
        index: u64,
        /// Voters (other than us) whose digest differs there.
        diverged: Vec<u64>,
    },
    /// At `index` a majority holds a digest other than ours.
    Differs {
        /// The checkpoint.
        index: u64,
        /// Our digest there.
        ours: StateDigest,
        /// The majority's.
        theirs: StateDigest,
        /// How many voters hold the majority's.
        holders: usize,
    },
}

/// Compares `ours` (this replica's checkpoints) with `voters`' (every
/// voter's, by id; ours among them if we vote): a digest that more than
/// half of the voters hold at an index is the cluster's there.
pub fn judge(own_id: u64, ours: &[Checkpoint], voters: &BTreeMap<u64, Vec<Checkpoint>>) -> Verdict {
    let quorum = voters.len() / 2 + 1;
    let mut verdict = Verdict::Undecided;
    for checkpoint in ours {
        let mut holders: BTreeMap<StateDigest, Vec<u64>> = BTreeMap::new();
        for (id, checkpoints) in voters {
            if let Some(theirs) = checkpoints.iter().find(|c| c.index == checkpoint.index) {
                holders.entry(theirs.digest).or_default().push(*id);
            }
        }
        let Some((majority, holding)) = holders.iter().find(|(_, ids)| ids.len() >= quorum) else {
            continue;
        };
        // PLANTED BUG corruption-check-compares-nothing.
        if *majority != checkpoint.digest && !spike_sdk::planted!(CorruptionCheckComparesNothing) {
            return Verdict::Differs {
                index: checkpoint.index,
                ours: checkpoint.digest,
                theirs: *majority,
                holders: holding.len(),
            };
        }
        let diverged = holders
            .iter()
            .filter(|(digest, _)| *digest != majority)
            .flat_map(|(_, ids)| ids.iter().copied())
            .filter(|id| *id != own_id)
            .collect();
        verdict = Verdict::Agrees {
            index: checkpoint.index,
            diverged,
        };
    }
    verdict
}

fn hex(digest: &StateDigest) -> String {
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: u64, byte: u8) -> Checkpoint {
        Checkpoint {
            index,
            digest: [byte; 32],
        }
    }

    #[test]
    fn a_digest_a_majority_disagrees_with_is_corrupt() {
        let ours = vec![at(5, 1), at(9, 9)];
        let voters = BTreeMap::from([
            (1, ours.clone()),
            (2, vec![at(5, 1), at(9, 2)]),
            (3, vec![at(5, 1), at(9, 2)]),
        ]);
        assert_eq!(
            judge(1, &ours, &voters),
            Verdict::Differs {
                index: 9,
                ours: [9; 32],
                theirs: [2; 32],
                holders: 2
            }
        );
    }

    #[test]
    fn the_majority_names_the_replica_that_diverged() {
        let ours = vec![at(5, 1)];
        let voters = BTreeMap::from([(1, ours.clone()), (2, vec![at(5, 1)]), (3, vec![at(5, 7)])]);
        assert_eq!(
            judge(1, &ours, &voters),
            Verdict::Agrees {
                index: 5,
                diverged: vec![3]
            }
        );
    }

    #[test]
    fn without_a_majority_at_an_index_nothing_is_decided() {
        let ours = vec![at(5, 1)];
        // One peer unreachable, one disagreeing: 1 of 3 each way.
        let voters = BTreeMap::from([(1, ours.clone()), (2, Vec::new()), (3, vec![at(5, 7)])]);
        assert_eq!(judge(1, &ours, &voters), Verdict::Undecided);
        // A lagging replica that has not applied the checkpoint yet.
        let lagging = BTreeMap::from([(1, ours.clone()), (2, vec![at(4, 7)]), (3, Vec::new())]);
        assert_eq!(judge(1, &ours, &lagging), Verdict::Undecided);
    }

    #[test]
    fn the_alarm_keeps_its_first_reason() {
        let integrity = Integrity::default();
        assert!(!integrity.is_corrupt());
        integrity.raise(Alarm {
            index: 3,
            reason: "first".to_owned(),
        });
        integrity.raise(Alarm {
            index: 4,
            reason: "second".to_owned(),
        });
        assert!(integrity.is_corrupt());
        assert_eq!(integrity.alarm().map(|alarm| alarm.index), Some(3));
    }

    #[test]
    fn the_alarm_shows_in_the_metrics() {
        let integrity = Integrity::default();
        let mut registry = Registry::with_prefix("spike");
        integrity.register_metrics(&mut registry);
        integrity.record(at(7, 1), Duration::from_millis(3));
        integrity.raise(Alarm {
            index: 7,
            reason: "test".to_owned(),
        });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "spike_state_corrupt 1",
            "spike_state_digest_checkpoint_index 7",
            "spike_state_digest_checkpoints_total 1",
            "spike_state_digest_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_replica_keeps_its_newest_digests() {
        let integrity = Integrity::default();
        for index in 1..=40 {
            integrity.record(at(index, 1), Duration::ZERO);
        }
        let kept = integrity.checkpoints();
        assert_eq!(kept.len(), CHECKPOINTS_KEPT);
        assert_eq!(kept.last().map(|c| c.index), Some(40));
    }
}
