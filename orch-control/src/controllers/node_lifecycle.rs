//! The node lifecycle controller: a node whose Lease (`kube-node-lease/
//! <node>`) has not been renewed for the grace period (default 40 s) is
//! marked Ready=Unknown ("Kubelet stopped posting node status.") and
//! tainted `node.kubernetes.io/unreachable`; one whose agent reports
//! Ready=False is tainted `node.kubernetes.io/not-ready`; both with
//! NoSchedule and NoExecute, removed again once the node is healthy.
//! A silent node's pods are marked not Ready at once, so Services drop
//! them before they are evicted.
//!
//! Its taint manager evicts the pods of a node with NoExecute taints: at
//! once when a taint is not tolerated, else after the shortest
//! tolerationSeconds (the API server gives every pod 300 s for these two
//! taints unless it says otherwise). Evicted pods are deleted; their
//! controllers make replacements on healthy nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, NodeCondition, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::events::{self, EventRecorder};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};
use orch_core::scheduling::{NO_EXECUTE, NO_SCHEDULE, tolerates};

use super::garbage_collector::delete;
use crate::scheduler::node_table::{NOT_READY_TAINT, UNREACHABLE_TAINT};

pub const COMPONENT: &str = "node-controller";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// How often each node is looked at (kube-controller-manager's
/// --node-monitor-period).
const MONITOR_PERIOD: Duration = Duration::from_secs(1);

pub struct NodeLifecycleController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    events: EventRecorder,
    /// How long a Lease may go unrenewed (--node-monitor-grace-period).
    grace: Duration,
    /// Per node: the Lease's renewTime last seen, and when this controller
    /// saw it change. Silence is measured on this controller's clock (as
    /// Kubernetes' probeTimestamp), so a node's skewed clock cannot make it
    /// look dead; a new leader gives every node a full grace period.
    heard: Mutex<HashMap<String, (Option<Timestamp>, Instant)>>,
}

fn node(object: &Object) -> Option<&Node> {
    match object {
        Object::Node(node) => Some(node),
        _ => None,
    }
}

fn seconds_since(time: &k8s_openapi::jiff::Timestamp) -> i64 {
    orch_core::time::now().as_second() - time.as_second()
}

fn is_lifecycle_taint(taint: &Taint) -> bool {
    taint.key == NOT_READY_TAINT || taint.key == UNREACHABLE_TAINT
}

