//! openraft's state machine over [`MvccStore`]: applies entries in batches
//! (one redb commit for everything openraft hands over at once) and builds
//! and installs snapshots as files.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{NodeId, RaftStorageError, TypeConfig, any_error, blocking};
use crate::store::types::{Changes, Event, Request, Response};
use crate::store::watch::Announcement;
use crate::store::{MvccStore, StoreError};

const STATE_FILE: &str = "state.redb";
const SNAPSHOT_FILE: &str = "snapshot.snap";
const SNAPSHOT_META_FILE: &str = "snapshot.meta";

/// What openraft needs back after a restart, stored in the same commit as
/// the data it describes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
}

/// How many announcements a watcher may fall behind before it reads the
/// rows instead.
const ANNOUNCEMENTS_KEPT: usize = 64;
/// A batch whose keys and values hold more bytes than this is announced
/// without them (watchers read the rows), so the kept announcements hold
/// about `ANNOUNCEMENTS_KEPT` MiB at most.
const ANNOUNCED_BYTES: usize = 1 << 20;

fn announced_bytes(events: &[Event]) -> usize {
    events
        .iter()
        .map(|event| {
            event.kv.key.len()
                + event.kv.value.len()
                + event
                    .prev_kv
                    .as_ref()
                    .map_or(0, |prev| prev.key.len() + prev.value.len())
        })
        .sum()
}

/// The replica's current store. Replaced whole when a snapshot is
/// installed; readers take the `Arc` they need. Announces each applied
/// batch's changes to watchers.
#[derive(Clone)]
pub struct SharedStore {
    store: Arc<RwLock<Arc<MvccStore>>>,
    announcements: tokio::sync::broadcast::Sender<Announcement>,
}

impl SharedStore {
    pub(crate) fn new(store: MvccStore) -> Self {
        Self {
            store: Arc::new(RwLock::new(Arc::new(store))),
            announcements: tokio::sync::broadcast::Sender::new(ANNOUNCEMENTS_KEPT),
        }
    }

    /// What is applied from now on, for watchers.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Announcement> {
        self.announcements.subscribe()
    }

    /// Whether anyone watches: the next batch's events are collected only
    /// then.
    pub(crate) fn watched(&self) -> bool {
        self.announcements.receiver_count() > 0
    }

    pub(crate) fn announce(&self, changes: Changes) {
        if changes.to < changes.from {
            return; // nothing changed
        }
        let announcement = match changes.events.as_deref() {
            Some(events) if announced_bytes(events) <= ANNOUNCED_BYTES => {
                Announcement::Changes(Arc::new(changes))
            }
            // Too large to keep, or not collected because nobody watched
            // when the batch began (a watcher that joined since reads it).
            _ => Announcement::ReadStore,
        };
        // No receiver: nobody watches.
        let _ = self.announcements.send(announcement);
    }

    /// The store was replaced: watchers read the new one.
    fn announce_replaced(&self) {
        let _ = self.announcements.send(Announcement::ReadStore);
    }

    pub fn current(&self) -> Arc<MvccStore> {
        match self.store.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, store: MvccStore) {
        let mut guard = match self.store.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(store);
    }
}

pub struct StateMachine {
    dir: PathBuf,
    store: SharedStore,
    applied: AppliedState,
    snapshots_built: u64,
}

impl StateMachine {
    /// The redb file of the state machine kept in `dir`.
    pub fn state_file(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Opens the state machine kept in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let store = MvccStore::open(&dir.join(STATE_FILE))?;
        let applied = match store.raft_state()? {
            Some(bytes) => postcard::from_bytes(&bytes).map_err(|source| StoreError::Decode {
                what: "raft state",
                source,
            })?,
            None => AppliedState::default(),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            store: SharedStore::new(store),
            applied,
            snapshots_built: 0,
        })
    }

    /// The store, for the API server's reads and watches.
    pub fn shared_store(&self) -> SharedStore {
        self.store.clone()
    }
}

fn meta_from(applied: &AppliedState, snapshot_id: String) -> SnapshotMeta<NodeId, BasicNode> {
    SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id,
    }
}

fn decode_applied(bytes: Option<Vec<u8>>) -> Result<AppliedState, AnyError> {
    match bytes {
        Some(bytes) => postcard::from_bytes(&bytes).map_err(any_error),
        None => Ok(AppliedState::default()),
    }
}

