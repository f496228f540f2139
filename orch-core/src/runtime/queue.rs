//! The work queue controllers share (client-go's rate-limited workqueue):
//! a key is queued at most once however often it is added, is handed to one
//! worker at a time, and a key added while a worker holds it is handed out
//! again once that worker is done. Failed keys come back after a per-key
//! exponential backoff.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

/// First retry delay of a failing key; doubles per failure up to `MAX_BACKOFF`.
const BASE_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct State<K> {
    queue: VecDeque<K>,
    /// Keys waiting in `queue` or to be queued again when their worker is done.
    dirty: HashSet<K>,
    /// Keys a worker holds.
    processing: HashSet<K>,
    /// Failures in a row per key, for the backoff.
    failures: HashMap<K, u32>,
    shut_down: bool,
}

/// A deduplicating, rate-limited queue of keys.
pub struct WorkQueue<K> {
    state: Mutex<State<K>>,
    ready: Notify,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> WorkQueue<K> {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shut_down: false,
            }),
            ready: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `key` unless it already waits; a key being processed is
    /// queued again when its worker calls `done`.
    pub fn add(&self, key: K) {
        let mut state = self.lock();
        if state.shut_down || !state.dirty.insert(key.clone()) {
            return;
        }
        if !state.processing.contains(&key) {
            state.queue.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(self: &Arc<Self>, key: K, delay: Duration) {
        if delay.is_zero() {
            return self.add(key);
        }
        let queue = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(queue) = queue.upgrade() {
                queue.add(key);
            }
        });
    }

    /// Queues `key` again after its backoff (5 ms, doubling per failure in
    /// a row, at most 30 s).
    pub fn add_rate_limited(self: &Arc<Self>, key: K) {
        let failures = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures = failures.saturating_add(1);
            *failures
        };
        let delay = BASE_BACKOFF
            .saturating_mul(1u32 << (failures - 1).min(20))
            .min(MAX_BACKOFF);
        self.add_after(key, delay);
    }

    /// Clears `key`'s failure count (it succeeded).
    pub fn forget(&self, key: &K) {
        self.lock().failures.remove(key);
    }

    /// The next key to work on; None once the queue is shut down.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if state.shut_down {
                    return None;
                }
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// The worker holding `key` is done with it.
    pub fn done(&self, key: &K) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.contains(key) {
            state.queue.push_back(key.clone());
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; workers waiting in `next` get None.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.ready.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once_and_held_by_one_worker() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await;
        assert_eq!(first, Some("a"));
        // Added while held: not handed out until done.
        queue.add("a");
        assert_eq!(queue.next().await, Some("b"));
        assert!(queue.is_empty());
        queue.done(&"a");
        assert_eq!(queue.next().await, Some("a"));
        queue.done(&"a");
        queue.done(&"b");
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn failures_back_off_and_forget_resets() {
        let queue = WorkQueue::new();
        for _ in 0..3 {
            queue.add_rate_limited("k");
        }
        // Three failures in a row (retries due after 5, 10 and 20 ms; the
        // first to come due queues the key).
        assert_eq!(queue.lock().failures.get("k"), Some(&3));
        let started = tokio::time::Instant::now();
        assert_eq!(queue.next().await, Some("k"));
        assert!(started.elapsed() >= Duration::from_millis(5));
        queue.forget(&"k");
        assert!(queue.lock().failures.is_empty());
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let queue: Arc<WorkQueue<u32>> = WorkQueue::new();
        let worker = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.shut_down();
        assert_eq!(worker.await.ok().flatten(), None);
    }
}
