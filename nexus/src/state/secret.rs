//! One secret path and its versions, with SPIKE's version semantics.
//!
//! Values are opaque ciphertext here: the state machine never sees
//! plaintext. Every operation is a pure function of the record, the
//! command and the leader-assigned time in the command, so every replica
//! applies it identically.
//!
//! Invariants, asserted after every operation:
//! - `current_version` is the highest version that is neither deleted nor
//!   destroyed, or 0 when there is none;
//! - at most `max_versions` versions are kept, the highest ones;
//! - `oldest_version` is the lowest version kept (0 when none);
//! - version numbers are never reused (a new version is the highest ever
//!   seen plus one), so readers never see a version number go back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spike_sdk::api::SECRET_SIZE_MAX_BYTES;
use spike_sdk::crypto::aead;

/// Versions kept per secret unless a put says otherwise (SPIKE's default).
pub const MAX_VERSIONS_DEFAULT: u32 = 10;
/// The most versions a secret may keep.
pub const MAX_VERSIONS_LIMIT: u32 = 1000;
/// The highest version number, and the highest counter of any kind, a
/// record from outside (a backup) may carry: Go's `int`, SPIKE's version
/// type, holds it, and counting on from it cannot overflow a `u64`.
pub const COUNTER_MAX: u64 = i64::MAX as u64;
/// The largest ciphertext of one version a put can write: the largest
/// secret sealed (framing and tag around it).
pub const SEALED_VERSION_MAX_BYTES: usize =
    SECRET_SIZE_MAX_BYTES + aead::HEADER_LEN + aead::TAG_LEN;

/// Leader-assigned time, nanoseconds since the Unix epoch.
pub type TimeNs = u64;

/// One version of a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    /// The sealed values (empty once destroyed).
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// When the version was written.
    pub created_at: TimeNs,
    /// When it was deleted, if it is.
    pub deleted_at: Option<TimeNs>,
    /// Destroyed: the ciphertext is gone for good and it cannot be undeleted.
    pub destroyed: bool,
}

impl SecretVersion {
    fn is_live(&self) -> bool {
        self.deleted_at.is_none() && !self.destroyed
    }
}

/// A secret path: metadata and kept versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// Highest live version, 0 when none.
    pub current_version: u64,
    /// Lowest kept version, 0 when none.
    pub oldest_version: u64,
    /// Highest version ever written (never reused).
    pub highest_version: u64,
    /// When the path was first written.
    pub created_at: TimeNs,
    /// When anything about it last changed.
    pub updated_at: TimeNs,
    /// How many versions are kept.
    pub max_versions: u32,
    /// Kept versions by number.
    pub versions: BTreeMap<u64, SecretVersion>,
}

/// Why an operation on a secret did nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SecretError {
    /// No such path, or nothing matched (SPIKE's 404).
    #[error("not found")]
    NotFound,
    /// Check-and-set failed: the current version is not the expected one.
    #[error("check-and-set failed: current version is {current}, expected {expected}")]
    CasMismatch {
        /// The current version.
        current: u64,
        /// The version the caller expected.
        expected: u64,
    },
}

/// What a put produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The new version's number.
    pub version: u64,
}

impl SecretRecord {
    /// Writes a new version. `cas`: `Some(n)` writes only if the current
    /// version is `n` (`Some(0)`: only if there is no live version).
    pub fn put(
        existing: Option<Self>,
        ciphertext: Vec<u8>,
        cas: Option<u64>,
        max_versions: u32,
        now: TimeNs,
    ) -> Result<(Self, Written), SecretError> {
        let max_versions = max_versions.clamp(1, MAX_VERSIONS_LIMIT);
        let current = existing.as_ref().map_or(0, |record| record.current_version);
        if let Some(expected) = cas
            && expected != current
        {
            return Err(SecretError::CasMismatch { current, expected });
        }
        let mut record = existing.unwrap_or(Self {
            current_version: 0,
            oldest_version: 0,
            highest_version: 0,
            created_at: now,
            updated_at: now,
            max_versions,
            versions: BTreeMap::new(),
        });
        let version = record.highest_version + 1;
        record.versions.insert(
            version,
            SecretVersion {
                ciphertext,
                created_at: now,
                deleted_at: None,
                destroyed: false,
            },
        );
        record.highest_version = version;
        record.max_versions = max_versions;
        record.updated_at = now;
        record.prune();
        record.settle();
        Ok((record, Written { version }))
    }

