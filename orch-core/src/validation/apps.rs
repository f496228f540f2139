//! Deployments and ReplicaSets (`pkg/apis/apps/validation`).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::validate_pod_spec;
use super::{
    Errors, NEGATIVE, Path, render_map, selector_matches, validate_annotations,
    validate_label_selector, validate_labels,
};
use crate::names;

/// `IsValidPercent`'s message.
pub(super) fn percent_msg() -> String {
    names::regex_error(
        "a valid percent string must be a numeric string followed by an ending '%'",
        "[0-9]+%",
        &["1%", "93%"],
    )
}

pub(super) fn validate_deployment(deployment: &Deployment, errs: &mut Errors) {
    let path = Path::new("spec");
    let Some(spec) = &deployment.spec else {
        errs.required(&path, "");
        return;
    };
    nonnegative_i32(spec.replicas, &path.child("replicas"), errs);
    validate_workload_selector(
        &spec.selector,
        Some(&spec.template),
        "deployment",
        &path,
        errs,
    );
    validate_template(&spec.template, &path.child("template"), errs);
    if let Some(strategy) = &spec.strategy {
        let p = path.child("strategy");
        match strategy.type_.as_deref() {
            Some("Recreate") => {
                if strategy.rolling_update.is_some() {
                    errs.forbidden(
                        &p.child("rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    );
                }
            }
            None | Some("RollingUpdate") => {
                if let Some(rolling) = &strategy.rolling_update {
                    validate_rolling_update(rolling, &p.child("rollingUpdate"), errs);
                }
            }
            Some(other) => {
                errs.not_supported(&p.child("type"), other, &["Recreate", "RollingUpdate"])
            }
        }
    }
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    nonnegative_i32(spec.min_ready_seconds, &path.child("minReadySeconds"), errs);
    nonnegative_i32(
        spec.revision_history_limit,
        &path.child("revisionHistoryLimit"),
        errs,
    );
    if let Some(deadline) = spec.progress_deadline_seconds {
        let p = path.child("progressDeadlineSeconds");
        if deadline < 0 {
            errs.invalid(&p, deadline, NEGATIVE);
        }
        if deadline <= min_ready {
            errs.invalid(&p, deadline, "must be greater than minReadySeconds");
        }
    }
}

pub(super) fn validate_replica_set(rs: &ReplicaSet, errs: &mut Errors) {
    let path = Path::new("spec");
    let Some(spec) = &rs.spec else {
        errs.required(&path, "");
        return;
    };
    nonnegative_i32(spec.replicas, &path.child("replicas"), errs);
    nonnegative_i32(spec.min_ready_seconds, &path.child("minReadySeconds"), errs);
    validate_workload_selector(
        &spec.selector,
        spec.template.as_ref(),
        "replicaset",
        &path,
        errs,
    );
    match &spec.template {
        Some(template) => validate_template(template, &path.child("template"), errs),
        None => errs.required(&path.child("template"), ""),
    }
}

fn nonnegative_i32(value: Option<i32>, path: &Path, errs: &mut Errors) {
    super::nonnegative(value.map(i64::from), path, errs);
}

/// The selector is valid, not empty, and selects the template's pods.
fn validate_workload_selector(
    selector: &LabelSelector,
    template: Option<&PodTemplateSpec>,
    kind: &str,
    path: &Path,
    errs: &mut Errors,
) {
    let p = path.child("selector");
    let before = errs.len();
    validate_label_selector(selector, &p, errs);
    let terms = selector.match_labels.as_ref().map_or(0, |m| m.len())
        + selector.match_expressions.as_ref().map_or(0, |e| e.len());
    if terms == 0 {
        errs.invalid(&p, "{}", &format!("empty selector is invalid for {kind}"));
        return;
    }
    let labels = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref());
    match selector_matches(selector, labels) {
        Some(true) => {}
        Some(false) if template.is_some() => errs.invalid(
            &path.child("template").child("metadata").child("labels"),
            render_map(labels),
            "`selector` does not match template `labels`",
        ),
        Some(false) => {}
        None if errs.len() == before => errs.invalid(&p, "{}", "invalid label selector"),
        None => {}
    }
}

/// A pod template of a workload: its pods always restart.
fn validate_template(template: &PodTemplateSpec, path: &Path, errs: &mut Errors) {
    if let Some(meta) = &template.metadata {
        let meta_path = path.child("metadata");
        validate_labels(meta.labels.as_ref(), &meta_path.child("labels"), errs);
        validate_annotations(
            meta.annotations.as_ref(),
            &meta_path.child("annotations"),
            errs,
        );
    }
    let default_spec = PodSpec::default();
    let spec = template.spec.as_ref().unwrap_or(&default_spec);
    let spec_path = path.child("spec");
    validate_pod_spec(spec, false, &spec_path, errs);
    if let Some(policy) = spec.restart_policy.as_deref()
        && policy != "Always"
    {
        errs.not_supported(&spec_path.child("restartPolicy"), policy, &["Always"]);
    }
    if spec.active_deadline_seconds.is_some() {
        errs.forbidden(
            &spec_path.child("activeDeadlineSeconds"),
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        );
    }
}

fn validate_rolling_update(rolling: &RollingUpdateDeployment, path: &Path, errs: &mut Errors) {
    let unavailable_path = path.child("maxUnavailable");
    let surge_path = path.child("maxSurge");
    let unavailable = rolling.max_unavailable.as_ref();
    let surge = rolling.max_surge.as_ref();
    validate_int_or_percent(unavailable, &unavailable_path, errs);
    validate_int_or_percent(surge, &surge_path, errs);
    // An absent value will be defaulted to 25%.
    let value = |v: Option<&IntOrString>| v.map_or(25, int_or_percent_value);
    if value(unavailable) == 0 && value(surge) == 0 {
        errs.invalid(
            &unavailable_path,
            render_int_or_string(unavailable),
            "may not be 0 when `maxSurge` is 0",
        );
    }
    if let Some(percent) = unavailable.and_then(percent_value)
        && percent > 100
    {
        errs.invalid(
            &unavailable_path,
            render_int_or_string(unavailable),
            "must not be greater than 100%",
        );
    }
}

fn validate_int_or_percent(value: Option<&IntOrString>, path: &Path, errs: &mut Errors) {
    match value {
        Some(IntOrString::Int(n)) if *n < 0 => errs.invalid(path, n, NEGATIVE),
        Some(v @ IntOrString::String(_)) if percent_value(v).is_none() => {
            errs.invalid(path, render_int_or_string(Some(v)), &percent_msg());
        }
        _ => {}
    }
}

/// `"25%"` -> 25; `None` unless the string is digits followed by '%'.
fn percent_value(value: &IntOrString) -> Option<i64> {
    let IntOrString::String(s) = value else {
        return None;
    };
    let digits = s.strip_suffix('%')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.parse().unwrap_or(i64::MAX))
}

fn int_or_percent_value(value: &IntOrString) -> i64 {
    match value {
        IntOrString::Int(n) => i64::from(*n),
        // Not a percentage: Go's IntValue() of a non-numeric string is 0.
        IntOrString::String(s) => percent_value(value).unwrap_or_else(|| s.parse().unwrap_or(0)),
    }
}

/// IntOrString prints bare, through its `String()` method.
fn render_int_or_string(value: Option<&IntOrString>) -> String {
    match value {
        None => "null".to_string(),
        Some(IntOrString::Int(n)) => n.to_string(),
        Some(IntOrString::String(s)) => s.clone(),
    }
}
