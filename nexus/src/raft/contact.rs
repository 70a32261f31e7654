//! How fresh a follower's state is, from what the leader last told it.
//!
//! Every append-entries (heartbeats included) that this replica accepts
//! from a leader carries the leader's commit index. Keeping the instants at
//! which such messages arrived, with the commit index each carried, tells
//! how old this replica's applied state is: if it has applied index `i`,
//! it holds everything the leader had committed when the newest message
//! with a commit index at most `i` arrived (give or take one network
//! delay). A stale read that must not be older than a bound asks
//! [`LeaderContact::caught_up_at`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Samples kept: with heartbeats every 50 ms and one sample per
/// [`SAMPLE_SPACING`] at most, this covers many seconds of history, more
/// than any staleness bound worth allowing.
const SAMPLES_MAX: usize = 256;
/// Closest two samples with the same commit index may be.
const SAMPLE_SPACING: Duration = Duration::from_millis(10);

/// One accepted message from a leader.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    leader_commit: u64,
}

/// The recent messages this replica accepted from a leader. Cheap to
/// clone (shared).
#[derive(Debug, Clone, Default)]
pub struct LeaderContact {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl LeaderContact {
    /// Records that a leader's message with commit index `leader_commit`
    /// was accepted now.
    pub fn heard(&self, leader_commit: u64) {
        self.heard_at(Instant::now(), leader_commit);
    }

    fn heard_at(&self, at: Instant, leader_commit: u64) {
        let mut samples = self.lock();
        if let Some(last) = samples.back_mut()
            && last.leader_commit == leader_commit
            && at.saturating_duration_since(last.at) < SAMPLE_SPACING
        {
            last.at = at;
            return;
        }
        if samples.len() == SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back(Sample { at, leader_commit });
    }

    /// The latest instant at which a leader's commit index was at most
    /// `applied`: this replica's state holds everything committed then.
    /// `None` when no kept message qualifies (never heard from a leader,
    /// or too far behind).
    pub fn caught_up_at(&self, applied: u64) -> Option<Instant> {
        self.lock()
            .iter()
            .rev()
            .find(|sample| sample.leader_commit <= applied)
            .map(|sample| sample.at)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_the_newest_message_whose_commit_is_applied() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        assert_eq!(contact.caught_up_at(100), None, "never heard");
        contact.heard_at(start, 5);
        contact.heard_at(start + Duration::from_millis(100), 9);
        contact.heard_at(start + Duration::from_millis(200), 12);
        assert_eq!(
            contact.caught_up_at(12),
            Some(start + Duration::from_millis(200))
        );
        assert_eq!(
            contact.caught_up_at(10),
            Some(start + Duration::from_millis(100)),
            "applied 10 holds what was committed when 9 was the leader's commit"
        );
        assert_eq!(contact.caught_up_at(4), None, "behind every kept message");
    }

    #[test]
    fn heartbeats_refresh_one_sample_and_history_is_bounded() {
        let contact = LeaderContact::default();
        let start = Instant::now();
        contact.heard_at(start, 1);
        contact.heard_at(start + Duration::from_millis(5), 1);
        assert_eq!(contact.lock().len(), 1);
        assert_eq!(
            contact.caught_up_at(1),
            Some(start + Duration::from_millis(5))
        );
        for step in 0..(SAMPLES_MAX as u64 * 2) {
            contact.heard_at(start + Duration::from_millis(20 * step), 2 + step);
        }
        assert_eq!(contact.lock().len(), SAMPLES_MAX);
        assert_eq!(contact.caught_up_at(2), None, "the oldest fell out");
    }
}
