//! Linearizability of one register per key: the Wing-Gong-Lowe search
//! (Lowe, "Testing for linearizability", 2017) over a history already
//! split by key (P-compositionality: a history is linearizable iff each
//! key's sub-history is).
//!
//! The register is a secret path as the SDK sees it: a current version
//! (0 when absent) and a value. Operations: `read` (the value), `version`
//! (the current version), `write` (a new version with a value) and `cas`
//! (a new version only over an expected one). Completed operations must
//! take effect between their invocation and completion; operations whose
//! outcome is unknown (`info`) may take effect at any point after their
//! invocation, or never. Failed operations never happened and are dropped.

use std::collections::HashSet;

/// The register's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Register {
    /// Current version, 0 when nothing was written.
    pub version: u64,
    /// Current value, `None` when nothing was written.
    pub value: Option<u64>,
}

/// What an operation did, as the checker needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOp {
    /// Read the value: `None` when the path had none.
    Read(Option<u64>),
    /// Read the current version.
    Version(u64),
    /// Write a value.
    Write(u64),
    /// Write `value` only if the current version is `expected`.
    Cas {
        /// The version the caller expected.
        expected: u64,
        /// The value written.
        value: u64,
        /// `Some(true)`: it wrote; `Some(false)`: it was refused (a
        /// conflict); `None`: unknown.
        wrote: Option<bool>,
    },
}

/// One operation of a key's history, with its position in the whole
/// history (event indices are in real-time order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOp {
    /// Index of the invocation event.
    pub invoked: u64,
    /// Index of the completion event; `None` when the outcome is unknown.
    pub completed: Option<u64>,
    /// The operation and its observed result.
    pub op: RegisterOp,
}

/// The search's answer for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A valid linearization exists.
    Linearizable,
    /// None exists. `stuck_at` is the invocation index of the operation
    /// the deepest attempt could not place: where to start reading the
    /// history.
    NotLinearizable {
        /// Invocation index of the operation the search failed on.
        stuck_at: u64,
    },
    /// The search gave up after this many steps: no verdict.
    Unknown {
        /// Steps taken.
        steps: u64,
    },
}

/// Applies `op` to `state`: the new state if the observed result is
/// possible from `state`, `None` if it is not.
fn step(state: Register, op: RegisterOp) -> Option<Register> {
    let written = |value| Register {
        version: state.version + 1,
        value: Some(value),
    };
    match op {
        RegisterOp::Read(value) => (value == state.value).then_some(state),
        RegisterOp::Version(version) => (version == state.version).then_some(state),
        RegisterOp::Write(value) => Some(written(value)),
        RegisterOp::Cas {
            expected,
            value,
            wrote,
        } => {
            let matches = expected == state.version;
            match wrote {
                Some(true) => matches.then(|| written(value)),
                Some(false) => (!matches).then_some(state),
                // Unknown outcome: it wrote if it could, else it was
                // refused. (That it never ran at all is the search placing
                // it last, where nothing observes it.)
                None if matches => Some(written(value)),
                None => Some(state),
            }
        }
    }
}

/// One call or return in the search's linked list.
#[derive(Debug, Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    matching: usize,
    prev: usize,
    next: usize,
}

