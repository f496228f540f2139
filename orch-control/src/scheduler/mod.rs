//! The scheduler (kube-scheduler's default profile): every pod without a
//! node that names `default-scheduler` is placed on the best feasible node
//! and bound through the API.
//!
//! It runs on the controllers' runtime: the shared cache feeds its node
//! table, and a work queue holds the pods to place. Decisions are taken one
//! at a time under the table's lock and the chosen node is charged at once
//! (an assumed pod), so a burst of pods never overbooks a node while their
//! bindings are in flight. A pod that fits nowhere gets PodScheduled=False
//! with a message saying why per reason ("0/5 nodes are available: 3
//! Insufficient cpu, ..."), a FailedScheduling event, and another try
//! whenever nodes or pods change.

pub mod node_table;
pub mod plugins;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::events::{self, EventRecorder};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};
use orch_core::scheduling::DEFAULT_SCHEDULER;

use node_table::NodeTable;
use plugins::{Candidate, Counts, Normalisers, unschedulable_message};

/// A pod that fits nowhere is tried again after this long even if nothing
/// it could wait on changed (Kubernetes flushes its unschedulable pods
/// periodically too).
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(60);

pub const COMPONENT: &str = "default-scheduler";

enum Decision {
    Bind(String),
    Unschedulable(String),
}

pub struct Scheduler {
    cache: Arc<Cache>,
    table: Mutex<NodeTable>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    /// Pods that fit nowhere at their last try.
    unschedulable: Mutex<HashSet<ObjectRef>>,
    events: EventRecorder,
    /// Breaks ties between equally good nodes.
    tie_breaker: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether `pod` waits for this scheduler.
fn wants_scheduling(pod: &Object) -> bool {
    let Object::Pod(inner) = pod else {
        return false;
    };
    let Some(spec) = &inner.spec else {
        return false;
    };
    let phase = inner.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.node_name.as_deref().is_none_or(str::is_empty)
        && inner.metadata.deletion_timestamp.is_none()
        && spec
            .scheduler_name
            .as_deref()
            .is_none_or(|name| name.is_empty() || name == DEFAULT_SCHEDULER)
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// How many feasible nodes to find before scoring (Kubernetes'
/// percentageOfNodesToScore, adaptive): every node up to 100, then a
/// share falling from 50% to at least 5%, never fewer than 100.
fn feasible_to_find(nodes: usize) -> usize {
    if nodes < 100 {
        return nodes;
    }
    let percent = (50 - nodes as i64 / 125).max(5) as usize;
    (nodes * percent / 100).max(100)
}

impl Scheduler {
    pub fn new(cache: Arc<Cache>, events: EventRecorder) -> Arc<Self> {
        Arc::new(Self {
            cache,
            table: Mutex::new(NodeTable::default()),
            queue: WorkQueue::new(),
            unschedulable: Mutex::new(HashSet::new()),
            events,
            tie_breaker: AtomicUsize::new(0),
        })
    }

    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { new, .. } if new.kind() == Kind::Pod => {
                let key = ObjectRef::of(new);
                let freed = {
                    let mut table = lock(&self.table);
                    table.set_pod(new.clone());
                    !wants_scheduling(new) && !table.is_placed(&key)
                };
                if wants_scheduling(new) {
                    self.queue.add(key);
                } else {
                    lock(&self.unschedulable).remove(&key);
                    if freed {
                        self.retry_unschedulable();
                    }
                }
            }
            Change::Deleted(old) if old.kind() == Kind::Pod => {
                let key = ObjectRef::of(old);
                lock(&self.table).delete_pod(&key);
                lock(&self.unschedulable).remove(&key);
                self.retry_unschedulable();
            }
            Change::Applied { new, .. } if new.kind() == Kind::Node => {
                lock(&self.table).set_node(new.clone());
                self.retry_unschedulable();
            }
            Change::Deleted(old) if old.kind() == Kind::Node => {
                lock(&self.table).remove_node(old.metadata().name.as_deref().unwrap_or_default());
            }
            _ => {}
        }
    }

