//! Which row is each live key's current one: etcd's in-memory key index.
//! It is derived data: rebuilt from the rows when the store opens, and
//! changed only by the apply path, once its batch is committed, so a reader
//! that looks rows up here finds them in any redb read begun afterwards
//! (unless a compaction removed them in between: see `MvccStore::read_page`).

use std::collections::BTreeMap;
use std::ops::Bound;

use super::rows::RowId;
use crate::store::types::Revision;

#[derive(Default)]
pub(super) struct KeyIndex {
    rows: BTreeMap<Vec<u8>, RowId>,
    /// The store's revision as of the last published batch.
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// Keys of a prefix, as the index held them at `revision`.
pub(super) struct IndexPage {
    pub rows: Vec<RowId>,
    /// The first key after the page, when the limit cut it short.
    pub next_key: Option<Vec<u8>>,
    pub revision: Revision,
}

impl KeyIndex {
    pub fn get(&self, key: &[u8]) -> Option<RowId> {
        self.rows.get(key).copied()
    }

    /// Keys starting with `prefix`, in key order, from `start` (inclusive)
    /// on, at most `limit` (0: all).
    pub fn page(&self, prefix: &[u8], start: Option<&[u8]>, limit: usize) -> IndexPage {
        let from = match start {
            Some(start) if start > prefix => start,
            _ => prefix,
        };
        let mut page = IndexPage {
            rows: Vec::new(),
            next_key: None,
            revision: self.revision,
        };
        for (key, row) in self
            .rows
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        {
            if !key.starts_with(prefix) {
                break;
            }
            if limit > 0 && page.rows.len() == limit {
                page.next_key = Some(key.clone());
                break;
            }
            page.rows.push(*row);
        }
        page
    }

    /// Records one change, as met in revision order.
    pub fn set(&mut self, key: Vec<u8>, row: Option<RowId>) {
        match row {
            Some(row) => {
                self.rows.insert(key, row);
            }
            None => {
                self.rows.remove(&key);
            }
        }
    }

    /// Takes a committed batch's changes.
    pub fn publish(&mut self, batch: BatchChanges) {
        for (key, row) in batch.changes {
            self.set(key, row);
        }
        self.revision = batch.revision;
        self.compact_revision = batch.compact_revision;
    }
}

/// What a batch changed, kept aside until its commit.
pub(super) struct BatchChanges {
    changes: BTreeMap<Vec<u8>, Option<RowId>>,
    pub revision: Revision,
    pub compact_revision: Revision,
}

/// The index as a batch being applied sees it: the published index with
/// the batch's own changes on top.
pub(super) struct BatchIndex<'a> {
    published: &'a KeyIndex,
    changes: BTreeMap<Vec<u8>, Option<RowId>>,
}

impl<'a> BatchIndex<'a> {
    pub fn new(published: &'a KeyIndex) -> Self {
        Self {
            published,
            changes: BTreeMap::new(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Option<RowId> {
        match self.changes.get(key) {
            Some(changed) => *changed,
            None => self.published.get(key),
        }
    }

    pub fn set(&mut self, key: &[u8], row: Option<RowId>) {
        self.changes.insert(key.to_vec(), row);
    }

    /// The live keys starting with `prefix`, in key order.
    pub fn keys_with_prefix(&self, prefix: &[u8]) -> Vec<Vec<u8>> {
        let range = (Bound::Included(prefix), Bound::Unbounded);
        let published = self
            .published
            .rows
            .range::<[u8], _>(range)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| !self.changes.contains_key(key.as_slice()))
            .map(|(key, _)| key.clone());
        let changed = self
            .changes
            .range::<[u8], _>(range)
            .take_while(|(key, _)| key.starts_with(prefix))
            .filter(|(_, row)| row.is_some())
            .map(|(key, _)| key.clone());
        let mut keys: Vec<Vec<u8>> = published.chain(changed).collect();
        keys.sort();
        keys
    }

    pub fn finish(self, revision: Revision, compact_revision: Revision) -> BatchChanges {
        BatchChanges {
            changes: self.changes,
            revision,
            compact_revision,
        }
    }
}
