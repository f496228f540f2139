//! Scheduling semantics of the object model, as Kubernetes defines them:
//! what a pod requests, what a node offers, whether a pod tolerates a
//! taint, and whether a node satisfies a pod's node selector and affinity.
//! The scheduler decides with these; the node lifecycle controller and the
//! node agent's admission read taints and tolerations the same way.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use crate::quantity::parse_k8s;

pub const NO_SCHEDULE: &str = "NoSchedule";
pub const PREFER_NO_SCHEDULE: &str = "PreferNoSchedule";
pub const NO_EXECUTE: &str = "NoExecute";

/// The scheduler pods name when they name none.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Amounts of the resources the scheduler accounts for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub pods: i64,
}

impl Resources {
    /// Saturating: absurd quantities (up to i64::MAX each) never wrap.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_add(other.ephemeral_storage);
        self.pods = self.pods.saturating_add(other.pods);
    }

    pub fn subtract(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.ephemeral_storage = self
            .ephemeral_storage
            .saturating_sub(other.ephemeral_storage);
        self.pods = self.pods.saturating_sub(other.pods);
    }

    fn max(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
    }

    /// Reads `cpu`, `memory` and `ephemeral-storage` (and `pods`, on
    /// nodes) from a resource list; an unparsable quantity counts as 0
    /// (validation refuses those before they are stored).
    pub fn from_list(list: Option<&BTreeMap<String, K8sQuantity>>) -> Self {
        let Some(list) = list else {
            return Self::default();
        };
        let read = |name: &str, milli: bool| -> i64 {
            list.get(name)
                .and_then(|q| parse_k8s(q).ok())
                .map(|q| if milli { q.milli_value() } else { q.value() })
                .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
        };
        Self {
            milli_cpu: read("cpu", true),
            memory: read("memory", false),
            ephemeral_storage: read("ephemeral-storage", false),
            pods: read("pods", false),
        }
    }
}

fn container_requests(container: &Container) -> Resources {
    Resources::from_list(
        container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref()),
    )
}

/// What a pod asks of its node, as the scheduler's NodeResourcesFit counts
/// it: the app containers and sidecars (init containers with
/// restartPolicy Always) run together; each ordinary init container runs
/// alone beside the sidecars started before it; the larger wins, plus the
/// pod's overhead. Always one pod.
pub fn pod_requests(spec: &PodSpec) -> Resources {
    let mut running = Resources::default();
    let mut init_peak = Resources::default();
    let mut sidecars = Resources::default();
    for init in spec.init_containers.iter().flatten() {
        let requests = container_requests(init);
        if init.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&requests);
            running.add(&requests);
        } else {
            let mut alone = sidecars;
            alone.add(&requests);
            init_peak.max(&alone);
        }
    }
    for container in &spec.containers {
        running.add(&container_requests(container));
    }
    running.max(&init_peak);
    running.add(&Resources::from_list(spec.overhead.as_ref()));
    running.pods = 1;
    running
}

/// What a node offers pods: its allocatable (capacity when unset).
pub fn node_allocatable(node: &Node) -> Resources {
    let status = node.status.as_ref();
    Resources::from_list(
        status
            .and_then(|s| s.allocatable.as_ref())
            .or_else(|| status.and_then(|s| s.capacity.as_ref())),
    )
}

/// Whether `toleration` tolerates `taint` (Kubernetes' ToleratesTaint): an
/// empty effect matches every effect, an empty key with Exists every key,
/// Exists ignores the value, Equal (the default) compares it.
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" | "" => {
            !key.is_empty()
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
        _ => false,
    }
}

/// The first of `taints` with one of `effects` that no toleration
/// tolerates.
pub fn untolerated_taint<'a>(
    tolerations: &[Toleration],
    taints: &'a [Taint],
    effects: &[&str],
) -> Option<&'a Taint> {
    taints.iter().find(|taint| {
        effects.contains(&taint.effect.as_str()) && !tolerations.iter().any(|t| tolerates(t, taint))
    })
}

/// How the scheduler's messages show a taint: `{key: value}`.
pub fn describe_taint(taint: &Taint) -> String {
    format!(
        "{{{}: {}}}",
        taint.key,
        taint.value.as_deref().unwrap_or_default()
    )
}

fn requirement_holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(actual), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                actual > bound
            } else {
                actual < bound
            }
        }
        _ => false,
    }
}

/// Whether `node` satisfies every requirement of `term` (labels through
/// matchExpressions, `metadata.name` through matchFields). A term with no
/// requirement matches nothing, as in Kubernetes.
pub fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.as_ref();
    expressions
        .iter()
        .all(|r| requirement_holds(r, labels.and_then(|l| l.get(&r.key)).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name" && requirement_holds(r, node.metadata.name.as_deref())
        })
}

/// Whether `node` satisfies the pod's `nodeSelector` and its required node
/// affinity (terms ORed, requirements within a term ANDed).
pub fn required_affinity_matches(spec: &PodSpec, node: &Node) -> bool {
    if let Some(selector) = &spec.node_selector {
        let labels = node.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node)),
        None => true,
    }
}

/// The summed weights of the pod's preferred node-affinity terms `node`
/// matches.
pub fn preferred_affinity_weight(spec: &PodSpec, node: &Node) -> i64 {
    spec.affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(0, |terms| {
            terms
                .iter()
                .filter(|t| term_matches(&t.preference, node))
                .map(|t| i64::from(t.weight))
                .sum()
        })
}

#[cfg(test)]
mod tests;
