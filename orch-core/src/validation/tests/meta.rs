//! Object metadata, shared by every kind; the error type's rendering.

use serde_json::json;

use super::{assert_cases, case, errors, raw_errors, remove, set};
use crate::names;
use crate::validation::{FieldError, FieldErrorType, ValidationErrors, q};

fn config_map() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "settings",
            "namespace": "default",
            "labels": {"app.kubernetes.io/name": "web", "tier": ""},
            "annotations": {"example.com/Owner": "platform"},
            "finalizers": ["example.com/cleanup", "kubernetes"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "1234"}]
        },
        "data": {"level": "debug"}
    })
}

#[test]
fn metadata_rules() {
    let base = config_map();
    let subdomain = names::is_dns1123_subdomain("Web").join("");
    let label = names::is_dns1123_label("Bad_NS").join("");
    let key = names::is_qualified_name("bad key").join("");
    let value = names::is_label_value("a b").join("");
    let cases = vec![
        case(
            &base,
            "/metadata/name",
            json!("Web"),
            format!("metadata.name: Invalid value: \"Web\": {subdomain}"),
        ),
        case(
            &base,
            "/metadata/name",
            json!(""),
            "metadata.name: Required value: name or generateName is required",
        ),
        case(
            &base,
            "/metadata/namespace",
            json!("Bad_NS"),
            format!("metadata.namespace: Invalid value: \"Bad_NS\": {label}"),
        ),
        case(
            &base,
            "/metadata/generation",
            json!(-1),
            "metadata.generation: Invalid value: -1: must be greater than or equal to 0",
        ),
        case(
            &base,
            "/metadata/labels/bad key",
            json!("x"),
            format!("metadata.labels: Invalid value: \"bad key\": {key}"),
        ),
        case(
            &base,
            "/metadata/labels/tier",
            json!("a b"),
            format!("metadata.labels: Invalid value: \"a b\": {value}"),
        ),
        case(
            &base,
            "/metadata/annotations/bad key",
            json!("x"),
            format!("metadata.annotations: Invalid value: \"bad key\": {key}"),
        ),
        case(
            &base,
            "/metadata/annotations/big",
            json!("x".repeat(256 * 1024)),
            "metadata.annotations: Too long: must have at most 262144 bytes",
        ),
        case(
            &base,
            "/metadata/ownerReferences/0/uid",
            json!(""),
            "metadata.ownerReferences[0].uid: Invalid value: \"\": must not be empty",
        ),
        case(
            &base,
            "/metadata/ownerReferences/0/apiVersion",
            json!(""),
            "metadata.ownerReferences[0].apiVersion: Invalid value: \"\": version must not be empty",
        ),
        case(
            &base,
            "/metadata/finalizers/0",
            json!("example"),
            "metadata.finalizers[0]: Invalid value: \"example\": name is neither a standard finalizer name nor is it fully qualified",
        ),
        case(
            &base,
            "/metadata/finalizers",
            json!(["orphan", "foregroundDeletion"]),
            "metadata.finalizers: Invalid value: []string{\"orphan\", \"foregroundDeletion\"}: finalizer orphan and foregroundDeletion cannot be both set",
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn generate_name_replaces_name() {
    let base = remove(config_map(), "/metadata/name");
    let base = set(base, "/metadata/generateName", json!("settings-"));
    assert_eq!(errors(base.clone()), Vec::<String>::new());
    let bad = set(base, "/metadata/generateName", json!("Settings-"));
    let msg = names::is_dns1123_subdomain("Settingsa").join("");
    assert_eq!(
        errors(bad),
        vec![format!(
            "metadata.generateName: Invalid value: \"Settings-\": {msg}"
        )]
    );
}

#[test]
fn namespace_is_optional_but_forbidden_on_cluster_kinds() {
    assert_eq!(
        errors(remove(config_map(), "/metadata/namespace")),
        Vec::<String>::new()
    );
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "namespace": "default"}});
    assert_eq!(
        raw_errors(node),
        vec!["metadata.namespace: Forbidden: not allowed on this type"]
    );
}

#[test]
fn name_rules_depend_on_the_kind() {
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "1web"},
        "spec": {"ports": [{"port": 80}]}});
    let msg = names::is_dns1035_label("1web").join("");
    assert_eq!(
        errors(service),
        vec![format!("metadata.name: Invalid value: \"1web\": {msg}")]
    );
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a.b"}});
    let msg = names::is_dns1123_label("a.b").join("");
    assert_eq!(
        errors(namespace),
        vec![format!("metadata.name: Invalid value: \"a.b\": {msg}")]
    );
}

#[test]
fn every_error_is_collected() {
    let json = set(config_map(), "/metadata/name", json!(""));
    let json = set(json, "/metadata/generation", json!(-2));
    let json = set(json, "/data/bad key", json!("x"));
    assert_eq!(errors(json).len(), 3);
}

#[test]
fn field_errors_print_like_kubernetes() {
    let error = |error_type, value: Option<&str>, detail: &str| FieldError {
        path: "spec.x".into(),
        error_type,
        value: value.map(String::from),
        detail: detail.into(),
    };
    let cases = [
        (
            error(FieldErrorType::Required, None, ""),
            "spec.x: Required value",
        ),
        (
            error(FieldErrorType::Required, Some("\"v\""), "why"),
            "spec.x: Required value: why",
        ),
        (
            error(FieldErrorType::Invalid, Some("-1"), "why"),
            "spec.x: Invalid value: -1: why",
        ),
        (
            error(FieldErrorType::Duplicate, Some("\"http\""), ""),
            "spec.x: Duplicate value: \"http\"",
        ),
        (
            error(
                FieldErrorType::NotSupported,
                Some("\"a\""),
                "supported values: \"b\"",
            ),
            "spec.x: Unsupported value: \"a\": supported values: \"b\"",
        ),
        (
            error(
                FieldErrorType::TooLong,
                Some("\"v\""),
                "must have at most 3 bytes",
            ),
            "spec.x: Too long: must have at most 3 bytes",
        ),
        (
            error(FieldErrorType::Forbidden, None, "no"),
            "spec.x: Forbidden: no",
        ),
        (
            error(FieldErrorType::NotFound, Some("\"v\""), ""),
            "spec.x: Not found: \"v\"",
        ),
        (
            error(
                FieldErrorType::TooMany,
                Some("5"),
                "must have at most 4 items",
            ),
            "spec.x: Too many: 5: must have at most 4 items",
        ),
    ];
    for (error, line) in cases {
        assert_eq!(error.to_string(), line);
    }
    let all = ValidationErrors(vec![
        error(FieldErrorType::Required, None, ""),
        error(FieldErrorType::Forbidden, None, "no"),
    ]);
    assert_eq!(
        all.to_string(),
        "spec.x: Required value; spec.x: Forbidden: no"
    );
}

#[test]
fn strings_are_quoted_like_go() {
    assert_eq!(q("plain"), "\"plain\"");
    assert_eq!(q("a\"b\\c"), "\"a\\\"b\\\\c\"");
    assert_eq!(q("tab\tnl\n"), "\"tab\\tnl\\n\"");
    assert_eq!(q("\u{1}"), "\"\\x01\"");
    assert_eq!(q("é"), "\"é\"");
}
