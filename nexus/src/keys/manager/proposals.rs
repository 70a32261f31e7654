//! The changes a leader proposes to the cluster's root key and keyring:
//! the first key, a new key (rekey, on operator request or after a
//! restore), a new data key, and a key restored from operator shards. A
//! new key is proposed only after at least t keepers hold its shares, and
//! operator actions run only on a settled leader.
//!
//! Each change is audited like a request: none starts while the audit log
//! takes no writes, and each committed change is recorded (durably) before
//! it is reported done.

use std::sync::Arc;

use spike_sdk::audit::{KeyAction, KeyEvent, KeyTrigger};
use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::shamir::{recover, split};
use spike_sdk::crypto::{KeyCheck, KeyShare, Keyring, RootKey, ShamirParams};
use spike_sdk::keeper_api::ShareKind;
use tokio::time::Instant;

use super::{KeyError, KeyManager, LEADERSHIP_CHECK_TIMEOUT, RestoreStatus};
use crate::keys::lifecycle::Trigger;
use crate::keys::{KeyStatus, Unlocked};
use crate::raft::LeaderError;
use crate::state::command::{Command, KeyCommand, Refusal, Request, Response, RootKeyRecord};

impl KeyManager {
    /// No key change starts while the audit log takes no writes.
    fn audit_ready(&self) -> Result<(), KeyError> {
        if self.audit.is_healthy() {
            Ok(())
        } else {
            Err(KeyError::Audit { committed: false })
        }
    }

    /// Records a committed change; it is done once the record is durable.
    async fn audited(
        &self,
        action: KeyAction,
        root_key_id: RootKeyId,
        data_key: Option<u32>,
        trigger: Option<Trigger>,
    ) -> Result<(), KeyError> {
        let event = KeyEvent {
            action,
            root_key_id: root_key_id.0,
            data_key,
            trigger: trigger.map(|trigger| match trigger {
                Trigger::Operator => KeyTrigger::Operator,
                Trigger::Operations => KeyTrigger::Operations,
                Trigger::Age => KeyTrigger::Age,
            }),
        };
        self.audit.record_key(event).await.map_err(|_| {
            tracing::error!(?action, %root_key_id, "key change made, but its audit record is not durable yet");
            KeyError::Audit { committed: true }
        })
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
        let record = RootKeyRecord {
            root_key_id,
            key_check: *key_check.as_bytes(),
            wrapped_keyring,
            shares: params.shares(),
            threshold: params.threshold(),
        };
        // PLANTED BUG shares-pushed-after-commit: commit, then push, and
        // whatever the keepers took is enough.
        if spike_sdk::planted!(SharesPushedAfterCommit) {
            let response = self.propose(command(record.clone())).await?;
            self.keepers
                .push(root_key_id, key_check, &shares, ShareKind::Pending)
                .await;
            return Ok((record, response));
        }
        let acknowledged = self
            .keepers
            .push(root_key_id, key_check, &shares, ShareKind::Pending)
            .await;
        let needed = usize::from(params.threshold());
        if acknowledged < needed {
            return Err(KeyError::KeepersUnavailable {
                acknowledged,
                needed,
            });
        }
        let response = self.propose(command(record.clone())).await?;
        Ok((record, response))
    }

    pub(super) async fn propose(&self, command: Command) -> Result<Response, KeyError> {
        let request = Request {
            command,
            session: None,
            time_ns: 0,
        };
        self.leadership
            .write(request)
            .await
            .map_err(|error| match error {
                LeaderError::NotLeader { .. } => KeyError::NotLeader,
                LeaderError::OutcomeUnknown(reason) => KeyError::Proposal(reason),
                refused @ LeaderError::FormatNotYet { .. } => {
                    KeyError::Proposal(refused.to_string())
                }
            })
    }

    /// Holds `root_key` as the committed key. Called with the lifecycle
    /// lock held, right after the commit: the lifecycle must never observe
    /// the new key committed but not in hand, or it would clear the key
    /// and fetch it from keepers (and if they all restart meanwhile, no
    /// replica would hold the key to push again: regression caught by the
    /// Jepsen run rootkey under keepers-kill).
    fn install(
        &self,
        root_key: RootKey,
        record: &RootKeyRecord,
    ) -> Result<Arc<Unlocked>, KeyError> {
        let version = self.meta().map_or(0, |meta| meta.keyring_version);
        let unlocked = Arc::new(Unlocked::new(root_key, record, version)?);
        self.keys.set(
            Some(unlocked.clone()),
            KeyStatus::Ready {
                root_key_id: record.root_key_id.0,
            },
        );
        Ok(unlocked)
    }

    /// Pushes the shares of the key just installed; returns how many
    /// keepers took them.
    async fn push_installed(&self, unlocked: &Unlocked) -> usize {
        let acknowledged = self.push_committed(unlocked).await;
        self.lifecycle.lock().await.last_push = Some((unlocked.root_key_id, Instant::now()));
        acknowledged
    }

