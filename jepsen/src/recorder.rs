//! The history as it is written during a run: every invocation and
//! completion, numbered in the order they happened (one lock), with the
//! time since the run began.

use std::sync::Mutex;
use tokio::time::Instant;

use crate::history::{Completion, Event, Step};
use crate::op::Op;

/// Shared by every client of a run.
pub struct Recorder {
    began: Instant,
    events: Mutex<Vec<Event>>,
}

/// What a client is about to do.
pub struct Invocation {
    /// The process (client) number.
    pub process: u64,
    /// The operation.
    pub op: Op,
    /// The key, if any.
    pub key: Option<String>,
    /// The node the client starts with.
    pub node: Option<String>,
}

impl Recorder {
    /// A new, empty history starting now.
    pub fn new() -> Self {
        Self {
            began: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the run began.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.began.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn push(&self, mut event: Event) {
        // A poisoned lock still holds a usable history.
        let mut events = self
            .events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        event.index = events.len() as u64;
        event.time_ns = self.now_ns();
        events.push(event);
    }

    /// Records an invocation.
    pub fn invoke(&self, invocation: &Invocation) {
        self.push(Event {
            index: 0,
            time_ns: 0,
            process: invocation.process,
            step: Step::Invoke(invocation.op),
            key: invocation.key.clone(),
            node: invocation.node.clone(),
        });
    }

    /// Records how `invocation` ended.
    pub fn complete(&self, invocation: &Invocation, completion: Completion) {
        self.push(Event {
            index: 0,
            time_ns: 0,
            process: invocation.process,
            step: completion.into(),
            key: invocation.key.clone(),
            node: invocation.node.clone(),
        });
    }

    /// The history so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// A small, seeded generator (SplitMix64): the same seed gives the same
/// choices of operations, keys and fault targets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// One of `items` (not empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}
