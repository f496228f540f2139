//! The state machine's storage: every change of a key as a row keyed by
//! its revision (`rows`), an in-memory index of each key's current row
//! (`index`), leases and request records, in one redb file.
//!
//! Applying is deterministic: every replica that applies the same requests
//! in the same order holds the same bytes. A batch of requests (one Raft
//! entry) is applied in one redb write transaction (`apply`), together with
//! the Raft bookkeeping passed in, so a crash never leaves them apart.

mod apply;
mod index;
pub(crate) mod rows;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableHandle};
use serde::Serialize;
use thiserror::Error;

use self::apply::Tables;
use self::index::{BatchIndex, KeyIndex};
use self::rows::{
    COMPACT_REVISION, FORMER_LAYOUT_TABLES, LEASES, META, META_BYTES, RAFT_STATE, REQUESTS,
    REVISION, REVISIONS, Row, RowHead, RowId, named_key_value, read_key_value, read_meta,
};
use super::types::{Changes, Event, KeyValue, Lease, RangeResult, Request, Response, Revision};

/// Errors of the store's storage. Deterministic refusals of a request are
/// not errors: they are [`super::types::Outcome::Rejected`].
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "{}: written by an earlier orch, whose store layout this one does not read (tables {:?}); there is no upgrade in place: start a new cluster with this version and apply the manifests again",
        path.display(),
        FORMER_LAYOUT_TABLES
    )]
    FormerLayout { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store storage: {0}")]
    Storage(#[from] redb::Error),
    #[error("store holds an undecodable {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    #[error("store is missing row {revision}.{sub}, which a key or a request record names")]
    MissingRow { revision: Revision, sub: u32 },
    #[error(
        "required revision {requested} has been compacted (oldest kept: {compacted}): relist and watch from the list's revision"
    )]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard only fails on types serde can't express; ours are plain data.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// How long applied batches may stay in memory-only (non-durable) redb
/// commits before one commit fsyncs them all.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How often a read looks its rows up again after a compaction removed one
/// between the lookup and the read, before it gives up.
const READ_ATTEMPTS: usize = 8;