    /// Something changed that may make room: every pod that fit nowhere
    /// is tried again.
    fn retry_unschedulable(&self) {
        for key in lock(&self.unschedulable).iter() {
            self.queue.add(key.clone());
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(pod) = self.cache.get(&key) else {
            lock(&self.unschedulable).remove(&key);
            return Ok(Next::Done);
        };
        if !wants_scheduling(&pod) || lock(&self.table).is_assumed(&key) {
            return Ok(Next::Done);
        }
        match self.decide(&pod) {
            Decision::Bind(node) => {
                let namespace = key.namespace.as_deref().unwrap_or("default");
                match client.bind(namespace, &key.name, &node).await {
                    Ok(_) => {
                        lock(&self.unschedulable).remove(&key);
                        self.events.record(
                            &pod,
                            events::NORMAL,
                            "Scheduled",
                            format!("Successfully assigned {namespace}/{} to {node}", key.name),
                        );
                        Ok(Next::Done)
                    }
                    // Gone: the watch will say. (A conflict — bound
                    // elsewhere, or being deleted — is retried below: the
                    // retry finds the cache showing why, or binds.)
                    Err(ApiError::NotFound(_)) => {
                        lock(&self.table).forget(&key);
                        Ok(Next::Done)
                    }
                    Err(error) => {
                        lock(&self.table).forget(&key);
                        Err(error)
                    }
                }
            }
            Decision::Unschedulable(message) => {
                lock(&self.unschedulable).insert(key);
                self.report_unschedulable(client, &pod, message).await?;
                Ok(Next::After(UNSCHEDULABLE_RETRY))
            }
        }
    }

    /// Picks the node (and charges it) or says why there is none.
    fn decide(&self, pod: &Arc<Object>) -> Decision {
        let mut table = lock(&self.table);
        let total = table.node_count();
        let Some(candidate) = Candidate::new(pod, &table) else {
            return Decision::Unschedulable("pod has no spec".into());
        };
        let want = feasible_to_find(total);
        let mut feasible = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut last_examined = None;
        for info in table.search_order() {
            last_examined = Some(info.name());
            let why = candidate.filter(info, &table);
            if why.is_empty() {
                feasible.push(info);
                if feasible.len() >= want {
                    break;
                }
            } else {
                for reason in why {
                    *reasons.entry(reason).or_default() += 1;
                }
            }
        }
        let last_examined = last_examined.map(str::to_owned);
        if feasible.is_empty() {
            table.searched_up_to(last_examined);
            return Decision::Unschedulable(unschedulable_message(total, &reasons));
        }
        // Each node's counts once; normalised over all of them.
        let counts: Vec<Counts> = feasible.iter().map(|info| candidate.counts(info)).collect();
        let normal = Normalisers::over(&counts);
        let scored: Vec<(i64, &str)> = feasible
            .iter()
            .zip(&counts)
            .map(|(info, counts)| (candidate.score(info, counts, &normal), info.name()))
            .collect();
        let best = scored.iter().map(|(score, _)| *score).max().unwrap_or(0);
        let top: Vec<&str> = scored
            .iter()
            .filter(|(score, _)| *score == best)
            .map(|(_, name)| *name)
            .collect();
        let chosen = top[self.tie_breaker.fetch_add(1, Ordering::Relaxed) % top.len()].to_owned();
        drop(candidate);
        table.searched_up_to(last_examined);
        table.assume(pod.clone(), &chosen);
        Decision::Bind(chosen)
    }

    /// PodScheduled=False, reason Unschedulable, and a FailedScheduling
    /// event: written only when the message changed, so a pod waiting for
    /// room does not rewrite itself on every try.
    async fn report_unschedulable(
        &self,
        client: &mut ApiClient,
        pod: &Arc<Object>,
        message: String,
    ) -> Result<(), ApiError> {
        let Object::Pod(inner) = pod.as_ref() else {
            return Ok(());
        };
        let mut updated = inner.as_ref().clone();
        let status = updated.status.get_or_insert_with(Default::default);
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let current = conditions.iter().find(|c| c.type_ == "PodScheduled");
        if current.is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(message.as_str())
        }) {
            return Ok(());
        }
        conditions.retain(|c| c.type_ != "PodScheduled");
        conditions.push(PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(message.clone()),
            last_transition_time: Some(Time(orch_core::time::now())),
            ..PodCondition::default()
        });
        if status.phase.is_none() {
            status.phase = Some("Pending".into());
        }
        self.events
            .record(pod, events::WARNING, "FailedScheduling", message);
        match client.update_status(&Object::from(updated)).await {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::feasible_to_find;

    #[test]
    fn samples_nodes_like_kubernetes() {
        assert_eq!(feasible_to_find(5), 5);
        assert_eq!(feasible_to_find(99), 99);
        assert_eq!(feasible_to_find(200), 100);
        // 5,000 nodes: 50% - 40% = 10%.
        assert_eq!(feasible_to_find(5_000), 500);
        // Large clusters bottom out at 5%.
        assert_eq!(feasible_to_find(10_000), 500);
    }
}
