//! The cluster's store (the etcd of orch). Only the API server uses it.
//!
//! - `types`: the data model (keys, revisions, transactions, leases, events)
//! - `mvcc`: the replicated state machine's storage in redb
//!
//! The Raft layer (openraft: log store, batcher, transport, snapshots) is
//! built on these next.

pub mod mvcc;
pub mod types;

pub use mvcc::{MvccStore, StoreError};
