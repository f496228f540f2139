//! The Raft log, vote and committed marker in a redb file. Every write is
//! committed with `Durability::Immediate`: an entry is reported flushed only
//! once it is fsync'd, which is what makes an acknowledged write survive.
//!
//! Writes go through one writer thread that commits whatever has queued
//! up in one transaction, and storage v2's `LogFlushed` callback fires
//! after the fsync. openraft 0.9's core awaits that callback before its
//! next command (`RaftCore::append_to_log`), so at most one append is
//! queued at a time (with the committed marker or a purge beside it):
//! concurrent client writes share an fsync because the node's batcher
//! puts them in one entry, not here. It also means the leader starts
//! replicating an entry only once its own fsync is done, not side by side
//! with the followers' as in etcd (openraft 0.10, still alpha, makes log IO
//! non-blocking). Appended entries are readable at once, from memory until
//! their commit lands, and the latest committed ones stay in memory after
//! it ([`super::recent_log`]).

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, StorageIOError, Vote};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod reader;

pub use reader::REPLICATION_BYTES;

use super::recent_log::{Held, RECENT_ENTRIES, Recent, settle};
use super::{NodeId, RaftStorageError, TypeConfig, any_error, blocking};
use crate::store::StoreError;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const LOG_META: TableDefinition<&str, &[u8]> = TableDefinition::new("log_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Most queued writes committed in one transaction.
const MAX_GROUP: usize = 256;
/// How often the committed marker is written at most; the latest value is
/// written at the end of each such interval. Writing it with every entry
/// dirtied one more B-tree page per log commit (a commit wrote 7 scattered
/// pages, not 6) and made each fsync'd commit take ~550 µs instead of
/// ~350 µs (timed in the log writer under `cargo xtask bench store`, 3
/// replicas, on the dev machine);
/// under load a commit lands every few milliseconds, so one in tens now
/// carries it.
const COMMITTED_MARKER_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// A write for the writer thread, in the order openraft issued it.
enum LogWrite {
    Append {
        entries: Vec<(LogId<NodeId>, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        index: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        log_id: LogId<NodeId>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Meta {
        name: &'static str,
        bytes: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// The committed marker's writes: when the last was queued, the latest
/// value openraft gave, and whether a write of it is already scheduled.
#[derive(Default)]
struct CommittedMarker {
    queued_at: Option<std::time::Instant>,
    latest: Option<LogId<NodeId>>,
    flush_scheduled: bool,
}

/// The log of one replica. Cheap to clone: clones share the database, and
/// serve as the log readers openraft's replication tasks use.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    recent: Recent,
    writes: mpsc::UnboundedSender<LogWrite>,
    committed: Arc<Mutex<CommittedMarker>>,
}

/// Hands the committed marker to the writer thread.
fn queue_committed(
    writes: &mpsc::UnboundedSender<LogWrite>,
    committed: Option<LogId<NodeId>>,
) -> Result<(), std::io::Error> {
    let bytes = postcard::to_stdvec(&committed).map_err(std::io::Error::other)?;
    let (done, _) = oneshot::channel();
    writes
        .send(LogWrite::Meta {
            name: COMMITTED,
            bytes,
            done,
        })
        .map_err(|_| std::io::Error::other("log writer stopped"))
}

/// Locks `mutex`, poisoned or not (a panicked holder left consistent data:
/// every change under these locks keeps them valid at each step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The writer thread: takes the first queued write and everything queued
/// behind it, commits them in one durable transaction, then reports each.
fn run_writer(
    db: Arc<Database>,
    recent: Recent,
    keep: usize,
    mut queue: mpsc::UnboundedReceiver<LogWrite>,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(write) => group.push(write),
                Err(_) => break,
            }
        }
        let result = commit_group(&db, &group).map_err(|e| e.to_string());
        if result.is_ok() {
            let appended = group.iter().flat_map(|write| match write {
                LogWrite::Append { entries, .. } => entries.as_slice(),
                _ => &[],
            });
            settle(&mut lock(&recent), appended.map(|(log_id, _)| log_id), keep);
        }
        for write in group {
            match write {
                LogWrite::Append { callback, .. } => {
                    callback.log_io_completed(result.clone().map_err(std::io::Error::other))
                }
                LogWrite::Truncate { done, .. }
                | LogWrite::Purge { done, .. }
                | LogWrite::Meta { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

fn commit_group(db: &Database, group: &[LogWrite]) -> Result<(), AnyError> {
    let mut txn = db.begin_write().map_err(any_error)?;
    txn.set_durability(Durability::Immediate)
        .map_err(any_error)?;
    {
        let mut log = txn.open_table(LOG).map_err(any_error)?;
        let mut meta = txn.open_table(LOG_META).map_err(any_error)?;
        for write in group {
            match write {
                LogWrite::Append { entries, .. } => {
                    for (log_id, bytes) in entries {
                        log.insert(log_id.index, bytes.as_slice())
                            .map_err(any_error)?;
                    }
                }
                LogWrite::Truncate { index, .. } => {
                    log.retain_in(*index.., |_, _| false).map_err(any_error)?;
                }
                LogWrite::Purge { log_id, .. } => {
                    let bytes = postcard::to_stdvec(log_id).map_err(any_error)?;
                    meta.insert(LAST_PURGED, bytes.as_slice())
                        .map_err(any_error)?;
                    log.retain_in(..=log_id.index, |_, _| false)
                        .map_err(any_error)?;
                }
                LogWrite::Meta { name, bytes, .. } => {
                    meta.insert(*name, bytes.as_slice()).map_err(any_error)?;
                }
            }
        }
    }
    txn.commit().map_err(any_error)
}

impl LogStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_keeping(path, RECENT_ENTRIES)
    }

    /// [`Self::open`], keeping at most `keep` committed entries in memory
    /// (tests use 0 so every read of a committed entry goes to redb).
    pub fn open_keeping(path: &Path, keep: usize) -> Result<Self, StoreError> {
        let db = crate::store::files::open_database(path)?;
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(LOG_META)?;
        txn.commit()?;
        let db = Arc::new(db);
        let recent = Recent::default();
        let (writes, queue) = mpsc::unbounded_channel();
        let writer_db = db.clone();
        let writer_recent = recent.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(writer_db, writer_recent, keep, queue))
            .map_err(|source| StoreError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            db,
            recent,
            writes,
            committed: Arc::default(),
        })
    }

    /// Queues a write and waits for its commit.
    async fn write(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), String>>) -> LogWrite,
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), RaftStorageError> {
        let failed = |reason: String| -> RaftStorageError {
            what(any_error(std::io::Error::other(reason))).into()
        };
        let (done, result) = oneshot::channel();
        self.writes
            .send(make(done))
            .map_err(|_| failed("log writer stopped".into()))?;
        result
            .await
            .map_err(|_| failed("log writer stopped".into()))?
            .map_err(failed)
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

    async fn meta<T: DeserializeOwned + Send + 'static>(
        &self,
        name: &'static str,
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<Option<T>, RaftStorageError> {
        let db = self.db.clone();
        blocking(what, move || Self::read_meta(&db, name)).await
    }

    async fn set_meta<T: Serialize>(
        &self,
        name: &'static str,
        value: T,
        what: fn(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), RaftStorageError> {
        let bytes = postcard::to_stdvec(&value).map_err(|e| what(any_error(e)))?;
        self.write(|done| LogWrite::Meta { name, bytes, done }, what)
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
        let last_in_memory = lock(&self.recent)
            .last_key_value()
            .map(|(_, held)| held.entry.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last_in_memory.or(last_in_log).or(last_purged),
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
        // Not waited for, and written at most every COMMITTED_MARKER_EVERY
        // (the latest value at the end of the interval): the marker only
        // lets a restarted replica apply at once what it knew was committed
        // before it hears from a leader, and openraft allows it to lag (the
        // leader's next entry commits the rest). It lands in order with the
        // log, in the next group commit.
        let mut marker = lock(&self.committed);
        marker.latest = committed;
        let since = marker.queued_at.map(|at| at.elapsed());
        if since.is_none_or(|since| since >= COMMITTED_MARKER_EVERY) {
            marker.queued_at = Some(std::time::Instant::now());
            return queue_committed(&self.writes, committed)
                .map_err(|e| StorageIOError::write_logs(any_error(e)).into());
        }
        if !marker.flush_scheduled {
            marker.flush_scheduled = true;
            let wait = COMMITTED_MARKER_EVERY.saturating_sub(since.unwrap_or_default());
            let (slot, writes) = (self.committed.clone(), self.writes.clone());
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let mut marker = lock(&slot);
                marker.flush_scheduled = false;
                marker.queued_at = Some(std::time::Instant::now());
                // Queued under the lock: values reach the writer in order.
                if let Err(error) = queue_committed(&writes, marker.latest) {
                    tracing::warn!(%error, "the committed marker was not written");
                }
            });
        }
        Ok(())
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
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let encoded: Vec<(LogId<NodeId>, Vec<u8>)> = entries
            .iter()
            .map(|entry| postcard::to_stdvec(entry).map(|bytes| (entry.log_id, bytes)))
            .collect::<Result<_, _>>()
            .map_err(|e| StorageIOError::write_logs(any_error(e)))?;
        // Readable before this returns (openraft may read them at once);
        // the callback fires only after the commit: fsync'd, not merely
        // handed to the OS.
        lock(&self.recent).extend(
            entries
                .into_iter()
                .zip(&encoded)
                .map(|(entry, (_, bytes))| {
                    let held = Held {
                        bytes: bytes.len(),
                        entry,
                        committed: false,
                    };
                    (held.entry.log_id.index, held)
                }),
        );
        self.writes
            .send(LogWrite::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| {
                StorageIOError::write_logs(any_error(std::io::Error::other("log writer stopped")))
                    .into()
            })
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        lock(&self.recent).retain(|index, _| *index < log_id.index);
        self.write(
            |done| LogWrite::Truncate {
                index: log_id.index,
                done,
            },
            StorageIOError::write_logs,
        )
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        lock(&self.recent).retain(|index, _| *index > log_id.index);
        self.write(
            |done| LogWrite::Purge { log_id, done },
            StorageIOError::write_logs,
        )
        .await
    }
}
