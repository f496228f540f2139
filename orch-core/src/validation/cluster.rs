//! Namespaces, Nodes, ConfigMaps, Secrets, EndpointSlices, Leases, Events.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Secret};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::container::enum_field;
use super::scheduling::validate_taint_effect;
use super::{
    Errors, FieldErrorType, NEGATIVE, NameRule, PROTOCOLS, Path, q, render_list, validate_cidr,
    validate_finalizer_name, validate_label_name, validate_labels, validate_port_num,
};
use crate::names;

/// Kubernetes' `MaxSecretSize`, which also bounds ConfigMaps.
const MAX_DATA_SIZE: usize = 1024 * 1024;
const ADDRESS_TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
const MAX_ENDPOINTS: usize = 1000;
const MAX_ADDRESSES: usize = 100;
const MAX_PORTS: usize = 100;
const MAX_TOPOLOGY_LABELS: usize = 16;
const REASON_LIMIT: usize = 128;
const MESSAGE_LIMIT: usize = 1024;

pub(super) fn validate_namespace(namespace: &Namespace, errs: &mut Errors) {
    let path = Path::new("spec").child("finalizers");
    let finalizers = namespace
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_deref())
        .unwrap_or(&[]);
    for (i, finalizer) in finalizers.iter().enumerate() {
        validate_finalizer_name(finalizer, &path.index(i), errs);
    }
}

pub(super) fn validate_node(node: &Node, errs: &mut Errors) {
    let path = Path::new("spec");
    if let Some(spec) = &node.spec {
        let mut seen = HashSet::new();
        for (i, taint) in spec.taints.iter().flatten().enumerate() {
            let p = path.child("taints").index(i);
            validate_label_name(&taint.key, &p.child("key"), errs);
            let value = taint.value.as_deref().unwrap_or("");
            let msgs = names::is_label_value(value);
            if !msgs.is_empty() {
                errs.invalid(&p.child("value"), q(value), &msgs.join(";"));
            }
            validate_taint_effect(&taint.effect, &p.child("effect"), errs);
            if !seen.insert((taint.key.as_str(), taint.effect.as_str())) {
                errs.push(
                    &p,
                    FieldErrorType::Duplicate,
                    Some(q(&format!("{}:{}", taint.key, taint.effect))),
                    "taints must be unique by key and effect pair",
                );
            }
        }
        if let Some(cidr) = spec.pod_cidr.as_deref().filter(|c| !c.is_empty()) {
            validate_cidr(cidr, &path.child("podCIDR"), errs);
        }
        let cidrs = spec.pod_cidrs.as_deref().unwrap_or(&[]);
        let p = path.child("podCIDRs");
        let mut families = Vec::new();
        let mut seen = HashSet::new();
        for (i, cidr) in cidrs.iter().enumerate() {
            if let Some(v4) = validate_cidr(cidr, &p.index(i), errs) {
                families.push(v4);
            }
            if !seen.insert(cidr.as_str()) {
                errs.duplicate(&p.index(i), q(cidr));
            }
        }
        let dual_stack = families.len() == 2 && families[0] != families[1];
        if cidrs.len() > 2 || (families.len() == 2 && !dual_stack) {
            errs.invalid(
                &p,
                render_list(cidrs),
                "may specify no more than one CIDR for each IP family",
            );
        }
    }
    if let Some(status) = &node.status {
        for (field, list) in [
            ("capacity", &status.capacity),
            ("allocatable", &status.allocatable),
        ] {
            for (name, raw) in list.iter().flatten() {
                let p = Path::new("status").child(field).child(name);
                if let Some(quantity) = super::resources::parse_quantity(raw, &p, errs)
                    && quantity.as_nanos() < 0
                {
                    errs.invalid(&p, q(&quantity.canonical()), NEGATIVE);
                }
            }
        }
    }
}

fn validate_data_keys<'a>(keys: impl Iterator<Item = &'a String>, path: &Path, errs: &mut Errors) {
    for key in keys {
        errs.each_invalid(&path.key(key), key, names::is_config_map_key(key));
    }
}

pub(super) fn validate_config_map(cm: &ConfigMap, errs: &mut Errors) {
    let data_path = Path::new("data");
    let binary_path = Path::new("binaryData");
    let data = cm.data.as_ref();
    let binary = cm.binary_data.as_ref();
    validate_data_keys(data.into_iter().flat_map(|d| d.keys()), &data_path, errs);
    for key in data.into_iter().flat_map(|d| d.keys()) {
        if binary.is_some_and(|b| b.contains_key(key)) {
            errs.invalid(
                &data_path.key(key),
                q(key),
                "duplicate of key present in binaryData",
            );
        }
    }
    validate_data_keys(
        binary.into_iter().flat_map(|b| b.keys()),
        &binary_path,
        errs,
    );
    let total: usize = data
        .into_iter()
        .flatten()
        .map(|(_, v)| v.len())
        .sum::<usize>()
        + binary
            .into_iter()
            .flatten()
            .map(|(_, v)| v.0.len())
            .sum::<usize>();
    if total > MAX_DATA_SIZE {
        errs.too_long(&data_path, MAX_DATA_SIZE);
    }
}

