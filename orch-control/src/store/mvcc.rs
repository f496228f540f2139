//! The state machine's storage: keys, history and leases in one redb file.
//!
//! Applying is deterministic: every replica that applies the same requests
//! in the same order holds the same bytes. A batch of requests (one Raft
//! entry) is applied in one redb write transaction, together with the Raft
//! bookkeeping passed in, so a crash never leaves them apart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::types::{
    Command, Compare, CompareOp, Event, EventKind, KeyValue, Lease, LeaseId, Op, Outcome,
    RangeResult, Request, Response, Revision, Txn, oversized,
};

pub(super) const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Revision -> the events of that revision, in order.
pub(super) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");
pub(super) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// (lease, key) for every key attached to a lease.
pub(super) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
/// Request id -> its response, for de-duplicating retries.
pub(super) const REQUESTS: TableDefinition<u128, &[u8]> = TableDefinition::new("requests");
/// (revision applied at, request id): prunes `REQUESTS` with the history.
pub(super) const REQUESTS_BY_REVISION: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("requests_by_revision");

pub(super) const REVISION: &str = "revision";
pub(super) const COMPACT_REVISION: &str = "compact_revision";
pub(super) const RAFT_STATE: &str = "raft_state";

/// Errors of the store's storage. Deterministic refusals of a request are
/// not errors: they are [`Outcome::Rejected`].
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("opening store {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
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

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}

/// How long applied batches may stay in memory-only (non-durable) redb
/// commits before one commit fsyncs them all.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

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
    last_durable: std::sync::Mutex<std::time::Instant>,
}

