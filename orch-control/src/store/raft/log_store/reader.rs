//! Reading the log: memory first, then redb. Replication reads a bounded
//! prefix of what it asks for, so no message outgrows the transport.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::{Entry, RaftLogReader, StorageIOError};
use redb::ReadableDatabase;

use super::{LOG, LogStore, lock};
use crate::store::raft::{RaftStorageError, TypeConfig, any_error, blocking};

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

/// Log entries taken in index order until their encoded sizes would pass a
/// budget; the first is taken whatever its size, so a read always moves on.
struct Taken {
    /// With their encoded sizes.
    entries: Vec<(Entry<TypeConfig>, usize)>,
    bytes: usize,
    budget: usize,
    full: bool,
}

impl Taken {
    fn new(budget: usize) -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            budget,
            full: false,
        }
    }

    /// Whether an entry of `bytes` is still taken; once one is not, no
    /// later one is (the result has no gaps).
    fn fits(&mut self, bytes: usize) -> bool {
        self.full |= !self.entries.is_empty() && self.bytes.saturating_add(bytes) > self.budget;
        !self.full
    }

    fn push(&mut self, entry: Entry<TypeConfig>, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.entries.push((entry, bytes));
    }

    fn into_entries(self) -> Vec<Entry<TypeConfig>> {
        self.entries.into_iter().map(|(entry, _)| entry).collect()
    }
}

impl LogStore {
    /// The entries of `range` in index order, up to `budget` encoded bytes
    /// ([`Taken`]).
    async fn read(
        &self,
        range: (Bound<u64>, Bound<u64>),
        budget: usize,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        // Memory first, then redb: an entry leaves memory only after its
        // commit, so it is always in one of the two.
        let mut from_memory = Taken::new(budget);
        for held in lock(&self.recent).range(range).map(|(_, held)| held) {
            if !from_memory.fits(held.bytes) {
                break;
            }
            from_memory.push(held.entry.clone(), held.bytes);
        }
        let memory_from = from_memory.entries.first().map(|(e, _)| e.log_id.index);
        if memory_from.map(Bound::Included) == Some(range.0) {
            return Ok(from_memory.into_entries());
        }
        // Memory holds the end of the range and wins over redb there: those
        // rows are not read.
        let disk_range = (range.0, memory_from.map_or(range.1, Bound::Excluded));
        let db = self.db.clone();
        let mut taken = blocking(StorageIOError::read_logs, move || {
            let txn = db.begin_read().map_err(any_error)?;
            let table = txn.open_table(LOG).map_err(any_error)?;
            let mut taken = Taken::new(budget);
            for item in table.range::<u64>(disk_range).map_err(any_error)? {
                let (_, value) = item.map_err(any_error)?;
                let bytes = value.value().len();
                if !taken.fits(bytes) {
                    break;
                }
                taken.push(
                    postcard::from_bytes(value.value()).map_err(any_error)?,
                    bytes,
                );
            }
            Ok(taken)
        })
        .await?;
        for (entry, bytes) in from_memory.entries {
            if !taken.fits(bytes) {
                break;
            }
            taken.push(entry, bytes);
        }
        Ok(taken.into_entries())
    }
}

/// Most encoded log entries in one replication message (one entry may be
/// larger): a member far behind is sent its log in parts of about this
/// size. openraft 0.9 gives each append the heartbeat interval (100 ms by
/// default) to be sent, written and fsync'd by the follower, and sends the
/// same range again when it runs out: 2 MiB crosses a 1 Gbit/s link in
/// ~17 ms, where 16 MiB would never make it.
pub const REPLICATION_BYTES: usize = 2 << 20;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read(bounds(&range), usize::MAX).await
    }

    /// Replication's read: a prefix of the range, up to
    /// [`REPLICATION_BYTES`].
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read(
            (Bound::Included(start), Bound::Excluded(end)),
            REPLICATION_BYTES,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId};

    use super::*;
    use crate::store::raft::recent_log::Held;
    use crate::store::types::{Command, Op, Request, RequestId, Txn};

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(vec![Request {
                id: RequestId(index.into()),
                command: Command::Txn(Txn {
                    success: vec![Op::Put {
                        key: format!("/k/{index:03}").into_bytes(),
                        value: vec![b'v'; 1000],
                        lease: None,
                    }],
                    ..Txn::default()
                }),
            }]),
        }
    }

    fn encoded(index: u64) -> Vec<u8> {
        postcard::to_stdvec(&entry(index)).expect("encodes")
    }

    async fn indexes(store: &LogStore, from: u64, to: u64, budget: usize) -> Vec<u64> {
        store
            .read((Bound::Included(from), Bound::Excluded(to)), budget)
            .await
            .expect("read")
            .iter()
            .map(|entry| entry.log_id.index)
            .collect()
    }

    #[tokio::test]
    async fn a_bounded_read_is_a_prefix_without_gaps_across_disk_and_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = LogStore::open_keeping(&dir.path().join("log.redb"), 64).expect("open");
        // 1..=6 in redb, 5..=8 in memory. Rows 5 and 6 are garbage: memory
        // wins there, so reading them would fail the test.
        let txn = store.db.begin_write().expect("write txn");
        {
            let mut table = txn.open_table(LOG).expect("log table");
            for index in 1..=6u64 {
                let row = if index < 5 {
                    encoded(index)
                } else {
                    vec![0xff; 8]
                };
                table.insert(index, row.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
        for index in 5..=8 {
            let bytes = encoded(index).len();
            lock(&store.recent).insert(
                index,
                Held {
                    entry: entry(index),
                    bytes,
                    committed: index <= 6,
                },
            );
        }
        let size = encoded(1).len();
        assert!((1..=8).all(|i| encoded(i).len() == size));

        assert_eq!(
            indexes(&store, 1, 9, usize::MAX).await,
            (1..=8).collect::<Vec<_>>()
        );
        // Cut in redb's part: nothing from memory follows.
        assert_eq!(indexes(&store, 1, 9, 3 * size).await, [1, 2, 3]);
        // redb's part whole, memory's cut.
        assert_eq!(indexes(&store, 2, 9, 5 * size).await, [2, 3, 4, 5, 6]);
        // From memory alone.
        assert_eq!(indexes(&store, 6, 9, 2 * size + size / 2).await, [6, 7]);
        // The first entry is returned whatever the budget.
        assert_eq!(indexes(&store, 3, 9, 1).await, [3]);
        assert_eq!(indexes(&store, 7, 9, 1).await, [7]);
        // Through the reader openraft's replication calls.
        let mut reader = store.clone();
        let sent = reader.limited_get_log_entries(1, 9).await.expect("read");
        assert_eq!(sent.len(), 8);
    }
}
