//! The registry of Kubernetes fields orch acts on.
//!
//! orch decodes Kubernetes' full types, so a manifest written for Kubernetes
//! loads unchanged; but a field orch does not implement yet (`lifecycle.postStart`,
//! `envFrom`, ...) would otherwise be accepted and then silently do nothing.
//! Every set field outside this registry is reported as a warning naming its
//! path, e.g. `spec.template.spec.containers[0].lifecycle.postStart`.
//!
//! Patterns are dotted paths from the object's root; `[]` stands for any list
//! index. A pattern covers everything below it (`metadata.labels` covers every
//! label).

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::Value;

use crate::object::{Kind, Object};

const METADATA: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "uid",
    "labels",
    "annotations",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "finalizers",
    "ownerReferences",
];

const PROBE: &[&str] = &[
    "exec",
    "httpGet",
    "tcpSocket",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
];

const CONTAINER: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "env[].name",
    "env[].value",
    "env[].valueFrom.configMapKeyRef",
    "env[].valueFrom.secretKeyRef",
    "ports",
    "resources.requests",
    "resources.limits",
    "volumeMounts[].name",
    "volumeMounts[].mountPath",
    "volumeMounts[].readOnly",
    "volumeMounts[].subPath",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "securityContext.runAsNonRoot",
    "securityContext.privileged",
    "securityContext.readOnlyRootFilesystem",
    "securityContext.allowPrivilegeEscalation",
    "securityContext.capabilities",
    // Run by the node agent before a deleted pod's SIGTERM; postStart is
    // not run yet, so it warns.
    "lifecycle.preStop",
    // Set by defaulting, so objects read back from the API don't warn.
    "terminationMessagePath",
    "terminationMessagePolicy",
];

const POD_SPEC: &[&str] = &[
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "nodeName",
    "nodeSelector",
    "affinity.nodeAffinity",
    "affinity.podAntiAffinity",
    "tolerations",
    "topologySpreadConstraints",
    "priorityClassName",
    "priority",
    "imagePullSecrets",
    "hostname",
    "volumes[].name",
    "volumes[].emptyDir",
    "volumes[].hostPath",
    "volumes[].configMap",
    "volumes[].secret",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "securityContext.runAsNonRoot",
    "securityContext.fsGroup",
    // Set by defaulting.
    "dnsPolicy",
    "schedulerName",
];

const SERVICE_SPEC: &[&str] = &[
    "type",
    "selector",
    "ports",
    "clusterIP",
    "clusterIPs",
    "externalName",
    "externalTrafficPolicy",
    "internalTrafficPolicy",
    "sessionAffinity",
    "sessionAffinityConfig",
];

const DEPLOYMENT_SPEC: &[&str] = &[
    "replicas",
    "selector",
    "strategy",
    "minReadySeconds",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "paused",
];

const REPLICA_SET_SPEC: &[&str] = &["replicas", "selector", "minReadySeconds"];

const NODE_SPEC: &[&str] = &["podCIDR", "podCIDRs", "taints", "unschedulable"];

/// Compiled allow-list of one kind.
struct Allowed {
    /// Patterns covering their whole subtree.
    covered: HashSet<String>,
    /// Proper prefixes of patterns: walk into these.
    prefixes: HashSet<String>,
}

impl Allowed {
    fn new(patterns: Vec<String>) -> Self {
        let mut prefixes = HashSet::new();
        for pattern in &patterns {
            for (i, c) in pattern.char_indices() {
                if c == '.' || (c == '[' && pattern[i..].starts_with("[]")) {
                    prefixes.insert(pattern[..i].to_string());
                }
            }
        }
        Self {
            covered: patterns.into_iter().collect(),
            prefixes,
        }
    }
}

fn under(prefix: &str, fields: &[&str]) -> impl Iterator<Item = String> {
    fields.iter().map(move |f| format!("{prefix}{f}"))
}

fn pod_spec(prefix: &str) -> Vec<String> {
    let mut patterns: Vec<String> = under(prefix, POD_SPEC).collect();
    for list in ["containers[].", "initContainers[]."] {
        patterns.extend(under(&format!("{prefix}{list}"), CONTAINER));
        for probe in ["livenessProbe.", "readinessProbe.", "startupProbe."] {
            patterns.extend(under(&format!("{prefix}{list}{probe}"), PROBE));
        }
    }
    patterns
}

