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
//! - `restore_data_dir`: a new cluster's data directory from a snapshot

pub(crate) mod files;
pub mod identity;
pub mod mvcc;
pub mod raft;
pub mod snapshot;
pub mod types;
pub mod watch;

pub use mvcc::{MvccStore, StoreError};

/// How far a restored store's revision jumps (etcd's documented
/// `--bump-revision` for Kubernetes): more than any cluster writes between
/// a backup and its restore, so no revision is handed out twice.
pub const RESTORE_REVISION_BUMP: types::Revision = 1_000_000_000;

/// Builds a new replica's data directory from a snapshot file (like
/// `etcdutl snapshot restore --bump-revision --mark-compacted`): the data,
/// without the old cluster's membership, its revision moved
/// [`RESTORE_REVISION_BUMP`] ahead with everything before compacted.
/// `data_dir` must be missing or empty; nothing is left behind unless the
/// snapshot verifies. Returns the restored store's revision.
pub fn restore_data_dir(
    file: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<types::Revision, snapshot::SnapshotError> {
    use snapshot::SnapshotError;
    if std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(SnapshotError::NotEmpty {
            path: data_dir.to_path_buf(),
        });
    }
    let created = !data_dir.exists();
    let state_dir = data_dir.join("state");
    std::fs::create_dir_all(&state_dir).map_err(|source| SnapshotError::Io {
        path: state_dir.clone(),
        source,
    })?;
    let restored =
        MvccStore::restore_snapshot(file, &state_dir.join("state.redb")).and_then(|store| {
            store.clear_raft_state()?;
            Ok(store.bump_revision(RESTORE_REVISION_BUMP)?)
        });
    if restored.is_err() {
        // Remove only what this made: the directory may be a mount point
        // the operator prepared.
        let _ = std::fs::remove_dir_all(&state_dir);
        if created {
            let _ = std::fs::remove_dir(data_dir);
        }
    }
    restored
}

/// What `orch-control restore` and `orchctl snapshot restore` print after
/// `restore_data_dir`: what was restored and how to start it.
pub fn restored_message(revision: types::Revision, data_dir: &std::path::Path) -> String {
    format!(
        "restored into {dir} (revisions go on from {revision}; watchers from before the backup relist); start it with: orch-control --data-dir {dir} --node-id ID --listen ADDR --init",
        dir = data_dir.display()
    )
}
