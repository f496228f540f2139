//! Applying requests inside one redb write transaction: transactions,
//! leases and compaction, deterministic on every replica.

use std::collections::HashSet;

use redb::{ReadableTable, Table};

use super::index::{BatchChanges, BatchIndex};
use super::rows::{
    COMPACT_REVISION, LEASE_KEYS, LEASES, META, META_BYTES, REQUESTS, REVISION, REVISIONS,
    Recorded, RecordedOutcome, Row, RowHead, RowId, named_key_value, read_meta, recorded_revision,
};
use super::{StoreError, decode, encode};
use crate::store::types::{
    Changes, Command, Compare, CompareOp, Event, EventKind, KeyValue, Lease, LeaseId, Op, Outcome,
    Request, Response, Revision, Txn, oversized,
};

/// The tables of one write transaction, and the key index as the batch
/// sees it.
pub(super) struct Tables<'txn, 'index> {
    revisions: Table<'txn, (u64, u32), &'static [u8]>,
    meta: Table<'txn, &'static str, u64>,
    pub meta_bytes: Table<'txn, &'static str, &'static [u8]>,
    leases: Table<'txn, i64, &'static [u8]>,
    lease_keys: Table<'txn, (i64, &'static [u8]), ()>,
    requests: Table<'txn, u128, &'static [u8]>,
    index: BatchIndex<'index>,
    /// The batch's events, for watchers, when anyone watches.
    events: Option<Vec<Event>>,
    /// The store's revision as of the last applied request: read once per
    /// batch and written once at its end (`finish`), not per request.
    revision: Revision,
    recorded_revision: Revision,
    compact_revision: Revision,
}

/// The rows one request has written so far at its revision.
struct RevisionRows {
    revision: Revision,
    /// The next row's place in the revision.
    sub: u32,
}

impl RevisionRows {
    fn next_row(&mut self) -> RowId {
        let id = RowId {
            revision: self.revision,
            sub: self.sub,
        };
        self.sub += 1;
        id
    }
}

impl<'txn, 'index> Tables<'txn, 'index> {
    pub fn open(
        txn: &'txn redb::WriteTransaction,
        index: BatchIndex<'index>,
        collect_events: bool,
    ) -> Result<Self, StoreError> {
        let meta = txn.open_table(META)?;
        let revision = read_meta(&meta, REVISION)?;
        let compact_revision = read_meta(&meta, COMPACT_REVISION)?;
        Ok(Self {
            revision,
            recorded_revision: revision,
            compact_revision,
            meta,
            revisions: txn.open_table(REVISIONS)?,
            meta_bytes: txn.open_table(META_BYTES)?,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_table(LEASE_KEYS)?,
            requests: txn.open_table(REQUESTS)?,
            index,
            events: collect_events.then(Vec::new),
        })
    }

    /// Applies one request, or answers it from the record of its first
    /// application.
    pub fn apply_request(&mut self, request: &Request) -> Result<Response, StoreError> {
        let id = request.id.0;
        if let Some(recorded) = self.requests.get(id)? {
            let recorded: Recorded = decode("request record", recorded.value())?;
            return self.replay(recorded);
        }
        let (response, recorded) = self.apply_command(&request.command)?;
        self.requests.insert(id, recorded.encode().as_slice())?;
        Ok(response)
    }

    /// A recorded response with its previous values read back: the rows it
    /// names are kept as long as the record (compaction forgets both
    /// together).
    fn replay(&self, recorded: Recorded) -> Result<Response, StoreError> {
        let outcome = match recorded.outcome {
            RecordedOutcome::Other(outcome) => outcome,
            RecordedOutcome::Txn {
                succeeded,
                prev_rows,
            } => {
                let mut prev_kvs = Vec::with_capacity(prev_rows.len());
                for rows in prev_rows {
                    let mut kvs = Vec::with_capacity(rows.len());
                    for row in rows {
                        kvs.push(self.row(row)?);
                    }
                    prev_kvs.push(kvs);
                }
                Outcome::Txn {
                    succeeded,
                    prev_kvs,
                }
            }
        };
        Ok(Response {
            revision: recorded.revision,
            outcome,
        })
    }

