//! The shares a keeper holds, in memory only and bounded: the shares of the
//! two newest committed root keys (the current one and the previous one,
//! so a replica that lags behind a rekey can still recover), and a few
//! pending shares of keys a leader is proposing.
//!
//! Pending shares never displace committed ones, so a failed or competing
//! proposal cannot make the committed key unrecoverable.

use std::collections::{BTreeMap, VecDeque};

use spike_sdk::crypto::key_check::RootKeyId;
use spike_sdk::crypto::{KeyCheck, KeyShare};
use spike_sdk::keeper_api::ShareKind;

/// Committed root keys whose shares a keeper keeps.
pub const COMMITTED_KEYS_MAX: usize = 2;
/// Pending (proposed, not yet committed) shares a keeper keeps; the oldest
/// is dropped first.
pub const PENDING_KEYS_MAX: usize = 4;

/// Why a share was not stored. Nothing held changes in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The keeper holds a different share for this key, or a committed
    /// key of this id with another key check.
    #[error("this keeper holds a different share or key for root key {0}")]
    Conflict(RootKeyId),
    /// The key is older than what the keeper must keep.
    #[error("root key {0} is older than the committed root keys this keeper holds")]
    Stale(RootKeyId),
}

/// One held share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The key's id.
    pub root_key_id: RootKeyId,
    /// The key's check.
    pub key_check: KeyCheck,
    /// The share.
    pub share: KeyShare,
    /// Committed or pending.
    pub kind: ShareKind,
}

/// Shares by root key.
#[derive(Debug, Default)]
pub struct ShareStore {
    committed: BTreeMap<RootKeyId, (KeyCheck, KeyShare)>,
    pending: VecDeque<(RootKeyId, KeyCheck, KeyShare)>,
}

impl ShareStore {
    /// Stores a share. Returns what is held afterwards.
    pub fn store(
        &mut self,
        root_key_id: RootKeyId,
        key_check: KeyCheck,
        share: KeyShare,
        kind: ShareKind,
    ) -> Result<Vec<Held>, StoreError> {
        if let Some((held_check, held_share)) = self.committed.get(&root_key_id) {
            // Shares are deterministic in (key, n, t): re-sending gives the
            // very same share, anything else is a conflict.
            return if *held_check == key_check && *held_share == share {
                Ok(self.held())
            } else {
                Err(StoreError::Conflict(root_key_id))
            };
        }
        let newest_committed = self.committed.keys().next_back().copied();
        if kind == ShareKind::Committed {
            if self.committed.len() >= COMMITTED_KEYS_MAX
                && self.committed.keys().all(|held| *held > root_key_id)
            {
                return Err(StoreError::Stale(root_key_id));
            }
            self.committed.insert(root_key_id, (key_check, share));
            while self.committed.len() > COMMITTED_KEYS_MAX {
                self.committed.pop_first();
            }
            let newest = self
                .committed
                .keys()
                .next_back()
                .copied()
                .unwrap_or(root_key_id);
            self.pending.retain(|(id, _, _)| *id > newest);
            return Ok(self.held());
        }
        if newest_committed.is_some_and(|newest| root_key_id <= newest) {
            return Err(StoreError::Stale(root_key_id));
        }
        if let Some((_, _, held_share)) = self
            .pending
            .iter()
            .find(|(id, check, _)| *id == root_key_id && *check == key_check)
        {
            return if *held_share == share {
                Ok(self.held())
            } else {
                Err(StoreError::Conflict(root_key_id))
            };
        }
        self.pending.push_back((root_key_id, key_check, share));
        while self.pending.len() > PENDING_KEYS_MAX {
            self.pending.pop_front();
        }
        Ok(self.held())
    }

    /// The share of the key named by id and check, or of the newest
    /// committed key when `key` is `None`.
    pub fn fetch(&self, key: Option<(RootKeyId, KeyCheck)>) -> Option<Held> {
        match key {
            None => self
                .committed
                .last_key_value()
                .map(|(id, (check, share))| Held {
                    root_key_id: *id,
                    key_check: *check,
                    share: share.clone(),
                    kind: ShareKind::Committed,
                }),
            Some((id, check)) => {
                if let Some((held_check, share)) = self.committed.get(&id) {
                    return (*held_check == check).then(|| Held {
                        root_key_id: id,
                        key_check: check,
                        share: share.clone(),
                        kind: ShareKind::Committed,
                    });
                }
                self.pending
                    .iter()
                    .find(|(pending_id, pending_check, _)| {
                        *pending_id == id && *pending_check == check
                    })
                    .map(|(_, _, share)| Held {
                        root_key_id: id,
                        key_check: check,
                        share: share.clone(),
                        kind: ShareKind::Pending,
                    })
            }
        }
    }

