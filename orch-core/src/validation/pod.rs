//! Pods and pod specs (shared with workload templates): volumes,
//! scheduling constraints and pod-level fields.

use std::collections::{BTreeSet, HashSet};

use k8s_openapi::api::core::v1::{KeyToPath, Pod, PodSpec, Volume};

use super::container::{
    PodContext, enum_field, validate_containers, validate_init_containers,
    validate_local_descending_path, validate_no_backsteps,
};
use super::{Errors, NameRule, Path, nonnegative, q, validate_ip, validate_labels};
use crate::names;

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const HOST_PATH_TYPES: &[&str] = &[
    "",
    "BlockDevice",
    "CharDevice",
    "Directory",
    "DirectoryOrCreate",
    "File",
    "FileOrCreate",
    "Socket",
];
const FILE_MODE: &str = "must be a number between 0 and 0777 (octal), both inclusive";
const MAX_DNS_NAMESERVERS: usize = 3;

pub(super) fn validate_pod(pod: &Pod, errs: &mut Errors) {
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    validate_pod_spec(spec, true, &Path::new("spec"), errs);
}

/// A pod spec; `is_pod` is false inside templates (Deployments, ...).
pub(super) fn validate_pod_spec(spec: &PodSpec, is_pod: bool, path: &Path, errs: &mut Errors) {
    let volumes = validate_volumes(
        spec.volumes.as_deref().unwrap_or(&[]),
        &path.child("volumes"),
        errs,
    );
    let mut ctx = PodContext {
        volumes: &volumes,
        grace_period: spec.termination_grace_period_seconds,
        port_names: HashSet::new(),
        host_ports: HashSet::new(),
    };
    validate_containers(&spec.containers, &mut ctx, &path.child("containers"), errs);
    let init = spec.init_containers.as_deref().unwrap_or(&[]);
    validate_init_containers(
        init,
        &spec.containers,
        &mut ctx,
        &path.child("initContainers"),
        errs,
    );
    if spec.host_network == Some(true) {
        validate_host_network_ports(spec, is_pod, path, errs);
    }
    enum_field(
        spec.restart_policy.as_deref(),
        RESTART_POLICIES,
        &path.child("restartPolicy"),
        errs,
    );
    enum_field(
        spec.dns_policy.as_deref(),
        DNS_POLICIES,
        &path.child("dnsPolicy"),
        errs,
    );
    validate_dns_config(spec, &path.child("dnsConfig"), errs);
    validate_labels(
        spec.node_selector.as_ref(),
        &path.child("nodeSelector"),
        errs,
    );
    super::scheduling::validate_scheduling(spec, path, errs);
    let subdomain_fields = [
        ("serviceAccountName", &spec.service_account_name),
        ("nodeName", &spec.node_name),
        ("priorityClassName", &spec.priority_class_name),
        ("schedulerName", &spec.scheduler_name),
    ];
    for (field, value) in subdomain_fields {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            let msgs = NameRule::Dns1123Subdomain.check(value, false);
            errs.each_invalid(&path.child(field), value, msgs);
        }
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            errs.each_invalid(&path.child(field), value, names::is_dns1123_label(value));
        }
    }
    nonnegative(
        spec.termination_grace_period_seconds,
        &path.child("terminationGracePeriodSeconds"),
        errs,
    );
    if let Some(deadline) = spec.active_deadline_seconds
        && !(1..=i64::from(i32::MAX)).contains(&deadline)
    {
        errs.invalid(
            &path.child("activeDeadlineSeconds"),
            deadline,
            "must be between 1 and 2147483647, inclusive",
        );
    }
    if let Some(overhead) = &spec.overhead {
        let p = path.child("overhead");
        let _ = super::resources::validate_resource_list(overhead, &p, errs);
    }
}

/// With `hostNetwork`, a host port is the container port.
fn validate_host_network_ports(spec: &PodSpec, is_pod: bool, path: &Path, errs: &mut Errors) {
    for (i, ctr) in spec.containers.iter().enumerate() {
        for (j, port) in ctr.ports.iter().flatten().enumerate() {
            let host_port = port.host_port.unwrap_or(0);
            if (is_pod || host_port != 0) && host_port != port.container_port {
                let p = path
                    .child("containers")
                    .index(i)
                    .child("ports")
                    .index(j)
                    .child("hostPort");
                errs.invalid(
                    &p,
                    host_port,
                    "must match `containerPort` when `hostNetwork` is true",
                );
            }
        }
    }
}