pub(super) fn validate_secret(secret: &Secret, errs: &mut Errors) {
    let data_path = Path::new("data");
    let data = secret.data.as_ref();
    let string_data = secret.string_data.as_ref();
    validate_data_keys(data.into_iter().flat_map(|d| d.keys()), &data_path, errs);
    validate_data_keys(
        string_data.into_iter().flat_map(|d| d.keys()),
        &Path::new("stringData"),
        errs,
    );
    // stringData is merged over data when the Secret is stored.
    let mut merged: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for (key, value) in data.into_iter().flatten() {
        merged.insert(key, &value.0);
    }
    for (key, value) in string_data.into_iter().flatten() {
        merged.insert(key, value.as_bytes());
    }
    if merged.values().map(|v| v.len()).sum::<usize>() > MAX_DATA_SIZE {
        errs.too_long(&data_path, MAX_DATA_SIZE);
    }
    let has = |key: &str| merged.contains_key(key);
    let required = |key: &str, errs: &mut Errors| errs.required(&data_path.key(key), "");
    match secret.type_.as_deref() {
        None | Some("Opaque") => {}
        Some("") => errs.required(&Path::new("type"), ""),
        Some("kubernetes.io/service-account-token") => {
            let key = "kubernetes.io/service-account.name";
            let name = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key));
            if name.is_none_or(|n| n.is_empty()) {
                errs.required(&Path::new("metadata").child("annotations").key(key), "");
            }
        }
        Some(kind @ ("kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson")) => {
            let key = if kind.ends_with("json") {
                ".dockerconfigjson"
            } else {
                ".dockercfg"
            };
            match merged.get(key) {
                None => required(key, errs),
                Some(bytes) => {
                    if let Err(e) =
                        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
                    {
                        errs.invalid(
                            &data_path.key(key),
                            q("<secret contents redacted>"),
                            &e.to_string(),
                        );
                    }
                }
            }
        }
        Some("kubernetes.io/basic-auth") => {
            if !has("username") && !has("password") {
                required("username", errs);
                required("password", errs);
            }
        }
        Some("kubernetes.io/ssh-auth") => {
            if merged.get("ssh-privatekey").is_none_or(|v| v.is_empty()) {
                required("ssh-privatekey", errs);
            }
        }
        Some("kubernetes.io/tls") => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    required(key, errs);
                }
            }
        }
        Some(_) => {}
    }
}

pub(super) fn validate_endpoint_slice(slice: &EndpointSlice, errs: &mut Errors) {
    let address_type = slice.address_type.as_str();
    let type_path = Path::new("addressType");
    if address_type.is_empty() {
        errs.required(&type_path, "");
    } else if !ADDRESS_TYPES.contains(&address_type) {
        errs.not_supported(&type_path, address_type, ADDRESS_TYPES);
    }
    let path = Path::new("endpoints");
    if slice.endpoints.len() > MAX_ENDPOINTS {
        errs.too_many(&path, slice.endpoints.len(), MAX_ENDPOINTS);
    } else {
        for (i, endpoint) in slice.endpoints.iter().enumerate() {
            let p = path.index(i);
            let addresses_path = p.child("addresses");
            if endpoint.addresses.is_empty() {
                errs.required(&addresses_path, "must contain at least 1 address");
            } else if endpoint.addresses.len() > MAX_ADDRESSES {
                errs.too_many(&addresses_path, endpoint.addresses.len(), MAX_ADDRESSES);
            }
            for (j, address) in endpoint.addresses.iter().enumerate() {
                validate_endpoint_address(address, address_type, &addresses_path.index(j), errs);
            }
            let topology = endpoint.deprecated_topology.as_ref();
            let topology_path = p.child("deprecatedTopology");
            if let Some(topology) = topology.filter(|t| t.len() > MAX_TOPOLOGY_LABELS) {
                errs.too_many(&topology_path, topology.len(), MAX_TOPOLOGY_LABELS);
            }
            validate_labels(topology, &topology_path, errs);
            if let Some(hostname) = &endpoint.hostname {
                errs.each_invalid(
                    &p.child("hostname"),
                    hostname,
                    names::is_dns1123_label(hostname),
                );
            }
            if let Some(node) = endpoint.node_name.as_deref().filter(|n| !n.is_empty()) {
                let msgs = NameRule::Dns1123Subdomain.check(node, false);
                errs.each_invalid(&p.child("nodeName"), node, msgs);
            }
        }
    }
    let path = Path::new("ports");
    let ports = slice.ports.as_deref().unwrap_or(&[]);
    if ports.len() > MAX_PORTS {
        errs.too_many(&path, ports.len(), MAX_PORTS);
        return;
    }
    let mut names_seen = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let p = path.index(i);
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            errs.each_invalid(&p.child("name"), name, names::is_dns1123_label(name));
        }
        if !names_seen.insert(name) {
            errs.duplicate(&p.child("name"), q(name));
        }
        if let Some(number) = port.port {
            validate_port_num(number, &p.child("port"), errs);
        }
        match port.protocol.as_deref() {
            None => errs.required(&p.child("protocol"), ""),
            protocol => enum_field(protocol, PROTOCOLS, &p.child("protocol"), errs),
        }
        if let Some(app_protocol) = &port.app_protocol {
            validate_label_name(app_protocol, &p.child("appProtocol"), errs);
        }
    }
}

