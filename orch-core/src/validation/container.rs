//! Containers: names, images, ports, env, volume mounts, probes, lifecycle.

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvFromSource, EnvVar, VolumeMount};

use super::{Errors, NameRule, PROTOCOLS, Path, q, validate_label_name, validate_port_num};
use crate::names;

/// What container validation needs to know about the pod around it.
pub(super) struct PodContext<'a> {
    /// Names of the pod's volumes that validated.
    pub volumes: &'a BTreeSet<String>,
    /// `terminationGracePeriodSeconds`, for sleep actions.
    pub grace_period: Option<i64>,
    /// Port names seen so far in the pod: they must be unique pod-wide.
    pub port_names: HashSet<String>,
    /// Host ports seen so far among regular containers (`TCP//8080`).
    pub host_ports: HashSet<String>,
}

const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TERMINATION_MESSAGE_POLICIES: &[&str] = &["File", "FallbackToLogsOnError"];
const MOUNT_PROPAGATIONS: &[&str] = &["Bidirectional", "HostToContainer", "None"];
const ENV_FIELD_PATHS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
];
const ENV_RESOURCE_FIELDS: &[&str] = &[
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
];

/// Regular containers (`spec.containers`).
pub(super) fn validate_containers(
    containers: &[Container],
    ctx: &mut PodContext<'_>,
    path: &Path,
    errs: &mut Errors,
) {
    if containers.is_empty() {
        errs.required(path, "");
        return;
    }
    let mut seen = HashSet::new();
    for (i, ctr) in containers.iter().enumerate() {
        let p = path.index(i);
        validate_container_common(ctr, ctx, &p, errs);
        if !seen.insert(ctr.name.as_str()) {
            errs.duplicate(&p.child("name"), q(&ctr.name));
        }
        validate_lifecycle_and_probes(ctr, ctx, &p, errs);
        if ctr.restart_policy.is_some() {
            errs.forbidden(
                &p.child("restartPolicy"),
                "may not be set for non-init containers",
            );
        }
        check_host_ports(ctr, &mut ctx.host_ports, &p, errs);
    }
}

/// Lifecycle hooks and probes, which regular containers and sidecar init
/// containers share.
fn validate_lifecycle_and_probes(
    ctr: &Container,
    ctx: &PodContext<'_>,
    path: &Path,
    errs: &mut Errors,
) {
    if let Some(lifecycle) = &ctr.lifecycle {
        super::probe::validate_lifecycle(
            lifecycle,
            ctx.grace_period,
            &path.child("lifecycle"),
            errs,
        );
    }
    super::probe::validate_probes(ctr, path, errs);
}

/// Init containers (`spec.initContainers`); names must also differ from
/// the regular containers'.
pub(super) fn validate_init_containers(
    init: &[Container],
    regular: &[Container],
    ctx: &mut PodContext<'_>,
    path: &Path,
    errs: &mut Errors,
) {
    let mut seen: HashSet<&str> = regular.iter().map(|c| c.name.as_str()).collect();
    for (i, ctr) in init.iter().enumerate() {
        let p = path.index(i);
        validate_container_common(ctr, ctx, &p, errs);
        let mut sidecar = false;
        if let Some(policy) = &ctr.restart_policy {
            if policy == "Always" {
                sidecar = true;
            } else {
                errs.not_supported(&p.child("restartPolicy"), policy, &["Always"]);
            }
        }
        if seen.contains(ctr.name.as_str()) {
            errs.duplicate(&p.child("name"), q(&ctr.name));
        } else if !ctr.name.is_empty() {
            seen.insert(&ctr.name);
        }
        // Init containers run one by one: only conflicts within one count.
        check_host_ports(ctr, &mut HashSet::new(), &p, errs);
        if sidecar {
            validate_lifecycle_and_probes(ctr, ctx, &p, errs);
            continue;
        }
        let forbidden = "may not be set for init containers without restartPolicy=Always";
        let fields = [
            ("lifecycle", ctr.lifecycle.is_some()),
            ("livenessProbe", ctr.liveness_probe.is_some()),
            ("readinessProbe", ctr.readiness_probe.is_some()),
            ("startupProbe", ctr.startup_probe.is_some()),
        ];
        for (field, set) in fields {
            if set {
                errs.forbidden(&p.child(field), forbidden);
            }
        }
    }
}

