//! The root-key lifecycle of one replica (architecture invariants 2-7).
//!
//! Every replica: once the cluster has a committed root key, fetch shares of
//! exactly that key (id and key check) from the keepers, rebuild, accept the
//! key only if it matches the key check, and serve; retry with bounded
//! backoff while it cannot.
//!
//! The leader alone: generates the first root key and commits it only after
//! at least t keepers hold its shares; pushes shares to keepers at start,
//! periodically and after any change; accepts restore shards; rekeys and
//! rotates data keys on operator request. Each of those steps runs only
//! once the leader has applied everything committed before its term, so it
//! acts on the definitive state.
//!
//! The background lifecycle is a loop of observe, decide, act: the
//! decisions are [`super::lifecycle::decide`]'s, and this module only
//! gathers what it decides on and carries out the action it picks. The
//! changes a leader proposes live in [`proposals`].

mod proposals;
mod reseal;

use std::sync::Arc;
use std::time::Duration;

use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::shamir::{recover_tolerant, split};
use spike_sdk::crypto::{CryptoError, DataKeyId, KeyCheck, RootKey, ShamirParams};
use spike_sdk::keeper_api::ShareKind;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::keepers::Keepers;
use super::lifecycle::{
    self, Action, ClusterKey, KeyVersion, LastPush, Observation, Policy, Rotation, Trigger,
};
use super::metrics::KeyMetrics;
use super::restore::RestoreProgress;
use super::{KeyState, KeyStatus, Unlocked};
use crate::audit::AuditLog;
use crate::raft::Leadership;
use crate::raft::state_machine::AppliedIndex;
use crate::state::command::{RootKeyRecord, RotationSettings};
use crate::state::store::{ClusterMeta, RotationMeta, StateReader};

/// How often the manager looks at the state when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Retry delays while the key cannot be had.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest the leader waits to confirm it is still the leader.
const LEADERSHIP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Most actions one step takes (confirm, initialize, fetch, push and
/// rotate fit in with room to spare).
const STEP_ACTIONS_MAX: usize = 8;

/// Why an operator's key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Only the leader does this; the request should go there.
    #[error("this replica is not the leader")]
    NotLeader,
    /// This replica does not hold the root key (yet).
    #[error("this replica does not hold the root key")]
    NotReady,
    /// The cluster has no root key yet.
    #[error("the cluster is not initialized")]
    Uninitialized,
    /// Fewer than t keepers took the new key's shares; nothing was committed.
    #[error("only {acknowledged} keepers acknowledged their shares; {needed} are needed")]
    KeepersUnavailable {
        /// Keepers that acknowledged.
        acknowledged: usize,
        /// The threshold.
        needed: usize,
    },
    /// The restore shards do not rebuild the committed key.
    #[error("the shards do not rebuild the committed root key; restore starts over")]
    WrongShards,
    /// A cryptographic step failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// Raft refused or could not complete the proposal.
    #[error("proposal failed: {0}")]
    Proposal(String),
    /// The operator asked for n and t this cluster refuses; nothing changed.
    #[error("refused Shamir parameters: {0}")]
    Parameters(String),
    /// The root key id cannot grow any more (it is at `u64::MAX`).
    #[error("root key ids are exhausted")]
    IdsExhausted,
    /// The audit log takes no writes: nothing was done (`committed` false),
    /// or the change was made but its record is not durable yet.
    #[error("the audit log cannot be written (change made: {committed})")]
    Audit {
        /// Whether the change was committed before the record failed.
        committed: bool,
    },
}

/// What a restore call reports (SPIKE's shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreStatus {
    /// Shards collected so far.
    pub collected: usize,
    /// Shards still needed.
    pub remaining: usize,
    /// Whether the key is back.
    pub restored: bool,
    /// Whether earlier progress was dropped by a leader change.
    pub progress_reset: bool,
}

/// Drives the root-key lifecycle; shared with the API for operator actions.
pub struct KeyManager {
    leadership: Leadership,
    reader: StateReader,
    keepers: Keepers,
    keys: Arc<KeyState>,
    params: ShamirParams,
    /// Whether a rekey may ask for t = 1 (development only).
    allow_insecure_threshold: bool,
    /// Where the leader's key changes are recorded.
    audit: AuditLog,
    policy: Policy,
    /// The rotation settings until an operator sets replicated ones.
    rotation_defaults: RotationSettings,
    metrics: KeyMetrics,
    /// Serializes initialize, rekey, rotation, restore and pushes.
    lifecycle: Mutex<Lifecycle>,
}

