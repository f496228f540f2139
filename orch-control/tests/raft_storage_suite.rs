//! openraft's own storage test suite against orch's redb log store and
//! state machine (real files in a temporary directory).

use openraft::testing::{StoreBuilder, Suite};
use openraft::{AnyError, StorageError, StorageIOError};
use orch_control::store::raft::log_store::LogStore;
use orch_control::store::raft::state_machine::StateMachine;
use orch_control::store::raft::{NodeId, TypeConfig};
use tempfile::TempDir;

/// Builds stores keeping `keep` committed log entries in memory.
struct RedbBuilder {
    keep: usize,
}

fn io_error(error: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&error)).into()
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(io_error)?;
        let log =
            LogStore::open_keeping(&dir.path().join("log.redb"), self.keep).map_err(io_error)?;
        let state = StateMachine::open(&dir.path().join("state")).map_err(io_error)?;
        Ok((dir, log, state))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(error) = Suite::test_all(RedbBuilder {
        keep: orch_control::store::raft::recent_log::RECENT_ENTRIES,
    }) {
        panic!("openraft storage suite failed: {error}");
    }
}

/// The suite's logs are shorter than what the store keeps in memory: run it
/// again with nothing kept, so committed entries are read from redb.
#[test]
fn openraft_storage_suite_reading_redb() {
    if let Err(error) = Suite::test_all(RedbBuilder { keep: 0 }) {
        panic!("openraft storage suite (nothing kept in memory) failed: {error}");
    }
}
