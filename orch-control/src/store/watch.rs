//! Watches: every change under a prefix from a revision on, replayed from
//! the store's rows and then live, in revision order, with no gap and no
//! duplicate.
//!
//! The state machine announces each applied batch with its changes (one
//! broadcast for every watcher, as etcd's watchable store notifies its
//! synced watchers), so a watcher that keeps up never reads the store. A
//! watcher reads the rows instead when it starts from a past revision, when
//! it fell too far behind the announcements, when a batch was too large to
//! announce or was applied while nobody watched (its events not collected),
//! and when the store was replaced by a snapshot. It subscribes
//! before its first read, and every read ends at a batch boundary, so
//! announcements up to the read are skipped and the next one starts where
//! the read ended.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::raft::state_machine::SharedStore;
use super::types::{Changes, Event, Revision};
use super::{MvccStore, StoreError};

/// What a replica tells its watchers after applying.
#[derive(Clone, Debug)]
pub enum Announcement {
    /// A batch's changes.
    Changes(Arc<Changes>),
    /// Something changed that watchers must read from the store.
    ReadStore,
}

/// A read of the rows: the events and the revision the read saw.
type RowsRead = JoinHandle<Result<(Vec<Event>, Revision), StoreError>>;

pub struct Watcher {
    store: SharedStore,
    announcements: broadcast::Receiver<Announcement>,
    prefix: Vec<u8>,
    /// The first revision not yet delivered.
    next: Revision,
    /// The next batch comes from the store's rows, not the announcements.
    read_store: bool,
    /// A read of the rows under way. Kept when `next_batch` is cancelled
    /// (a bookmark timeout), so a replay slower than the timeout finishes
    /// on a later call instead of starting over at every one.
    reading: Option<RowsRead>,
}

impl Watcher {
    /// Watches `prefix` from `start` (inclusive). `start` 0 means "from now":
    /// the store's current revision + 1.
    pub fn new(store: SharedStore, prefix: Vec<u8>, start: Revision) -> Result<Self, StoreError> {
        let announcements = store.subscribe();
        let (next, read_store) = if start == 0 {
            (store.current().revision()? + 1, false)
        } else {
            (start, true)
        };
        Ok(Self {
            store,
            announcements,
            prefix,
            next,
            read_store,
            reading: None,
        })
    }

    /// The last revision delivered (or skipped as not matching): a watch
    /// resumed after it misses nothing.
    pub fn position(&self) -> Revision {
        self.next.saturating_sub(1)
    }

    /// The next non-empty batch of events, waiting for new revisions as
    /// needed. Fails with [`StoreError::Compacted`] when the watcher asks
    /// for history that was compacted away: the client relists. Cancelling
    /// it (a timeout) loses nothing: the watcher moves on only once a batch
    /// is in hand.
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, StoreError> {
        loop {
            if self.read_store {
                let events = self.read_rows().await?;
                self.read_store = false;
                if !events.is_empty() {
                    return Ok(events);
                }
            }
            match self.announcements.recv().await {
                Ok(Announcement::Changes(changes)) => {
                    if changes.to < self.next {
                        continue; // already read from the rows
                    }
                    if changes.from > self.next {
                        self.read_store = true; // a gap: never expected
                        continue;
                    }
                    let Some(events) = changes.events.as_ref() else {
                        self.read_store = true; // announced without them
                        continue;
                    };
                    let events: Vec<Event> = events
                        .iter()
                        .filter(|event| {
                            event.kv.mod_revision >= self.next
                                && event.kv.key.starts_with(&self.prefix)
                        })
                        .cloned()
                        .collect();
                    self.next = changes.to + 1;
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                Ok(Announcement::ReadStore) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.read_store = true;
                }
                // No sender left. The watcher holds one through its store
                // handle, so this is defensive: streams end with the process.
                Err(broadcast::error::RecvError::Closed) => return Ok(Vec::new()),
            }
        }
    }

