//! The latest Raft log entries in memory, in front of the redb log: every
//! entry appended and not yet committed to redb, and the last committed
//! ones. openraft 0.9 replicates an entry right after the leader's fsync
//! and applies it right after its commit; reading those from redb cost a
//! blocking-pool round trip and a decode on the commit path each.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use openraft::{Entry, LogId};

use super::{NodeId, TypeConfig};

/// Most committed entries kept in memory by default, and most bytes they
/// may take encoded (decoded they take somewhat more; entries not yet
/// committed count toward neither). Older ones are read from redb.
/// Replication and the state machine read entries a few behind the last
/// append; a follower further behind reads redb. (Public so tests can
/// outgrow it.)
pub const RECENT_ENTRIES: usize = 64;
const RECENT_BYTES: usize = 8 << 20;

/// An entry in memory: appended and maybe not yet committed to redb.
pub(super) struct Held {
    pub(super) entry: Entry<TypeConfig>,
    /// Its encoded size.
    pub(super) bytes: usize,
    /// Whether its redb commit has landed (then it may leave memory).
    pub(super) committed: bool,
}

/// The latest entries, by index: every entry appended and not yet
/// committed to redb, then the last committed ones. Always a contiguous run
/// of indexes: appends extend it, truncation cuts its end, purges and
/// trimming its start.
pub(super) type Recent = Arc<Mutex<BTreeMap<u64, Held>>>;

/// Marks the entries whose redb commit landed (`committed`, unless a later
/// append replaced one in memory), then drops committed entries from the
/// start beyond `keep` entries or `RECENT_BYTES`; entries not yet committed
/// stay whatever their size.
pub(super) fn settle<'a>(
    recent: &mut BTreeMap<u64, Held>,
    committed: impl IntoIterator<Item = &'a LogId<NodeId>>,
    keep: usize,
) {
    for log_id in committed {
        if let Some(held) = recent.get_mut(&log_id.index)
            && held.entry.log_id == *log_id
        {
            held.committed = true;
        }
    }
    trim(recent, keep);
}

fn trim(recent: &mut BTreeMap<u64, Held>, keep: usize) {
    let committed: Vec<usize> = recent
        .values()
        .take_while(|held| held.committed)
        .map(|held| held.bytes)
        .collect();
    let (mut count, mut bytes) = (committed.len(), committed.iter().sum::<usize>());
    for oldest in committed {
        if count <= keep && bytes <= RECENT_BYTES {
            break;
        }
        recent.pop_first();
        count -= 1;
        bytes -= oldest;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn held(index: u64, bytes: usize, committed: bool) -> (u64, Held) {
        appended(log_id(1, index), bytes, committed)
    }

    fn appended(log_id: LogId<NodeId>, bytes: usize, committed: bool) -> (u64, Held) {
        let entry = Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        (
            log_id.index,
            Held {
                entry,
                bytes,
                committed,
            },
        )
    }

    fn indexes(recent: &BTreeMap<u64, Held>) -> Vec<u64> {
        recent.keys().copied().collect()
    }

    #[test]
    fn settling_a_commit_keeps_the_latest_committed_entries_within_both_bounds() {
        // Appended one by one, each committed in turn: memory stays at the
        // last RECENT_ENTRIES.
        let mut recent = BTreeMap::new();
        let last = RECENT_ENTRIES as u64 + 10;
        for index in 1..=last {
            recent.extend([held(index, 100, false)]);
            settle(&mut recent, &[log_id(1, index)], RECENT_ENTRIES);
            assert!(recent.len() <= RECENT_ENTRIES);
        }
        assert_eq!(indexes(&recent), (11..=last).collect::<Vec<_>>());
        assert!(recent.values().all(|held| held.committed));

        // Keeping none: a committed entry leaves memory at once.
        settle(&mut recent, &[], 0);
        assert!(recent.is_empty());

        // Three large entries: only the latest two fit in the byte bound.
        let mut recent: BTreeMap<u64, Held> =
            (1..=3).map(|i| held(i, RECENT_BYTES / 2, false)).collect();
        let ids: Vec<_> = (1..=3).map(|i| log_id(1, i)).collect();
        settle(&mut recent, &ids, RECENT_ENTRIES);
        assert_eq!(indexes(&recent), vec![2, 3]);
    }

    #[test]
    fn settling_never_drops_an_entry_not_yet_committed() {
        // Uncommitted entries stay whatever their number or size, and so
        // does everything after the first of them.
        let mut recent: BTreeMap<u64, Held> =
            (1..=200).map(|i| held(i, RECENT_BYTES, i > 150)).collect();
        settle(&mut recent, &[], 0);
        assert_eq!(indexes(&recent), (1..=200).collect::<Vec<_>>());

        // An entry replaced in memory by a later append (another term) is
        // not marked by the commit of the one it replaced.
        let mut recent: BTreeMap<u64, Held> = [
            appended(log_id(1, 1), 10, false),
            appended(log_id(2, 2), 10, false),
        ]
        .into_iter()
        .collect();
        settle(&mut recent, &[log_id(1, 1), log_id(1, 2)], 0);
        assert_eq!(indexes(&recent), vec![2]);
        assert!(!recent[&2].committed);
    }
}
