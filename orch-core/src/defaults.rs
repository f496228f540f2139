//! Kubernetes' defaulting (`pkg/apis/core/v1/defaults.go`,
//! `pkg/apis/apps/v1/defaults.go`, ...): the values users rely on without
//! writing them, so an object reads back exactly as it would from a
//! Kubernetes API server.
//!
//! As in Kubernetes, a field is defaulted when it is absent *or* holds its
//! zero value (`""`, `0`) where Kubernetes cannot tell the two apart; e.g.
//! `periodSeconds: 0` becomes 10. Defaulting is idempotent. The namespace
//! (`default`) is the API server's business, not this module's.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, EmptyDirVolumeSource, HTTPGetAction, Namespace, NamespaceSpec,
    NamespaceStatus, Node, ObjectFieldSelector, Pod, PodSpec, Probe, Service,
    SessionAffinityConfig, Volume,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::object::Object;

/// `0644`, the mode of files projected from ConfigMaps and Secrets.
pub const DEFAULT_FILE_MODE: i32 = 0o644;
/// Seconds a pod gets between SIGTERM and SIGKILL.
pub const DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// Seconds a ClientIP session affinity lasts (3 hours).
pub const DEFAULT_CLIENT_IP_TIMEOUT_SECONDS: i32 = 10800;

/// Applies Kubernetes' defaults to `object`, in place.
pub fn apply_defaults(object: &mut Object) {
    match object {
        Object::Namespace(ns) => default_namespace(ns),
        Object::Node(node) => default_node(node),
        Object::Pod(pod) => default_pod(pod),
        Object::Deployment(deployment) => default_deployment(deployment),
        Object::ReplicaSet(rs) => default_replica_set(rs),
        Object::Service(service) => default_service(service),
        Object::EndpointSlice(slice) => default_endpoint_slice(slice),
        Object::Secret(secret) => default_secret(secret),
        Object::Lease(_) | Object::Event(_) | Object::ConfigMap(_) => {}
    }
}

/// The type Opaque when none is given; stringData (write-only, as in
/// Kubernetes) merged over data, so readers find every key in data.
fn default_secret(secret: &mut k8s_openapi::api::core::v1::Secret) {
    default_string(&mut secret.type_, "Opaque");
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(Default::default);
        for (key, value) in strings {
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
    }
}

/// Sets a string that is absent or empty.
fn default_string(field: &mut Option<String>, value: &str) {
    if field.as_deref().is_none_or(str::is_empty) {
        *field = Some(value.to_string());
    }
}

/// Sets a number that is absent or zero.
fn default_nonzero<T: Default + PartialEq>(field: &mut Option<T>, value: T) {
    if field.as_ref().is_none_or(|v| *v == T::default()) {
        *field = Some(value);
    }
}

fn default_namespace(ns: &mut Namespace) {
    // The label every namespace carries, so selectors can pick namespaces by name.
    if let Some(name) = ns.metadata.name.clone().filter(|n| !n.is_empty()) {
        let labels = ns.metadata.labels.get_or_insert_with(BTreeMap::new);
        labels.insert("kubernetes.io/metadata.name".to_string(), name);
    }
    // The API server adds the "kubernetes" finalizer on create.
    let finalizers = ns
        .spec
        .get_or_insert_with(NamespaceSpec::default)
        .finalizers
        .get_or_insert_with(Vec::new);
    if !finalizers.iter().any(|f| f == "kubernetes") {
        finalizers.push("kubernetes".to_string());
    }
    let status = ns.status.get_or_insert_with(NamespaceStatus::default);
    default_string(&mut status.phase, "Active");
}

fn default_node(node: &mut Node) {
    if let Some(status) = &mut node.status
        && status.allocatable.is_none()
    {
        status.allocatable = status.capacity.clone();
    }
}

fn default_pod(pod: &mut Pod) {
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    default_pod_spec(spec);
    // Pods only, not templates: requests default to limits, and host ports
    // to container ports on the host network.
    let host_network = spec.host_network == Some(true);
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        if let Some(resources) = &mut container.resources
            && let Some(limits) = &resources.limits
        {
            let requests = resources.requests.get_or_insert_with(BTreeMap::new);
            for (name, limit) in limits {
                requests
                    .entry(name.clone())
                    .or_insert_with(|| limit.clone());
            }
        }
        if host_network {
            for port in container.ports.iter_mut().flatten() {
                default_nonzero(&mut port.host_port, port.container_port);
            }
        }
    }
}

/// Defaults of a pod spec, shared by pods and workload templates.
pub fn default_pod_spec(spec: &mut PodSpec) {
    default_string(&mut spec.restart_policy, "Always");
    default_string(&mut spec.dns_policy, "ClusterFirst");
    default_string(&mut spec.scheduler_name, "default-scheduler");
    if spec.termination_grace_period_seconds.is_none() {
        spec.termination_grace_period_seconds = Some(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS);
    }
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        default_container(container);
    }
    for volume in spec.volumes.iter_mut().flatten() {
        default_volume(volume);
    }
}