    /// Marks versions deleted; an empty list or 0 means the current version.
    /// Versions that do not exist are ignored (SPIKE).
    pub fn delete(&mut self, versions: &[u64], now: TimeNs) {
        for version in self.resolve(versions) {
            if let Some(entry) = self.versions.get_mut(&version)
                && entry.deleted_at.is_none()
            {
                entry.deleted_at = Some(now);
            }
        }
        self.updated_at = now;
        self.settle();
    }

    /// Clears deletion marks; an empty list, or 0, means the current
    /// version or, with no current version, the highest deleted one (so
    /// SPIKE 0.8.0's `spike secret undelete PATH`, which sends `[0]`, brings
    /// back what `spike secret delete PATH` just deleted). Destroyed
    /// versions stay destroyed. Fails when nothing was undeleted.
    pub fn undelete(&mut self, versions: &[u64], now: TimeNs) -> Result<(), SecretError> {
        let current = if self.current_version == 0 {
            self.versions
                .iter()
                .rev()
                .find(|(_, entry)| entry.deleted_at.is_some() && !entry.destroyed)
                .map_or(0, |(version, _)| *version)
        } else {
            self.current_version
        };
        let targets: Vec<u64> = if versions.is_empty() {
            vec![current]
        } else {
            versions
                .iter()
                .map(|&version| if version == 0 { current } else { version })
                .collect()
        };
        let mut undeleted = false;
        for version in targets {
            if let Some(entry) = self.versions.get_mut(&version)
                && entry.deleted_at.is_some()
                && !entry.destroyed
            {
                entry.deleted_at = None;
                undeleted = true;
            }
        }
        if !undeleted {
            return Err(SecretError::NotFound);
        }
        self.updated_at = now;
        self.settle();
        Ok(())
    }

    /// Destroys versions: the ciphertext is dropped for good. An empty list
    /// or 0 means the current version. Fails when nothing was destroyed.
    pub fn destroy(&mut self, versions: &[u64], now: TimeNs) -> Result<(), SecretError> {
        let mut destroyed = false;
        for version in self.resolve(versions) {
            if let Some(entry) = self.versions.get_mut(&version)
                && !entry.destroyed
            {
                entry.destroyed = true;
                entry.ciphertext = Vec::new();
                destroyed = true;
            }
        }
        if !destroyed {
            return Err(SecretError::NotFound);
        }
        self.updated_at = now;
        self.settle();
        Ok(())
    }

    /// The ciphertext of `version` (0: current), if it is live.
    pub fn read(&self, version: u64) -> Result<(u64, &[u8]), SecretError> {
        let version = if version == 0 {
            self.current_version
        } else {
            version
        };
        match self.versions.get(&version) {
            Some(entry) if entry.is_live() => Ok((version, &entry.ciphertext)),
            _ => Err(SecretError::NotFound),
        }
    }

    /// Whether no version is live (SPIKE lists only paths with a current version).
    pub fn is_empty(&self) -> bool {
        self.current_version == 0
    }

    fn resolve(&self, versions: &[u64]) -> Vec<u64> {
        if versions.is_empty() {
            return vec![self.current_version];
        }
        versions
            .iter()
            .map(|&version| {
                if version == 0 {
                    self.current_version
                } else {
                    version
                }
            })
            .collect()
    }

    fn prune(&mut self) {
        while self.versions.len() > self.max_versions as usize {
            self.versions.pop_first();
        }
    }

    /// Whether the record keeps the invariants.
    pub fn is_consistent(&self) -> bool {
        self.inconsistency().is_none()
    }

