//! A linearizability checker for a key-value store, modelled as one register
//! per key (registers are independent, so each key's history is checked on
//! its own - linearizability is compositional).
//!
//! The search is Wing & Gong's, with memoization of (linearized set, value)
//! as in Lowe's refinement: repeatedly pick an operation that may take effect
//! next - one invoked before every pending operation's completion - apply it
//! to the register if it agrees, and backtrack when nothing fits. A write
//! whose outcome is unknown (the client gave up) may take effect at any point
//! after its invocation, or never.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

/// What a client did to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Write(u64),
    /// A read and what it returned (None: the key did not exist).
    Read(Option<u64>),
}

/// One operation with its real-time interval (any monotonic clock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub key: String,
    pub action: Action,
    pub invoked: u64,
    /// None when the outcome is unknown (no acknowledgement).
    pub completed: Option<u64>,
}

/// A key whose history has no linearization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub operations: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "history of {} is not linearizable:", self.key)?;
        for op in &self.operations {
            writeln!(
                f,
                "  {:?} [{} .. {}]",
                op.action,
                op.invoked,
                op.completed.map_or("?".to_string(), |c| c.to_string())
            )?;
        }
        Ok(())
    }
}

/// Most operations per key the search handles (a bitmask of them).
pub const MAX_OPERATIONS_PER_KEY: usize = 128;

/// Checks every key's history; the first key without a linearization is
/// returned. Keys start absent.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, operations) in by_key {
        assert!(
            operations.len() <= MAX_OPERATIONS_PER_KEY,
            "{key}: {} operations, the checker handles {MAX_OPERATIONS_PER_KEY}",
            operations.len()
        );
        if !linearizable(&operations) {
            return Err(Violation {
                key: key.to_string(),
                operations,
            });
        }
    }
    Ok(())
}

fn linearizable(ops: &[Operation]) -> bool {
    let mut seen = HashSet::new();
    search(ops, 0, None, &mut seen)
}

/// `done`: bitmask of operations already linearized (or dropped, for
/// unknown writes); `value`: the register now.
fn search(
    ops: &[Operation],
    done: u128,
    value: Option<u64>,
    seen: &mut HashSet<(u128, Option<u64>)>,
) -> bool {
    let pending: Vec<usize> = (0..ops.len()).filter(|i| done & (1 << i) == 0).collect();
    // Only unknown-outcome writes left: they may never have happened.
    if pending.iter().all(|&i| ops[i].completed.is_none()) {
        return true;
    }
    if !seen.insert((done, value)) {
        return false;
    }
    // An operation can go next only if it was invoked before every pending
    // operation completed.
    let horizon = pending
        .iter()
        .filter_map(|&i| ops[i].completed)
        .min()
        .unwrap_or(u64::MAX);
    for &i in &pending {
        let op = &ops[i];
        if op.invoked > horizon {
            continue;
        }
        let next = match &op.action {
            Action::Write(v) => Some(*v),
            Action::Read(read) if *read == value => value,
            Action::Read(_) => continue,
        };
        if search(ops, done | (1 << i), next, seen) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(key: &str, action: Action, invoked: u64, completed: Option<u64>) -> Operation {
        Operation {
            key: key.into(),
            action,
            invoked,
            completed,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let history = [
            op("a", Action::Read(None), 0, Some(1)),
            op("a", Action::Write(1), 2, Some(3)),
            op("a", Action::Read(Some(1)), 4, Some(5)),
            op("b", Action::Write(7), 0, Some(9)),
            op("b", Action::Read(Some(7)), 10, Some(11)),
        ];
        assert_eq!(check(&history), Ok(()));
    }

    #[test]
    fn concurrent_operations_may_order_either_way() {
        // The read overlaps the write: it may see the old or the new value.
        for seen in [None, Some(1)] {
            let history = [
                op("a", Action::Write(1), 0, Some(10)),
                op("a", Action::Read(seen), 5, Some(6)),
            ];
            assert_eq!(check(&history), Ok(()), "{seen:?}");
        }
    }

    #[test]
    fn stale_read_after_acknowledged_write_is_caught() {
        let history = [
            op("a", Action::Write(1), 0, Some(1)),
            op("a", Action::Write(2), 2, Some(3)),
            op("a", Action::Read(Some(1)), 4, Some(5)),
        ];
        let violation = check(&history).expect_err("stale read");
        assert_eq!(violation.key, "a");
        assert!(violation.to_string().contains("not linearizable"));
    }

    #[test]
    fn reads_cannot_flip_back() {
        // Two later reads disagree in an order no single timeline explains.
        let history = [
            op("a", Action::Write(1), 0, Some(100)),
            op("a", Action::Read(Some(1)), 10, Some(11)),
            op("a", Action::Read(None), 20, Some(21)),
        ];
        assert!(check(&history).is_err());
    }

    #[test]
    fn unknown_writes_may_or_may_not_have_happened() {
        let happened = [
            op("a", Action::Write(5), 0, None),
            op("a", Action::Read(Some(5)), 10, Some(11)),
        ];
        assert_eq!(check(&happened), Ok(()));
        let never = [
            op("a", Action::Write(5), 0, None),
            op("a", Action::Read(None), 10, Some(11)),
        ];
        assert_eq!(check(&never), Ok(()));
        // But never before it was invoked.
        let too_early = [
            op("a", Action::Read(Some(5)), 0, Some(1)),
            op("a", Action::Write(5), 2, None),
        ];
        assert!(check(&too_early).is_err());
    }
}
