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

use std::sync::Arc;
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::shamir::{recover, recover_tolerant, split};
use spike_sdk::crypto::{
    CryptoError, DataKeyId, KeyCheck, KeyShare, Keyring, RootKey, ShamirParams,
};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::keepers::Keepers;
use super::restore::RestoreProgress;
use super::{KeyState, KeyStatus, Unlocked};
use crate::cluster::ForwardError;
use crate::cluster::service::leader_write;
use crate::raft::NexusRaft;
use crate::state::command::{Command, KeyCommand, Refusal, Request, Response, RootKeyRecord};
use crate::state::store::{ClusterMeta, StateReader};

/// How often the manager looks at the state when nothing wakes it.
const TICK: Duration = Duration::from_millis(250);
/// Retry delays while the key cannot be had.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Longest the leader waits to confirm it is still the leader.
const LEADERSHIP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
    node_id: u64,
    raft: NexusRaft,
    reader: StateReader,
    keepers: Keepers,
    keys: Arc<KeyState>,
    params: ShamirParams,
    push_interval: Duration,
    /// Serializes initialize, rekey, rotation, restore and pushes.
    lifecycle: Mutex<Lifecycle>,
}

struct Lifecycle {
    last_push: Option<(RootKeyId, Instant)>,
    restore: RestoreProgress,
}

enum Step {
    Settled,
    Retry,
}

impl KeyManager {
    /// A manager for the replica `node_id`. `params` are the Shamir
    /// parameters a first root key is split with.
    pub fn new(
        node_id: u64,
        raft: NexusRaft,
        reader: StateReader,
        keepers: Keepers,
        keys: Arc<KeyState>,
        params: ShamirParams,
        push_interval: Duration,
    ) -> Self {
        Self {
            node_id,
            raft,
            reader,
            keepers,
            keys,
            params,
            push_interval,
            lifecycle: Mutex::new(Lifecycle {
                last_push: None,
                restore: RestoreProgress::default(),
            }),
        }
    }

    /// Runs the lifecycle until the task is dropped.
    pub async fn run(
        self: Arc<Self>,
        mut applied: tokio::sync::watch::Receiver<
            Option<crate::raft::LogIdOf<crate::raft::TypeConfig>>,
        >,
    ) {
        let mut metrics = self.raft.metrics();
        let mut backoff = BACKOFF_MIN;
        loop {
            let step = self.step().await;
            let leadership = {
                let now = metrics.borrow_watched();
                (now.current_leader, now.state)
            };
            // Metrics change on every heartbeat; only a change of leader or
            // role is news here.
            let leadership_changed = async {
                loop {
                    if metrics.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    let now = metrics.borrow_watched();
                    if (now.current_leader, now.state) != leadership {
                        return;
                    }
                }
            };
            match step {
                Step::Settled => {
                    backoff = BACKOFF_MIN;
                    tokio::select! {
                        _ = tokio::time::sleep(TICK) => {}
                        _ = applied.changed() => {}
                        _ = leadership_changed => {}
                    }
                }
                // Keepers or quorum missing: back off (bounded), waking
                // early only when leadership moves.
                Step::Retry => {
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = leadership_changed => {}
                    }
                }
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

    fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state.is_leader() && metrics.current_leader == Some(self.node_id)
    }

    fn current_term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }

    /// True when this replica leads and has applied everything committed
    /// before its term (a read index round trip proves both).
    async fn is_settled_leader(&self) -> bool {
        if !self.is_leader() {
            return false;
        }
        matches!(
            tokio::time::timeout(
                LEADERSHIP_CHECK_TIMEOUT,
                self.raft.ensure_linearizable(ReadPolicy::ReadIndex)
            )
            .await,
            Ok(Ok(_))
        )
    }

