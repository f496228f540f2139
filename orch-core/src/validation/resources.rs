//! Resource requirements and quantities (`validateResourceRequirements`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::{Errors, NEGATIVE, Path, q, validate_label_name};
use crate::quantity::{Quantity, parse_k8s};

/// Unprefixed resource names a container may ask for.
const STANDARD_CONTAINER_RESOURCES: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Parses a quantity, reporting Kubernetes' message when it does not.
pub(super) fn parse_quantity(
    raw: &K8sQuantity,
    path: &Path,
    errs: &mut Errors,
) -> Option<Quantity> {
    match parse_k8s(raw) {
        Ok(quantity) => Some(quantity),
        Err(e) => {
            errs.invalid(path, q(&raw.0), &e.to_string());
            None
        }
    }
}

fn is_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

/// Native resources are unprefixed or in the kubernetes.io domain.
fn is_native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Only native, non-hugepage resources may be overcommitted.
fn overcommit_allowed(name: &str) -> bool {
    is_native(name) && !is_hugepages(name)
}

fn validate_container_resource_name(name: &str, path: &Path, errs: &mut Errors) {
    let before = errs.len();
    validate_label_name(name, path, errs);
    if errs.len() != before {
        return;
    }
    if !name.contains('/') && !STANDARD_CONTAINER_RESOURCES.contains(&name) && !is_hugepages(name) {
        errs.invalid(path, q(name), "must be a standard resource for containers");
    }
}

/// Every quantity of a list parses and is not negative; extended resources
/// are whole numbers. Returns the parsed quantities.
pub(super) fn validate_resource_list(
    list: &BTreeMap<String, K8sQuantity>,
    path: &Path,
    errs: &mut Errors,
) -> BTreeMap<String, Quantity> {
    let mut parsed = BTreeMap::new();
    for (name, raw) in list {
        let p = path.key(name);
        validate_container_resource_name(name, &p, errs);
        let Some(quantity) = parse_quantity(raw, &p, errs) else {
            continue;
        };
        if quantity.as_nanos() < 0 {
            errs.invalid(&p, q(&quantity.canonical()), NEGATIVE);
        } else if !is_native(name) && quantity.milli_value() % 1000 != 0 {
            errs.invalid(&p, quantity.canonical(), "must be an integer");
        }
        parsed.insert(name.clone(), quantity);
    }
    parsed
}

pub(super) fn validate_resource_requirements(
    requirements: &ResourceRequirements,
    path: &Path,
    errs: &mut Errors,
) {
    let empty = BTreeMap::new();
    let lim_path = path.child("limits");
    let req_path = path.child("requests");
    let limits = validate_resource_list(
        requirements.limits.as_ref().unwrap_or(&empty),
        &lim_path,
        errs,
    );
    let requests = validate_resource_list(
        requirements.requests.as_ref().unwrap_or(&empty),
        &req_path,
        errs,
    );
    for (name, request) in &requests {
        match limits.get(name) {
            Some(limit) if !overcommit_allowed(name) && request != limit => errs.invalid(
                &req_path,
                q(&request.canonical()),
                &format!("must be equal to {name} limit of {}", limit.canonical()),
            ),
            Some(limit) if request > limit => errs.invalid(
                &req_path,
                q(&request.canonical()),
                &format!(
                    "must be less than or equal to {name} limit of {}",
                    limit.canonical()
                ),
            ),
            Some(_) => {}
            None if !overcommit_allowed(name) => {
                errs.required(
                    &lim_path,
                    "Limit must be set for non overcommitable resources",
                );
            }
            None => {}
        }
    }
    let names = || {
        let requests = requirements.requests.iter().flat_map(|r| r.keys());
        requirements
            .limits
            .iter()
            .flat_map(|l| l.keys())
            .chain(requests)
    };
    let hugepages = names().any(|n| is_hugepages(n));
    let cpu_or_memory = names().any(|n| n == "cpu" || n == "memory");
    if hugepages && !cpu_or_memory {
        errs.forbidden(path, "HugePages require cpu or memory");
    }
}