pub struct SnapshotBuilder {
    dir: PathBuf,
    store: Arc<MvccStore>,
    sequence: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let dir = self.dir.clone();
        let store = self.store.clone();
        let sequence = self.sequence;
        let meta = blocking(StorageIOError::read_state_machine, move || {
            // openraft purges the log below this snapshot next: everything
            // it covers must be durable in the state file first.
            store.persist().map_err(any_error)?;
            let path = dir.join(SNAPSHOT_FILE);
            let raft_state = store.save_snapshot(&path).map_err(any_error)?;
            let applied = decode_applied(raft_state)?;
            let id = match applied.last_applied {
                Some(log_id) => format!("{}-{}-{sequence}", log_id.leader_id, log_id.index),
                None => format!("empty-{sequence}"),
            };
            let meta = meta_from(&applied, id);
            write_meta(&dir, &meta)?;
            Ok(meta)
        })
        .await?;
        let file = open_snapshot(&self.dir).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

fn write_meta(dir: &Path, meta: &SnapshotMeta<NodeId, BasicNode>) -> Result<(), AnyError> {
    let bytes = postcard::to_stdvec(meta).map_err(any_error)?;
    let partial = dir.join(format!("{SNAPSHOT_META_FILE}.partial"));
    // Durable before the log below the snapshot may be purged.
    let mut file = std::fs::File::create(&partial).map_err(any_error)?;
    std::io::Write::write_all(&mut file, &bytes).map_err(any_error)?;
    file.sync_all().map_err(any_error)?;
    std::fs::rename(&partial, dir.join(SNAPSHOT_META_FILE)).map_err(any_error)?;
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(any_error)
}

async fn open_snapshot(dir: &Path) -> Result<tokio::fs::File, RaftStorageError> {
    tokio::fs::File::open(dir.join(SNAPSHOT_FILE))
        .await
        .map_err(|e| StorageIOError::read_snapshot(None, any_error(e)).into())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), RaftStorageError>
    {
        Ok((self.applied.last_applied, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Response>>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.applied.clone();
        let mut requests: Vec<Request> = Vec::new();
        let mut counts = Vec::new();
        for entry in entries {
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => counts.push(0),
                EntryPayload::Normal(batch) => {
                    counts.push(batch.len());
                    requests.extend(batch);
                }
                EntryPayload::Membership(membership) => {
                    applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                    counts.push(0);
                }
            }
        }
        if counts.is_empty() {
            return Ok(Vec::new());
        }
        let state = postcard::to_stdvec(&applied)
            .map_err(|e| StorageIOError::write_state_machine(any_error(e)))?;
        let store = self.store.current();
        let watched = self.store.watched();
        let (responses, changes) = blocking(StorageIOError::write_state_machine, move || {
            store
                .apply_batch(&requests, Some(&state), watched)
                .map_err(any_error)
        })
        .await?;
        self.applied = applied;
        self.store.announce(changes);
        let mut responses = responses.into_iter();
        Ok(counts
            .into_iter()
            .map(|count| responses.by_ref().take(count).collect())
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            dir: self.dir.clone(),
            store: self.store.current(),
            sequence: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, RaftStorageError> {
        let path = self.dir.join("receiving.snap");
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, any_error(e)))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), RaftStorageError> {
        // The handle may be any file (the network's, or another replica's in
        // tests): copy it from its start into this replica's directory, then
        // rebuild the store from the copy (checksum verified before the
        // current store is replaced).
        let write_error = |e| StorageIOError::write_snapshot(None, any_error(e));
        let mut source = *snapshot;
        tokio::io::AsyncSeekExt::seek(&mut source, std::io::SeekFrom::Start(0))
            .await
            .map_err(write_error)?;
        let mut copy = tokio::fs::File::create(self.dir.join("installing.snap"))
            .await
            .map_err(write_error)?;
        tokio::io::copy(&mut source, &mut copy)
            .await
            .map_err(write_error)?;
        copy.sync_all().await.map_err(write_error)?;
        drop(copy);
        let dir = self.dir.clone();
        let meta_copy = meta.clone();
        let store = blocking(StorageIOError::write_state_machine, move || {
            let received = dir.join("installing.snap");
            let restored =
                MvccStore::restore_snapshot(&received, &dir.join(STATE_FILE)).map_err(any_error)?;
            std::fs::rename(&received, dir.join(SNAPSHOT_FILE)).map_err(any_error)?;
            write_meta(&dir, &meta_copy)?;
            Ok(restored)
        })
        .await?;
        self.store.replace(store);
        self.store.announce_replaced();
        self.applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let meta_path = self.dir.join(SNAPSHOT_META_FILE);
        let bytes = match tokio::fs::read(&meta_path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StorageIOError::read_snapshot(None, any_error(e)).into()),
        };
        let meta: SnapshotMeta<NodeId, BasicNode> = postcard::from_bytes(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, any_error(e)))?;
        let file = open_snapshot(&self.dir).await?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}