/// Checks one key's operations. `step_limit` bounds the search.
pub fn check(ops: &[TimedOp], step_limit: u64) -> Verdict {
    // Entries in time order; unknown outcomes return after everything.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, true, i));
        events.push((op.completed.unwrap_or(u64::MAX), false, i));
    }
    // Calls sort before returns at the same time (only possible at MAX).
    events.sort_by_key(|&(time, is_call, op)| (time, !is_call, op));
    // Index 0 is the head sentinel; entries follow from 1.
    let head = 0;
    let mut list = vec![Entry {
        op: usize::MAX,
        is_call: false,
        matching: 0,
        prev: 0,
        next: 1,
    }];
    let mut return_of = vec![0usize; ops.len()];
    for (position, &(_, is_call, op)) in events.iter().enumerate() {
        let index = position + 1;
        list.push(Entry {
            op,
            is_call,
            matching: 0,
            prev: index - 1,
            next: index + 1,
        });
        if !is_call {
            return_of[op] = index;
        }
    }
    let end = list.len();
    for entry in list.iter_mut().skip(1) {
        if entry.is_call {
            entry.matching = return_of[entry.op];
        }
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Register)> = HashSet::new();
    let mut stack: Vec<(usize, Register)> = Vec::new();
    let mut state = Register::default();
    let mut current = list[head].next;
    let mut steps = 0u64;
    // The operation that blocked the longest partial linearization.
    let mut deepest: Option<(usize, usize)> = None;

    let lift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].matching;
        for index in [call, ret] {
            let Entry { prev, next, .. } = list[index];
            list[prev].next = next;
            if next < end {
                list[next].prev = prev;
            }
        }
    };
    let unlift = |list: &mut Vec<Entry>, call: usize| {
        let ret = list[call].matching;
        for index in [ret, call] {
            let Entry { prev, next, .. } = list[index];
            list[prev].next = index;
            if next < end {
                list[next].prev = index;
            }
        }
    };

    while list[head].next < end {
        steps += 1;
        if steps > step_limit {
            return Verdict::Unknown { steps };
        }
        let entry = list[current];
        if entry.is_call {
            let op = ops[entry.op];
            let next_state = step(state, op.op);
            let mut advanced = false;
            if let Some(next_state) = next_state {
                let mut marked = linearized.clone();
                marked[entry.op / 64] |= 1 << (entry.op % 64);
                if cache.insert((marked.clone(), next_state)) {
                    stack.push((current, state));
                    state = next_state;
                    linearized = marked;
                    lift(&mut list, current);
                    current = list[head].next;
                    advanced = true;
                }
            }
            if !advanced {
                current = entry.next;
            }
        } else {
            // A return whose call is not placed: undo the last choice.
            if deepest.is_none_or(|(depth, _)| stack.len() > depth) {
                deepest = Some((stack.len(), entry.op));
            }
            let Some((call, previous)) = stack.pop() else {
                let blocked = deepest.map_or(entry.op, |(_, op)| op);
                return Verdict::NotLinearizable {
                    stuck_at: ops[blocked].invoked,
                };
            };
            state = previous;
            let op = list[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            unlift(&mut list, call);
            current = list[call].next;
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(invoked: u64, completed: u64, op: RegisterOp) -> TimedOp {
        TimedOp {
            invoked,
            completed: Some(completed),
            op,
        }
    }

    fn info(invoked: u64, op: RegisterOp) -> TimedOp {
        TimedOp {
            invoked,
            completed: None,
            op,
        }
    }

    const LIMIT: u64 = 1_000_000;

    #[test]
    fn sequential_writes_and_reads_pass() {
        let ops = [
            ok(0, 1, RegisterOp::Read(None)),
            ok(2, 3, RegisterOp::Write(1)),
            ok(4, 5, RegisterOp::Read(Some(1))),
            ok(6, 7, RegisterOp::Version(1)),
            ok(
                8,
                9,
                RegisterOp::Cas {
                    expected: 1,
                    value: 2,
                    wrote: Some(true),
                },
            ),
            ok(
                10,
                11,
                RegisterOp::Cas {
                    expected: 1,
                    value: 3,
                    wrote: Some(false),
                },
            ),
            ok(12, 13, RegisterOp::Read(Some(2))),
        ];
        assert_eq!(check(&ops, LIMIT), Verdict::Linearizable);
    }

    #[test]
    fn a_stale_read_is_flagged() {
        // Write 1 completes, then write 2 completes, then a read sees 1.
        let ops = [
            ok(0, 1, RegisterOp::Write(1)),
            ok(2, 3, RegisterOp::Write(2)),
            ok(4, 5, RegisterOp::Read(Some(1))),
        ];
        assert!(matches!(
            check(&ops, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps both writes: either value is fine.
        let ops = [
            ok(0, 5, RegisterOp::Write(1)),
            ok(1, 6, RegisterOp::Write(2)),
            ok(2, 7, RegisterOp::Read(Some(1))),
            ok(8, 9, RegisterOp::Read(Some(1))),
        ];
        assert_eq!(check(&ops, LIMIT), Verdict::Linearizable);
    }

    #[test]
    fn a_lost_write_is_flagged() {
        // The write was acknowledged, yet a later read finds nothing.
        let ops = [
            ok(0, 1, RegisterOp::Write(7)),
            ok(2, 3, RegisterOp::Read(None)),
        ];
        assert!(matches!(
            check(&ops, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_duplicated_write_is_flagged_by_its_version() {
        // One write, applied twice, shows as version 2.
        let ops = [
            ok(0, 1, RegisterOp::Write(7)),
            ok(2, 3, RegisterOp::Version(2)),
        ];
        assert!(matches!(
            check(&ops, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_version_going_back_is_flagged() {
        let ops = [
            ok(0, 1, RegisterOp::Write(1)),
            ok(2, 3, RegisterOp::Write(2)),
            ok(4, 5, RegisterOp::Version(2)),
            ok(6, 7, RegisterOp::Version(1)),
        ];
        assert!(matches!(
            check(&ops, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let happened = [
            info(0, RegisterOp::Write(1)),
            ok(5, 6, RegisterOp::Read(Some(1))),
        ];
        assert_eq!(check(&happened, LIMIT), Verdict::Linearizable);
        let never = [
            info(0, RegisterOp::Write(1)),
            ok(5, 6, RegisterOp::Read(None)),
        ];
        assert_eq!(check(&never, LIMIT), Verdict::Linearizable);
        // But once seen, it cannot disappear again.
        let flicker = [
            info(0, RegisterOp::Write(1)),
            ok(5, 6, RegisterOp::Read(Some(1))),
            ok(7, 8, RegisterOp::Read(None)),
        ];
        assert!(matches!(
            check(&flicker, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn a_refused_cas_must_have_seen_another_version() {
        let ops = [
            ok(0, 1, RegisterOp::Write(1)),
            ok(
                2,
                3,
                RegisterOp::Cas {
                    expected: 1,
                    value: 9,
                    wrote: Some(false),
                },
            ),
        ];
        assert!(matches!(
            check(&ops, LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn the_search_gives_up_rather_than_guess() {
        let ops: Vec<TimedOp> = (0..40)
            .map(|i| info(i, RegisterOp::Write(i)))
            .chain([ok(100, 101, RegisterOp::Read(Some(1_000)))])
            .collect();
        assert!(matches!(check(&ops, 500), Verdict::Unknown { .. }));
    }
}
