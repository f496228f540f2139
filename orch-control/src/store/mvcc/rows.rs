//! How the state machine lays its data out in redb, like etcd's backend:
//! every change of a key is one row keyed by the revision that made it,
//! written once and never rewritten. A batch of changes therefore dirties
//! the last pages of one table instead of one page per key it touches.
//! Which row is a key's current one is kept in memory ([`super::index`]),
//! rebuilt from the rows when the store opens.

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{StoreError, decode, encode};
use crate::store::types::{EventKind, KeyValue, LeaseId, Outcome, Revision};

/// Row id -> [`Row`]: every change still kept, in revision order.
pub(crate) const REVISIONS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("revisions");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_BYTES: TableDefinition<&str, &[u8]> = TableDefinition::new("meta_bytes");
pub(crate) const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
/// (lease, key) for every key attached to a lease.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");
/// Request id -> [`Recorded`] response, for de-duplicating retries. Ids
/// start with their proposer's clock, so new ones land on the last pages.
pub(crate) const REQUESTS: TableDefinition<u128, &[u8]> = TableDefinition::new("requests");

/// Tables of the layout before rows (a key table rewritten in place and a
/// history holding every value again): a file with them is refused.
pub(crate) const FORMER_LAYOUT_TABLES: [&str; 2] = ["kv", "history"];

pub(crate) const REVISION: &str = "revision";
pub(crate) const COMPACT_REVISION: &str = "compact_revision";
pub(crate) const RAFT_STATE: &str = "raft_state";

/// Where a change is: the revision that made it and its place among that
/// revision's changes (etcd's main and sub revision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct RowId {
    pub revision: Revision,
    pub sub: u32,
}

impl RowId {
    pub fn key(self) -> (u64, u32) {
        (self.revision, self.sub)
    }

    pub fn from_key((revision, sub): (u64, u32)) -> Self {
        Self { revision, sub }
    }
}

/// One change of one key. The fields the index and compaction read come
/// before the value, so [`RowHead`] decodes them without touching it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Row<'a> {
    /// The key's row before this change, when the key existed: the
    /// change's previous value for watchers and responses. Compaction keeps
    /// that row as long as this one is at or after the compaction point.
    pub prev: Option<RowId>,
    /// A delete (a tombstone); otherwise a put.
    pub deleted: bool,
    #[serde(borrow, with = "serde_bytes")]
    pub key: &'a [u8],
    pub create_revision: Revision,
    pub version: u64,
    pub lease: Option<LeaseId>,
    #[serde(borrow, with = "serde_bytes")]
    pub value: &'a [u8],
}

/// The leading fields of a [`Row`].
#[derive(Deserialize)]
pub(crate) struct RowHead<'a> {
    pub prev: Option<RowId>,
    pub deleted: bool,
    #[serde(borrow, with = "serde_bytes")]
    pub key: &'a [u8],
}

impl<'a> Row<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, StoreError> {
        decode("row", bytes)
    }

    pub fn kind(&self) -> EventKind {
        if self.deleted {
            EventKind::Delete
        } else {
            EventKind::Put
        }
    }

    /// The key as this change left it. A delete gives the key, an empty
    /// value and the deleting revision, as etcd's delete events do.
    pub fn key_value(&self, id: RowId) -> KeyValue {
        KeyValue {
            key: self.key.to_vec(),
            value: self.value.to_vec(),
            create_revision: self.create_revision,
            mod_revision: id.revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

impl<'a> RowHead<'a> {
    pub fn decode(bytes: &'a [u8]) -> Result<Self, StoreError> {
        postcard::take_from_bytes(bytes)
            .map(|(head, _)| head)
            .map_err(|source| StoreError::Decode {
                what: "row",
                source,
            })
    }
}

/// A revision counter of the `META` table; 0 until first stored.
pub(crate) fn read_meta(
    meta: &impl ReadableTable<&'static str, u64>,
    name: &str,
) -> Result<u64, StoreError> {
    Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0))
}

/// The key as the row `id` left it, which must exist: a key's current row
/// or a row a kept change or request record names.
pub(crate) fn named_key_value(
    table: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: RowId,
) -> Result<KeyValue, StoreError> {
    read_key_value(table, id)?.ok_or(StoreError::MissingRow {
        revision: id.revision,
        sub: id.sub,
    })
}

/// The key as the row `id` left it; `None` when the row is gone (compacted
/// since its id was looked up).
pub(crate) fn read_key_value(
    table: &impl ReadableTable<(u64, u32), &'static [u8]>,
    id: RowId,
) -> Result<Option<KeyValue>, StoreError> {
    match table.get(id.key())? {
        Some(bytes) => Ok(Some(Row::decode(bytes.value())?.key_value(id))),
        None => Ok(None),
    }
}

/// A response as recorded for a retry: previous values by row, not copied
/// again.
#[derive(Serialize, Deserialize)]
pub(crate) struct Recorded {
    /// First, so compaction reads it alone ([`recorded_revision`]).
    pub revision: Revision,
    pub outcome: RecordedOutcome,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum RecordedOutcome {
    Txn {
        succeeded: bool,
        /// Per applied op: the rows of the keys as they were before it.
        prev_rows: Vec<Vec<RowId>>,
    },
    /// Any other outcome, which carries no values.
    Other(Outcome),
}

impl Recorded {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }
}

/// The revision a recorded response was applied at.
pub(crate) fn recorded_revision(bytes: &[u8]) -> Result<Revision, StoreError> {
    postcard::take_from_bytes::<Revision>(bytes)
        .map(|(revision, _)| revision)
        .map_err(|source| StoreError::Decode {
            what: "request record",
            source,
        })
}