fn validate_dns_config(spec: &PodSpec, path: &Path, errs: &mut Errors) {
    let config = spec.dns_config.as_ref();
    let nameservers = config.and_then(|c| c.nameservers.as_deref()).unwrap_or(&[]);
    if spec.dns_policy.as_deref() == Some("None") {
        if config.is_none() {
            errs.required(path, "must provide `dnsConfig` when `dnsPolicy` is None");
            return;
        }
        if nameservers.is_empty() {
            errs.required(
                &path.child("nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            );
            return;
        }
    }
    if nameservers.len() > MAX_DNS_NAMESERVERS {
        errs.invalid(
            &path.child("nameservers"),
            super::render_list(nameservers),
            "must not have more than 3 nameservers",
        );
    }
    for (i, server) in nameservers.iter().enumerate() {
        validate_ip(server, &path.child("nameservers").index(i), errs);
    }
    let searches = config.and_then(|c| c.searches.as_deref()).unwrap_or(&[]);
    for (i, search) in searches.iter().enumerate() {
        let search = search.strip_suffix('.').unwrap_or(search);
        let p = path.child("searches").index(i);
        errs.each_invalid(&p, search, names::is_dns1123_subdomain(search));
    }
}

/// Volumes; returns the names of those that validated, which mounts may use.
fn validate_volumes(volumes: &[Volume], path: &Path, errs: &mut Errors) -> BTreeSet<String> {
    let mut valid = BTreeSet::new();
    let mut all = HashSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let p = path.index(i);
        let before = errs.len();
        validate_volume_source(volume, &p, errs);
        let name_path = p.child("name");
        if volume.name.is_empty() {
            errs.required(&name_path, "");
        } else {
            errs.each_invalid(
                &name_path,
                &volume.name,
                names::is_dns1123_label(&volume.name),
            );
        }
        if !all.insert(volume.name.as_str()) {
            errs.duplicate(&name_path, q(&volume.name));
        }
        if errs.len() == before {
            valid.insert(volume.name.clone());
        }
    }
    valid
}

/// Exactly one source. orch acts on emptyDir, hostPath, configMap and
/// secret; the others are Kubernetes' and pass (the field registry warns).
fn validate_volume_source(volume: &Volume, path: &Path, errs: &mut Errors) {
    // Kubernetes' order, which decides which extra source is reported.
    let sources = [
        ("emptyDir", volume.empty_dir.is_some()),
        ("hostPath", volume.host_path.is_some()),
        ("gitRepo", volume.git_repo.is_some()),
        ("gcePersistentDisk", volume.gce_persistent_disk.is_some()),
        (
            "awsElasticBlockStore",
            volume.aws_elastic_block_store.is_some(),
        ),
        ("secret", volume.secret.is_some()),
        ("nfs", volume.nfs.is_some()),
        ("iscsi", volume.iscsi.is_some()),
        ("glusterfs", volume.glusterfs.is_some()),
        ("flocker", volume.flocker.is_some()),
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        ("rbd", volume.rbd.is_some()),
        ("cinder", volume.cinder.is_some()),
        ("cephfs", volume.cephfs.is_some()),
        ("quobyte", volume.quobyte.is_some()),
        ("downwardAPI", volume.downward_api.is_some()),
        ("fc", volume.fc.is_some()),
        ("flexVolume", volume.flex_volume.is_some()),
        ("configMap", volume.config_map.is_some()),
        ("azureFile", volume.azure_file.is_some()),
        ("vsphereVolume", volume.vsphere_volume.is_some()),
        (
            "photonPersistentDisk",
            volume.photon_persistent_disk.is_some(),
        ),
        ("portworxVolume", volume.portworx_volume.is_some()),
        ("azureDisk", volume.azure_disk.is_some()),
        ("storageos", volume.storageos.is_some()),
        ("projected", volume.projected.is_some()),
        ("scaleIO", volume.scale_io.is_some()),
        ("csi", volume.csi.is_some()),
        ("ephemeral", volume.ephemeral.is_some()),
        ("image", volume.image.is_some()),
    ];
    match errs.one_of(path, &sources, "volume type") {
        Some("emptyDir") => {
            let limit = volume
                .empty_dir
                .as_ref()
                .and_then(|e| e.size_limit.as_ref());
            if let Some(limit) = limit {
                let p = path.child("emptyDir").child("sizeLimit");
                if let Some(quantity) = super::resources::parse_quantity(limit, &p, errs)
                    && quantity.as_nanos() < 0
                {
                    errs.forbidden(&p, "SizeLimit field must be a valid resource quantity");
                }
            }
        }
        Some("hostPath") => {
            if let Some(host_path) = &volume.host_path {
                let p = path.child("hostPath");
                if host_path.path.is_empty() {
                    errs.required(&p.child("path"), "");
                } else {
                    validate_no_backsteps(&host_path.path, &p.child("path"), errs);
                    if let Some(kind) = host_path.type_.as_deref()
                        && !HOST_PATH_TYPES.contains(&kind)
                    {
                        errs.not_supported(&p.child("type"), kind, HOST_PATH_TYPES);
                    }
                }
            }
        }
        Some("configMap") => {
            if let Some(cm) = &volume.config_map {
                let p = path.child("configMap");
                if cm.name.is_empty() {
                    errs.required(&p.child("name"), "");
                }
                validate_projection(cm.default_mode, cm.items.as_deref(), &p, errs);
            }
        }
        Some("secret") => {
            if let Some(secret) = &volume.secret {
                let p = path.child("secret");
                if secret.secret_name.as_deref().is_none_or(str::is_empty) {
                    errs.required(&p.child("secretName"), "");
                }
                validate_projection(secret.default_mode, secret.items.as_deref(), &p, errs);
            }
        }
        Some(_) | None => {}
    }
}

/// `defaultMode` and `items` of configMap and secret volumes.
fn validate_projection(
    mode: Option<i32>,
    items: Option<&[KeyToPath]>,
    path: &Path,
    errs: &mut Errors,
) {
    validate_file_mode(mode, &path.child("defaultMode"), errs);
    for (i, item) in items.unwrap_or(&[]).iter().enumerate() {
        let p = path.child("items").index(i);
        if item.key.is_empty() {
            errs.required(&p.child("key"), "");
        }
        let item_path = p.child("path");
        if item.path.is_empty() {
            errs.required(&item_path, "");
        }
        validate_local_descending_path(&item.path, &item_path, errs);
        if item.path.starts_with("..") && !item.path.starts_with("../") {
            errs.invalid(&item_path, q(&item.path), "must not start with '..'");
        }
        validate_file_mode(item.mode, &p.child("mode"), errs);
    }
}

fn validate_file_mode(mode: Option<i32>, path: &Path, errs: &mut Errors) {
    if let Some(mode) = mode
        && !(0..=0o777).contains(&mode)
    {
        errs.invalid(path, mode, FILE_MODE);
    }
}
