//! The store's data model, like etcd's: keys with create and mod revisions,
//! one global revision, transactions comparing mod revisions, leases.
//!
//! These are the commands a Raft entry carries and the answers applying them
//! gives; both are serialized (postcard) into the log and the state machine.
//! Byte strings go through `serde_bytes`: postcard then copies them whole
//! instead of visiting them a byte at a time (same encoding on disk).

use serde::{Deserialize, Serialize};

/// The store's logical clock: +1 per committed request that writes.
pub type Revision = u64;
/// A lease's id, chosen by the proposer (the API server).
pub type LeaseId = i64;

/// Largest value the store accepts (Kubernetes' object limit, 1.5 MiB).
pub const MAX_VALUE_BYTES: usize = 1_572_864;

/// Why a value may not be stored: the one size rule, checked by the write
/// path before Raft and again, deterministically, by the state machine.
pub fn oversized(value: &[u8]) -> Option<String> {
    (value.len() > MAX_VALUE_BYTES).then(|| {
        format!(
            "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES}",
            value.len()
        )
    })
}

/// Largest request the store accepts, encoded: an object at the value limit
/// and the rest of its transaction. With the batcher's cap on an entry it
/// keeps every log entry small enough for one replication message.
pub const MAX_REQUEST_BYTES: usize = 2 << 20;

/// A request's size as the log stores it (postcard).
pub fn encoded_bytes(request: &Request) -> usize {
    // Only fails for types postcard cannot encode; none are in a Request.
    postcard::experimental::serialized_size(request).unwrap_or(usize::MAX)
}

/// A request's encoded size, or why it may not be proposed: its values or
/// its whole are too big. The whole is a limit of the log and the
/// replication messages, checked before Raft only; the state machine never
/// sees a larger one.
pub fn proposable_size(request: &Request) -> Result<usize, String> {
    if let Command::Txn(txn) = &request.command {
        for op in txn.success.iter().chain(&txn.failure) {
            if let Op::Put { value, .. } = op
                && let Some(reason) = oversized(value)
            {
                return Err(reason);
            }
        }
    }
    let bytes = encoded_bytes(request);
    if bytes > MAX_REQUEST_BYTES {
        return Err(format!(
            "request of {bytes} bytes exceeds the limit of {MAX_REQUEST_BYTES} (all its operations together)"
        ));
    }
    Ok(bytes)
}

/// A key as stored, with its revisions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: Revision,
    /// Revision of the last write to the key: Kubernetes' resourceVersion.
    pub mod_revision: Revision,
    /// Writes since creation, starting at 1.
    pub version: u64,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// The key after the change. For a delete: the key, an empty value, and
    /// `mod_revision` = the deleting revision.
    pub kv: KeyValue,
    /// The key before the change, when it existed.
    pub prev_kv: Option<KeyValue>,
}

/// What one applied batch changed: the revisions `from..=to` (none when
/// `to < from`) and, when they were collected, every event of them in
/// order. Watchers are sent it as it is applied, so they need not read it
/// back from the store.
#[derive(Debug)]
pub struct Changes {
    pub from: Revision,
    pub to: Revision,
    pub events: Option<Vec<Event>>,
}

/// How a [`Compare`] tests a key's mod revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// A transaction guard on one key's mod revision; a missing key has mod
/// revision 0, so `Equal 0` means "does not exist".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub mod_revision: Revision,
}

/// One write inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Deletes every key starting with `prefix`.
    DeletePrefix {
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
}

/// If every compare holds, apply `success`, else `failure`. All writes of a
/// transaction share one revision, like an etcd txn.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// What one Raft-replicated request asks of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    LeaseGrant {
        id: LeaseId,
        ttl_seconds: i64,
    },
    /// Revokes a lease and deletes every key attached to it. Proposed by the
    /// leader when a lease expires: expiry is leader time, not replicated
    /// state, so every replica applies the same deletes.
    LeaseRevoke {
        id: LeaseId,
    },
    /// Forgets the history before `revision`.
    Compact {
        revision: Revision,
    },
}

/// A client-chosen id: a retried request with the same id is answered from
/// the record of its first application instead of being applied twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    /// An id nobody else uses (wall-clock nanoseconds mixed with a process
    /// counter), for requests a process makes itself: lease expiry,
    /// compaction, the API server's writes.
    pub fn unique() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self((nanos << 20) ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)) ^ (1 << 127))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub command: Command,
}

/// The answer to one applied request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store's revision after this request.
    pub revision: Revision,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Txn {
        succeeded: bool,
        /// Per applied op: the keys as they were before it.
        prev_kvs: Vec<Vec<KeyValue>>,
    },
    LeaseGranted,
    LeaseRevoked {
        deleted: u64,
    },
    Compacted,
    /// Deterministically refused: every replica refuses it the same way and
    /// nothing was written.
    Rejected {
        reason: String,
    },
}

/// A page of keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys match after the last one returned: continue from
    /// `next_key`.
    pub more: bool,
    #[serde(with = "serde_bytes")]
    pub next_key: Option<Vec<u8>>,
    /// The revision the page was read at.
    pub revision: Revision,
}

/// A granted lease, as the state machine records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_seconds: i64,
    pub granted_revision: Revision,
}
