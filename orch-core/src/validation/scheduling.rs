//! Scheduling constraints: node and pod (anti-)affinity, tolerations,
//! topology spread constraints.

use k8s_openapi::api::core::v1::{
    NodeSelector, NodeSelectorTerm, PodAffinityTerm, PodSpec, Toleration, TopologySpreadConstraint,
    WeightedPodAffinityTerm,
};

use super::{Errors, NameRule, Path, q, validate_label_name, validate_label_selector};
use crate::names;

const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// `affinity`, `tolerations` and `topologySpreadConstraints` of a pod spec.
pub(super) fn validate_scheduling(spec: &PodSpec, path: &Path, errs: &mut Errors) {
    if let Some(affinity) = &spec.affinity {
        let p = path.child("affinity");
        if let Some(node) = &affinity.node_affinity {
            let p = p.child("nodeAffinity");
            if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
                let p = p.child("requiredDuringSchedulingIgnoredDuringExecution");
                validate_node_selector(required, &p, errs);
            }
            let preferred = node
                .preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten();
            let p = p.child("preferredDuringSchedulingIgnoredDuringExecution");
            for (i, term) in preferred.enumerate() {
                validate_weight(term.weight, &p.index(i).child("weight"), errs);
                // Preferred terms tolerate bad label values: they may still match.
                validate_node_selector_term(
                    &term.preference,
                    false,
                    &p.index(i).child("preference"),
                    errs,
                );
            }
        }
        let pod_affinities = [
            (
                "podAffinity",
                affinity.pod_affinity.as_ref().map(|a| {
                    (
                        &a.required_during_scheduling_ignored_during_execution,
                        &a.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
            (
                "podAntiAffinity",
                affinity.pod_anti_affinity.as_ref().map(|a| {
                    (
                        &a.required_during_scheduling_ignored_during_execution,
                        &a.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
        ];
        for (field, terms) in pod_affinities {
            if let Some((required, preferred)) = terms {
                let p = p.child(field);
                validate_pod_affinity_terms(required.as_deref(), preferred.as_deref(), &p, errs);
            }
        }
    }
    for (i, toleration) in spec.tolerations.iter().flatten().enumerate() {
        validate_toleration(toleration, &path.child("tolerations").index(i), errs);
    }
    for (i, constraint) in spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .enumerate()
    {
        validate_topology_spread(
            constraint,
            &path.child("topologySpreadConstraints").index(i),
            errs,
        );
    }
}

fn validate_node_selector(selector: &NodeSelector, path: &Path, errs: &mut Errors) {
    let terms_path = path.child("nodeSelectorTerms");
    if selector.node_selector_terms.is_empty() {
        errs.required(&terms_path, "must have at least one node selector term");
        return;
    }
    for (i, term) in selector.node_selector_terms.iter().enumerate() {
        validate_node_selector_term(term, true, &terms_path.index(i), errs);
    }
}

fn validate_node_selector_term(
    term: &NodeSelectorTerm,
    strict_values: bool,
    path: &Path,
    errs: &mut Errors,
) {
    for (i, req) in term.match_expressions.iter().flatten().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let values = req.values.as_deref().unwrap_or(&[]);
        let values_path = p.child("values");
        match req.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.required(
                        &values_path,
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.forbidden(
                        &values_path,
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            "Gt" | "Lt" => match values {
                [value] => {
                    if value.parse::<i64>().is_err() {
                        errs.invalid(&values_path.index(0), q(value), "must be an integer");
                    }
                }
                _ => errs.required(
                    &values_path,
                    "must be specified single value when `operator` is 'Lt' or 'Gt'",
                ),
            },
            other => errs.invalid(
                &p.child("operator"),
                q(other),
                "not a valid selector operator",
            ),
        }
        validate_label_name(&req.key, &p.child("key"), errs);
        if strict_values {
            for (j, value) in values.iter().enumerate() {
                errs.each_invalid(&values_path.index(j), value, names::is_label_value(value));
            }
        }
    }
    for (i, req) in term.match_fields.iter().flatten().enumerate() {
        let p = path.child("matchFields").index(i);
        let values = req.values.as_deref().unwrap_or(&[]);
        match req.operator.as_str() {
            "In" | "NotIn" if values.len() != 1 => errs.required(
                &p.child("values"),
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            ),
            "In" | "NotIn" => {}
            other => errs.invalid(
                &p.child("operator"),
                q(other),
                "not a valid selector operator",
            ),
        }
        if req.key != "metadata.name" {
            errs.invalid(
                &p.child("key"),
                q(&req.key),
                "not a valid field selector key",
            );
        } else {
            for (j, value) in values.iter().enumerate() {
                let msgs = NameRule::Dns1123Subdomain.check(value, false);
                errs.each_invalid(&p.child("values").index(j), value, msgs);
            }
        }
    }
}

fn validate_weight(weight: i32, path: &Path, errs: &mut Errors) {
    if !(1..=100).contains(&weight) {
        errs.invalid(path, weight, "must be in the range 1-100");
    }
}

fn validate_pod_affinity_terms(
    required: Option<&[PodAffinityTerm]>,
    preferred: Option<&[WeightedPodAffinityTerm]>,
    path: &Path,
    errs: &mut Errors,
) {
    let p = path.child("requiredDuringSchedulingIgnoredDuringExecution");
    for (i, term) in required.unwrap_or(&[]).iter().enumerate() {
        validate_pod_affinity_term(term, &p.index(i), errs);
    }
    let p = path.child("preferredDuringSchedulingIgnoredDuringExecution");
    for (i, weighted) in preferred.unwrap_or(&[]).iter().enumerate() {
        validate_weight(weighted.weight, &p.index(i).child("weight"), errs);
        validate_pod_affinity_term(
            &weighted.pod_affinity_term,
            &p.index(i).child("podAffinityTerm"),
            errs,
        );
    }
}

fn validate_pod_affinity_term(term: &PodAffinityTerm, path: &Path, errs: &mut Errors) {
    if let Some(selector) = &term.label_selector {
        validate_label_selector(selector, &path.child("labelSelector"), errs);
    }
    if let Some(selector) = &term.namespace_selector {
        validate_label_selector(selector, &path.child("namespaceSelector"), errs);
    }
    for (i, namespace) in term.namespaces.iter().flatten().enumerate() {
        let p = path.child("namespaces").index(i);
        errs.each_invalid(&p, namespace, names::is_dns1123_label(namespace));
    }
    let key_path = path.child("topologyKey");
    if term.topology_key.is_empty() {
        errs.required(&key_path, "can not be empty");
    } else {
        validate_label_name(&term.topology_key, &key_path, errs);
    }
}

fn validate_toleration(toleration: &Toleration, path: &Path, errs: &mut Errors) {
    let key = toleration.key.as_deref().unwrap_or("");
    let operator = toleration.operator.as_deref().unwrap_or("");
    let value = toleration.value.as_deref().unwrap_or("");
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !key.is_empty() {
        validate_label_name(key, &path.child("key"), errs);
    }
    if key.is_empty() && operator != "Exists" {
        errs.invalid(
            &path.child("operator"),
            q(operator),
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        );
    }
    if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
        errs.invalid(
            &path.child("effect"),
            q(effect),
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
    match operator {
        "Equal" | "" => {
            let msgs = names::is_label_value(value);
            if !msgs.is_empty() {
                errs.invalid(&path.child("operator"), q(value), &msgs.join(";"));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                errs.invalid(
                    &path.child("operator"),
                    q(value),
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
        other => errs.not_supported(&path.child("operator"), other, &["Equal", "Exists"]),
    }
    if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
        errs.not_supported(&path.child("effect"), effect, TAINT_EFFECTS);
    }
}

/// A taint effect, required (`validateTaintEffect`).
pub(super) fn validate_taint_effect(effect: &str, path: &Path, errs: &mut Errors) {
    if effect.is_empty() {
        errs.required(path, "");
    } else if !TAINT_EFFECTS.contains(&effect) {
        errs.not_supported(path, effect, TAINT_EFFECTS);
    }
}

fn validate_topology_spread(constraint: &TopologySpreadConstraint, path: &Path, errs: &mut Errors) {
    if constraint.max_skew <= 0 {
        errs.invalid(
            &path.child("maxSkew"),
            constraint.max_skew,
            "must be greater than zero",
        );
    }
    let key_path = path.child("topologyKey");
    if constraint.topology_key.is_empty() {
        errs.required(&key_path, "can not be empty");
    } else {
        validate_label_name(&constraint.topology_key, &key_path, errs);
    }
    let when = constraint.when_unsatisfiable.as_str();
    let supported = ["DoNotSchedule", "ScheduleAnyway"];
    if when.is_empty() {
        errs.required(&path.child("whenUnsatisfiable"), "");
    } else if !supported.contains(&when) {
        errs.not_supported(&path.child("whenUnsatisfiable"), when, &supported);
    }
    if let Some(min_domains) = constraint.min_domains
        && min_domains <= 0
    {
        errs.invalid(
            &path.child("minDomains"),
            min_domains,
            "must be greater than 0",
        );
    }
    if let Some(selector) = &constraint.label_selector {
        validate_label_selector(selector, &path.child("labelSelector"), errs);
    }
}