    /// Everything held, committed keys first, oldest first.
    pub fn held(&self) -> Vec<Held> {
        let committed = self.committed.iter().map(|(id, (check, share))| Held {
            root_key_id: *id,
            key_check: *check,
            share: share.clone(),
            kind: ShareKind::Committed,
        });
        let pending = self.pending.iter().map(|(id, check, share)| Held {
            root_key_id: *id,
            key_check: *check,
            share: share.clone(),
            kind: ShareKind::Pending,
        });
        committed.chain(pending).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::ShareKind::{Committed, Pending};
    use super::*;
    use spike_sdk::crypto::{SecretBytes, ShareIndex};

    fn share(fill: u8) -> KeyShare {
        KeyShare::new(
            ShareIndex::new(2).expect("non-zero"),
            SecretBytes::from_array(&mut [fill; 32]),
        )
    }

    fn check(fill: u8) -> KeyCheck {
        KeyCheck::from_bytes([fill; 32])
    }

    fn ids(held: &[Held]) -> Vec<(u64, ShareKind)> {
        held.iter().map(|h| (h.root_key_id.0, h.kind)).collect()
    }

    #[test]
    fn storing_the_same_share_twice_is_idempotent() {
        let mut store = ShareStore::default();
        let first = store
            .store(RootKeyId(1), check(1), share(7), Committed)
            .expect("store");
        let again = store
            .store(RootKeyId(1), check(1), share(7), Committed)
            .expect("again");
        assert_eq!(ids(&first), ids(&again));
    }

    #[test]
    fn a_conflicting_share_is_refused_and_the_held_one_kept() {
        let mut store = ShareStore::default();
        store
            .store(RootKeyId(1), check(1), share(7), Committed)
            .expect("store");
        assert_eq!(
            store.store(RootKeyId(1), check(1), share(8), Committed),
            Err(StoreError::Conflict(RootKeyId(1)))
        );
        assert_eq!(
            store.store(RootKeyId(1), check(2), share(7), Pending),
            Err(StoreError::Conflict(RootKeyId(1)))
        );
        let held = store
            .fetch(Some((RootKeyId(1), check(1))))
            .expect("still held");
        assert_eq!(held.share, share(7));
    }

    #[test]
    fn competing_proposals_never_displace_the_committed_key() {
        let mut store = ShareStore::default();
        store
            .store(RootKeyId(1), check(1), share(1), Committed)
            .expect("committed");
        for proposal in 0..10u8 {
            store
                .store(
                    RootKeyId(2),
                    check(100 + proposal),
                    share(proposal),
                    Pending,
                )
                .expect("pending");
        }
        assert!(store.fetch(Some((RootKeyId(1), check(1)))).is_some());
        assert_eq!(
            store.held().iter().filter(|h| h.kind == Pending).count(),
            PENDING_KEYS_MAX
        );
        assert_eq!(
            store.store(RootKeyId(1), check(9), share(9), Pending),
            Err(StoreError::Conflict(RootKeyId(1)))
        );
    }

    #[test]
    fn committing_a_proposal_clears_older_pending_shares_and_keeps_two_committed() {
        let mut store = ShareStore::default();
        store
            .store(RootKeyId(1), check(1), share(1), Committed)
            .expect("1");
        store
            .store(RootKeyId(2), check(2), share(2), Pending)
            .expect("2 pending");
        store
            .store(RootKeyId(2), check(22), share(22), Pending)
            .expect("2 competing");
        store
            .store(RootKeyId(2), check(2), share(2), Committed)
            .expect("2 committed");
        assert_eq!(ids(&store.held()), vec![(1, Committed), (2, Committed)]);
        store
            .store(RootKeyId(3), check(3), share(3), Committed)
            .expect("3 committed");
        assert_eq!(ids(&store.held()), vec![(2, Committed), (3, Committed)]);
        assert_eq!(
            store.store(RootKeyId(1), check(1), share(1), Committed),
            Err(StoreError::Stale(RootKeyId(1)))
        );
        assert_eq!(
            store.store(RootKeyId(2), check(5), share(5), Pending),
            Err(StoreError::Conflict(RootKeyId(2)))
        );
        assert_eq!(store.fetch(None).map(|h| h.root_key_id), Some(RootKeyId(3)));
    }

    #[test]
    fn a_pending_share_is_fetched_only_by_its_exact_key() {
        let mut store = ShareStore::default();
        store
            .store(RootKeyId(1), check(1), share(1), Pending)
            .expect("pending");
        assert!(store.fetch(None).is_none(), "nothing committed yet");
        assert!(store.fetch(Some((RootKeyId(1), check(2)))).is_none());
        let held = store
            .fetch(Some((RootKeyId(1), check(1))))
            .expect("pending held");
        assert_eq!(held.kind, Pending);
    }
}
