//! The Raft log, vote and committed marker in a redb file. Every write is
//! committed with `Durability::Immediate`: an entry is reported flushed only
//! once it is fsync'd, which is what makes an acknowledged write survive.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, RaftLogReader, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{NodeId, RaftStorageError, TypeConfig, any_error, blocking};
use crate::store::StoreError;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The log of one replica. Cheap to clone: clones share the database, and
/// serve as the log readers openraft's replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(LOG_META)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    fn read_meta<T: DeserializeOwned>(db: &Database, name: &str) -> Result<Option<T>, AnyError> {
        let txn = db.begin_read().map_err(any_error)?;
        let table = txn.open_table(LOG_META).map_err(any_error)?;
        match table.get(name).map_err(any_error)? {
            Some(bytes) => postcard::from_bytes(bytes.value())
                .map(Some)
                .map_err(any_error),
            None => Ok(None),
        }
    }

    fn write_meta<T: Serialize>(db: &Database, name: &str, value: &T) -> Result<(), AnyError> {
        let bytes = postcard::to_stdvec(value).map_err(any_error)?;
        let mut txn = db.begin_write().map_err(any_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(any_error)?;
        txn.open_table(LOG_META)
            .map_err(any_error)?
            .insert(name, bytes.as_slice())
            .map_err(any_error)?;
        txn.commit().map_err(any_error)
    }

    async fn meta<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &'static str,
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, RaftStorageError> {
        let db = self.db.clone();
        blocking(what, move || Self::read_meta(&db, name)).await
    }

    async fn set_meta<T: Serialize + Send + 'static>(
        &self,
        name: &'static str,
        value: T,
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(what, move || Self::write_meta(&db, name, &value)).await
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        let db = self.db.clone();
        let range = bounds(&range);
        blocking(StorageIOError::read_logs, move || {
            let txn = db.begin_read().map_err(any_error)?;
            let table = txn.open_table(LOG).map_err(any_error)?;
            let mut entries = Vec::new();
            for item in table.range::<u64>(range).map_err(any_error)? {
                let (_, value) = item.map_err(any_error)?;
                entries.push(postcard::from_bytes(value.value()).map_err(any_error)?);
            }
            Ok(entries)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId<NodeId>> =
            self.meta(LAST_PURGED, StorageIOError::read_logs).await?;
        let db = self.db.clone();
        let last_in_log: Option<LogId<NodeId>> = blocking(StorageIOError::read_logs, move || {
            let txn = db.begin_read().map_err(any_error)?;
            let table = txn.open_table(LOG).map_err(any_error)?;
            match table.last().map_err(any_error)? {
                Some((_, value)) => {
                    let entry: Entry<TypeConfig> =
                        postcard::from_bytes(value.value()).map_err(any_error)?;
                    Ok(Some(entry.log_id))
                }
                None => Ok(None),
            }
        })
        .await?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_in_log.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        self.set_meta(VOTE, *vote, StorageIOError::write_vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.meta(VOTE, StorageIOError::read_vote).await
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        self.set_meta(COMMITTED, committed, StorageIOError::write_logs)
            .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        Ok(self
            .meta::<Option<LogId<NodeId>>>(COMMITTED, StorageIOError::read_logs)
            .await?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| postcard::to_stdvec(&entry).map(|bytes| (entry.log_id.index, bytes)))
            .collect::<Result<_, _>>()
            .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
        let db = self.db.clone();
        // The callback fires only after the commit returned: the entries are
        // on disk (fsync'd), not merely handed to the OS.
        let result = blocking(StorageIOError::write_logs, move || {
            let mut txn = db.begin_write().map_err(any_error)?;
            txn.set_durability(Durability::Immediate)
                .map_err(any_error)?;
            {
                let mut table = txn.open_table(LOG).map_err(any_error)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice()).map_err(any_error)?;
                }
            }
            txn.commit().map_err(any_error)
        })
        .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(StorageIOError::write_logs, move || {
            let mut txn = db.begin_write().map_err(any_error)?;
            txn.set_durability(Durability::Immediate)
                .map_err(any_error)?;
            txn.open_table(LOG)
                .map_err(any_error)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(any_error)?;
            txn.commit().map_err(any_error)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let db = self.db.clone();
        blocking(StorageIOError::write_logs, move || {
            let bytes = postcard::to_stdvec(&log_id).map_err(any_error)?;
            let mut txn = db.begin_write().map_err(any_error)?;
            txn.set_durability(Durability::Immediate)
                .map_err(any_error)?;
            txn.open_table(LOG_META)
                .map_err(any_error)?
                .insert(LAST_PURGED, bytes.as_slice())
                .map_err(any_error)?;
            txn.open_table(LOG)
                .map_err(any_error)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(any_error)?;
            txn.commit().map_err(any_error)
        })
        .await
    }
}