    /// The events from `next` on, read from the rows; `next` moves past
    /// the revision the read saw.
    async fn read_rows(&mut self) -> Result<Vec<Event>, StoreError> {
        let reading = self.reading.get_or_insert_with(|| {
            let store: Arc<MvccStore> = self.store.current();
            let prefix = self.prefix.clone();
            let start = self.next;
            tokio::task::spawn_blocking(move || store.read_events(&prefix, start))
        });
        let read = reading.await;
        self.reading = None;
        let (events, revision) = read.map_err(|e| StoreError::Io {
            path: "watch".into(),
            source: std::io::Error::other(e),
        })??;
        self.next = self.next.max(revision + 1);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::Watcher;
    use crate::store::MvccStore;
    use crate::store::raft::state_machine::SharedStore;
    use crate::store::types::{Command, Event, Op, Request, RequestId, Txn};

    fn txn(id: u128, ops: Vec<Op>) -> Request {
        Request {
            id: RequestId(id),
            command: Command::Txn(Txn {
                success: ops,
                ..Txn::default()
            }),
        }
    }

    fn put(key: &str, value: Vec<u8>) -> Op {
        Op::Put {
            key: key.as_bytes().to_vec(),
            value,
            lease: None,
        }
    }

    /// Applies and announces, as the state machine does; `collect` false
    /// as when nobody watched as the batch began.
    fn apply(shared: &SharedStore, requests: &[Request], collect: bool) {
        let (_, changes) = shared
            .current()
            .apply_batch(requests, None, collect && shared.watched())
            .expect("apply");
        shared.announce(changes);
    }

    /// Events until none comes for `quiet`.
    async fn drain(watcher: &mut Watcher, into: &mut Vec<Event>, quiet: Duration) {
        while let Ok(batch) = tokio::time::timeout(quiet, watcher.next_batch()).await {
            into.extend(batch.expect("watch"));
        }
    }

    /// Watchers that keep up (announced changes), that fall far behind
    /// (lagged: rows), that start in the past (rows, then announcements),
    /// a batch too large to announce and one whose events were not
    /// collected: all see exactly what the rows replay, the same events,
    /// previous values included, in order.
    #[tokio::test]
    async fn announced_and_replayed_changes_are_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MvccStore::open(&dir.path().join("state.redb")).expect("open");
        let shared = SharedStore::new(store);
        let mut live = Watcher::new(shared.clone(), b"/w/".to_vec(), 0).expect("watch");
        let mut lagging = Watcher::new(shared.clone(), b"/w/".to_vec(), 1).expect("watch");
        let (mut seen_live, mut seen_lagging, mut seen_late) = (Vec::new(), Vec::new(), Vec::new());
        let mut late = None;
        let mut id = 0;
        for round in 0..200u32 {
            id += 2;
            let key = format!("/w/{}", round % 7);
            let mut ops = vec![
                put(&key, round.to_le_bytes().to_vec()),
                put("/other", vec![1]),
            ];
            if round % 5 == 4 {
                ops = vec![Op::Delete {
                    key: key.into_bytes(),
                }];
            }
            let mut batch = vec![txn(id, ops)];
            if round == 199 {
                // Over the announcement limit: watchers read it from rows
                // (last, so no later batch reveals it as a gap).
                batch.push(txn(id + 1, vec![put("/w/big", vec![7; 1_200_000])]));
            }
            // Round 150's events are not collected: watchers read them.
            apply(&shared, &batch, round != 150);
            drain(&mut live, &mut seen_live, Duration::from_millis(2)).await;
            if round == 150 {
                // Nothing announced after it yet that would show a gap.
                drain(&mut live, &mut seen_live, Duration::from_millis(500)).await;
                let rows = shared.current().events_since(b"/w/", 1).expect("replay");
                assert_eq!(
                    seen_live, rows,
                    "after a batch whose events were not collected"
                );
            }
            if round == 5 {
                // Then not again until far more batches than are kept.
                drain(&mut lagging, &mut seen_lagging, Duration::from_millis(2)).await;
            }
            if round == 90 {
                let start = shared.current().revision().expect("revision") - 20;
                late = Some((
                    start,
                    Watcher::new(shared.clone(), b"/w/".to_vec(), start).expect("watch"),
                ));
            }
            if let Some((_, watcher)) = late.as_mut() {
                drain(watcher, &mut seen_late, Duration::from_millis(2)).await;
            }
        }
        // Whatever a short wait cut off is still there, in order.
        let quiet = Duration::from_millis(500);
        drain(&mut live, &mut seen_live, quiet).await;
        drain(&mut lagging, &mut seen_lagging, quiet).await;
        let (start, mut watcher) = late.expect("late watcher");
        drain(&mut watcher, &mut seen_late, quiet).await;
        let rows = shared.current().events_since(b"/w/", 1).expect("replay");
        // 160 puts, the 1.2 MB one, and the deletes of keys that existed.
        assert!(rows.len() > 190, "{} events", rows.len());
        assert!(rows.iter().any(|e| e.prev_kv.is_some()));
        assert_eq!(seen_live, rows, "the watcher that kept up");
        assert_eq!(seen_lagging, rows, "the watcher that fell behind");
        let from_start: Vec<Event> = rows
            .into_iter()
            .filter(|e| e.kv.mod_revision >= start)
            .collect();
        assert_eq!(seen_late, from_start, "the watcher from a past revision");
        assert_eq!(
            watcher.position(),
            shared.current().revision().expect("revision")
        );
    }

