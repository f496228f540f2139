//! The cluster's store (the etcd of orch). Only the API server uses it.
//!
//! - `identity`: which cluster a data directory belongs to, as which node
//! - `types`: the data model (keys, revisions, transactions, leases, events)
//! - `mvcc`: the replicated state machine's storage in redb
//! - `snapshot`: consistent snapshot files with a checksum, and restore
//! - `raft`: openraft storage v2 over these: the log store (its own redb
//!   file) and the state machine
//!
//! - `watch`: prefix watches from a revision, replayed then live
//!
//! Still to come: TLS between replicas and the API server.

pub(crate) mod files;
pub mod identity;
pub mod mvcc;
pub mod raft;
pub mod snapshot;
pub mod types;
pub mod watch;

pub use mvcc::{MvccStore, StoreError};
