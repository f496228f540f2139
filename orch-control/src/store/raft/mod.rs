//! Raft replication of the store with openraft (storage v2): the log in one
//! redb file, the state machine ([`super::MvccStore`]) in another, so log
//! fsyncs and applies overlap.

pub mod client;
pub mod compactor;
pub mod lessor;
pub mod log_store;
pub mod node;
pub mod peer_auth;
pub mod peer_tls;
pub mod recent_log;
pub mod service;
pub mod state_machine;
pub mod transport;

use openraft::{AnyError, BasicNode, StorageError, StorageIOError};

use super::types::{Request, Response};

/// Node ids of control-plane replicas.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// orch's Raft types: an entry carries a batch of client requests, so
    /// concurrent writers share one log fsync.
    pub TypeConfig:
        D = Vec<Request>,
        R = Vec<Response>,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = tokio::fs::File,
);

pub type RaftStorageError = StorageError<NodeId>;

/// Runs blocking redb work off the async runtime, mapping failures to
/// openraft's storage error for `what`.
async fn blocking<T, F>(
    what: fn(AnyError) -> StorageIOError<NodeId>,
    work: F,
) -> Result<T, RaftStorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, AnyError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(what(error).into()),
        Err(join) => Err(what(AnyError::new(&join)).into()),
    }
}

fn any_error<E: std::error::Error + 'static>(error: E) -> AnyError {
    AnyError::new(&error)
}