    /// Stores the revision the batch ended at (once) and hands back the
    /// batch's index changes, to publish after the commit, and its events.
    pub fn finish(mut self) -> Result<(BatchChanges, Changes), StoreError> {
        if self.revision != self.recorded_revision {
            self.meta.insert(REVISION, self.revision)?;
        }
        let changes = Changes {
            from: self.recorded_revision + 1,
            to: self.revision,
            events: self.events,
        };
        Ok((
            self.index.finish(self.revision, self.compact_revision),
            changes,
        ))
    }

    fn row(&self, id: RowId) -> Result<KeyValue, StoreError> {
        named_key_value(&self.revisions, id)
    }

    fn apply_command(&mut self, command: &Command) -> Result<(Response, Recorded), StoreError> {
        let current = self.revision;
        let (outcome, recorded) = match command {
            Command::Txn(txn) => self.apply_txn(txn, current + 1)?,
            Command::LeaseGrant { id, ttl_seconds } => {
                without_values(self.lease_grant(*id, *ttl_seconds, current)?)
            }
            Command::LeaseRevoke { id } => without_values(self.lease_revoke(*id, current + 1)?),
            Command::Compact { revision } => without_values(self.compact(*revision, current)?),
        };
        let response = Response {
            revision: self.revision,
            outcome,
        };
        let recorded = Recorded {
            revision: self.revision,
            outcome: recorded,
        };
        Ok((response, recorded))
    }

