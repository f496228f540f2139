//! The ReplicaSet controller: keeps `spec.replicas` pods that match the
//! selector and are controlled by the ReplicaSet. It adopts orphans that
//! match, releases owned pods that stopped matching, creates pods from the
//! template, deletes the least useful first when there are too many, and
//! reports status (replicas, fullyLabeledReplicas, readyReplicas,
//! availableReplicas, observedGeneration).
//!
//! Like Kubernetes' controller it keeps expectations: after asking for N
//! creations or deletions it waits until the watch has shown them before
//! counting again, so a cache that lags its own writes never makes it
//! create or delete twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::events::{self, EventRecorder};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};
use orch_core::selector::Selector;

use super::garbage_collector::delete;
use super::ownership::{claim, controller_key, controller_reference};
use super::pod_state::{self, is_active};

pub const COMPONENT: &str = "replicaset-controller";

/// Expectations not met within this long are given up on (a lost watch
/// event must not stall the ReplicaSet forever). Kubernetes uses 5 min.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(60);
/// Most pods created or deleted in one pass (Kubernetes' burstReplicas).
const BURST: usize = 500;

/// Creations and deletions asked for and not yet seen in the watch.
struct Expectations {
    adds: i64,
    deletes: HashSet<ObjectRef>,
    since: Instant,
}

pub struct ReplicaSetController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    expectations: Mutex<HashMap<ObjectRef, Expectations>>,
    events: EventRecorder,
}

/// The ReplicaSet inside `object`, if it is one.
pub fn replica_set(object: &Object) -> Option<&ReplicaSet> {
    match object {
        Object::ReplicaSet(rs) => Some(rs),
        _ => None,
    }
}

fn labels(object: &Object) -> std::collections::BTreeMap<String, String> {
    object.metadata().labels.clone().unwrap_or_default()
}

