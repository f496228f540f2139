//! Filters and scores, as Kubernetes' default scheduler profile runs them:
//! NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts,
//! NodeResourcesFit, PodTopologySpread and InterPodAffinity
//! (anti-affinity) filter; NodeResourcesFit (least allocated),
//! NodeResourcesBalancedAllocation, NodeAffinity (preferred),
//! TaintToleration (PreferNoSchedule), PodTopologySpread (soft constraints
//! and default spreading by owner) and ImageLocality score, with
//! Kubernetes' weights.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm, PodSpec, Toleration};
use orch_core::object::Object;
use orch_core::scheduling::{
    self, NO_EXECUTE, NO_SCHEDULE, PREFER_NO_SCHEDULE, Resources, describe_taint,
};
use orch_core::selector::Selector;

use super::node_table::{NodeInfo, NodeTable, PlacedPod, UNSCHEDULABLE_TAINT};

const MAX_SCORE: i64 = 100;

/// One topology spread constraint, with the matching pods counted per
/// domain (value of its topology key) over the nodes it considers.
struct Spread {
    topology_key: String,
    max_skew: i64,
    counts: HashMap<String, i64>,
    /// The smallest count over the domains (0 when fewer than minDomains).
    min: i64,
    /// Whether the pod itself matches the selector (then it adds one).
    self_match: i64,
}

/// What a decision needs to know of the pod, computed once per attempt.
pub struct Candidate<'a> {
    pub pod: &'a Pod,
    pub spec: &'a PodSpec,
    pub namespace: &'a str,
    pub placed: PlacedPod,
    tolerations: &'a [Toleration],
    hard_spread: Vec<Spread>,
    soft_spread: Vec<Spread>,
    /// Per required anti-affinity term of the pod: its topology key and
    /// the domains holding a pod it must avoid.
    anti_affinity: Vec<(String, HashSet<String>)>,
    /// Its containers' images, each as written and with `:latest`.
    images: Vec<(String, String)>,
}

fn labels(object: &Object) -> BTreeMap<String, String> {
    object.metadata().labels.clone().unwrap_or_default()
}

fn domain<'n>(info: &'n NodeInfo, key: &str) -> Option<&'n str> {
    info.node
        .metadata()
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Whether `other` (in `other_namespace`) is a pod `term` of a pod in
/// `namespace` selects.
fn term_selects(term: &PodAffinityTerm, namespace: &str, other: &Object) -> bool {
    let other_namespace = other.metadata().namespace.as_deref().unwrap_or_default();
    let namespaces = term.namespaces.as_deref().unwrap_or_default();
    let in_namespace = if namespaces.is_empty() {
        // An empty namespaceSelector ({}) selects every namespace.
        term.namespace_selector.is_some() || other_namespace == namespace
    } else {
        namespaces.iter().any(|n| n == other_namespace)
    };
    in_namespace
        && Selector::from_label_selector(term.label_selector.as_ref())
            .is_ok_and(|s| !s.is_nothing() && s.matches(&labels(other)))
}