fn default_container(container: &mut Container) {
    if container
        .image_pull_policy
        .as_deref()
        .is_none_or(str::is_empty)
    {
        let image = container.image.as_deref().unwrap_or("");
        container.image_pull_policy = Some(pull_policy_for(image).to_string());
    }
    default_string(
        &mut container.termination_message_path,
        "/dev/termination-log",
    );
    default_string(&mut container.termination_message_policy, "File");
    for port in container.ports.iter_mut().flatten() {
        default_string(&mut port.protocol, "TCP");
    }
    for probe in [
        &mut container.liveness_probe,
        &mut container.readiness_probe,
        &mut container.startup_probe,
    ]
    .into_iter()
    .flatten()
    {
        default_probe(probe);
    }
    if let Some(lifecycle) = &mut container.lifecycle {
        for handler in [&mut lifecycle.post_start, &mut lifecycle.pre_stop]
            .into_iter()
            .flatten()
        {
            if let Some(http) = &mut handler.http_get {
                default_http_get(http);
            }
        }
    }
    for var in container.env.iter_mut().flatten() {
        if let Some(field) = var.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            default_field_selector(field);
        }
    }
}

/// `Always` for `:latest` or untagged images (there is nothing to pin),
/// `IfNotPresent` for a tag or a digest; Kubernetes' rule.
pub fn pull_policy_for(image: &str) -> &'static str {
    let image = image.trim();
    if image.is_empty() {
        // Kubernetes cannot parse it, and then finds no tag.
        return "IfNotPresent";
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    // A ':' before the last '/' belongs to a registry host's port.
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.split_once(':').map(|(_, tag)| tag);
    match (tag, digest) {
        (Some("latest"), _) | (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Probe) {
    default_nonzero(&mut probe.timeout_seconds, 1);
    default_nonzero(&mut probe.period_seconds, 10);
    default_nonzero(&mut probe.success_threshold, 1);
    default_nonzero(&mut probe.failure_threshold, 3);
    if let Some(http) = &mut probe.http_get {
        default_http_get(http);
    }
}

fn default_http_get(http: &mut HTTPGetAction) {
    default_string(&mut http.path, "/");
    default_string(&mut http.scheme, "HTTP");
}

fn default_field_selector(field: &mut ObjectFieldSelector) {
    default_string(&mut field.api_version, "v1");
}

fn default_volume(volume: &mut Volume) {
    // A volume with no source is an emptyDir.
    let name = std::mem::take(&mut volume.name);
    if *volume == Volume::default() {
        volume.empty_dir = Some(EmptyDirVolumeSource::default());
    }
    volume.name = name;
    if let Some(host_path) = &mut volume.host_path
        && host_path.type_.is_none()
    {
        host_path.type_ = Some(String::new());
    }
    let modes = [
        volume.config_map.as_mut().map(|v| &mut v.default_mode),
        volume.secret.as_mut().map(|v| &mut v.default_mode),
        volume.downward_api.as_mut().map(|v| &mut v.default_mode),
        volume.projected.as_mut().map(|v| &mut v.default_mode),
    ];
    for mode in modes.into_iter().flatten() {
        mode.get_or_insert(DEFAULT_FILE_MODE);
    }
    if let Some(downward) = &mut volume.downward_api {
        for item in downward.items.iter_mut().flatten() {
            if let Some(field) = &mut item.field_ref {
                default_field_selector(field);
            }
        }
    }
}

fn default_deployment(deployment: &mut Deployment) {
    let Some(spec) = &mut deployment.spec else {
        return;
    };
    spec.replicas.get_or_insert(1);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    default_string(&mut strategy.type_, "RollingUpdate");
    if strategy.type_.as_deref() == Some("RollingUpdate") {
        let rolling = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        let quarter = || Some(IntOrString::String("25%".to_string()));
        if rolling.max_unavailable.is_none() {
            rolling.max_unavailable = quarter();
        }
        if rolling.max_surge.is_none() {
            rolling.max_surge = quarter();
        }
    }
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    default_pod_spec(spec.template.spec.get_or_insert_with(PodSpec::default));
}

fn default_replica_set(rs: &mut ReplicaSet) {
    let Some(spec) = &mut rs.spec else {
        return;
    };
    spec.replicas.get_or_insert(1);
    if let Some(template) = &mut spec.template {
        default_pod_spec(template.spec.get_or_insert_with(PodSpec::default));
    }
}

fn default_service(service: &mut Service) {
    let Some(spec) = &mut service.spec else {
        return;
    };
    default_string(&mut spec.type_, "ClusterIP");
    default_string(&mut spec.session_affinity, "None");
    if spec.session_affinity.as_deref() == Some("ClientIP") {
        let client_ip = spec
            .session_affinity_config
            .get_or_insert_with(SessionAffinityConfig::default)
            .client_ip
            .get_or_insert_with(ClientIPConfig::default);
        client_ip
            .timeout_seconds
            .get_or_insert(DEFAULT_CLIENT_IP_TIMEOUT_SECONDS);
    }
    for port in spec.ports.iter_mut().flatten() {
        default_string(&mut port.protocol, "TCP");
        let unset = match &port.target_port {
            None => true,
            Some(IntOrString::Int(n)) => *n == 0,
            Some(IntOrString::String(s)) => s.is_empty(),
        };
        if unset {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if matches!(service_type, "NodePort" | "LoadBalancer") {
        default_string(&mut spec.external_traffic_policy, "Cluster");
    }
    if service_type != "ExternalName" && spec.internal_traffic_policy.is_none() {
        spec.internal_traffic_policy = Some("Cluster".to_string());
    }
}

fn default_endpoint_slice(slice: &mut EndpointSlice) {
    for port in slice.ports.iter_mut().flatten() {
        port.name.get_or_insert_with(String::new);
        port.protocol.get_or_insert_with(|| "TCP".to_string());
    }
}

#[cfg(test)]
mod tests;