impl ReplicaSetController {
    pub fn new(cache: Arc<Cache>, events: EventRecorder) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            expectations: Mutex::new(HashMap::new()),
            events,
        })
    }

    fn expectations(&self) -> MutexGuard<'_, HashMap<ObjectRef, Expectations>> {
        self.expectations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// ReplicaSets in the pod's namespace whose selector matches it (for
    /// adoption of an orphan).
    fn selecting(&self, pod: &Object) -> Vec<ObjectRef> {
        let pod_labels = labels(pod);
        self.cache
            .select_in(
                Kind::ReplicaSet,
                pod.metadata().namespace.as_deref(),
                |rs| {
                    replica_set(rs).is_some_and(|rs| {
                        Selector::from_label_selector(Some(
                            &rs.spec
                                .as_ref()
                                .map(|s| s.selector.clone())
                                .unwrap_or_default(),
                        ))
                        .is_ok_and(|s| !s.is_everything() && s.matches(&pod_labels))
                    })
                },
            )
            .iter()
            .map(|rs| ObjectRef::of(rs))
            .collect()
    }

    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { new, .. } | Change::Deleted(new)
                if new.kind() == Kind::ReplicaSet =>
            {
                if matches!(change, Change::Deleted(_)) {
                    self.expectations().remove(&ObjectRef::of(new));
                }
                self.queue.add(ObjectRef::of(new));
            }
            Change::Applied { old, new } if new.kind() == Kind::Pod => {
                let owner = controller_key(new, Kind::ReplicaSet);
                if let Some(owner) = &owner {
                    if let Some(expected) = self.expectations().get_mut(owner) {
                        if old.is_none() {
                            expected.adds -= 1;
                        }
                        // A deletion is seen once the pod is marked, not
                        // only once its grace period is over (Kubernetes'
                        // DeletionObserved).
                        if new.metadata().deletion_timestamp.is_some() {
                            expected.deletes.remove(&ObjectRef::of(new));
                        }
                    }
                    self.queue.add(owner.clone());
                } else {
                    for rs in self.selecting(new) {
                        self.queue.add(rs);
                    }
                }
                // A pod that changed owner or labels may leave its old
                // ReplicaSet short.
                if let Some(old) = old
                    && let Some(previous) = controller_key(old, Kind::ReplicaSet)
                    && Some(&previous) != owner.as_ref()
                {
                    self.queue.add(previous);
                }
            }
            Change::Deleted(pod) if pod.kind() == Kind::Pod => {
                if let Some(owner) = controller_key(pod, Kind::ReplicaSet) {
                    if let Some(expected) = self.expectations().get_mut(&owner) {
                        expected.deletes.remove(&ObjectRef::of(pod));
                    }
                    self.queue.add(owner);
                }
            }
            _ => {}
        }
    }

    fn satisfied(&self, key: &ObjectRef) -> bool {
        match self.expectations().get(key) {
            None => true,
            Some(expected) => {
                (expected.adds <= 0 && expected.deletes.is_empty())
                    || expected.since.elapsed() > EXPECTATIONS_TIMEOUT
            }
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(object) = self.cache.get(&key) else {
            self.expectations().remove(&key);
            return Ok(Next::Done);
        };
        let Some(rs) = replica_set(&object) else {
            return Ok(Next::Done);
        };
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = match Selector::from_label_selector(Some(&spec.selector)) {
            Ok(selector) => selector,
            // Validation refuses these; nothing sensible to do.
            Err(_) => return Ok(Next::Done),
        };
        let pods = self
            .cache
            .select_in(Kind::Pod, key.namespace.as_deref(), |_| true);
        let owned = claim(client, &object, &selector, pods).await?;
        let active: Vec<&Arc<Object>> = owned.iter().filter(|p| is_active(p)).collect();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let mut next = Next::Done;
        if self.satisfied(&key) && !deleting {
            let wanted = spec.replicas.unwrap_or(1).max(0) as usize;
            if active.len() < wanted {
                self.create_pods(client, &object, wanted - active.len())
                    .await?;
            } else if active.len() > wanted {
                self.delete_pods(client, &key, &active, active.len() - wanted)
                    .await?;
            }
        }
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let status = status_of(rs, &active, min_ready);
        if Some(&status) != rs.status.as_ref() {
            let mut updated = rs.clone();
            updated.status = Some(status.clone());
            match client.update_status(&Object::from(updated)).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        // Pods ready but not yet available for minReadySeconds: look again
        // when they will be.
        if min_ready > 0
            && status.available_replicas.unwrap_or(0) < status.ready_replicas.unwrap_or(0)
        {
            next = Next::After(Duration::from_secs(1));
        }
        Ok(next)
    }

    async fn create_pods(
        &self,
        client: &mut ApiClient,
        rs: &Object,
        count: usize,
    ) -> Result<(), ApiError> {
        let key = ObjectRef::of(rs);
        let count = count.min(BURST);
        self.expectations().insert(
            key.clone(),
            Expectations {
                adds: count as i64,
                deletes: HashSet::new(),
                since: Instant::now(),
            },
        );
        let pod = pod_from_template(rs);
        // Slow start, as Kubernetes does: batches of 1, 2, 4, ... so a
        // template that cannot be created fails once, not `count` times.
        let mut created = 0;
        let mut batch = 1;
        while created < count {
            let size = batch.min(count - created);
            let mut creations = tokio::task::JoinSet::new();
            for _ in 0..size {
                let mut client = client.clone();
                let pod = pod.clone();
                creations.spawn(async move { client.create(&pod, false).await });
            }
            let mut failed = None;
            let mut failures = 0;
            while let Some(result) = creations.join_next().await {
                let error = match result {
                    Ok(Ok(_)) => continue,
                    Ok(Err(error)) => error,
                    Err(join) => ApiError::Internal(join.to_string()),
                };
                failures += 1;
                failed = Some(error);
            }
            created += size;
            if let Some(error) = failed {
                // The creations never made will never be seen.
                let skipped = (count - created + failures) as i64;
                if let Some(expected) = self.expectations().get_mut(&key) {
                    expected.adds -= skipped;
                }
                self.events.record(
                    rs,
                    events::WARNING,
                    "FailedCreate",
                    format!("Error creating: {error}"),
                );
                return Err(error);
            }
            batch *= 2;
        }
        self.events.record(
            rs,
            events::NORMAL,
            "SuccessfulCreate",
            format!("Created {count} pod(s)"),
        );
        Ok(())
    }

    async fn delete_pods(
        &self,
        client: &mut ApiClient,
        key: &ObjectRef,
        active: &[&Arc<Object>],
        count: usize,
    ) -> Result<(), ApiError> {
        let mut ranked: Vec<&Arc<Object>> = active.to_vec();
        ranked.sort_by(|a, b| pod_state::deletion_order(a, b));
        let victims: Vec<&Arc<Object>> = ranked.into_iter().take(count.min(BURST)).collect();
        self.expectations().insert(
            key.clone(),
            Expectations {
                adds: 0,
                deletes: victims.iter().map(|p| ObjectRef::of(p)).collect(),
                since: Instant::now(),
            },
        );
        for pod in &victims {
            if let Err(error) = delete(client, pod, "Background").await {
                if let Some(expected) = self.expectations().get_mut(key) {
                    expected.deletes.remove(&ObjectRef::of(pod));
                }
                return Err(error);
            }
        }
        if let Some(rs) = self.cache.get(key) {
            self.events.record(
                &rs,
                events::NORMAL,
                "SuccessfulDelete",
                format!("Deleted {} pod(s)", victims.len()),
            );
        }
        Ok(())
    }
}

/// A new pod from the ReplicaSet's template: its labels and annotations,
/// `<rs>-` plus a random suffix as name, controlled by the ReplicaSet.
fn pod_from_template(rs: &Object) -> Object {
    let template = replica_set(rs)
        .and_then(|rs| rs.spec.as_ref())
        .and_then(|spec| spec.template.clone())
        .unwrap_or_default();
    let template_meta = template.metadata.unwrap_or_default();
    let pod = Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                rs.metadata().name.as_deref().unwrap_or_default()
            )),
            namespace: rs.metadata().namespace.clone(),
            labels: template_meta.labels,
            annotations: template_meta.annotations,
            finalizers: template_meta.finalizers,
            owner_references: Some(vec![controller_reference(rs)]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    };
    Object::from(pod)
}

/// Status from the active pods the ReplicaSet controls.
fn status_of(rs: &ReplicaSet, active: &[&Arc<Object>], min_ready_seconds: i32) -> ReplicaSetStatus {
    let template_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let fully_labeled = active
        .iter()
        .filter(|p| {
            let labels = labels(p);
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count() as i32;
    let ready = active.iter().filter(|p| pod_state::is_ready(p)).count() as i32;
    let available = active
        .iter()
        .filter(|p| pod_state::is_available(p, min_ready_seconds))
        .count() as i32;
    ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(fully_labeled),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    }
}
