//! The runtime every controller shares (one mechanism, as in client-go):
//! reflectors list+watch kinds into a cache and tell handlers what changed,
//! handlers turn changes into keys on a deduplicating rate-limited work
//! queue, and workers reconcile one key at a time against the cache and the
//! API. Only the holder of the controllers' Lease runs them ([`election`]).

pub mod election;
pub mod events;
pub mod queue;
pub mod reflector;

use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

pub use queue::WorkQueue;
pub use reflector::{Cache, Change, Handler, ObjectRef, Selection};

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing until the key changes again.
    Done,
    /// Look again after this long (waiting on something not watched).
    After(Duration),
}

/// Runs `workers` workers taking keys from `queue` until it shuts down. A
/// failed reconcile is retried with the key's backoff; a good one resets it.
/// Dropping the returned future (its task aborted) stops every worker.
pub async fn run_workers<K, E, F, Fut>(
    name: &'static str,
    queue: Arc<WorkQueue<K>>,
    workers: usize,
    reconcile: F,
) where
    K: Clone + Eq + Hash + Display + Send + Sync + 'static,
    E: Display + Send + 'static,
    F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Next, E>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconcile = reconcile.clone();
        running.spawn(async move {
            while let Some(key) = queue.next().await {
                match reconcile(key.clone()).await {
                    Ok(next) => {
                        queue.forget(&key);
                        if let Next::After(delay) = next {
                            queue.add_after(key.clone(), delay);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(controller = name, %key, %error, "reconcile failed; retrying");
                        queue.add_rate_limited(key.clone());
                    }
                }
                queue.done(&key);
            }
        });
    }
    while running.join_next().await.is_some() {}
}