    /// A replay slower than the caller's timeout (the API's bookmark
    /// interval) still arrives: the read under way is kept across
    /// cancelled calls instead of starting over at each.
    #[tokio::test]
    async fn a_replay_cancelled_again_and_again_still_arrives() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MvccStore::open(&dir.path().join("state.redb")).expect("open");
        let shared = SharedStore::new(store);
        let mut id = 0;
        let mut read_takes = Duration::ZERO;
        // Rows until a replay takes many timer ticks (1 ms each): the
        // fastest of three reads, so one preempted read does not stop the
        // growth early.
        while read_takes < Duration::from_millis(30) {
            assert!(id < 2_000_000, "replays stay under 30 ms; cannot test");
            let batch: Vec<Request> = (0..1_000)
                .map(|_| {
                    id += 1;
                    txn(id, vec![put(&format!("/w/{}", id % 5_000), vec![3; 512])])
                })
                .collect();
            apply(&shared, &batch, false);
            read_takes = (0..3)
                .map(|_| {
                    let started = std::time::Instant::now();
                    shared.current().events_since(b"/w/", 1).expect("replay");
                    started.elapsed()
                })
                .min()
                .unwrap_or_default();
        }
        let rows = shared.current().events_since(b"/w/", 1).expect("replay");
        let mut watcher = Watcher::new(shared.clone(), b"/w/".to_vec(), 1).expect("watch");
        // Each call is cut off after 1 ms; calls are a quarter of a read
        // apart, so a watcher that starts its read over at every call
        // keeps a handful of reads going, not hundreds.
        let deadline = std::time::Instant::now() + read_takes * 20 + Duration::from_secs(2);
        let mut cancelled = 0;
        let events = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no replay after {cancelled} cancelled calls (a read takes {read_takes:?})"
            );
            match tokio::time::timeout(Duration::from_millis(1), watcher.next_batch()).await {
                Ok(events) => break events.expect("watch"),
                Err(_) => cancelled += 1,
            }
            tokio::time::sleep(read_takes / 4).await;
        };
        assert!(cancelled > 0, "the replay was never cancelled");
        assert_eq!(events, rows);
    }

    /// Collects what `watcher` delivers until it has passed `last` (known
    /// once the writer is done), `pause` between batches.
    async fn collect_until(
        mut watcher: Watcher,
        last: Arc<std::sync::atomic::AtomicU64>,
        pause: Duration,
    ) -> Vec<Event> {
        use std::sync::atomic::Ordering;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let done = last.load(Ordering::Acquire);
            if done > 0 && watcher.position() >= done {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "watcher stuck at {} (last {done})",
                watcher.position()
            );
            if let Ok(batch) =
                tokio::time::timeout(pause.max(Duration::from_millis(20)), watcher.next_batch())
                    .await
            {
                seen.extend(batch.expect("watch"));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// The same as above with the races the design reasons about: batches
    /// applied on another thread while watchers on a multi-threaded
    /// runtime keep up, dawdle until they lag, start in the past or from
    /// now midway. Each sees exactly the rows' replay from its start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watchers_racing_the_applier_see_the_replay() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MvccStore::open(&dir.path().join("state.redb")).expect("open");
        let shared = SharedStore::new(store);
        let last = Arc::new(AtomicU64::new(0));
        let prefix = b"/w/".to_vec();
        let live = Watcher::new(shared.clone(), prefix.clone(), 0).expect("watch");
        let live = tokio::spawn(collect_until(live, last.clone(), Duration::ZERO));
        let slow = Watcher::new(shared.clone(), prefix.clone(), 0).expect("watch");
        let slow = tokio::spawn(collect_until(
            slow,
            last.clone(),
            Duration::from_millis(150),
        ));
        // The writer stops at round 300 until the midway watchers exist, so
        // they start while batches are still coming.
        let (midway, reached) = std::sync::mpsc::channel::<()>();
        let (go, resume) = std::sync::mpsc::channel::<()>();
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for round in 0..600u32 {
                    if round == 300 {
                        midway.send(()).expect("test waits");
                        resume.recv().expect("test resumes");
                    }
                    let id = u128::from(round) * 4;
                    let key = format!("/w/{}", round % 11);
                    let mut batch = vec![txn(id, vec![put(&key, round.to_le_bytes().to_vec())])];
                    if round % 3 == 0 {
                        batch.push(txn(
                            id + 1,
                            vec![Op::Delete {
                                key: format!("/w/{}", round % 7).into_bytes(),
                            }],
                        ));
                    }
                    if round % 200 == 100 {
                        batch.push(txn(id + 2, vec![put("/w/big", vec![5; 1_100_000])]));
                    }
                    apply(&shared, &batch, round % 50 != 25);
                    if round % 40 == 0 {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        };
        // Midway: one from a past revision, one from now.
        tokio::task::spawn_blocking(move || reached.recv().expect("writer midway"))
            .await
            .expect("join");
        let now = shared.current().revision().expect("revision");
        let past = now.saturating_sub(40).max(1);
        let late = Watcher::new(shared.clone(), prefix.clone(), past).expect("watch");
        let late = tokio::spawn(collect_until(late, last.clone(), Duration::ZERO));
        let fresh = Watcher::new(shared.clone(), prefix.clone(), 0).expect("watch");
        let fresh_after = fresh.position();
        let fresh = tokio::spawn(collect_until(fresh, last.clone(), Duration::ZERO));
        go.send(()).expect("writer waits");
        tokio::task::spawn_blocking(move || writer.join().expect("writer"))
            .await
            .expect("join");
        last.store(
            shared.current().revision().expect("revision"),
            Ordering::Release,
        );
        let rows = shared.current().events_since(&prefix, 1).expect("replay");
        // 600 puts, 3 big ones, and the deletes that found their key.
        assert!(rows.len() > 800, "{} events", rows.len());
        assert!(
            past > 1 && past < fresh_after,
            "midway: {past}, {fresh_after}"
        );
        let from = |start: u64| -> Vec<Event> {
            rows.iter()
                .filter(|e| e.kv.mod_revision >= start)
                .cloned()
                .collect()
        };
        assert_eq!(live.await.expect("live"), rows, "the watcher that kept up");
        assert_eq!(slow.await.expect("slow"), rows, "the watcher that lagged");
        assert_eq!(
            late.await.expect("late"),
            from(past),
            "the watcher from the past"
        );
        assert_eq!(
            fresh.await.expect("fresh"),
            from(fresh_after + 1),
            "the watcher from now"
        );
    }
}
