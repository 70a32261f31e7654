//! Restore progress: the shards an operator has fed to the leader so far.
//!
//! It lives only in the leader's memory and belongs to one leadership term:
//! a leader change starts it over, and the operator is told.

use std::collections::BTreeMap;

use spike_sdk::crypto::KeyShare;

/// Shards collected in one term.
#[derive(Default)]
pub struct RestoreProgress {
    term: u64,
    shards: BTreeMap<u8, KeyShare>,
}

impl RestoreProgress {
    /// Adds `shard` collected during `term`; returns whether earlier progress
    /// was dropped because the term changed.
    pub fn add(&mut self, term: u64, shard: KeyShare) -> bool {
        let reset = term != self.term && !self.shards.is_empty();
        if term != self.term {
            self.term = term;
            self.shards.clear();
        }
        self.shards.insert(shard.index().get(), shard);
        reset
    }

    /// The shards collected.
    pub fn shards(&self) -> Vec<KeyShare> {
        self.shards.values().cloned().collect()
    }

    /// How many distinct shards are collected.
    pub fn collected(&self) -> usize {
        self.shards.len()
    }

    /// Forgets every shard.
    pub fn clear(&mut self) {
        self.shards.clear();
    }
}