fn validate_endpoint_address(address: &str, address_type: &str, path: &Path, errs: &mut Errors) {
    let family = match address_type {
        "IPv4" => true,
        "IPv6" => false,
        "FQDN" => {
            let name = address.strip_suffix('.').unwrap_or(address);
            if name.is_empty() {
                errs.required(path, "");
            } else if !name.contains('.') {
                errs.invalid(
                    path,
                    q(address),
                    "should be a domain with at least two segments separated by dots",
                );
            } else {
                errs.each_invalid(path, address, names::is_dns1123_subdomain(name));
            }
            return;
        }
        _ => return,
    };
    let parsed = address
        .parse::<IpAddr>()
        .ok()
        .filter(|ip| ip.is_ipv4() == family);
    let Some(ip) = parsed else {
        let which = if family { "IPv4" } else { "IPv6" };
        errs.invalid(
            path,
            q(address),
            &format!("must be a valid {which} address"),
        );
        return;
    };
    if ip.is_unspecified() {
        errs.invalid(
            path,
            q(address),
            &format!("may not be unspecified ({address})"),
        );
    }
    if ip.is_loopback() {
        errs.invalid(
            path,
            q(address),
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        );
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        errs.invalid(
            path,
            q(address),
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        );
    }
    let link_local_multicast = match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [224, 0, 0],
        IpAddr::V6(v6) => (v6.segments()[0] & 0xff0f) == 0xff02,
    };
    if link_local_multicast {
        errs.invalid(
            path,
            q(address),
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        );
    }
}

pub(super) fn validate_lease(lease: &Lease, errs: &mut Errors) {
    let Some(spec) = &lease.spec else {
        return;
    };
    let path = Path::new("spec");
    if let Some(duration) = spec.lease_duration_seconds
        && duration <= 0
    {
        errs.invalid(
            &path.child("leaseDurationSeconds"),
            duration,
            "must be greater than 0",
        );
    }
    if let Some(transitions) = spec.lease_transitions
        && transitions < 0
    {
        errs.invalid(&path.child("leaseTransitions"), transitions, NEGATIVE);
    }
    let strategy = spec.strategy.as_deref().unwrap_or("");
    if !strategy.is_empty() {
        let p = path.child("strategy");
        if strategy.contains('/') {
            validate_label_name(strategy, &p, errs);
        } else if strategy != "OldestEmulationVersion" {
            errs.not_supported(&p, strategy, &["OldestEmulationVersion"]);
        }
    }
    if spec
        .preferred_holder
        .as_deref()
        .is_some_and(|h| !h.is_empty())
        && strategy.is_empty()
    {
        errs.forbidden(
            &path.child("preferredHolder"),
            "may only be specified if `strategy` is defined",
        );
    }
}

pub(super) fn validate_event(event: &Event, errs: &mut Errors) {
    let involved = &event.involved_object;
    let path = Path::new("involvedObject");
    for (field, value) in [("kind", &involved.kind), ("name", &involved.name)] {
        if value.as_deref().is_none_or(str::is_empty) {
            errs.required(&path.child(field), "");
        }
    }
    // An unset namespace becomes "default" when the Event is stored.
    let namespace = event
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty());
    let involved_ns = involved.namespace.as_deref().unwrap_or("");
    let consistent = match namespace {
        None => true,
        Some(ns) if involved_ns.is_empty() => ns == "default",
        Some(ns) => ns == involved_ns,
    };
    if !consistent {
        errs.invalid(
            &path.child("namespace"),
            q(involved_ns),
            "does not match event.namespace",
        );
    }
    let limits = [
        ("reason", &event.reason, REASON_LIMIT),
        ("message", &event.message, MESSAGE_LIMIT),
    ];
    for (field, value, limit) in limits {
        if value.as_ref().is_some_and(|v| v.len() > limit) {
            errs.invalid(
                &Path::new(field),
                q(""),
                &format!("can have at most {limit} characters"),
            );
        }
    }
    if let Some(kind) = event.type_.as_deref().filter(|t| !t.is_empty()) {
        enum_field(Some(kind), &["Normal", "Warning"], &Path::new("type"), errs);
    }
}