    fn apply_txn(
        &mut self,
        txn: &Txn,
        revision: Revision,
    ) -> Result<(Outcome, RecordedOutcome), StoreError> {
        let mut succeeded = true;
        for compare in &txn.compares {
            if !self.holds(compare) {
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
            return Ok(without_values(Outcome::Rejected { reason }));
        }
        let mut rows = RevisionRows { revision, sub: 0 };
        let mut prev_kvs = Vec::with_capacity(ops.len());
        let mut prev_rows = Vec::with_capacity(ops.len());
        for op in ops {
            let mut prevs = Vec::new();
            match op {
                Op::Put { key, value, lease } => {
                    prevs.extend(self.put(key, value, *lease, &mut rows)?)
                }
                Op::Delete { key } => prevs.extend(self.delete(key, &mut rows)?),
                Op::DeletePrefix { prefix } => {
                    for key in self.index.keys_with_prefix(prefix) {
                        prevs.extend(self.delete(&key, &mut rows)?);
                    }
                }
            }
            let (ids, kvs) = prevs.into_iter().unzip();
            prev_rows.push(ids);
            prev_kvs.push(kvs);
        }
        self.took(&rows);
        Ok((
            Outcome::Txn {
                succeeded,
                prev_kvs,
            },
            RecordedOutcome::Txn {
                succeeded,
                prev_rows,
            },
        ))
    }

    /// A request that changed nothing takes no revision.
    fn took(&mut self, rows: &RevisionRows) {
        if rows.sub > 0 {
            self.revision = rows.revision;
        }
    }

    fn holds(&self, compare: &Compare) -> bool {
        let actual = self.index.get(&compare.key).map_or(0, |row| row.revision);
        match compare.op {
            CompareOp::Equal => actual == compare.mod_revision,
            CompareOp::NotEqual => actual != compare.mod_revision,
            CompareOp::Less => actual < compare.mod_revision,
            CompareOp::Greater => actual > compare.mod_revision,
        }
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

    /// Writes `key`'s new row; returns its previous one.
    fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
        rows: &mut RevisionRows,
    ) -> Result<Option<(RowId, KeyValue)>, StoreError> {
        let prev_id = self.index.get(key);
        let prev = prev_id.map(|id| self.row(id)).transpose()?;
        let id = rows.next_row();
        let row = Row {
            prev: prev_id,
            deleted: false,
            key,
            create_revision: prev.as_ref().map_or(id.revision, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        if let Some(old) = prev.as_ref().and_then(|p| p.lease)
            && Some(old) != lease
        {
            self.lease_keys.remove((old, key))?;
        }
        if let Some(lease) = lease {
            self.lease_keys.insert((lease, key), ())?;
        }
        self.revisions.insert(id.key(), encode(&row).as_slice())?;
        self.index.set(key, Some(id));
        if let Some(events) = self.events.as_mut() {
            events.push(Event {
                kind: EventKind::Put,
                kv: row.key_value(id),
                prev_kv: prev.clone(),
            });
        }
        Ok(prev_id.zip(prev))
    }

    /// Writes `key`'s tombstone, if it exists; returns its last row.
    fn delete(
        &mut self,
        key: &[u8],
        rows: &mut RevisionRows,
    ) -> Result<Option<(RowId, KeyValue)>, StoreError> {
        let Some(prev_id) = self.index.get(key) else {
            return Ok(None);
        };
        let prev = self.row(prev_id)?;
        if let Some(lease) = prev.lease {
            self.lease_keys.remove((lease, key))?;
        }
        let id = rows.next_row();
        let tombstone = Row {
            prev: Some(prev_id),
            deleted: true,
            key,
            create_revision: 0,
            version: 0,
            lease: None,
            value: &[],
        };
        self.revisions
            .insert(id.key(), encode(&tombstone).as_slice())?;
        self.index.set(key, None);
        if let Some(events) = self.events.as_mut() {
            events.push(Event {
                kind: EventKind::Delete,
                kv: tombstone.key_value(id),
                prev_kv: Some(prev.clone()),
            });
        }
        Ok(Some((prev_id, prev)))
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
        let mut rows = RevisionRows { revision, sub: 0 };
        for key in &keys {
            self.delete(key, &mut rows)?;
        }
        self.took(&rows);
        Ok(Outcome::LeaseRevoked {
            deleted: u64::from(rows.sub),
        })
    }

    fn compact(&mut self, revision: Revision, current: Revision) -> Result<Outcome, StoreError> {
        let compacted = self.compact_revision;
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
        forget_rows(&mut self.revisions, compacted, revision)?;
        forget_requests(&mut self.requests, revision)?;
        self.meta.insert(COMPACT_REVISION, revision)?;
        self.compact_revision = revision;
        Ok(Outcome::Compacted)
    }
}

/// An outcome that names no row, and its record.
fn without_values(outcome: Outcome) -> (Outcome, RecordedOutcome) {
    (outcome.clone(), RecordedOutcome::Other(outcome))
}

/// Forgets the rows no watch from `to` on can need, given that the rows
/// before `from` were forgotten the same way: the rows replaced by a change
/// made before `to` (each change names the row it replaced) and the
/// tombstones before `to`. What stays below `to` is each live key's
/// current row, and the row a change at or after `to` replaced (its
/// previous value). The sweep reads only the rows made since `from`.
pub(super) fn forget_rows(
    revisions: &mut Table<'_, (u64, u32), &'static [u8]>,
    from: Revision,
    to: Revision,
) -> Result<(), StoreError> {
    let mut forgotten = Vec::new();
    for entry in revisions.range((from, 0)..(to, 0))? {
        let (id, bytes) = entry?;
        let head = RowHead::decode(bytes.value())?;
        if let Some(prev) = head.prev {
            forgotten.push(prev);
        }
        if head.deleted {
            forgotten.push(RowId::from_key(id.value()));
        }
    }
    for id in forgotten {
        revisions.remove(id.key())?;
    }
    Ok(())
}

/// Forgets the records of requests applied before `to`.
pub(super) fn forget_requests(
    requests: &mut Table<'_, u128, &'static [u8]>,
    to: Revision,
) -> Result<(), StoreError> {
    let mut forgotten = Vec::new();
    for entry in requests.iter()? {
        let (id, recorded) = entry?;
        if recorded_revision(recorded.value())? < to {
            forgotten.push(id.value());
        }
    }
    for id in forgotten {
        requests.remove(id)?;
    }
    Ok(())
}
