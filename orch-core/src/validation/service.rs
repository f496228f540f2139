//! Services (`ValidateService`).

use std::collections::HashSet;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};

use super::container::enum_field;
use super::{
    Errors, PROTOCOLS, Path, q, render_list, validate_cidr, validate_ip, validate_label_name,
    validate_labels, validate_port_num, validate_port_num_or_name,
};
use crate::names;

const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
const SESSION_AFFINITIES: &[&str] = &["ClientIP", "None"];
const TRAFFIC_POLICIES: &[&str] = &["Cluster", "Local"];
/// Kubernetes' default `--service-node-port-range`.
const NODE_PORT_RANGE: std::ops::RangeInclusive<i32> = 30000..=32767;
const MAX_CLIENT_IP_AFFINITY_SECONDS: i32 = 86400;

pub(super) fn validate_service(service: &Service, errs: &mut Errors) {
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let path = Path::new("spec");
    // Absent means ClusterIP, which defaulting sets.
    let service_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    let headless = cluster_ip == "None"
        || spec
            .cluster_ips
            .as_ref()
            .and_then(|ips| ips.first())
            .is_some_and(|ip| ip == "None");
    let ports = spec.ports.as_deref().unwrap_or(&[]);
    if ports.is_empty() && !headless && service_type != "ExternalName" {
        errs.required(&path.child("ports"), "");
    }
    enum_field(
        spec.type_.as_deref(),
        SERVICE_TYPES,
        &path.child("type"),
        errs,
    );
    match service_type {
        "LoadBalancer" | "NodePort" if headless => errs.invalid(
            &path.child("clusterIP"),
            q("None"),
            &format!("may not be set to 'None' for {service_type} services"),
        ),
        "ExternalName" => {
            if !cluster_ip.is_empty() {
                errs.forbidden(
                    &path.child("clusterIP"),
                    "may not be set for ExternalName services",
                );
            }
            let name = spec.external_name.as_deref().unwrap_or("");
            let cname = name.strip_suffix('.').unwrap_or(name);
            if cname.is_empty() {
                errs.required(&path.child("externalName"), "");
            } else {
                errs.each_invalid(
                    &path.child("externalName"),
                    cname,
                    names::is_dns1123_subdomain(cname),
                );
            }
        }
        _ => {}
    }
    validate_cluster_ips(spec, service_type, &path, errs);
    validate_ports(ports, service_type, &path.child("ports"), errs);
    validate_labels(spec.selector.as_ref(), &path.child("selector"), errs);
    validate_session_affinity(spec, &path, errs);
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        validate_ip(ip, &path.child("externalIPs").index(i), errs);
    }
    let has_external_ips = spec
        .external_ips
        .as_ref()
        .is_some_and(|ips| !ips.is_empty());
    let node_ports = matches!(service_type, "NodePort" | "LoadBalancer");
    let externally_accessible = node_ports || (service_type == "ClusterIP" && has_external_ips);
    let etp_path = path.child("externalTrafficPolicy");
    match spec.external_traffic_policy.as_deref() {
        Some(policy) if !policy.is_empty() && !externally_accessible => errs.invalid(
            &etp_path,
            q(policy),
            "may only be set for externally-accessible services",
        ),
        Some("") if externally_accessible => errs.required(&etp_path, ""),
        Some(policy) if externally_accessible && !TRAFFIC_POLICIES.contains(&policy) => {
            errs.not_supported(&etp_path, policy, TRAFFIC_POLICIES);
        }
        _ => {}
    }
    if let Some(policy) = spec.internal_traffic_policy.as_deref()
        && !TRAFFIC_POLICIES.contains(&policy)
    {
        errs.not_supported(
            &path.child("internalTrafficPolicy"),
            policy,
            TRAFFIC_POLICIES,
        );
    }
    let load_balancer_only = "may only be used when `type` is 'LoadBalancer'";
    if let Some(ranges) = spec
        .load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
    {
        let p = path.child("loadBalancerSourceRanges");
        if service_type != "LoadBalancer" {
            errs.forbidden(&p, load_balancer_only);
        }
        for (i, range) in ranges.iter().enumerate() {
            validate_cidr(range.trim(), &p.index(i), errs);
        }
    }
    if spec.allocate_load_balancer_node_ports.is_some() && service_type != "LoadBalancer" {
        errs.forbidden(
            &path.child("allocateLoadBalancerNodePorts"),
            load_balancer_only,
        );
    }
}

