//! How workload controllers read a pod: active, ready, available, and
//! which of several is the least useful (deleted first on scale-down), as
//! Kubernetes' controller utilities define them.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use k8s_openapi::jiff::Timestamp;
use orch_core::object::Object;

fn pod(object: &Object) -> Option<&Pod> {
    match object {
        Object::Pod(pod) => Some(pod),
        _ => None,
    }
}

fn phase(object: &Object) -> &str {
    pod(object)
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn ready_condition(object: &Object) -> Option<&PodCondition> {
    pod(object)?
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Neither finished (Succeeded/Failed) nor being deleted: counts toward
/// replicas.
pub fn is_active(object: &Object) -> bool {
    object.metadata().deletion_timestamp.is_none()
        && !matches!(phase(object), "Succeeded" | "Failed")
}

/// Its containers are done for good (Succeeded or Failed).
pub fn is_finished(object: &Object) -> bool {
    matches!(phase(object), "Succeeded" | "Failed")
}

/// Its Ready condition is True.
pub fn is_ready(object: &Object) -> bool {
    ready_condition(object).is_some_and(|c| c.status == "True")
}

/// Since when it has been ready.
fn ready_since(object: &Object) -> Option<Timestamp> {
    ready_condition(object)
        .filter(|c| c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

/// Ready for at least `min_ready_seconds`.
pub fn is_available(object: &Object, min_ready_seconds: i32) -> bool {
    if !is_ready(object) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    ready_since(object).is_some_and(|since| {
        orch_core::time::now().as_second() - since.as_second() >= i64::from(min_ready_seconds)
    })
}

fn restarts(object: &Object) -> i32 {
    pod(object)
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |statuses| {
            statuses.iter().map(|s| s.restart_count).max().unwrap_or(0)
        })
}

fn phase_rank(object: &Object) -> u8 {
    match phase(object) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    }
}

fn assigned(object: &Object) -> bool {
    pod(object)
        .and_then(|p| p.spec.as_ref())
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Orders pods least useful first (Kubernetes' ActivePods): unassigned
/// before assigned, Pending before Unknown before Running, not ready
/// before ready, ready more recently before longer, more restarts before
/// fewer, newer before older.
pub fn deletion_order(a: &Object, b: &Object) -> Ordering {
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| ready_since(b).cmp(&ready_since(a)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |o: &Object| o.metadata().creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}