impl NodeLifecycleController {
    pub fn new(cache: Arc<Cache>, events: EventRecorder, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            events,
            grace,
            heard: Mutex::new(HashMap::new()),
        })
    }

    pub fn on_change(&self, change: &Change) {
        let object = match change {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        };
        match object.kind() {
            Kind::Node => {
                if matches!(change, Change::Deleted(_))
                    && let Some(name) = &object.metadata().name
                {
                    self.heard
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .remove(name);
                }
                self.queue.add(ObjectRef::of(object));
            }
            // A new pod on a tainted node may have to go too.
            Kind::Pod if matches!(change, Change::Applied { old: None, .. }) => {
                if let Object::Pod(pod) = object.as_ref()
                    && let Some(name) = pod.spec.as_ref().and_then(|s| s.node_name.clone())
                {
                    self.queue.add(ObjectRef {
                        kind: Kind::Node,
                        namespace: None,
                        name,
                    });
                }
            }
            _ => {}
        }
    }

    /// How long since this controller last saw the node's Lease renewed
    /// (or first looked at the node).
    fn silent_for(&self, object: &Object) -> Duration {
        let name = object.metadata().name.clone().unwrap_or_default();
        let lease = self.cache.get(&ObjectRef {
            kind: Kind::Lease,
            namespace: Some(LEASE_NAMESPACE.into()),
            name: name.clone(),
        });
        let renewed = lease.as_deref().and_then(|lease| match lease {
            Object::Lease(lease) => lease
                .spec
                .as_ref()
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0),
            _ => None,
        });
        let mut heard = self
            .heard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = heard.entry(name).or_insert((renewed, Instant::now()));
        if entry.0 != renewed {
            *entry = (renewed, Instant::now());
        }
        entry.1.elapsed()
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(object) = self.cache.get(&key) else {
            return Ok(Next::Done);
        };
        let Some(current) = node(&object) else {
            return Ok(Next::Done);
        };
        let silent = self.silent_for(&object) > self.grace;
        let ready = current
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone());
        if silent && ready.as_deref() != Some("Unknown") {
            self.mark_unknown(client, current).await?;
            self.events.record(
                &object,
                events::NORMAL,
                "NodeNotReady",
                format!("Node {} status is now: NodeNotReady", key.name),
            );
            // The status write comes back through the watch.
            return Ok(Next::After(MONITOR_PERIOD));
        }
        if silent {
            self.mark_pods_not_ready(client, &key.name).await?;
        }
        let wanted_key = match ready.as_deref() {
            Some("True") if !silent => None,
            Some("False") if !silent => Some(NOT_READY_TAINT),
            _ => Some(UNREACHABLE_TAINT),
        };
        let taints = current
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut wanted: Vec<Taint> = taints
            .iter()
            .filter(|t| !is_lifecycle_taint(t) || Some(t.key.as_str()) == wanted_key)
            .cloned()
            .collect();
        if let Some(key) = wanted_key {
            for effect in [NO_SCHEDULE, NO_EXECUTE] {
                if !wanted.iter().any(|t| t.key == key && t.effect == effect) {
                    wanted.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        value: None,
                        time_added: Some(Time(orch_core::time::now())),
                    });
                }
            }
        }
        if wanted != taints {
            let mut tainted = current.clone();
            tainted.spec.get_or_insert_with(Default::default).taints =
                Some(wanted.clone()).filter(|t| !t.is_empty());
            match client.update(&Object::from(tainted), false).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        let next_eviction = self.evict(client, &key.name, &wanted).await?;
        Ok(Next::After(
            next_eviction.map_or(MONITOR_PERIOD, |d| d.min(MONITOR_PERIOD)),
        ))
    }

    /// Every condition Unknown, as Kubernetes marks a silent node.
    async fn mark_unknown(&self, client: &mut ApiClient, current: &Node) -> Result<(), ApiError> {
        let mut marked = current.clone();
        let status = marked.status.get_or_insert_with(Default::default);
        let now = Some(Time(orch_core::time::now()));
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        for kind in ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"] {
            let condition = match conditions.iter_mut().find(|c| c.type_ == kind) {
                Some(condition) => condition,
                None => {
                    conditions.push(NodeCondition {
                        type_: kind.into(),
                        ..NodeCondition::default()
                    });
                    let last = conditions.len() - 1;
                    &mut conditions[last]
                }
            };
            condition.status = "Unknown".into();
            condition.reason = Some("NodeStatusUnknown".into());
            condition.message = Some("Kubelet stopped posting node status.".into());
            condition.last_transition_time = now.clone();
        }
        match client.update_status(&Object::from(marked)).await {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// The pods of a silent node stop being Ready, as Kubernetes'
    /// MarkPodsNotReady does: their agent cannot say whether they serve,
    /// and Services must stop sending them traffic long before they are
    /// evicted. (A node whose agent still reports is left to its agent.)
    async fn mark_pods_not_ready(
        &self,
        client: &mut ApiClient,
        node: &str,
    ) -> Result<(), ApiError> {
        let pods = self.cache.select_kind(Kind::Pod, |object| match object {
            Object::Pod(pod) => {
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
            }
            _ => false,
        });
        for object in pods {
            let Object::Pod(pod) = object.as_ref() else {
                continue;
            };
            let mut pod = (**pod).clone();
            let Some(ready) = pod
                .status
                .as_mut()
                .and_then(|s| s.conditions.as_mut())
                .and_then(|c| {
                    c.iter_mut()
                        .find(|c| c.type_ == "Ready" && c.status == "True")
                })
            else {
                continue;
            };
            ready.status = "False".into();
            ready.last_transition_time = Some(Time(orch_core::time::now()));
            match client.update_status(&Object::Pod(Box::new(pod))).await {
                // A newer pod comes through the watch: the next pass.
                Ok(_) | Err(ApiError::NotFound(_)) | Err(ApiError::Conflict(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Deletes the node's pods whose time under its NoExecute taints is
    /// up; returns when the next one's will be.
    async fn evict(
        &self,
        client: &mut ApiClient,
        node: &str,
        taints: &[Taint],
    ) -> Result<Option<Duration>, ApiError> {
        let no_execute: Vec<&Taint> = taints.iter().filter(|t| t.effect == NO_EXECUTE).collect();
        if no_execute.is_empty() {
            return Ok(None);
        }
        let pods = self.cache.select_kind(Kind::Pod, |object| match object {
            Object::Pod(pod) => {
                pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && pod.metadata.deletion_timestamp.is_none()
            }
            _ => false,
        });
        let mut next: Option<Duration> = None;
        for object in pods {
            let Object::Pod(pod) = object.as_ref() else {
                continue;
            };
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            // The latest moment any taint allows the pod to stay.
            let mut due_in: Option<i64> = None;
            let mut now_due = false;
            for taint in &no_execute {
                let matching: Vec<_> = tolerations.iter().filter(|t| tolerates(t, taint)).collect();
                if matching.is_empty() {
                    now_due = true;
                    break;
                }
                // Tolerated for the shortest of its matching tolerations'
                // seconds; forever if any sets none.
                if matching.iter().any(|t| t.toleration_seconds.is_none()) {
                    continue;
                }
                let seconds = matching
                    .iter()
                    .filter_map(|t| t.toleration_seconds)
                    .min()
                    .unwrap_or(0);
                let since = taint.time_added.as_ref().map_or(0, |t| seconds_since(&t.0));
                let left = seconds - since;
                due_in = Some(due_in.map_or(left, |d| d.min(left)));
            }
            if now_due || due_in.is_some_and(|left| left <= 0) {
                self.events.record(
                    &object,
                    events::NORMAL,
                    "TaintManagerEviction",
                    format!("Marking for deletion Pod {}", object.display_name()),
                );
                delete(client, &object, "Background").await?;
            } else if let Some(left) = due_in {
                let wait = Duration::from_secs(left as u64);
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        Ok(next)
    }
}