/// `clusterIP`: "", "None" or an address; `clusterIPs`: at most one address
/// per family, the first one equal to `clusterIP`.
fn validate_cluster_ips(spec: &ServiceSpec, service_type: &str, path: &Path, errs: &mut Errors) {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if !cluster_ip.is_empty() && cluster_ip != "None" {
        validate_ip(cluster_ip, &path.child("clusterIP"), errs);
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or(&[]);
    if ips.is_empty() {
        return;
    }
    let p = path.child("clusterIPs");
    if service_type == "ExternalName" {
        errs.forbidden(&p, "may not be set for ExternalName services");
        return;
    }
    if !cluster_ip.is_empty() && ips[0] != cluster_ip {
        errs.invalid(
            &p.index(0),
            q(&ips[0]),
            "must match `clusterIP` when both are specified",
        );
    }
    let mut families = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            if i != 0 {
                errs.invalid(&p.index(i), q(ip), "may only be 'None' for the first entry");
            }
            continue;
        }
        if let Some(addr) = validate_ip(ip, &p.index(i), errs) {
            families.push(matches!(addr, IpAddr::V4(_)));
        }
    }
    let dual_stack = families.len() == 2 && families[0] != families[1];
    if ips.len() > 2 || (families.len() == 2 && !dual_stack) {
        errs.invalid(
            &p,
            render_list(ips),
            "may specify no more than one IP for each IP family",
        );
    }
}

fn validate_ports(ports: &[ServicePort], service_type: &str, path: &Path, errs: &mut Errors) {
    let require_name = ports.len() > 1;
    let mut names_seen = HashSet::new();
    let mut node_ports = HashSet::new();
    let mut keys = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = port.name.as_deref().unwrap_or("");
        if require_name && name.is_empty() {
            errs.required(&p.child("name"), "");
        } else if !name.is_empty() {
            errs.each_invalid(&p.child("name"), name, names::is_dns1123_label(name));
            if !names_seen.insert(name) {
                errs.duplicate(&p.child("name"), q(name));
            }
        }
        validate_port_num(port.port, &p.child("port"), errs);
        enum_field(
            port.protocol.as_deref(),
            PROTOCOLS,
            &p.child("protocol"),
            errs,
        );
        if let Some(target) = &port.target_port {
            validate_port_num_or_name(target, &p.child("targetPort"), errs);
        }
        if let Some(app_protocol) = &port.app_protocol {
            validate_label_name(app_protocol, &p.child("appProtocol"), errs);
        }
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        if let Some(node_port) = port.node_port.filter(|&n| n != 0) {
            let np = p.child("nodePort");
            match service_type {
                "NodePort" | "LoadBalancer" => {
                    if !NODE_PORT_RANGE.contains(&node_port) {
                        errs.invalid(
                            &np,
                            node_port,
                            "provided port is not in the valid range. The range of valid ports is 30000-32767",
                        );
                    }
                }
                other => errs.forbidden(&np, &format!("may not be used when `type` is '{other}'")),
            }
            if !node_ports.insert((node_port, protocol)) {
                errs.duplicate(&np, node_port);
            }
        }
        if !keys.insert((port.port, protocol)) {
            errs.duplicate(&p, q(&format!("{}/{protocol}", port.port)));
        }
    }
}

fn validate_session_affinity(spec: &ServiceSpec, path: &Path, errs: &mut Errors) {
    let affinity_path = path.child("sessionAffinity");
    enum_field(
        spec.session_affinity.as_deref(),
        SESSION_AFFINITIES,
        &affinity_path,
        errs,
    );
    let config_path = path.child("sessionAffinityConfig");
    let config = spec.session_affinity_config.as_ref();
    match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            // Absent parts are defaulted (timeout 10800 s).
            let timeout = config
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            if let Some(timeout) = timeout
                && !(1..=MAX_CLIENT_IP_AFFINITY_SECONDS).contains(&timeout)
            {
                errs.invalid(
                    &config_path.child("clientIP").child("timeoutSeconds"),
                    timeout,
                    &format!(
                        "must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}"
                    ),
                );
            }
        }
        None | Some("None") if config.is_some() => {
            errs.forbidden(
                &config_path,
                "must not be set when session affinity is None",
            );
        }
        _ => {}
    }
}