/// The keys, their history and the leases of one replica.
///
/// `apply` commits are durable only once a second (and on `persist`): the
/// Raft log is the durable record of every acknowledged write, and after a
/// crash the entries above the applied marker of the last durable commit
/// (which always travels with the data it describes) are applied again:
/// at start up to the log's committed marker, the rest once a leader
/// commits. The
/// log is purged only below a snapshot, and a snapshot is built only after
/// `persist`, so the entries a crash would need again are always there.
pub struct MvccStore {
    pub(super) db: Database,
    index: RwLock<KeyIndex>,
    /// Held by `apply` (and the other writers) for their whole transaction:
    /// the index's batch view assumes it is the only writer.
    writer: Mutex<()>,
    last_durable: Mutex<std::time::Instant>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks, read-only, that an existing file is not in the layout before
/// rows: opening it for writing would add this layout's tables to it.
fn refuse_former_layout(path: &Path) -> Result<(), StoreError> {
    if !path.exists() {
        return Ok(());
    }
    crate::store::files::prepare(&[path])?;
    let db = redb::ReadOnlyDatabase::open(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let former = db
        .begin_read()?
        .list_tables()?
        .any(|table| FORMER_LAYOUT_TABLES.contains(&table.name()));
    if former {
        return Err(StoreError::FormerLayout {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

impl MvccStore {
    /// Opens (or creates) the store at `path` and rebuilds its key index
    /// from the rows. A file that is not a redb database, a corrupt one,
    /// or one in an earlier orch's layout is refused with an error naming
    /// it and left untouched.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        refuse_former_layout(path)?;
        let db = crate::store::files::open_database(path)?;
        let store = Self {
            db,
            index: RwLock::new(KeyIndex::default()),
            writer: Mutex::new(()),
            last_durable: Mutex::new(std::time::Instant::now()),
        };
        // Create every table up front so readers never meet a missing one.
        let mut txn = store.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let index = KeyIndex::default();
            Tables::open(&txn, BatchIndex::new(&index), false)?;
        }
        txn.commit()?;
        *store.index_mut() = store.build_index()?;
        Ok(store)
    }

    /// The key index as the rows say, read in revision order.
    fn build_index(&self) -> Result<KeyIndex, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let mut index = KeyIndex::default();
        index.revision = read_meta(&meta, REVISION)?;
        index.compact_revision = read_meta(&meta, COMPACT_REVISION)?;
        for entry in txn.open_table(REVISIONS)?.iter()? {
            let (id, bytes) = entry?;
            let head = RowHead::decode(bytes.value())?;
            let row = (!head.deleted).then(|| RowId::from_key(id.value()));
            index.set(head.key.to_vec(), row);
        }
        Ok(index)
    }

    fn index(&self) -> RwLockReadGuard<'_, KeyIndex> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn index_mut(&self) -> RwLockWriteGuard<'_, KeyIndex> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a batch of requests (one Raft entry) atomically, storing
    /// `raft_state` (the Raft layer's applied marker) in the same commit.
    pub fn apply(
        &self,
        requests: &[Request],
        raft_state: Option<&[u8]>,
    ) -> Result<Vec<Response>, StoreError> {
        Ok(self.apply_batch(requests, raft_state, false)?.0)
    }

    /// [`Self::apply`], also returning the batch's changes for watchers,
    /// with its events if `collect_events`.
    pub fn apply_batch(
        &self,
        requests: &[Request],
        raft_state: Option<&[u8]>,
        collect_events: bool,
    ) -> Result<(Vec<Response>, Changes), StoreError> {
        let _writer = lock(&self.writer);
        let mut txn = self.db.begin_write()?;
        let durable = self.durable_due();
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let (responses, changes) = {
            let published = self.index();
            let mut tables = Tables::open(&txn, BatchIndex::new(&published), collect_events)?;
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                responses.push(tables.apply_request(request)?);
            }
            if let Some(state) = raft_state {
                tables.meta_bytes.insert(RAFT_STATE, state)?;
            }
            (responses, tables.finish()?)
        };
        txn.commit()?;
        let (index_changes, changes) = changes;
        // Published only once committed: a reader that finds a row here
        // finds it in every read transaction it begins afterwards.
        self.index_mut().publish(index_changes);
        if durable {
            self.mark_durable();
        }
        Ok((responses, changes))
    }

    fn durable_due(&self) -> bool {
        lock(&self.last_durable).elapsed() >= DURABLE_EVERY
    }

    fn mark_durable(&self) {
        *lock(&self.last_durable) = std::time::Instant::now();
    }

    /// Makes every applied batch durable (one fsync'd empty commit).
    pub fn persist(&self) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        self.mark_durable();
        Ok(())
    }

    /// The current revision (0 for an empty store).
    pub fn revision(&self) -> Result<Revision, StoreError> {
        Ok(self.index().revision)
    }

    /// The oldest revision whose events are still kept.
    pub fn compact_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.index().compact_revision)
    }

    /// Forgets the Raft layer's record (applied log id, membership): what
    /// `orch-control restore` does so the data can seed a new cluster.
    pub fn clear_raft_state(&self) -> Result<(), StoreError> {
        let _writer = lock(&self.writer);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(META_BYTES)?.remove(RAFT_STATE)?;
        txn.commit()?;
        Ok(())
    }

    /// What the Raft layer stored with the last applied batch.
    pub fn raft_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META_BYTES)?;
        Ok(meta.get(RAFT_STATE)?.map(|v| v.value().to_vec()))
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        let page = self.range_exact(key)?;
        Ok(page.kvs.into_iter().next())
    }

    fn range_exact(&self, key: &[u8]) -> Result<RangeResult, StoreError> {
        self.read_page(|index| {
            let rows: Vec<RowId> = index.get(key).into_iter().collect();
            (rows, None, index.revision)
        })
    }

    /// Keys starting with `prefix`, in key order, from `start` (inclusive;
    /// a previous page's `next_key`), at most `limit` (0 = no limit).
    pub fn range(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        self.read_page(|index| {
            let page = index.page(prefix, start, limit);
            (page.rows, page.next_key, page.revision)
        })
    }

    /// Looks rows up in the index, then reads them. Rows are removed only
    /// by compaction, and only once a later change replaced them: a row
    /// found missing was replaced and compacted after the lookup, and the
    /// lookup is made again.
    fn read_page(
        &self,
        lookup: impl Fn(&KeyIndex) -> (Vec<RowId>, Option<Vec<u8>>, Revision),
    ) -> Result<RangeResult, StoreError> {
        let mut attempt = 0;
        loop {
            let (rows, next_key, revision) = lookup(&self.index());
            let txn = self.db.begin_read()?;
            let table = txn.open_table(REVISIONS)?;
            let mut kvs = Vec::with_capacity(rows.len());
            let mut missing = None;
            for id in rows {
                match read_key_value(&table, id)? {
                    Some(kv) => kvs.push(kv),
                    None => {
                        missing = Some(id);
                        break;
                    }
                }
            }
            match missing {
                None => {
                    return Ok(RangeResult {
                        kvs,
                        more: next_key.is_some(),
                        next_key,
                        revision,
                    });
                }
                Some(id) if attempt + 1 >= READ_ATTEMPTS => {
                    return Err(StoreError::MissingRow {
                        revision: id.revision,
                        sub: id.sub,
                    });
                }
                Some(_) => attempt += 1,
            }
        }
    }

    /// Events of keys under `prefix` with revision >= `start`, in revision
    /// order. Fails with [`StoreError::Compacted`] when `start` is older than
    /// the kept history.
    pub fn events_since(&self, prefix: &[u8], start: Revision) -> Result<Vec<Event>, StoreError> {
        Ok(self.read_events(prefix, start)?.0)
    }

    /// [`Self::events_since`], plus the store's revision at the read: every
    /// event up to it has been seen, so a watcher continues after it.
    pub fn read_events(
        &self,
        prefix: &[u8],
        start: Revision,
    ) -> Result<(Vec<Event>, Revision), StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let compacted = read_meta(&meta, COMPACT_REVISION)?;
        let revision = read_meta(&meta, REVISION)?;
        if start < compacted {
            return Err(StoreError::Compacted {
                requested: start,
                compacted,
            });
        }
        let table = txn.open_table(REVISIONS)?;
        let mut events = Vec::new();
        for entry in table.range((start, 0)..)? {
            let (id, bytes) = entry?;
            // Most watchers take one kind: skip other keys' values unread.
            if !RowHead::decode(bytes.value())?.key.starts_with(prefix) {
                continue;
            }
            let id = RowId::from_key(id.value());
            let row = Row::decode(bytes.value())?;
            let prev_kv = match row.prev {
                Some(prev) => Some(named_key_value(&table, prev)?),
                None => None,
            };
            events.push(Event {
                kind: row.kind(),
                kv: row.key_value(id),
                prev_kv,
            });
        }
        Ok((events, revision))
    }

    /// Moves the revision `by` ahead and marks everything before the new
    /// one compacted, as `etcdutl snapshot restore --bump-revision
    /// --mark-compacted` does. A restored store would otherwise hand out
    /// again revisions the old cluster already gave to changes made after
    /// the snapshot, and a watcher resuming from one of them would miss
    /// events without knowing; this way every watcher from before the
    /// restore is told to relist. Returns the new revision.
    pub fn bump_revision(&self, by: Revision) -> Result<Revision, StoreError> {
        let _writer = lock(&self.writer);
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        let bumped = {
            let mut meta = txn.open_table(META)?;
            let current = read_meta(&meta, REVISION)?;
            let compacted = read_meta(&meta, COMPACT_REVISION)?;
            let bumped = current.saturating_add(by);
            meta.insert(REVISION, bumped)?;
            meta.insert(COMPACT_REVISION, bumped)?;
            // Only each live key's current row stays.
            apply::forget_rows(&mut txn.open_table(REVISIONS)?, compacted, bumped)?;
            txn.open_table(REQUESTS)?.retain(|_, _| false)?;
            bumped
        };
        txn.commit()?;
        let mut index = self.index_mut();
        index.revision = bumped;
        index.compact_revision = bumped;
        Ok(bumped)
    }

    /// Every granted lease (the leader rebuilds its expiry timers from
    /// these after an election).
    pub fn leases(&self) -> Result<Vec<Lease>, StoreError> {
        let txn = self.db.begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let mut all = Vec::new();
        for entry in leases.iter()? {
            let (_, value) = entry?;
            all.push(decode("lease", value.value())?);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::MvccStore;
    use super::rows::{REQUESTS, REVISIONS};
    use crate::store::types::{Command, Op, Request, RequestId, Txn};

    /// (rows, request records) the store holds.
    fn counts(store: &MvccStore) -> (u64, u64) {
        let txn = store.db.begin_read().expect("read");
        let rows = txn.open_table(REVISIONS).expect("rows");
        let requests = txn.open_table(REQUESTS).expect("requests");
        (rows.len().expect("rows"), requests.len().expect("requests"))
    }

    struct Requests(u128);

    impl Requests {
        fn command(&mut self, command: Command) -> Request {
            self.0 += 1;
            Request {
                id: RequestId(self.0),
                command,
            }
        }

        fn txn(&mut self, op: Op) -> Request {
            self.command(Command::Txn(Txn {
                success: vec![op],
                ..Txn::default()
            }))
        }
    }

    fn put(k: u8, value: u8) -> Op {
        Op::Put {
            key: format!("/k/{k}").into_bytes(),
            value: vec![value],
            lease: None,
        }
    }

    /// Compaction to C forgets every row replaced before C and every
    /// tombstone before C, and the records of requests applied before C;
    /// it keeps the live keys' rows and the rows changes at or after C
    /// replaced.
    #[test]
    fn compaction_forgets_replaced_rows_tombstones_and_old_records() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MvccStore::open(&dir.path().join("state.redb")).expect("open");
        let mut ids = Requests(0);
        let mut batch = Vec::new();
        for round in 0..3 {
            for k in 0..10 {
                batch.push(ids.txn(put(k, round)));
            }
        }
        for k in 0..4 {
            batch.push(ids.txn(Op::Delete {
                key: format!("/k/{k}").into_bytes(),
            }));
        }
        store.apply(&batch, None).expect("apply");
        assert_eq!(counts(&store), (34, 34));

        // To 34, the delete of /k/3: its tombstone and the row it replaced
        // stay, with the six live keys' rows; of the records, the delete's
        // and the compaction's own (both at 34).
        let compact = ids.command(Command::Compact { revision: 34 });
        store.apply(&[compact], None).expect("compact");
        assert_eq!(counts(&store), (6 + 2, 2));

        // To 35, a put to /k/9: the tombstone and its row go; /k/9's
        // replaced row stays as that put's previous value.
        store.apply(&[ids.txn(put(9, 9))], None).expect("put");
        let compact = ids.command(Command::Compact { revision: 35 });
        store.apply(&[compact], None).expect("compact");
        assert_eq!(counts(&store), (6 + 1, 2));
        let events = store.events_since(b"/k/", 35).expect("replay");
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].prev_kv.as_ref().map(|kv| kv.value.clone()),
            Some(vec![2])
        );
    }
}
