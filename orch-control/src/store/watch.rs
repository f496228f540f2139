//! Watches: every change under a prefix from a revision on, replayed from
//! the history and then live, in revision order, with no gap and no
//! duplicate.
//!
//! The store's rows are the only source: the state machine announces each
//! new revision, and a watcher reads the rows from where it stopped up to
//! the store's revision at that read. Replay and live delivery are the same
//! read, so they cannot overlap or leave a hole between them.

use std::sync::Arc;

use tokio::sync::watch;

use super::raft::state_machine::SharedStore;
use super::types::{Event, Revision};
use super::{MvccStore, StoreError};

pub struct Watcher {
    store: SharedStore,
    revisions: watch::Receiver<Revision>,
    prefix: Vec<u8>,
    /// The first revision not yet delivered.
    next: Revision,
}

impl Watcher {
    /// Watches `prefix` from `start` (inclusive). `start` 0 means "from now":
    /// the store's current revision + 1.
    pub fn new(store: SharedStore, prefix: Vec<u8>, start: Revision) -> Result<Self, StoreError> {
        let revisions = store.subscribe();
        let next = if start == 0 {
            store.current().revision()? + 1
        } else {
            start
        };
        Ok(Self {
            store,
            revisions,
            prefix,
            next,
        })
    }

    /// The last revision delivered (or skipped as not matching): a watch
    /// resumed after it misses nothing.
    pub fn position(&self) -> Revision {
        self.next.saturating_sub(1)
    }

    /// The next non-empty batch of events, waiting for new revisions as
    /// needed. Fails with [`StoreError::Compacted`] when the watcher asks
    /// for history that was compacted away: the client relists.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            // Mark the current announcement seen before reading, so a
            // revision committed during the read wakes us again.
            self.revisions.borrow_and_update();
            let store: Arc<MvccStore> = self.store.current();
            let prefix = self.prefix.clone();
            let start = self.next;
            let (events, revision) =
                tokio::task::spawn_blocking(move || store.read_events(&prefix, start))
                    .await
                    .map_err(|e| StoreError::Io {
                        path: "watch".into(),
                        source: std::io::Error::other(e),
                    })??;
            self.next = self.next.max(revision + 1);
            if !events.is_empty() {
                return Ok(events);
            }
            if self.revisions.changed().await.is_err() {
                // The store is gone (replica shutting down).
                return Ok(Vec::new());
            }
        }
    }
}