    /// Why a record that did not come from these operations (one in an
    /// uploaded backup) cannot be stored, if it cannot: it must keep the
    /// invariants, so no later operation trips over it, and leave room
    /// for new versions, so the next put cannot overflow.
    pub fn check_restorable(&self) -> Result<(), &'static str> {
        if let Some(reason) = self.inconsistency() {
            return Err(reason);
        }
        if self.highest_version > COUNTER_MAX {
            return Err("its highest version is above 2^63 - 1");
        }
        if self
            .versions
            .values()
            .any(|entry| entry.ciphertext.len() > SEALED_VERSION_MAX_BYTES)
        {
            return Err("a version's ciphertext is larger than a put can write");
        }
        Ok(())
    }

    /// The first invariant the record breaks, if any.
    fn inconsistency(&self) -> Option<&'static str> {
        if !(1..=MAX_VERSIONS_LIMIT).contains(&self.max_versions) {
            Some("max_versions is not in 1..=1000")
        } else if self.versions.len() > self.max_versions as usize {
            Some("it keeps more versions than max_versions")
        } else if self.current_version != self.live_version() {
            Some("current_version is not its highest live version")
        } else if self.oldest_version != self.lowest_kept() {
            Some("oldest_version is not its lowest kept version")
        } else if !self
            .versions
            .keys()
            .all(|version| (1..=self.highest_version).contains(version))
        {
            Some("a version is 0 or above highest_version")
        } else if !self
            .versions
            .values()
            .all(|entry| !entry.destroyed || entry.ciphertext.is_empty())
        {
            Some("a destroyed version keeps its ciphertext")
        } else {
            None
        }
    }

    fn live_version(&self) -> u64 {
        self.versions
            .iter()
            .rev()
            .find(|(_, entry)| entry.is_live())
            .map_or(0, |(version, _)| *version)
    }

    fn lowest_kept(&self) -> u64 {
        self.versions.keys().next().copied().unwrap_or(0)
    }

    /// Recomputes the derived fields and checks the invariants.
    fn settle(&mut self) {
        self.current_version = self.live_version();
        self.oldest_version = self.lowest_kept();
        debug_assert!(self.is_consistent());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put(record: Option<SecretRecord>, value: &[u8]) -> SecretRecord {
        SecretRecord::put(record, value.to_vec(), None, MAX_VERSIONS_DEFAULT, 1)
            .expect("unconditional put")
            .0
    }

    /// Records written before ciphertext went through `serde_bytes` (a
    /// sequence of u8) must still decode: postcard encodes both alike.
    #[test]
    fn byte_fields_keep_the_sequence_encoding() {
        #[derive(Serialize)]
        struct AsSequence {
            ciphertext: Vec<u8>,
            created_at: TimeNs,
            deleted_at: Option<TimeNs>,
            destroyed: bool,
        }
        let bytes: Vec<u8> = (0..=255).collect();
        let old = postcard::to_stdvec(&AsSequence {
            ciphertext: bytes.clone(),
            created_at: 7,
            deleted_at: None,
            destroyed: false,
        })
        .expect("encode");
        let version = SecretVersion {
            ciphertext: bytes,
            created_at: 7,
            deleted_at: None,
            destroyed: false,
        };
        assert_eq!(postcard::to_stdvec(&version).expect("encode"), old);
        assert_eq!(
            postcard::from_bytes::<SecretVersion>(&old).expect("decode"),
            version
        );
    }

    #[test]
    fn puts_number_versions_from_one() {
        let record = put(None, b"a");
        assert_eq!((record.current_version, record.oldest_version), (1, 1));
        let record = put(Some(record), b"b");
        assert_eq!(record.current_version, 2);
        assert_eq!(record.read(0).expect("current"), (2, &b"b"[..]));
        assert_eq!(record.read(1).expect("old"), (1, &b"a"[..]));
    }

    #[test]
    fn beyond_max_versions_the_lowest_are_dropped() {
        let mut record = None;
        for i in 0..5u8 {
            record = Some(
                SecretRecord::put(record, vec![i], None, 3, 1)
                    .expect("put")
                    .0,
            );
        }
        let record = record.expect("written");
        assert_eq!(
            record.versions.keys().copied().collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(record.oldest_version, 3);
        assert_eq!(record.read(2), Err(SecretError::NotFound));
    }

    #[test]
    fn deleting_the_current_version_falls_back_and_undelete_restores_it() {
        let mut record = put(Some(put(Some(put(None, b"1")), b"2")), b"3");
        record.delete(&[], 5);
        assert_eq!(record.current_version, 2);
        assert_eq!(record.read(3), Err(SecretError::NotFound));
        record.delete(&[0], 6);
        assert_eq!(record.current_version, 1);
        record.undelete(&[3], 7).expect("undelete 3");
        assert_eq!(record.current_version, 3, "undelete may raise current");
        assert_eq!(record.undelete(&[3], 8), Err(SecretError::NotFound));
    }

    #[test]
    fn undelete_without_versions_and_no_current_picks_the_highest_deleted() {
        let mut record = put(Some(put(None, b"1")), b"2");
        record.delete(&[1, 2], 3);
        assert_eq!(record.current_version, 0);
        assert!(record.is_empty());
        record.undelete(&[], 4).expect("undelete highest");
        assert_eq!(record.current_version, 2);
        assert_eq!(record.read(1), Err(SecretError::NotFound));
    }

    /// Regression: SPIKE 0.8.0's CLI undeletes `[0]` by default; after its
    /// delete `[0]` left no current version, that found nothing (404).
    #[test]
    fn undelete_of_version_0_with_no_current_picks_the_highest_deleted() {
        let mut record = put(None, b"1");
        record.delete(&[0], 3);
        assert_eq!(record.current_version, 0);
        record.undelete(&[0], 4).expect("undelete 0");
        assert_eq!(record.current_version, 1);
    }

    #[test]
    fn a_deleted_version_number_is_never_reused() {
        let mut record = put(Some(put(None, b"1")), b"2");
        record.delete(&[2], 3);
        let record = put(Some(record), b"3");
        assert_eq!(record.current_version, 3);
        assert_eq!(record.versions.len(), 3);
    }

    #[test]
    fn destroyed_versions_lose_their_ciphertext_and_never_come_back() {
        let mut record = put(Some(put(None, b"1")), b"2");
        record.destroy(&[2], 3).expect("destroy");
        assert_eq!(record.current_version, 1);
        assert!(record.versions[&2].ciphertext.is_empty());
        assert_eq!(record.undelete(&[2], 4), Err(SecretError::NotFound));
        assert_eq!(record.read(2), Err(SecretError::NotFound));
        assert_eq!(record.destroy(&[2], 5), Err(SecretError::NotFound));
    }

    #[test]
    fn check_and_set_writes_only_over_the_expected_version() {
        let (record, written) =
            SecretRecord::put(None, b"a".to_vec(), Some(0), 10, 1).expect("cas 0 on a new path");
        assert_eq!(written.version, 1);
        assert_eq!(
            SecretRecord::put(Some(record.clone()), b"b".to_vec(), Some(0), 10, 2),
            Err(SecretError::CasMismatch {
                current: 1,
                expected: 0
            })
        );
        let (_, written) =
            SecretRecord::put(Some(record), b"b".to_vec(), Some(1), 10, 2).expect("cas 1");
        assert_eq!(written.version, 2);
    }

    #[derive(Debug, Clone)]
    enum Operation {
        Put,
        Delete(Vec<u64>),
        Undelete(Vec<u64>),
        Destroy(Vec<u64>),
    }

    fn operation() -> impl Strategy<Value = Operation> {
        let versions = proptest::collection::vec(0u64..12, 0..3);
        prop_oneof![
            3 => Just(Operation::Put),
            1 => versions.clone().prop_map(Operation::Delete),
            1 => versions.clone().prop_map(Operation::Undelete),
            1 => versions.prop_map(Operation::Destroy),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold_under_any_sequence(operations in proptest::collection::vec(operation(), 1..60), max_versions in 1u32..6) {
            let mut record: Option<SecretRecord> = None;
            let mut highest_seen = 0;
            let mut destroyed_ever = std::collections::BTreeSet::new();
            for (time, operation) in operations.into_iter().enumerate() {
                let now = time as u64;
                match (operation, record.as_mut()) {
                    (Operation::Put, _) => {
                        let (next, written) = SecretRecord::put(record.take(), vec![1], None, max_versions, now).expect("put");
                        prop_assert!(written.version > highest_seen, "version numbers only grow");
                        highest_seen = written.version;
                        record = Some(next);
                    }
                    (_, None) => {}
                    (Operation::Delete(versions), Some(r)) => r.delete(&versions, now),
                    (Operation::Undelete(versions), Some(r)) => { let _ = r.undelete(&versions, now); }
                    (Operation::Destroy(versions), Some(r)) => {
                        let before: Vec<u64> = r.versions.iter().filter(|(_, v)| !v.destroyed).map(|(k, _)| *k).collect();
                        let _ = r.destroy(&versions, now);
                        for k in before { if r.versions[&k].destroyed { destroyed_ever.insert(k); } }
                    }
                }
                if let Some(r) = &record {
                    let live_max = r.versions.iter().filter(|(_, v)| v.is_live()).map(|(k, _)| *k).max().unwrap_or(0);
                    prop_assert_eq!(r.current_version, live_max);
                    prop_assert!(r.versions.len() <= max_versions as usize);
                    prop_assert_eq!(r.oldest_version, r.versions.keys().next().copied().unwrap_or(0));
                    for k in &destroyed_ever {
                        prop_assert!(r.read(*k).is_err(), "destroyed version {} readable", k);
                    }
                }
            }
        }
    }
}