    pub(super) async fn initialize(&self) -> Result<(), KeyError> {
        self.audit_ready()?;
        let guard = self.lifecycle.lock().await;
        let root_key = RootKey::generate()?;
        // Keepers that outlived an earlier cluster may hold committed ids;
        // start above them so they take the new key.
        let root_key_id = self.next_root_key_id(0).await?;
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
        match response {
            Response::Done => {
                tracing::info!(%root_key_id, key_check = %KeyCheck::of(&root_key), "cluster initialized with a new root key");
                let unlocked = self.install(root_key, &record)?;
                drop(guard);
                self.push_installed(&unlocked).await;
                self.audited(KeyAction::Initialize, root_key_id, None, None)
                    .await
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
    pub(super) fn current_record(&self) -> Result<(RootKeyRecord, u64, Arc<Unlocked>), KeyError> {
        let meta = self.meta().ok_or(KeyError::NotReady)?;
        let record = meta.root_key.clone().ok_or(KeyError::Uninitialized)?;
        if !self.keys.holds(&record, meta.keyring_version) {
            return Err(KeyError::NotReady);
        }
        let unlocked = self.keys.unlocked().ok_or(KeyError::NotReady)?;
        Ok((record, meta.keyring_version, unlocked))
    }

    /// An id above the current one and above every plausible id the
    /// keepers hold.
    async fn next_root_key_id(&self, current: u64) -> Result<RootKeyId, KeyError> {
        next_root_key_id(current, &self.keepers.committed_ids().await)
    }

    /// Replaces the root key (n and t may change) for an operator. Leader
    /// only.
    pub async fn rekey(&self, params: ShamirParams) -> Result<u64, KeyError> {
        self.rekey_for(params, Trigger::Operator, None).await
    }

    /// Fails unless the committed keyring is still `due` (when given): a
    /// scheduled change is built only from the state it was decided on,
    /// so one due point makes at most one change, whoever leads.
    fn still_due(due: Option<u64>, keyring_version: u64) -> Result<(), KeyError> {
        match due {
            Some(due) if due != keyring_version => Err(KeyError::Proposal(format!(
                "the keyring changed (version {keyring_version}) since the change was due \
                 (version {due})"
            ))),
            _ => Ok(()),
        }
    }

    /// Replaces the root key (n and t may change), for `trigger`; `due`:
    /// the keyring version a scheduled rekey was decided on. Leader only.
    pub(super) async fn rekey_for(
        &self,
        params: ShamirParams,
        trigger: Trigger,
        due: Option<u64>,
    ) -> Result<u64, KeyError> {
        check_params(params, self.keepers.len(), self.allow_insecure_threshold)?;
        if !self
            .leadership
            .is_settled_leader(LEADERSHIP_CHECK_TIMEOUT)
            .await
        {
            return Err(KeyError::NotLeader);
        }
        self.audit_ready()?;
        let guard = self.lifecycle.lock().await;
        let (record, keyring_version, unlocked) = self.current_record()?;
        Self::still_due(due, keyring_version)?;
        let root_key = RootKey::generate()?;
        let root_key_id = self.next_root_key_id(record.root_key_id.0).await?;
        let wrapped = unlocked.keyring_wrapped_under(&root_key, root_key_id)?;
        let (new_record, response) = self
            .propose_key(&root_key, root_key_id, params, wrapped, |record| {
                Command::Keys(KeyCommand::Rekey {
                    record,
                    keyring_version,
                })
            })
            .await?;
        match response {
            Response::Done => {
                let unlocked = self.install(root_key, &new_record)?;
                drop(guard);
                tracing::info!(%root_key_id, shares = params.shares(), threshold = params.threshold(), ?trigger, "root key replaced");
                self.metrics.rekeyed(trigger);
                self.push_installed(&unlocked).await;
                self.audited(KeyAction::Rekey, root_key_id, None, Some(trigger))
                    .await?;
                Ok(root_key_id.0)
            }
            Response::Refused(refusal) => Err(KeyError::Proposal(refusal.to_string())),
            Response::Written(_) | Response::PolicyStored(_) => {
                Err(KeyError::Proposal("unexpected response".to_owned()))
            }
        }
    }

    /// Adds a new data key for new writes, for an operator; old data stays
    /// readable. Leader only.
    pub async fn rotate_data_key(&self) -> Result<u32, KeyError> {
        self.rotate_data_key_for(Trigger::Operator, None).await
    }

    /// Adds a new data key for `trigger`; `due`: the keyring version a
    /// scheduled rotation was decided on. Leader only.
    pub(super) async fn rotate_data_key_for(
        &self,
        trigger: Trigger,
        due: Option<u64>,
    ) -> Result<u32, KeyError> {
        if !self
            .leadership
            .is_settled_leader(LEADERSHIP_CHECK_TIMEOUT)
            .await
        {
            return Err(KeyError::NotLeader);
        }
        self.audit_ready()?;
        let _guard = self.lifecycle.lock().await;
        let (record, keyring_version, unlocked) = self.current_record()?;
        Self::still_due(due, keyring_version)?;
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
                tracing::info!(data_key = active, ?trigger, "data key rotated");
                self.metrics.rotated(trigger);
                self.audited(
                    KeyAction::RotateDataKey,
                    record.root_key_id,
                    Some(active),
                    Some(trigger),
                )
                .await?;
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
        if !self
            .leadership
            .is_settled_leader(LEADERSHIP_CHECK_TIMEOUT)
            .await
        {
            return Err(KeyError::NotLeader);
        }
        self.audit_ready()?;
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
        let progress_reset = lifecycle.restore.add(self.leadership.term(), shard);
        if progress_reset {
            tracing::warn!("restore progress from an earlier leadership term was dropped");
        }
        let collected = lifecycle.restore.collected();
        // PLANTED BUG restore-short-of-threshold: one shard fewer will do.
        let enough = if spike_sdk::planted!(RestoreShortOfThreshold) {
            threshold.saturating_sub(1)
        } else {
            threshold
        };
        if collected < enough {
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
        let root_key = rebuilt.map_err(|_| KeyError::WrongShards)?;
        let unlocked = self.install(root_key, &record)?;
        drop(lifecycle);
        tracing::info!(
            root_key_id = record.root_key_id.0,
            "root key restored from operator shards"
        );
        let acknowledged = self.push_installed(&unlocked).await;
        self.audited(KeyAction::Restore, record.root_key_id, None, None)
            .await?;
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

/// How far above the current root key id a keeper-reported id may be and
/// still count. Every key takes the next id, so a real cluster never gets
/// near this; a keeper that reports more is lying or broken, and following
/// it could push the id to `u64::MAX`, after which no key could be made.
pub const KEEPER_ID_AHEAD_MAX: u64 = 1 << 32;

/// The id of the next root key: above `current` and above every id in
/// `held` (keepers refuse ids below one they hold), ignoring ids more than
/// [`KEEPER_ID_AHEAD_MAX`] ahead. A keeper ignored that way refuses the new
/// key's share; the others still take theirs.
fn next_root_key_id(current: u64, held: &[u64]) -> Result<RootKeyId, KeyError> {
    let ceiling = current.saturating_add(KEEPER_ID_AHEAD_MAX);
    let mut highest = current;
    for &id in held {
        if id > ceiling {
            tracing::warn!(
                reported = id,
                current,
                "a keeper reports an implausible root key id; ignored"
            );
        } else {
            highest = highest.max(id);
        }
    }
    highest
        .checked_add(1)
        .map(RootKeyId)
        .ok_or(KeyError::IdsExhausted)
}

/// Whether a rekey may use `params` with `keepers` keepers: one share per
/// keeper (as at start-up; fewer would leave keepers serving an older key's
/// share, more would make shares no keeper holds), and t = 1 only when
/// allowed for development.
fn check_params(
    params: ShamirParams,
    keepers: usize,
    allow_insecure_threshold: bool,
) -> Result<(), KeyError> {
    if usize::from(params.shares()) != keepers {
        return Err(KeyError::Parameters(format!(
            "{} shares for {keepers} keepers; n must equal the number of keepers",
            params.shares()
        )));
    }
    if params.every_share_is_the_key() && !allow_insecure_threshold {
        return Err(KeyError::Parameters(
            "threshold 1 gives every keeper the root key itself; only a replica started \
             with --allow-insecure-threshold accepts it"
                .to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keeper_reporting_a_huge_root_key_id_cannot_exhaust_ids() {
        // Regression (review #8): `current.max(held) + 1` overflowed on a
        // keeper reporting u64::MAX (a panic in debug, id 0 in release).
        assert_eq!(next_root_key_id(0, &[u64::MAX]).expect("an id").0, 1);
        assert_eq!(
            next_root_key_id(4, &[2, 7, u64::MAX - 1]).expect("an id").0,
            8
        );
        assert_eq!(
            next_root_key_id(4, &[4 + KEEPER_ID_AHEAD_MAX])
                .expect("an id")
                .0,
            5 + KEEPER_ID_AHEAD_MAX
        );
        assert!(matches!(
            next_root_key_id(u64::MAX, &[]),
            Err(KeyError::IdsExhausted)
        ));
    }

    #[test]
    fn a_rekey_takes_one_share_per_keeper_and_t_above_one_unless_allowed() {
        let params = |n, t| ShamirParams::new(n, t).expect("valid");
        assert!(check_params(params(3, 2), 3, false).is_ok());
        assert!(matches!(
            check_params(params(5, 2), 3, false),
            Err(KeyError::Parameters(_))
        ));
        assert!(matches!(
            check_params(params(2, 2), 3, false),
            Err(KeyError::Parameters(_))
        ));
        assert!(matches!(
            check_params(params(3, 1), 3, false),
            Err(KeyError::Parameters(_))
        ));
        assert!(check_params(params(3, 1), 3, true).is_ok());
    }

    #[test]
    fn a_scheduled_change_is_built_only_from_the_keyring_it_was_decided_on() {
        assert!(KeyManager::still_due(None, 7).is_ok(), "operator changes");
        assert!(KeyManager::still_due(Some(7), 7).is_ok());
        assert!(matches!(
            KeyManager::still_due(Some(6), 7),
            Err(KeyError::Proposal(_))
        ));
    }
}