struct Lifecycle {
    last_push: Option<(RootKeyId, Instant)>,
    restore: RestoreProgress,
}

/// How a step of the lifecycle ended.
enum Step {
    /// Nothing more to do until something changes.
    Settled,
    /// Keepers or quorum missing: try again after a backoff.
    Retry,
}

/// How the key manager is set up.
#[derive(Debug, Clone, Copy)]
pub struct KeySettings {
    /// The Shamir parameters a first root key is split with.
    pub params: ShamirParams,
    /// Whether a rekey may ask for t = 1 (development only).
    pub allow_insecure_threshold: bool,
    /// How often shares are pushed.
    pub policy: Policy,
    /// When keys are replaced until an operator sets replicated settings.
    pub rotation_defaults: RotationSettings,
}

/// The rotation settings in force: the replicated ones once set, `defaults`
/// (this replica's flags) until then.
pub fn effective_rotation(meta: &RotationMeta, defaults: &RotationSettings) -> RotationSettings {
    meta.settings.unwrap_or(*defaults)
}

fn rotation_of(settings: &RotationSettings) -> Rotation {
    let age = |ns: u64| (ns > 0).then(|| Duration::from_nanos(ns));
    Rotation {
        rotate_at: settings.data_key_rotate_after_ops,
        data_key_max_age: age(settings.data_key_max_age_ns),
        root_key_max_age: age(settings.root_key_max_age_ns),
    }
}

/// How long ago log time `since` was, by this replica's clock (0 if the
/// clock is behind it).
fn age_since(since: u64, now_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(since))
}

/// A lifecycle observation and the metadata it was made from (which the
/// actions need in full).
struct Observed {
    observation: Observation,
    meta: ClusterMeta,
}

impl KeyManager {
    /// A manager for the replica `leadership` belongs to, recording the
    /// leader's key changes in `audit`.
    pub fn new(
        leadership: Leadership,
        reader: StateReader,
        keepers: Keepers,
        keys: Arc<KeyState>,
        settings: KeySettings,
        audit: AuditLog,
    ) -> Self {
        Self {
            leadership,
            reader,
            keepers,
            keys,
            params: settings.params,
            allow_insecure_threshold: settings.allow_insecure_threshold,
            audit,
            policy: settings.policy,
            rotation_defaults: settings.rotation_defaults,
            metrics: KeyMetrics::default(),
            lifecycle: Mutex::new(Lifecycle {
                last_push: None,
                restore: RestoreProgress::default(),
            }),
        }
    }