fn required_anti_affinity(spec: &PodSpec) -> &[PodAffinityTerm] {
    spec.affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

impl<'a> Candidate<'a> {
    pub fn new(object: &'a Arc<Object>, table: &NodeTable) -> Option<Self> {
        let Object::Pod(pod) = object.as_ref() else {
            return None;
        };
        let spec = pod.spec.as_ref()?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let placed = PlacedPod::new(object.clone())?;
        let own_labels = labels(object);
        let mut hard_spread = Vec::new();
        let mut soft_spread = Vec::new();
        for constraint in spec.topology_spread_constraints.iter().flatten() {
            let mut selector =
                match Selector::from_label_selector(constraint.label_selector.as_ref()) {
                    Ok(selector) => selector,
                    Err(_) => Selector::nothing(),
                };
            // matchLabelKeys: the pod's own values join the selector.
            for key in constraint.match_label_keys.iter().flatten() {
                if let Some(value) = own_labels.get(key)
                    && let Ok(requirement) = orch_core::selector::Requirement::new(
                        key,
                        orch_core::selector::Operator::In,
                        vec![value.clone()],
                    )
                {
                    selector = selector.and(requirement);
                }
            }
            let honor_affinity = constraint.node_affinity_policy.as_deref() != Some("Ignore");
            let mut counts: HashMap<String, i64> = HashMap::new();
            for info in table.nodes.values() {
                let Some(value) = domain(info, &constraint.topology_key) else {
                    continue;
                };
                if honor_affinity
                    && info
                        .node()
                        .is_some_and(|node| !scheduling::required_affinity_matches(spec, node))
                {
                    continue;
                }
                let matching = info
                    .pods
                    .values()
                    .filter(|p| {
                        p.pod.metadata().namespace.as_deref() == Some(namespace)
                            && p.pod.metadata().deletion_timestamp.is_none()
                            && selector.matches(&labels(&p.pod))
                    })
                    .count() as i64;
                *counts.entry(value.to_owned()).or_default() += matching;
            }
            let min_domains = i64::from(constraint.min_domains.unwrap_or(1));
            let min = if (counts.len() as i64) < min_domains {
                0
            } else {
                counts.values().copied().min().unwrap_or(0)
            };
            let spread = Spread {
                topology_key: constraint.topology_key.clone(),
                max_skew: i64::from(constraint.max_skew.max(1)),
                self_match: i64::from(selector.matches(&own_labels)),
                counts,
                min,
            };
            if constraint.when_unsatisfiable == "DoNotSchedule" {
                hard_spread.push(spread);
            } else {
                soft_spread.push(spread);
            }
        }
        let anti_affinity = required_anti_affinity(spec)
            .iter()
            .map(|term| {
                let domains = table
                    .nodes
                    .values()
                    .filter(|info| {
                        info.pods
                            .values()
                            .any(|p| term_selects(term, namespace, &p.pod))
                    })
                    .filter_map(|info| domain(info, &term.topology_key).map(str::to_owned))
                    .collect();
                (term.topology_key.clone(), domains)
            })
            .collect();
        let images = spec
            .containers
            .iter()
            .filter_map(|c| c.image.clone())
            .map(|image| {
                let latest = format!("{image}:latest");
                (image, latest)
            })
            .collect();
        Some(Self {
            images,
            pod,
            spec,
            namespace,
            placed,
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
            hard_spread,
            soft_spread,
            anti_affinity,
        })
    }

    /// Why the pod cannot go to `info` (empty: it can). Stops at the first
    /// failing filter, except that every short resource is named.
    pub fn filter(&self, info: &NodeInfo, table: &NodeTable) -> Vec<String> {
        let Some(node) = info.node() else {
            return vec!["node(s) could not be read".into()];
        };
        if info.unschedulable
            && !self.tolerations.iter().any(|t| {
                scheduling::tolerates(
                    t,
                    &k8s_openapi::api::core::v1::Taint {
                        key: UNSCHEDULABLE_TAINT.into(),
                        effect: NO_SCHEDULE.into(),
                        ..Default::default()
                    },
                )
            })
        {
            return vec!["node(s) were unschedulable".into()];
        }
        if let Some(taint) = scheduling::untolerated_taint(
            self.tolerations,
            &info.taints,
            &[NO_SCHEDULE, NO_EXECUTE],
        ) {
            return vec![format!(
                "node(s) had untolerated taint {}",
                describe_taint(taint)
            )];
        }
        if !scheduling::required_affinity_matches(self.spec, node) {
            return vec!["node(s) didn't match Pod's node affinity/selector".into()];
        }
        if self.placed.host_ports.iter().any(|p| info.port_taken(p)) {
            return vec!["node(s) didn't have free ports for the requested pod ports".into()];
        }
        let short = insufficient(&self.placed.requests, info);
        if !short.is_empty() {
            return short;
        }
        for spread in &self.hard_spread {
            let Some(value) = domain(info, &spread.topology_key) else {
                return vec![
                    "node(s) didn't match pod topology spread constraints (missing required label)"
                        .into(),
                ];
            };
            let count = spread.counts.get(value).copied().unwrap_or(0);
            if count + spread.self_match - spread.min > spread.max_skew {
                return vec!["node(s) didn't match pod topology spread constraints".into()];
            }
        }
        for (key, domains) in &self.anti_affinity {
            if domain(info, key).is_some_and(|d| domains.contains(d)) {
                return vec!["node(s) didn't match pod anti-affinity rules".into()];
            }
        }
        if self.violates_existing_anti_affinity(info, table) {
            return vec!["node(s) didn't satisfy existing pods anti-affinity rules".into()];
        }
        Vec::new()
    }

    /// Whether a pod already placed has a required anti-affinity term that
    /// selects this pod within its topology domain, which `info` shares.
    fn violates_existing_anti_affinity(&self, info: &NodeInfo, table: &NodeTable) -> bool {
        let own = &self.placed.pod;
        table.anti_affine().any(|(placed, node)| {
            let Object::Pod(other) = placed.pod.as_ref() else {
                return false;
            };
            let Some(other_spec) = &other.spec else {
                return false;
            };
            let other_namespace = other.metadata.namespace.as_deref().unwrap_or_default();
            required_anti_affinity(other_spec).iter().any(|term| {
                match (
                    domain(info, &term.topology_key),
                    domain(node, &term.topology_key),
                ) {
                    (Some(here), Some(there)) => {
                        here == there && term_selects(term, other_namespace, own)
                    }
                    _ => false,
                }
            })
        })
    }

    /// The raw counts behind the node's normalised scores.
    pub fn counts(&self, info: &NodeInfo) -> Counts {
        Counts {
            preferred: self.preferred_weight(info),
            soft_taints: self.soft_taints(info),
            spread: self.spread_count(info),
        }
    }

    /// The node's score: Kubernetes' default plugins' scores (0-100 each)
    /// times their weights; `counts` are the node's own (from
    /// [`Self::counts`]), `normal` scales them over the feasible nodes.
    pub fn score(&self, info: &NodeInfo, counts: &Counts, normal: &Normalisers) -> i64 {
        let least = least_allocated(&self.placed.nonzero, info);
        let balanced = balanced_allocation(&self.placed.nonzero, info);
        let preferred = scale(counts.preferred, normal.max_preferred);
        let taint_score = MAX_SCORE - scale(counts.soft_taints, normal.max_soft_taints);
        let spread = MAX_SCORE - scale(counts.spread, normal.max_spread);
        let images = self.image_locality(info);
        3 * taint_score + 2 * preferred + 2 * spread + least + balanced + images
    }

    /// Matching pods in the node's domains for the soft constraints, or,
    /// without any constraint, the pods of the same owner on the node
    /// (Kubernetes' default spreading).
    fn spread_count(&self, info: &NodeInfo) -> i64 {
        if self.soft_spread.is_empty() && self.hard_spread.is_empty() {
            return self
                .placed
                .owner
                .as_ref()
                .and_then(|owner| info.by_owner.get(owner))
                .map_or(0, |count| i64::from(*count));
        }
        self.soft_spread
            .iter()
            .map(|spread| {
                domain(info, &spread.topology_key)
                    .and_then(|d| spread.counts.get(d))
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Share of the pod's images (by size when known) the node holds.
    fn image_locality(&self, info: &NodeInfo) -> i64 {
        if self.images.is_empty() || info.images.is_empty() {
            return 0;
        }
        let present = self
            .images
            .iter()
            .filter(|(image, latest)| {
                info.images.contains_key(image) || info.images.contains_key(latest)
            })
            .count() as i64;
        present * MAX_SCORE / self.images.len() as i64
    }

    fn preferred_weight(&self, info: &NodeInfo) -> i64 {
        info.node().map_or(0, |node| {
            scheduling::preferred_affinity_weight(self.spec, node)
        })
    }

    fn soft_taints(&self, info: &NodeInfo) -> i64 {
        info.taints
            .iter()
            .filter(|t| {
                t.effect == PREFER_NO_SCHEDULE
                    && !self.tolerations.iter().any(|x| scheduling::tolerates(x, t))
            })
            .count() as i64
    }
}

/// What a node scores on before normalising: the weight of the preferred
/// affinity terms it matches, the PreferNoSchedule taints it has that the
/// pod does not tolerate, and the pods it holds that spreading counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub preferred: i64,
    pub soft_taints: i64,
    pub spread: i64,
}

/// The largest counts among the feasible nodes, for normalising.
#[derive(Default)]
pub struct Normalisers {
    pub max_preferred: i64,
    pub max_soft_taints: i64,
    pub max_spread: i64,
}

impl Normalisers {
    pub fn over<'a>(counts: impl IntoIterator<Item = &'a Counts>) -> Self {
        counts.into_iter().fold(Self::default(), |max, c| Self {
            max_preferred: max.max_preferred.max(c.preferred),
            max_soft_taints: max.max_soft_taints.max(c.soft_taints),
            max_spread: max.max_spread.max(c.spread),
        })
    }
}

fn scale(value: i64, max: i64) -> i64 {
    if max <= 0 { 0 } else { value * MAX_SCORE / max }
}

/// "Insufficient cpu", "Too many pods", ...: what the node lacks.
fn insufficient(requests: &Resources, info: &NodeInfo) -> Vec<String> {
    let free = |allocatable: i64, requested: i64| allocatable.saturating_sub(requested);
    let mut short = Vec::new();
    if requests.pods > free(info.allocatable.pods, info.requested.pods) {
        short.push("Too many pods".to_string());
    }
    if requests.milli_cpu > 0
        && requests.milli_cpu > free(info.allocatable.milli_cpu, info.requested.milli_cpu)
    {
        short.push("Insufficient cpu".into());
    }
    if requests.memory > 0 && requests.memory > free(info.allocatable.memory, info.requested.memory)
    {
        short.push("Insufficient memory".into());
    }
    if requests.ephemeral_storage > 0
        && requests.ephemeral_storage
            > free(
                info.allocatable.ephemeral_storage,
                info.requested.ephemeral_storage,
            )
    {
        short.push("Insufficient ephemeral-storage".into());
    }
    short
}

fn fraction(requested: i64, allocatable: i64) -> f64 {
    if allocatable <= 0 {
        1.0
    } else {
        (requested as f64 / allocatable as f64).min(1.0)
    }
}

/// NodeResourcesFit's LeastAllocated: free share of CPU and memory after
/// the pod, averaged.
fn least_allocated(pod: &Resources, info: &NodeInfo) -> i64 {
    let cpu = 1.0
        - fraction(
            info.nonzero_requested.milli_cpu + pod.milli_cpu,
            info.allocatable.milli_cpu,
        );
    let memory = 1.0
        - fraction(
            info.nonzero_requested.memory + pod.memory,
            info.allocatable.memory,
        );
    ((cpu + memory) / 2.0 * MAX_SCORE as f64) as i64
}

/// NodeResourcesBalancedAllocation: CPU and memory used in like shares.
fn balanced_allocation(pod: &Resources, info: &NodeInfo) -> i64 {
    let cpu = fraction(
        info.nonzero_requested.milli_cpu + pod.milli_cpu,
        info.allocatable.milli_cpu,
    );
    let memory = fraction(
        info.nonzero_requested.memory + pod.memory,
        info.allocatable.memory,
    );
    let deviation = (cpu - memory).abs() / 2.0;
    ((1.0 - deviation) * MAX_SCORE as f64) as i64
}

/// "0/5 nodes are available: 3 Insufficient cpu, 2 node(s) had untolerated
/// taint {gpu: true}.": how many nodes gave each reason, as Kubernetes
/// says it.
pub fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if reasons.is_empty() {
        return format!("0/{nodes} nodes are available: no nodes available to schedule pods.");
    }
    let mut parts: Vec<String> = reasons
        .iter()
        .map(|(reason, count)| format!("{count} {reason}"))
        .collect();
    parts.sort();
    format!("0/{nodes} nodes are available: {}.", parts.join(", "))
}

#[cfg(test)]
mod tests;