fn validate_container_common(
    ctr: &Container,
    ctx: &mut PodContext<'_>,
    path: &Path,
    errs: &mut Errors,
) {
    let name_path = path.child("name");
    if ctr.name.is_empty() {
        errs.required(&name_path, "");
    } else {
        errs.each_invalid(&name_path, &ctr.name, names::is_dns1123_label(&ctr.name));
    }
    match ctr.image.as_deref() {
        None | Some("") => errs.required(&path.child("image"), ""),
        Some(image) if image.trim() != image => errs.invalid(
            &path.child("image"),
            q(image),
            "must not have leading or trailing whitespace",
        ),
        Some(_) => {}
    }
    let policy = ctr.termination_message_policy.as_deref();
    enum_field(
        policy,
        TERMINATION_MESSAGE_POLICIES,
        &path.child("terminationMessagePolicy"),
        errs,
    );
    enum_field(
        ctr.image_pull_policy.as_deref(),
        PULL_POLICIES,
        &path.child("imagePullPolicy"),
        errs,
    );
    validate_container_ports(
        ctr.ports.as_deref().unwrap_or(&[]),
        &mut ctx.port_names,
        &path.child("ports"),
        errs,
    );
    validate_env(ctr.env.as_deref().unwrap_or(&[]), &path.child("env"), errs);
    validate_env_from(
        ctr.env_from.as_deref().unwrap_or(&[]),
        &path.child("envFrom"),
        errs,
    );
    let mounts = ctr.volume_mounts.as_deref().unwrap_or(&[]);
    validate_volume_mounts(mounts, ctr, ctx.volumes, &path.child("volumeMounts"), errs);
    if let Some(resources) = &ctr.resources {
        super::resources::validate_resource_requirements(resources, &path.child("resources"), errs);
    }
}

/// An optional enumerated field: absent is fine (defaulting fills it in),
/// empty is missing, anything else must be listed.
pub(super) fn enum_field(value: Option<&str>, supported: &[&str], path: &Path, errs: &mut Errors) {
    match value {
        None => {}
        Some("") => errs.required(path, ""),
        Some(v) if supported.contains(&v) => {}
        Some(v) => errs.not_supported(path, v, supported),
    }
}

fn validate_container_ports(
    ports: &[ContainerPort],
    pod_names: &mut HashSet<String>,
    path: &Path,
    errs: &mut Errors,
) {
    let mut seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        if let Some(name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            let msgs = names::is_iana_svc_name(name);
            if !msgs.is_empty() {
                errs.each_invalid(&p.child("name"), name, msgs);
            } else if !pod_names.insert(name.to_string()) {
                errs.duplicate(&p.child("name"), q(name));
            }
        }
        if port.container_port == 0 {
            errs.required(&p.child("containerPort"), "");
        } else {
            validate_port_num(port.container_port, &p.child("containerPort"), errs);
        }
        if let Some(host_port) = port.host_port
            && host_port != 0
        {
            validate_port_num(host_port, &p.child("hostPort"), errs);
        }
        enum_field(
            port.protocol.as_deref(),
            PROTOCOLS,
            &p.child("protocol"),
            errs,
        );
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if port.container_port != 0 && !seen.insert((port.container_port, protocol)) {
            errs.duplicate(&p, q(&format!("{}/{protocol}", port.container_port)));
        }
    }
}

