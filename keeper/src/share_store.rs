//! The shares a keeper holds: at most two root keys' worth (the current one
//! and the previous one, so a rekey in progress never leaves the cluster
//! without a recoverable key), in memory only.

use std::collections::BTreeMap;

use spike_sdk::crypto::KeyShare;
use spike_sdk::crypto::key_check::RootKeyId;

/// Root keys whose shares a keeper keeps at once.
pub const ROOT_KEYS_HELD_MAX: usize = 2;

/// Why a share was not stored. Nothing held changes in any of these cases.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The keeper already holds a different share for this root key.
    #[error("this keeper already holds a different share for root key {0}")]
    Conflict(RootKeyId),
    /// The root key is older than every key held while the store is full.
    #[error("root key {0} is older than both root keys this keeper holds")]
    Stale(RootKeyId),
}

/// Shares by root key id.
#[derive(Debug, Default)]
pub struct ShareStore {
    shares: BTreeMap<RootKeyId, KeyShare>,
}

impl ShareStore {
    /// Stores `share` for `root_key_id`; storing the same share again is a
    /// no-op. Returns the ids held afterwards.
    pub fn store(
        &mut self,
        root_key_id: RootKeyId,
        share: KeyShare,
    ) -> Result<Vec<RootKeyId>, StoreError> {
        if let Some(held) = self.shares.get(&root_key_id) {
            // Shares are deterministic in (key, n, t), so a replica re-sending
            // sends the identical share; anything else is a conflict.
            return if *held == share {
                Ok(self.held())
            } else {
                Err(StoreError::Conflict(root_key_id))
            };
        }
        let full = self.shares.len() >= ROOT_KEYS_HELD_MAX;
        if full && self.shares.keys().all(|held| *held > root_key_id) {
            return Err(StoreError::Stale(root_key_id));
        }
        self.shares.insert(root_key_id, share);
        while self.shares.len() > ROOT_KEYS_HELD_MAX {
            self.shares.pop_first();
        }
        Ok(self.held())
    }

    /// The share of `root_key_id`, or of the newest key when `None`.
    pub fn fetch(&self, root_key_id: Option<RootKeyId>) -> Option<(RootKeyId, &KeyShare)> {
        match root_key_id {
            Some(id) => self
                .shares
                .get_key_value(&id)
                .map(|(id, share)| (*id, share)),
            None => self.shares.last_key_value().map(|(id, share)| (*id, share)),
        }
    }

    /// The ids held, oldest first.
    pub fn held(&self) -> Vec<RootKeyId> {
        self.shares.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spike_sdk::crypto::{SecretBytes, ShareIndex};

    fn share(index: u8, fill: u8) -> KeyShare {
        KeyShare::new(
            ShareIndex::new(index).expect("non-zero"),
            SecretBytes::from_array(&mut [fill; 32]),
        )
    }

    #[test]
    fn storing_the_same_share_twice_is_idempotent() {
        let mut store = ShareStore::default();
        assert_eq!(
            store.store(RootKeyId(1), share(2, 7)),
            Ok(vec![RootKeyId(1)])
        );
        assert_eq!(
            store.store(RootKeyId(1), share(2, 7)),
            Ok(vec![RootKeyId(1)])
        );
    }

    #[test]
    fn a_conflicting_share_is_refused_and_the_held_one_kept() {
        let mut store = ShareStore::default();
        store.store(RootKeyId(1), share(2, 7)).expect("first");
        assert_eq!(
            store.store(RootKeyId(1), share(2, 8)),
            Err(StoreError::Conflict(RootKeyId(1)))
        );
        assert_eq!(
            store.store(RootKeyId(1), share(3, 7)),
            Err(StoreError::Conflict(RootKeyId(1)))
        );
        assert_eq!(store.fetch(None).map(|(_, s)| s.clone()), Some(share(2, 7)));
    }

    #[test]
    fn keeps_the_current_and_previous_key_only() {
        let mut store = ShareStore::default();
        store.store(RootKeyId(1), share(1, 1)).expect("1");
        store.store(RootKeyId(2), share(1, 2)).expect("2");
        assert_eq!(
            store.store(RootKeyId(3), share(1, 3)),
            Ok(vec![RootKeyId(2), RootKeyId(3)])
        );
        assert!(store.fetch(Some(RootKeyId(1))).is_none());
        assert_eq!(store.fetch(None).map(|(id, _)| id), Some(RootKeyId(3)));
        assert_eq!(
            store.fetch(Some(RootKeyId(2))).map(|(id, _)| id),
            Some(RootKeyId(2))
        );
        assert_eq!(
            store.store(RootKeyId(1), share(1, 1)),
            Err(StoreError::Stale(RootKeyId(1)))
        );
        assert_eq!(store.held(), vec![RootKeyId(2), RootKeyId(3)]);
    }
}