    /// Runs the lifecycle until the task is dropped.
    pub async fn run(self: Arc<Self>, mut applied: AppliedIndex) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let step = self.step().await;
            // Only a change of leader or role is news here, not every
            // heartbeat.
            let leadership_changed = self.leadership.changes().changed();
            match step {
                Step::Settled => {
                    backoff = BACKOFF_MIN;
                    tokio::select! {
                        () = tokio::time::sleep(TICK) => {}
                        () = applied.changed() => {}
                        () = leadership_changed => {}
                    }
                }
                // Back off (bounded), waking early only when leadership
                // moves.
                Step::Retry => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = leadership_changed => {}
                    }
                }
            }
        }
    }

    /// Adds the key lifecycle's metrics to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register_metrics(registry);
    }

    /// The key lifecycle's metrics.
    pub fn metrics(&self) -> &KeyMetrics {
        &self.metrics
    }

    /// The rotation settings in force and whether an operator set them.
    pub fn rotation_settings(&self) -> Option<(RotationSettings, RotationMeta)> {
        let rotation = self.rotation_meta()?;
        Some((
            effective_rotation(&rotation, &self.rotation_defaults),
            rotation,
        ))
    }

    fn rotation_meta(&self) -> Option<RotationMeta> {
        match self.reader.rotation_meta() {
            Ok(rotation) => Some(rotation),
            Err(error) => {
                tracing::error!(%error, "cannot read the rotation record");
                None
            }
        }
    }

    fn meta(&self) -> Option<ClusterMeta> {
        match self.reader.cluster_meta() {
            Ok(meta) => Some(meta),
            Err(error) => {
                tracing::error!(%error, "cannot read cluster metadata");
                None
            }
        }
    }

    /// What the lifecycle decides on, now. `settled` is the outcome of a
    /// leadership confirmation made during this step, if one was.
    async fn observe(&self, settled: Option<bool>) -> Option<Observed> {
        let meta = self.meta()?;
        let cluster = match (&meta.restoring, &meta.root_key) {
            (Some(_), _) => ClusterKey::Restoring,
            (None, None) => ClusterKey::Uninitialized,
            (None, Some(record)) => ClusterKey::Committed(KeyVersion {
                root_key_id: record.root_key_id.0,
                key_check: record.key_check,
                keyring_version: meta.keyring_version,
            }),
        };
        let unlocked = self.keys.unlocked();
        let role = match (self.leadership.is_leader(), settled) {
            (false, _) => lifecycle::Role::Follower,
            (true, None) => lifecycle::Role::Leader,
            (true, Some(true)) => lifecycle::Role::SettledLeader,
            (true, Some(false)) => lifecycle::Role::UnsettledLeader,
        };
        let last_push = self
            .lifecycle
            .lock()
            .await
            .last_push
            .map(|(root_key_id, at)| LastPush {
                root_key_id: root_key_id.0,
                elapsed: at.elapsed(),
            });
        let active_key_encryptions = unlocked.as_ref().map_or(0, |unlocked| {
            let active = unlocked.active_data_key();
            meta.encryptions
                .get(&DataKeyId(active))
                .copied()
                .unwrap_or(0)
        });
        // Read after the cluster metadata: if an apply came in between, the
        // newer record can only make a key look younger, never due twice.
        let rotation = self.rotation_meta()?;
        let settings = effective_rotation(&rotation, &self.rotation_defaults);
        let now_ns = crate::clock::now_ns();
        let data_key_age = rotation
            .data_key_since
            .map(|since| age_since(since, now_ns));
        let root_key_age = rotation
            .root_key_since
            .filter(|(id, _)| Some(*id) == meta.root_key_id())
            .map(|(_, since)| age_since(since, now_ns));
        self.metrics.set_ages(data_key_age, root_key_age);
        let observation = Observation {
            cluster,
            held: unlocked.map(|unlocked| unlocked.version()),
            role,
            last_push,
            active_key_encryptions,
            data_key_age,
            root_key_age,
            rotation: rotation_of(&settings),
        };
        Some(Observed { observation, meta })
    }

    /// Observes, decides and acts until there is nothing left to do (or
    /// [`STEP_ACTIONS_MAX`] actions are done; the next step goes on).
    async fn step(&self) -> Step {
        let mut settled = None;
        for _ in 0..STEP_ACTIONS_MAX {
            let Some(Observed { observation, meta }) = self.observe(settled).await else {
                return Step::Retry;
            };
            let action = lifecycle::decide(&self.policy, &observation);
            tracing::trace!(?action, "root key lifecycle");
            let record = meta.root_key.as_ref();
            match (action, record) {
                (Action::Idle, _) => return Step::Settled,
                (Action::ClearKey, _) => {
                    self.keys.set(None, KeyStatus::Uninitialized);
                    return Step::Settled;
                }
                (Action::ConfirmLeadership, _) => {
                    settled = Some(
                        self.leadership
                            .is_settled_leader(LEADERSHIP_CHECK_TIMEOUT)
                            .await,
                    );
                }
                (Action::Initialize, _) => {
                    self.keys.set(None, KeyStatus::Uninitialized);
                    if let Err(error) = self.initialize().await {
                        tracing::warn!(%error, "cannot initialize the root key yet");
                        return Step::Retry;
                    }
                }
                (Action::ReopenKeyring, Some(record)) => {
                    if !self.reopen_keyring(record, meta.keyring_version) {
                        return Step::Retry;
                    }
                }
                (Action::FetchFromKeepers, Some(record)) => {
                    if !self.fetch_from_keepers(record, meta.keyring_version).await {
                        return Step::Retry;
                    }
                }
                (Action::PushShares, Some(record)) => self.push_shares(record).await,
                (Action::RotateDataKey(trigger), _) => {
                    let due = Some(meta.keyring_version);
                    if let Err(error) = self.rotate_data_key_for(trigger, due).await {
                        tracing::warn!(%error, ?trigger, "automatic data-key rotation failed");
                        return Step::Retry;
                    }
                }
                (Action::RekeyByAge, Some(record)) => {
                    let params = match ShamirParams::new(record.shares, record.threshold) {
                        Ok(params) => params,
                        Err(error) => {
                            tracing::error!(%error, "the committed key's n and t are invalid");
                            return Step::Retry;
                        }
                    };
                    let due = Some(meta.keyring_version);
                    if let Err(error) = self.rekey_for(params, Trigger::Age, due).await {
                        tracing::warn!(%error, "scheduled root key rekey failed");
                        return Step::Retry;
                    }
                }
                // Only a committed key leads to these: the metadata has one.
                (
                    Action::ReopenKeyring
                    | Action::FetchFromKeepers
                    | Action::PushShares
                    | Action::RekeyByAge,
                    None,
                ) => {
                    return Step::Retry;
                }
            }
        }
        Step::Settled
    }

    /// Opens the committed keyring with the root key already in hand (only
    /// the keyring changed).
    fn reopen_keyring(&self, record: &RootKeyRecord, keyring_version: u64) -> bool {
        let held = self.keys.unlocked().filter(|unlocked| {
            unlocked.root_key_id == record.root_key_id
                && unlocked.key_check.as_bytes() == &record.key_check
        });
        match held {
            Some(unlocked) => self.hold(unlocked.root_key().clone(), record, keyring_version),
            None => false,
        }
    }

    /// Rebuilds the committed key from the keepers' shares.
    async fn fetch_from_keepers(&self, record: &RootKeyRecord, keyring_version: u64) -> bool {
        let root_key_id = record.root_key_id;
        let key_check = KeyCheck::from_bytes(record.key_check);
        {
            // The decision was made on an observation without the lock: an
            // operator's rekey, initialization or restore may have installed
            // this very key since (under the lock, right after its commit).
            // Never clear it: the keepers may hold its shares only as pending,
            // and if they all restart, no replica could push them again.
            let _lifecycle = self.lifecycle.lock().await;
            let in_hand = self.keys.unlocked().is_some_and(|unlocked| {
                unlocked.root_key_id == record.root_key_id
                    && unlocked.key_check.as_bytes() == &record.key_check
            });
            if in_hand {
                // Observe again (the keyring may need reopening).
                return true;
            }
            self.keys.set(
                None,
                KeyStatus::Locked {
                    root_key_id: record.root_key_id.0,
                },
            );
        }
        let shares = self.keepers.fetch(root_key_id, key_check).await;
        if shares.len() < usize::from(record.threshold) {
            tracing::debug!(
                %root_key_id,
                shares = shares.len(),
                threshold = record.threshold,
                "waiting for enough keepers to hold shares of the root key"
            );
            return false;
        }
        match recover_tolerant(&shares, usize::from(record.threshold), &key_check) {
            Ok(root_key) => self.hold(root_key, record, keyring_version),
            Err(error) => {
                // Never use a key that does not match the committed check.
                tracing::warn!(%root_key_id, %error, "shares from keepers did not rebuild the committed key");
                false
            }
        }
    }

    /// Holds `root_key` (checked against `record`) with the committed
    /// keyring; false if the keyring does not open with it.
    fn hold(&self, root_key: RootKey, record: &RootKeyRecord, keyring_version: u64) -> bool {
        let root_key_id = record.root_key_id;
        match Unlocked::new(root_key, record, keyring_version) {
            Ok(unlocked) => {
                tracing::info!(%root_key_id, key_check = %unlocked.key_check, "root key in hand; serving");
                self.keys.set(
                    Some(Arc::new(unlocked)),
                    KeyStatus::Ready {
                        root_key_id: record.root_key_id.0,
                    },
                );
                true
            }
            Err(error) => {
                tracing::error!(%root_key_id, %error, "committed keyring does not open with the committed root key");
                false
            }
        }
    }

    /// Pushes the committed key's shares to every keeper (leader only).
    async fn push_shares(&self, record: &RootKeyRecord) {
        let Some(unlocked) = self.keys.unlocked() else {
            return;
        };
        let root_key_id = record.root_key_id;
        let mut lifecycle = self.lifecycle.lock().await;
        let acknowledged = self.push_committed(&unlocked).await;
        lifecycle.last_push = Some((root_key_id, Instant::now()));
        if acknowledged < self.keepers.len() {
            tracing::warn!(%root_key_id, acknowledged, keepers = self.keepers.len(), "not every keeper holds its share");
        }
    }

    async fn push_committed(&self, unlocked: &Unlocked) -> usize {
        match split(unlocked.root_key(), unlocked.params) {
            Ok(shares) => {
                self.keepers
                    .push(
                        unlocked.root_key_id,
                        unlocked.key_check,
                        &shares,
                        ShareKind::Committed,
                    )
                    .await
            }
            Err(error) => {
                tracing::error!(%error, "cannot split the root key");
                0
            }
        }
    }
}