/// Host ports must not collide (`protocol/hostIP/port`).
fn check_host_ports(ctr: &Container, seen: &mut HashSet<String>, path: &Path, errs: &mut Errors) {
    for (i, port) in ctr.ports.iter().flatten().enumerate() {
        let Some(host_port) = port.host_port.filter(|&p| p != 0) else {
            continue;
        };
        let key = format!(
            "{}/{}/{host_port}",
            port.protocol.as_deref().unwrap_or("TCP"),
            port.host_ip.as_deref().unwrap_or("")
        );
        if seen.contains(&key) {
            errs.duplicate(&path.child("ports").index(i).child("hostPort"), q(&key));
        } else {
            seen.insert(key);
        }
    }
}

fn validate_env(vars: &[EnvVar], path: &Path, errs: &mut Errors) {
    for (i, var) in vars.iter().enumerate() {
        let p = path.index(i);
        if var.name.is_empty() {
            errs.required(&p.child("name"), "");
        } else {
            errs.each_invalid(
                &p.child("name"),
                &var.name,
                names::is_env_var_name(&var.name),
            );
        }
        validate_env_value_from(var, &p.child("valueFrom"), errs);
    }
}

fn validate_env_value_from(var: &EnvVar, path: &Path, errs: &mut Errors) {
    let Some(from) = &var.value_from else {
        return;
    };
    let mut sources = 0;
    if let Some(field) = &from.field_ref {
        sources += 1;
        let p = path.child("fieldRef");
        match field.api_version.as_deref() {
            None | Some("") => errs.required(&p.child("apiVersion"), ""),
            Some(_) if field.field_path.is_empty() => errs.required(&p.child("fieldPath"), ""),
            Some(_) => validate_env_field_path(&field.field_path, &p, errs),
        }
    }
    if let Some(resource) = &from.resource_field_ref {
        sources += 1;
        let p = path.child("resourceFieldRef").child("resource");
        let name = resource.resource.as_str();
        let hugepages =
            name.starts_with("requests.hugepages-") || name.starts_with("limits.hugepages-");
        if name.is_empty() {
            errs.required(&p, "");
        } else if !ENV_RESOURCE_FIELDS.contains(&name) && !hugepages {
            errs.not_supported(&p, name, ENV_RESOURCE_FIELDS);
        }
    }
    let key_refs = [
        (
            "configMapKeyRef",
            from.config_map_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
        (
            "secretKeyRef",
            from.secret_key_ref.as_ref().map(|r| (&r.name, &r.key)),
        ),
    ];
    for (field, reference) in key_refs {
        let Some((name, key)) = reference else {
            continue;
        };
        sources += 1;
        let p = path.child(field);
        if name.is_empty() {
            errs.required(&p.child("name"), "");
        } else {
            errs.each_invalid(
                &p.child("name"),
                name,
                NameRule::Dns1123Subdomain.check(name, false),
            );
        }
        if key.is_empty() {
            errs.required(&p.child("key"), "");
        } else {
            errs.each_invalid(&p.child("key"), key, names::is_config_map_key(key));
        }
    }
    if from.file_key_ref.is_some() {
        sources += 1;
    }
    if sources == 0 {
        errs.invalid(
            path,
            q(""),
            "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
        );
    } else if var.value.as_deref().is_some_and(|v| !v.is_empty()) {
        errs.invalid(
            path,
            q(""),
            "may not be specified when `value` is not empty",
        );
    } else if sources > 1 {
        errs.invalid(
            path,
            q(""),
            "may not have more than one field specified at a time",
        );
    }
}

/// `metadata.name`, ... or a subscripted `metadata.labels['key']`.
fn validate_env_field_path(field_path: &str, path: &Path, errs: &mut Errors) {
    if let Some((base, rest)) = field_path.split_once("['")
        && let Some(subscript) = rest.strip_suffix("']")
    {
        match base {
            "metadata.annotations" => {
                let key = subscript.to_lowercase();
                errs.each_invalid(path, &key, names::is_qualified_name(&key));
            }
            "metadata.labels" => validate_label_name(subscript, path, errs),
            _ => errs.invalid(path, q(base), "does not support subscript"),
        }
        return;
    }
    if !ENV_FIELD_PATHS.contains(&field_path) {
        let mut sorted = ENV_FIELD_PATHS.to_vec();
        sorted.sort_unstable();
        errs.not_supported(&path.child("fieldPath"), field_path, &sorted);
    }
}

fn validate_env_from(sources: &[EnvFromSource], path: &Path, errs: &mut Errors) {
    for (i, source) in sources.iter().enumerate() {
        let p = path.index(i);
        if let Some(prefix) = source.prefix.as_deref().filter(|p| !p.is_empty()) {
            errs.each_invalid(&p.child("prefix"), prefix, names::is_env_var_name(prefix));
        }
        let refs = [
            (
                "configMapRef",
                source.config_map_ref.as_ref().map(|r| &r.name),
            ),
            ("secretRef", source.secret_ref.as_ref().map(|r| &r.name)),
        ];
        let mut count = 0;
        for (field, name) in refs {
            let Some(name) = name else {
                continue;
            };
            count += 1;
            let name_path = p.child(field).child("name");
            if name.is_empty() {
                errs.required(&name_path, "");
            } else {
                errs.each_invalid(
                    &name_path,
                    name,
                    NameRule::Dns1123Subdomain.check(name, true),
                );
            }
        }
        if count == 0 {
            errs.invalid(
                path,
                q(""),
                "must specify one of: `configMapRef` or `secretRef`",
            );
        } else if count > 1 {
            errs.invalid(
                path,
                q(""),
                "may not have more than one field specified at a time",
            );
        }
    }
}

fn validate_volume_mounts(
    mounts: &[VolumeMount],
    ctr: &Container,
    volumes: &BTreeSet<String>,
    path: &Path,
    errs: &mut Errors,
) {
    let mut mount_points = HashSet::new();
    for (i, mount) in mounts.iter().enumerate() {
        let p = path.index(i);
        if mount.name.is_empty() {
            errs.required(&p.child("name"), "");
        }
        if !volumes.contains(&mount.name) {
            errs.not_found(&p.child("name"), q(&mount.name));
        }
        let mount_path = p.child("mountPath");
        if mount.mount_path.is_empty() {
            errs.required(&mount_path, "");
        } else if !mount.mount_path.starts_with('/') {
            errs.invalid(
                &mount_path,
                q(&mount.mount_path),
                "must be an absolute path",
            );
        }
        if !mount_points.insert(mount.mount_path.as_str()) {
            errs.invalid(&mount_path, q(&mount.mount_path), "must be unique");
        }
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            validate_local_descending_path(sub_path, &p.child("subPath"), errs);
        }
        if let Some(propagation) = mount.mount_propagation.as_deref() {
            let p = p.child("mountPropagation");
            if !MOUNT_PROPAGATIONS.contains(&propagation) {
                errs.not_supported(&p, propagation, MOUNT_PROPAGATIONS);
            } else if propagation == "Bidirectional" && !privileged(ctr) {
                errs.forbidden(
                    &p,
                    "Bidirectional mount propagation is available only to privileged containers",
                );
            }
        }
    }
}

fn privileged(ctr: &Container) -> bool {
    ctr.security_context
        .as_ref()
        .and_then(|sc| sc.privileged)
        .unwrap_or(false)
}

/// A relative path that does not climb out of its directory.
pub(super) fn validate_local_descending_path(value: &str, path: &Path, errs: &mut Errors) {
    if value.starts_with('/') {
        errs.invalid(path, q(value), "must be a relative path");
    }
    validate_no_backsteps(value, path, errs);
}

pub(super) fn validate_no_backsteps(value: &str, path: &Path, errs: &mut Errors) {
    if value.split('/').any(|part| part == "..") {
        errs.invalid(path, q(value), "must not contain '..'");
    }
}