fn patterns_of(kind: Kind) -> Vec<String> {
    let mut patterns = vec!["apiVersion".to_string(), "kind".to_string()];
    patterns.extend(under("metadata.", METADATA));
    match kind {
        Kind::Pod => {
            patterns.extend(pod_spec("spec."));
            patterns.push("status".into());
        }
        Kind::Deployment | Kind::ReplicaSet => {
            let spec = if kind == Kind::Deployment {
                DEPLOYMENT_SPEC
            } else {
                REPLICA_SET_SPEC
            };
            patterns.extend(under("spec.", spec));
            patterns.extend(under("spec.template.metadata.", METADATA));
            patterns.extend(pod_spec("spec.template.spec."));
            patterns.push("status".into());
        }
        Kind::Service => {
            patterns.extend(under("spec.", SERVICE_SPEC));
            patterns.push("status".into());
        }
        Kind::Node => {
            patterns.extend(under("spec.", NODE_SPEC));
            patterns.push("status".into());
        }
        Kind::ConfigMap => {
            patterns.extend(["data", "binaryData", "immutable"].map(String::from));
        }
        Kind::Secret => {
            patterns.extend(["data", "stringData", "type", "immutable"].map(String::from));
        }
        Kind::Namespace => patterns.extend(["spec", "status"].map(String::from)),
        Kind::EndpointSlice => {
            patterns.extend(["addressType", "endpoints", "ports"].map(String::from));
        }
        Kind::Lease => patterns.push("spec".into()),
        // Events are records written by orch itself: every field is data.
        Kind::Event => return vec![String::new()],
    }
    patterns
}

static REGISTRY: LazyLock<HashMap<Kind, Allowed>> = LazyLock::new(|| {
    Kind::ALL
        .iter()
        .map(|&kind| (kind, Allowed::new(patterns_of(kind))))
        .collect()
});

/// The paths of every field set in `object` that orch does not act on yet,
/// outermost first (`spec.containers[0].lifecycle`, not its children).
pub fn unsupported_fields(object: &Object) -> Vec<String> {
    let Some(allowed) = REGISTRY.get(&object.kind()) else {
        return Vec::new();
    };
    if allowed.covered.contains("") {
        return Vec::new();
    }
    let mut found = Vec::new();
    walk(&object.to_json(), "", "", allowed, &mut found);
    found
}

/// `pattern` is the path with list indices written `[]`, `shown` with the
/// real indices.
fn walk(value: &Value, pattern: &str, shown: &str, allowed: &Allowed, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, child) in fields {
                let (child_pattern, child_shown) = if pattern.is_empty() {
                    (key.clone(), key.clone())
                } else {
                    (format!("{pattern}.{key}"), format!("{shown}.{key}"))
                };
                visit(child, child_pattern, child_shown, allowed, found);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                visit(
                    child,
                    format!("{pattern}[]"),
                    format!("{shown}[{index}]"),
                    allowed,
                    found,
                );
            }
        }
        _ => {}
    }
}

fn visit(
    value: &Value,
    pattern: String,
    shown: String,
    allowed: &Allowed,
    found: &mut Vec<String>,
) {
    if allowed.covered.contains(&pattern) {
        return;
    }
    if allowed.prefixes.contains(&pattern) {
        walk(value, &pattern, &shown, allowed, found);
        return;
    }
    found.push(shown);
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;

    fn deployment(json: serde_json::Value) -> Object {
        Object::from(serde_json::from_value::<Deployment>(json).expect("valid Deployment"))
    }

    #[test]
    fn reports_unsupported_fields_by_path() {
        let object = deployment(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "managedFields": [{"manager": "x"}]},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "a", "image": "busybox"},
                            {"name": "b", "image": "busybox",
                             "lifecycle": {"postStart": {"exec": {"command": ["true"]}},
                                           "preStop": {"sleep": {"seconds": 1}}},
                             "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                             "readinessProbe": {"httpGet": {"port": 80}, "periodSeconds": 5}}
                        ],
                        "hostNetwork": true
                    }
                }
            }
        }));
        assert_eq!(
            unsupported_fields(&object),
            vec![
                "metadata.managedFields",
                "spec.template.spec.containers[1].env[0].valueFrom.fieldRef",
                "spec.template.spec.containers[1].lifecycle.postStart",
                "spec.template.spec.hostNetwork",
            ]
        );
    }

    #[test]
    fn supported_fields_are_silent() {
        let object = deployment(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"a/b": "c"}},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "a", "image": "busybox",
                            "resources": {"limits": {"cpu": "1"}},
                            "ports": [{"containerPort": 80, "name": "http"}],
                            "volumeMounts": [{"name": "v", "mountPath": "/v"}]
                        }],
                        "volumes": [{"name": "v", "emptyDir": {}}],
                        "tolerations": [{"operator": "Exists"}]
                    }
                }
            }
        }));
        assert_eq!(unsupported_fields(&object), Vec::<String>::new());
    }
}
