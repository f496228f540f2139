//! Object metadata (`ValidateObjectMeta`), labels, annotations, finalizers
//! and label selectors.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Errors, NEGATIVE, Path, q, render_list};
use crate::names;
use crate::object::Kind;

/// The name rule of a kind (Kubernetes' `ValidateNameFunc`).
#[derive(Clone, Copy)]
pub(crate) enum NameRule {
    Dns1123Subdomain,
    Dns1123Label,
    Dns1035Label,
}

impl NameRule {
    pub(super) fn of(kind: Kind) -> NameRule {
        match kind {
            Kind::Namespace => NameRule::Dns1123Label,
            Kind::Service => NameRule::Dns1035Label,
            _ => NameRule::Dns1123Subdomain,
        }
    }

    /// Problems with `name`; a `prefix` (generateName) may end with '-'.
    pub(crate) fn check(self, name: &str, prefix: bool) -> Vec<String> {
        let masked;
        let name = if prefix && name.len() > 1 && name.ends_with('-') {
            masked = format!("{}a", &name[..name.len() - 1]);
            masked.as_str()
        } else {
            name
        };
        match self {
            NameRule::Dns1123Subdomain => names::is_dns1123_subdomain(name),
            NameRule::Dns1123Label => names::is_dns1123_label(name),
            NameRule::Dns1035Label => names::is_dns1035_label(name),
        }
    }
}

/// Finalizers every cluster knows without a domain prefix.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];
const TOTAL_ANNOTATION_SIZE_LIMIT: usize = 256 * 1024;

pub(super) fn validate_object_meta(meta: &ObjectMeta, kind: Kind, errs: &mut Errors) {
    let path = Path::new("metadata");
    let rule = NameRule::of(kind);
    let generate_name = meta.generate_name.as_deref().unwrap_or("");
    if !generate_name.is_empty() {
        let p = path.child("generateName");
        errs.each_invalid(&p, generate_name, rule.check(generate_name, true));
    }
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => {
            errs.each_invalid(&path.child("name"), name, rule.check(name, false));
        }
        _ if !generate_name.is_empty() => {}
        _ => errs.required(&path.child("name"), "name or generateName is required"),
    }
    let namespace = meta.namespace.as_deref().unwrap_or("");
    if kind.namespaced() {
        if !namespace.is_empty() {
            let msgs = names::is_dns1123_label(namespace);
            errs.each_invalid(&path.child("namespace"), namespace, msgs);
        }
    } else if !namespace.is_empty() {
        errs.forbidden(&path.child("namespace"), "not allowed on this type");
    }
    if let Some(generation) = meta.generation
        && generation < 0
    {
        errs.invalid(&path.child("generation"), generation, NEGATIVE);
    }
    validate_labels(meta.labels.as_ref(), &path.child("labels"), errs);
    validate_annotations(meta.annotations.as_ref(), &path.child("annotations"), errs);
    validate_owner_references(meta, &path.child("ownerReferences"), errs);
    validate_finalizers(
        meta.finalizers.as_deref().unwrap_or(&[]),
        &path.child("finalizers"),
        errs,
    );
}

fn validate_owner_references(meta: &ObjectMeta, path: &Path, errs: &mut Errors) {
    let mut controller: Option<String> = None;
    for (i, owner) in meta.owner_references.iter().flatten().enumerate() {
        let p = path.index(i);
        // The version is what follows the last '/' ("apps/v1" -> "v1").
        let version = owner.api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.invalid(
                &p.child("apiVersion"),
                q(&owner.api_version),
                "version must not be empty",
            );
        }
        for (field, value) in [
            ("kind", &owner.kind),
            ("name", &owner.name),
            ("uid", &owner.uid),
        ] {
            if value.is_empty() {
                errs.invalid(&p.child(field), q(value), "must not be empty");
            }
        }
        let current = format!("{}/{}", owner.kind, owner.name);
        if owner.api_version == "v1" && owner.kind == "Event" {
            errs.invalid(
                &p,
                q(&current),
                "/v1, Kind=Event is disallowed from being an owner",
            );
        }
        if owner.controller == Some(true) {
            match &controller {
                Some(first) => errs.invalid(
                    path,
                    q(&current),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {current}"
                    ),
                ),
                None => controller = Some(current),
            }
        }
    }
}

pub(crate) fn validate_finalizers(finalizers: &[String], path: &Path, errs: &mut Errors) {
    for (i, finalizer) in finalizers.iter().enumerate() {
        validate_finalizer_name(finalizer, &path.index(i), errs);
    }
    let has = |name: &str| finalizers.iter().any(|f| f == name);
    if has("orphan") && has("foregroundDeletion") {
        errs.invalid(
            path,
            render_list(finalizers),
            "finalizer orphan and foregroundDeletion cannot be both set",
        );
    }
}

pub(crate) fn validate_finalizer_name(name: &str, path: &Path, errs: &mut Errors) {
    let msgs = names::is_qualified_name(name);
    let malformed = !msgs.is_empty();
    errs.each_invalid(path, name, msgs);
    if !malformed && !name.contains('/') && !STANDARD_FINALIZERS.contains(&name) {
        errs.invalid(
            path,
            q(name),
            "name is neither a standard finalizer name nor is it fully qualified",
        );
    }
}

/// A label (or taint, toleration, topology) key: a qualified name.
pub(crate) fn validate_label_name(name: &str, path: &Path, errs: &mut Errors) {
    errs.each_invalid(path, name, names::is_qualified_name(name));
}

/// Label keys and values; errors name the map, as Kubernetes does.
pub(crate) fn validate_labels(
    labels: Option<&BTreeMap<String, String>>,
    path: &Path,
    errs: &mut Errors,
) {
    for (key, value) in labels.into_iter().flatten() {
        validate_label_name(key, path, errs);
        errs.each_invalid(path, value, names::is_label_value(value));
    }
}

pub(crate) fn validate_annotations(
    annotations: Option<&BTreeMap<String, String>>,
    path: &Path,
    errs: &mut Errors,
) {
    let mut total = 0usize;
    for (key, value) in annotations.into_iter().flatten() {
        // Case doesn't matter in annotation keys.
        errs.each_invalid(path, key, names::is_qualified_name(&key.to_lowercase()));
        total += key.len() + value.len();
    }
    if total > TOTAL_ANNOTATION_SIZE_LIMIT {
        errs.too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT);
    }
}

/// `metav1.LabelSelector` syntax (`ValidateLabelSelector`).
pub(crate) fn validate_label_selector(selector: &LabelSelector, path: &Path, errs: &mut Errors) {
    // Go's order: matchLabels, then each expression.
    validate_labels(
        selector.match_labels.as_ref(),
        &path.child("matchLabels"),
        errs,
    );
    let exprs_path = path.child("matchExpressions");
    for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
        let p = exprs_path.index(i);
        let values = expr.values.as_deref().unwrap_or(&[]);
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errs.required(
                &p.child("values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.forbidden(
                &p.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.invalid(
                &p.child("operator"),
                q(other),
                "not a valid selector operator",
            ),
        }
        validate_label_name(&expr.key, &p.child("key"), errs);
        for (j, value) in values.iter().enumerate() {
            errs.each_invalid(
                &p.child("values").index(j),
                value,
                names::is_label_value(value),
            );
        }
    }
}

/// Whether a selector selects `labels`; `None` when it cannot be compiled
/// (its syntax errors are reported by [`validate_label_selector`]).
pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> Option<bool> {
    let compiled = crate::selector::Selector::try_from(selector).ok()?;
    let empty = BTreeMap::new();
    Some(compiled.matches(labels.unwrap_or(&empty)))
}