impl MvccStore {
    /// Opens (or creates) the store at `path`. A file that is not a redb
    /// database, or a corrupt one, is refused with an error naming it and
    /// left untouched.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = crate::store::files::open_database(path)?;
        let store = Self {
            db,
            last_durable: std::sync::Mutex::new(std::time::Instant::now()),
        };
        // Create every table up front so readers never meet a missing one.
        let mut txn = store.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        Tables::open(&txn)?;
        txn.commit()?;
        Ok(store)
    }

    /// Applies a batch of requests (one Raft entry) atomically, storing
    /// `raft_state` (the Raft layer's applied marker) in the same commit.
    pub fn apply(
        &self,
        requests: &[Request],
        raft_state: Option<&[u8]>,
    ) -> Result<Vec<Response>, StoreError> {
        let mut txn = self.db.begin_write()?;
        let durable = self.durable_due();
        txn.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })?;
        let responses = {
            let mut tables = Tables::open(&txn)?;
            let mut responses = Vec::with_capacity(requests.len());
            for request in requests {
                let id = request.id.0;
                if let Some(recorded) = tables.requests.get(id)? {
                    responses.push(decode("request record", recorded.value())?);
                    continue;
                }
                let response = tables.apply_command(&request.command)?;
                tables.requests.insert(id, encode(&response).as_slice())?;
                tables
                    .requests_by_revision
                    .insert((response.revision, id), ())?;
                responses.push(response);
            }
            tables.record_revision()?;
            if let Some(state) = raft_state {
                tables.meta_bytes.insert(RAFT_STATE, state)?;
            }
            responses
        };
        txn.commit()?;
        if durable {
            self.mark_durable();
        }
        Ok(responses)
    }

    fn durable_due(&self) -> bool {
        match self.last_durable.lock() {
            Ok(at) => at.elapsed() >= DURABLE_EVERY,
            Err(poisoned) => poisoned.into_inner().elapsed() >= DURABLE_EVERY,
        }
    }

    fn mark_durable(&self) {
        let mut at = match self.last_durable.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *at = std::time::Instant::now();
    }

    /// Makes every applied batch durable (one fsync'd empty commit).
    pub fn persist(&self) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.commit()?;
        self.mark_durable();
        Ok(())
    }

    /// The current revision (0 for an empty store).
    pub fn revision(&self) -> Result<Revision, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0))
    }

    /// The oldest revision whose events are still kept.
    pub fn compact_revision(&self) -> Result<Revision, StoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta.get(COMPACT_REVISION)?.map(|v| v.value()).unwrap_or(0))
    }

    /// Forgets the Raft layer's record (applied log id, membership): what
    /// `orch-control restore` does so the data can seed a new cluster.
    pub fn clear_raft_state(&self) -> Result<(), StoreError> {
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
        let txn = self.db.begin_read()?;
        let kv = txn.open_table(KV)?;
        kv.get(key)?.map(|v| decode("key", v.value())).transpose()
    }

    /// Keys starting with `prefix`, in key order, from `start` (inclusive;
    /// a previous page's `next_key`), at most `limit` (0 = no limit).
    pub fn range(
        &self,
        prefix: &[u8],
        start: Option<&[u8]>,
        limit: usize,
    ) -> Result<RangeResult, StoreError> {
        let txn = self.db.begin_read()?;
        let revision = txn
            .open_table(META)?
            .get(REVISION)?
            .map(|v| v.value())
            .unwrap_or(0);
        let kv = txn.open_table(KV)?;
        let from = match start {
            Some(start) if start > prefix => start,
            _ => prefix,
        };
        let mut result = RangeResult {
            revision,
            ..RangeResult::default()
        };
        for entry in kv.range(from..)? {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            if limit > 0 && result.kvs.len() == limit {
                result.more = true;
                result.next_key = Some(key.value().to_vec());
                break;
            }
            result.kvs.push(decode("key", value.value())?);
        }
        Ok(result)
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
        let compacted = meta.get(COMPACT_REVISION)?.map(|v| v.value()).unwrap_or(0);
        let revision = meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
        if start < compacted {
            return Err(StoreError::Compacted {
                requested: start,
                compacted,
            });
        }
        let history = txn.open_table(HISTORY)?;
        let mut events = Vec::new();
        for entry in history.range(start..)? {
            let (_, value) = entry?;
            let batch: Vec<Event> = decode("history", value.value())?;
            events.extend(batch.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
        }
        Ok((events, revision))
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

/// The tables of one write transaction.
struct Tables<'txn> {
    kv: Table<'txn, &'static [u8], &'static [u8]>,
    history: Table<'txn, u64, &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    meta_bytes: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, i64, &'static [u8]>,
    lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
    requests: Table<'txn, u128, &'static [u8]>,
    requests_by_revision: Table<'txn, (u64, u128), ()>,
    /// The store's revision as of the last applied request: read once per
    /// batch and written once at its end (`record_revision`), not per
    /// request.
    revision: Revision,
    /// The revision the table holds (as read, or last recorded).
    recorded_revision: Revision,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn redb::WriteTransaction) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        let revision = meta.get(REVISION)?.map(|v| v.value()).unwrap_or(0);
        Ok(Self {
            revision,
            recorded_revision: revision,
            meta,
            kv: txn.open_table(KV)?,
            history: txn.open_table(HISTORY)?,
            meta_bytes: txn.open_table(META_BYTES)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            requests: txn.open_table(REQUESTS)?,
            requests_by_revision: txn.open_table(REQUESTS_BY_REVISION)?,
        })
    }

    fn meta(&self, name: &str) -> Result<u64, StoreError> {
        Ok(self.meta.get(name)?.map(|v| v.value()).unwrap_or(0))
    }

    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, StoreError> {
        self.kv
            .get(key)?
            .map(|v| decode("key", v.value()))
            .transpose()
    }

    fn apply_command(&mut self, command: &Command) -> Result<Response, StoreError> {
        let current = self.revision;
        let outcome = match command {
            Command::Txn(txn) => self.apply_txn(txn, current + 1)?,
            Command::LeaseGrant { id, ttl_seconds } => {
                self.lease_grant(*id, *ttl_seconds, current)?
            }
            Command::LeaseRevoke { id } => self.lease_revoke(*id, current + 1)?,
            Command::Compact { revision } => self.compact(*revision, current)?,
        };
        Ok(Response {
            revision: self.revision,
            outcome,
        })
    }

    fn apply_txn(&mut self, txn: &Txn, revision: Revision) -> Result<Outcome, StoreError> {
        let mut succeeded = true;
        for compare in &txn.compares {
            if !self.holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if let Some(reason) = self.refuse(ops)? {
            return Ok(Outcome::Rejected { reason });
        }
        let mut events = Vec::new();
        let mut prev_kvs = Vec::with_capacity(ops.len());
        for op in ops {
            let before = events.len();
            match op {
                Op::Put { key, value, lease } => {
                    self.put(key, value, *lease, revision, &mut events)?
                }
                Op::Delete { key } => self.delete(key, revision, &mut events)?,
                Op::DeletePrefix { prefix } => {
                    for key in self.keys_with_prefix(prefix)? {
                        self.delete(&key, revision, &mut events)?;
                    }
                }
            }
            prev_kvs.push(
                events[before..]
                    .iter()
                    .filter_map(|e| e.prev_kv.clone())
                    .collect(),
            );
        }
        self.commit_events(revision, events)?;
        Ok(Outcome::Txn {
            succeeded,
            prev_kvs,
        })
    }

    fn holds(&self, compare: &Compare) -> Result<bool, StoreError> {
        let actual = self.get(&compare.key)?.map_or(0, |kv| kv.mod_revision);
        Ok(match compare.op {
            CompareOp::Equal => actual == compare.mod_revision,
            CompareOp::NotEqual => actual != compare.mod_revision,
            CompareOp::Less => actual < compare.mod_revision,
            CompareOp::Greater => actual > compare.mod_revision,
        })
    }

    /// Why `ops` may not be applied, checked before anything is written.
    fn refuse(&self, ops: &[Op]) -> Result<Option<String>, StoreError> {
        let mut keys = HashSet::new();
        for op in ops {
            let key = match op {
                Op::Put { key, value, lease } => {
                    if let Some(reason) = oversized(value) {
                        return Ok(Some(reason));
                    }
                    if let Some(lease) = lease
                        && self.leases.get(*lease)?.is_none()
                    {
                        return Ok(Some(format!("lease {lease} not found")));
                    }
                    key
                }
                Op::Delete { key } => key,
                Op::DeletePrefix { .. } => continue,
            };
            if !keys.insert(key.as_slice()) {
                return Ok(Some(format!(
                    "duplicate key given in txn request: {}",
                    String::from_utf8_lossy(key)
                )));
            }
        }
        Ok(None)
    }

    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let prev = self.get(key)?;
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
        };
        if let Some(old) = prev.as_ref().and_then(|p| p.lease)
            && Some(old) != lease
        {
            self.lease_keys.remove((old, key))?;
        }
        if let Some(lease) = lease {
            self.lease_keys.insert((lease, key), ())?;
        }
        self.kv.insert(key, encode(&kv).as_slice())?;
        events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        });
        Ok(())
    }

    fn delete(
        &mut self,
        key: &[u8],
        revision: Revision,
        events: &mut Vec<Event>,
    ) -> Result<(), StoreError> {
        let Some(prev) = self.get(key)? else {
            return Ok(());
        };
        self.kv.remove(key)?;
        if let Some(lease) = prev.lease {
            self.lease_keys.remove((lease, key))?;
        }
        events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                version: 0,
                lease: None,
            },
            prev_kv: Some(prev),
        });
        Ok(())
    }

    fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        let mut keys = Vec::new();
        for entry in self.kv.range(prefix..)? {
            let (key, _) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            keys.push(key.value().to_vec());
        }
        Ok(keys)
    }

    /// Records a revision's events; a request that changed nothing takes no
    /// revision.
    fn commit_events(&mut self, revision: Revision, events: Vec<Event>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.history.insert(revision, encode(&events).as_slice())?;
        self.revision = revision;
        Ok(())
    }

    /// Stores the revision the batch ended at, once.
    fn record_revision(&mut self) -> Result<(), StoreError> {
        if self.revision != self.recorded_revision {
            self.meta.insert(REVISION, self.revision)?;
            self.recorded_revision = self.revision;
        }
        Ok(())
    }

    fn lease_grant(
        &mut self,
        id: LeaseId,
        ttl_seconds: i64,
        current: Revision,
    ) -> Result<Outcome, StoreError> {
        if ttl_seconds <= 0 {
            return Ok(Outcome::Rejected {
                reason: format!("lease TTL must be positive, got {ttl_seconds}"),
            });
        }
        if self.leases.get(id)?.is_some() {
            return Ok(Outcome::Rejected {
                reason: format!("lease {id} already exists"),
            });
        }
        let lease = Lease {
            id,
            ttl_seconds,
            granted_revision: current,
        };
        self.leases.insert(id, encode(&lease).as_slice())?;
        Ok(Outcome::LeaseGranted)
    }

    fn lease_revoke(&mut self, id: LeaseId, revision: Revision) -> Result<Outcome, StoreError> {
        if self.leases.remove(id)?.is_none() {
            return Ok(Outcome::Rejected {
                reason: format!("lease {id} not found"),
            });
        }
        let mut keys = Vec::new();
        for entry in self.lease_keys.range((id, &[][..])..)? {
            let (key, _) = entry?;
            let (lease, key) = key.value();
            if lease != id {
                break;
            }
            keys.push(key.to_vec());
        }
        let mut events = Vec::new();
        for key in &keys {
            self.delete(key, revision, &mut events)?;
        }
        let deleted = events.len() as u64;
        self.commit_events(revision, events)?;
        Ok(Outcome::LeaseRevoked { deleted })
    }

    fn compact(&mut self, revision: Revision, current: Revision) -> Result<Outcome, StoreError> {
        let compacted = self.meta(COMPACT_REVISION)?;
        if revision > current {
            return Ok(Outcome::Rejected {
                reason: format!(
                    "required revision {revision} is a future revision (current {current})"
                ),
            });
        }
        if revision <= compacted {
            return Ok(Outcome::Rejected {
                reason: format!("required revision {revision} has been compacted (at {compacted})"),
            });
        }
        self.history.retain_in(..revision, |_, _| false)?;
        let mut forgotten = Vec::new();
        for entry in self.requests_by_revision.range(..(revision, 0))? {
            let (key, _) = entry?;
            forgotten.push(key.value());
        }
        for (applied_at, id) in forgotten {
            self.requests_by_revision.remove((applied_at, id))?;
            self.requests.remove(id)?;
        }
        self.meta.insert(COMPACT_REVISION, revision)?;
        Ok(Outcome::Compacted)
    }
}