    async fn step(&self) -> Step {
        let Some(meta) = self.meta() else {
            return Step::Retry;
        };
        if meta.restoring.is_some() {
            // A backup is going in: no key until it is complete, and above
            // all no fresh root key.
            self.keys.set(None, KeyStatus::Uninitialized);
            return Step::Settled;
        }
        let Some(record) = meta.root_key.clone() else {
            self.keys.set(None, KeyStatus::Uninitialized);
            if self.is_settled_leader().await {
                return match self.initialize().await {
                    Ok(()) => Step::Settled,
                    Err(error) => {
                        tracing::warn!(%error, "cannot initialize the root key yet");
                        Step::Retry
                    }
                };
            }
            return Step::Settled;
        };
        if !self.keys.holds(&record, meta.keyring_version)
            && !self.unlock(&record, meta.keyring_version).await
        {
            return Step::Retry;
        }
        if self.is_leader() {
            self.leader_duties(&record, &meta).await;
        }
        Step::Settled
    }

    /// Gets the committed key: from the key we already hold (when only the
    /// keyring changed), or from the keepers.
    async fn unlock(&self, record: &RootKeyRecord, keyring_version: u64) -> bool {
        let root_key_id = record.root_key_id;
        let key_check = KeyCheck::from_bytes(record.key_check);
        let held = self
            .keys
            .unlocked()
            .filter(|unlocked| {
                unlocked.root_key_id == root_key_id && unlocked.key_check == key_check
            })
            .map(|unlocked| unlocked.root_key().clone());
        let root_key = match held {
            Some(root_key) => root_key,
            None => {
                self.keys.set(
                    None,
                    KeyStatus::Locked {
                        root_key_id: record.root_key_id.0,
                    },
                );
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
                    Ok(root_key) => root_key,
                    Err(error) => {
                        // Never use a key that does not match the committed check.
                        tracing::warn!(%root_key_id, %error, "shares from keepers did not rebuild the committed key");
                        return false;
                    }
                }
            }
        };
        match Unlocked::new(root_key, record, keyring_version) {
            Ok(unlocked) => {
                tracing::info!(%root_key_id, %key_check, "root key in hand; serving");
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

    async fn leader_duties(&self, record: &RootKeyRecord, meta: &ClusterMeta) {
        let Some(unlocked) = self.keys.unlocked() else {
            return;
        };
        let root_key_id = record.root_key_id;
        let mut lifecycle = self.lifecycle.lock().await;
        let due = lifecycle.last_push.is_none_or(|(pushed_id, at)| {
            pushed_id != root_key_id || at.elapsed() >= self.push_interval
        });
        if due {
            let acknowledged = self.push_committed(&unlocked).await;
            lifecycle.last_push = Some((root_key_id, Instant::now()));
            if acknowledged < self.keepers.len() {
                tracing::warn!(%root_key_id, acknowledged, keepers = self.keepers.len(), "not every keeper holds its share");
            }
        }
        drop(lifecycle);
        let active = unlocked.active_data_key();
        let count = meta
            .encryptions
            .get(&DataKeyId(active))
            .copied()
            .unwrap_or(0);
        if count >= spike_sdk::crypto::keyring::ENCRYPTIONS_ROTATE_AT {
            tracing::info!(data_key = active, count, "data key due for rotation");
            if let Err(error) = self.rotate_data_key().await {
                tracing::warn!(%error, "automatic data-key rotation failed");
            }
        }
    }

    async fn push_committed(&self, unlocked: &Unlocked) -> usize {
        match split(unlocked.root_key(), unlocked.params) {
            Ok(shares) => {
                self.keepers
                    .push(unlocked.root_key_id, unlocked.key_check, &shares, true)
                    .await
            }
            Err(error) => {
                tracing::error!(%error, "cannot split the root key");
                0
            }
        }
    }

    /// Proposes a fresh key after at least t keepers hold its shares.
    async fn propose_key(
        &self,
        root_key: &RootKey,
        root_key_id: RootKeyId,
        params: ShamirParams,
        wrapped_keyring: Vec<u8>,
        command: impl FnOnce(RootKeyRecord) -> Command,
    ) -> Result<(RootKeyRecord, Response), KeyError> {
        let key_check = KeyCheck::of(root_key);
        let shares = split(root_key, params)?;
        let acknowledged = self
            .keepers
            .push(root_key_id, key_check, &shares, false)
            .await;
        let needed = usize::from(params.threshold());
        if acknowledged < needed {
            return Err(KeyError::KeepersUnavailable {
                acknowledged,
                needed,
            });
        }
        let record = RootKeyRecord {
            root_key_id,
            key_check: *key_check.as_bytes(),
            wrapped_keyring,
            shares: params.shares(),
            threshold: params.threshold(),
        };
        let response = self.propose(command(record.clone())).await?;
        Ok((record, response))
    }

    async fn propose(&self, command: Command) -> Result<Response, KeyError> {
        let request = Request {
            command,
            session: None,
            time_ns: 0,
        };
        leader_write(&self.raft, request)
            .await
            .map_err(|error| match error {
                ForwardError::NotLeader { .. } => KeyError::NotLeader,
                ForwardError::NotReady => KeyError::NotReady,
                ForwardError::Unavailable(reason) | ForwardError::Invalid(reason) => {
                    KeyError::Proposal(reason)
                }
            })
    }

    /// Holds `root_key` as the committed key and pushes its shares; returns
    /// how many keepers took them.
    async fn adopt(&self, root_key: RootKey, record: &RootKeyRecord) -> Result<usize, KeyError> {
        let version = self.meta().map_or(0, |meta| meta.keyring_version);
        let unlocked = Arc::new(Unlocked::new(root_key, record, version)?);
        self.keys.set(
            Some(unlocked.clone()),
            KeyStatus::Ready {
                root_key_id: record.root_key_id.0,
            },
        );
        let acknowledged = self.push_committed(&unlocked).await;
        self.lifecycle.lock().await.last_push = Some((unlocked.root_key_id, Instant::now()));
        Ok(acknowledged)
    }

    async fn initialize(&self) -> Result<(), KeyError> {
        let guard = self.lifecycle.lock().await;
        let root_key = RootKey::generate()?;
        // Keepers that outlived an earlier cluster may hold committed ids;
        // start above them so they take the new key.
        let root_key_id = self.next_root_key_id(0).await;
        let wrapped = Keyring::generate()?.wrap(&root_key, root_key_id)?;
        let (record, response) = self
            .propose_key(
                &root_key,
                root_key_id,
                self.params,
                wrapped.as_bytes().to_vec(),
                |record| Command::Keys(KeyCommand::Initialize(record)),
            )
            .await?;
        drop(guard);
        match response {
            Response::Done => {
                tracing::info!(%root_key_id, key_check = %KeyCheck::of(&root_key), "cluster initialized with a new root key");
                self.adopt(root_key, &record).await.map(|_| ())
            }
            // Another leader got there first: its key is the cluster's.
            Response::Refused(Refusal::AlreadyInitialized) => Ok(()),
            Response::Refused(refusal) => Err(KeyError::Proposal(refusal.to_string())),
            Response::Written(_) | Response::PolicyStored(_) => {
                Err(KeyError::Proposal("unexpected response".to_owned()))
            }
        }
    }

    /// The committed record, the keyring version, and the key in hand, but
    /// only if the key in hand has exactly that keyring (never act on a
    /// stale one: a change built from it would lose data keys).
    fn current_record(&self) -> Result<(RootKeyRecord, u64, Arc<Unlocked>), KeyError> {
        let meta = self.meta().ok_or(KeyError::NotReady)?;
        let record = meta.root_key.clone().ok_or(KeyError::Uninitialized)?;
        if !self.keys.holds(&record, meta.keyring_version) {
            return Err(KeyError::NotReady);
        }
        let unlocked = self.keys.unlocked().ok_or(KeyError::NotReady)?;
        Ok((record, meta.keyring_version, unlocked))
    }

    /// An id above the current one and above every id the keepers hold.
    async fn next_root_key_id(&self, current: u64) -> RootKeyId {
        let held = self
            .keepers
            .committed_ids()
            .await
            .into_iter()
            .max()
            .unwrap_or(0);
        RootKeyId(current.max(held) + 1)
    }

    /// Replaces the root key (n and t may change). Leader only.
    pub async fn rekey(&self, params: ShamirParams) -> Result<u64, KeyError> {
        if !self.is_settled_leader().await {
            return Err(KeyError::NotLeader);
        }
        let guard = self.lifecycle.lock().await;
        let (record, keyring_version, unlocked) = self.current_record()?;
        let root_key = RootKey::generate()?;
        let root_key_id = self.next_root_key_id(record.root_key_id.0).await;
        let wrapped = unlocked.keyring_wrapped_under(&root_key, root_key_id)?;
        let (new_record, response) = self
            .propose_key(&root_key, root_key_id, params, wrapped, |record| {
                Command::Keys(KeyCommand::Rekey {
                    record,
                    keyring_version,
                })
            })
            .await?;
        drop(guard);
        match response {
            Response::Done => {
                tracing::info!(%root_key_id, shares = params.shares(), threshold = params.threshold(), "root key replaced");
                self.adopt(root_key, &new_record).await?;
                Ok(root_key_id.0)
            }
            Response::Refused(refusal) => Err(KeyError::Proposal(refusal.to_string())),
            Response::Written(_) | Response::PolicyStored(_) => {
                Err(KeyError::Proposal("unexpected response".to_owned()))
            }
        }
    }

    /// Adds a new data key for new writes; old data stays readable. Leader only.
    pub async fn rotate_data_key(&self) -> Result<u32, KeyError> {
        if !self.is_settled_leader().await {
            return Err(KeyError::NotLeader);
        }
        let _guard = self.lifecycle.lock().await;
        let (record, keyring_version, unlocked) = self.current_record()?;
        let wrapped_keyring = unlocked.rotated_keyring()?;
        let active = unlocked.active_data_key() + 1;
        match self
            .propose(Command::Keys(KeyCommand::ReplaceKeyring {
                root_key_id: record.root_key_id,
                wrapped_keyring,
                keyring_version,
            }))
            .await?
        {
            Response::Done => {
                tracing::info!(data_key = active, "data key rotated");
                Ok(active)
            }
            Response::Refused(refusal) => Err(KeyError::Proposal(refusal.to_string())),
            Response::Written(_) | Response::PolicyStored(_) => {
                Err(KeyError::Proposal("unexpected response".to_owned()))
            }
        }
    }

    /// The shares of the current root key, for `operator recover`.
    pub fn recovery_shares(&self) -> Result<Vec<KeyShare>, KeyError> {
        let (_, _, unlocked) = self.current_record()?;
        Ok(split(unlocked.root_key(), unlocked.params)?)
    }

    /// Takes one restore shard. Leader only; progress lives in this
    /// leader's memory for this term.
    pub async fn restore(&self, shard: KeyShare) -> Result<RestoreStatus, KeyError> {
        if !self.is_settled_leader().await {
            return Err(KeyError::NotLeader);
        }
        let record = self
            .meta()
            .and_then(|meta| meta.root_key)
            .ok_or(KeyError::Uninitialized)?;
        let threshold = usize::from(record.threshold);
        if self.current_record().is_ok() {
            return Ok(RestoreStatus {
                collected: threshold,
                remaining: 0,
                restored: true,
                progress_reset: false,
            });
        }
        let mut lifecycle = self.lifecycle.lock().await;
        let progress_reset = lifecycle.restore.add(self.current_term(), shard);
        if progress_reset {
            tracing::warn!("restore progress from an earlier leadership term was dropped");
        }
        let collected = lifecycle.restore.collected();
        if collected < threshold {
            return Ok(RestoreStatus {
                collected,
                remaining: threshold - collected,
                restored: false,
                progress_reset,
            });
        }
        let key_check = KeyCheck::from_bytes(record.key_check);
        let rebuilt = recover(&lifecycle.restore.shards(), &key_check);
        lifecycle.restore.clear();
        drop(lifecycle);
        let root_key = rebuilt.map_err(|_| KeyError::WrongShards)?;
        tracing::info!(
            root_key_id = record.root_key_id.0,
            "root key restored from operator shards"
        );
        let acknowledged = self.adopt(root_key, &record).await?;
        if acknowledged < threshold {
            // The keepers hold another key under this id (a backup from
            // another cluster was restored): move to a fresh generation so
            // every replica can fetch the key from them.
            tracing::warn!(
                acknowledged,
                "keepers refused the restored key's shares; rekeying"
            );
            self.rekey(ShamirParams::new(record.shares, record.threshold)?)
                .await?;
        }
        Ok(RestoreStatus {
            collected,
            remaining: 0,
            restored: true,
            progress_reset,
        })
    }
}
