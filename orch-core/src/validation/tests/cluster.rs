//! Nodes, Namespaces, ConfigMaps, Secrets, EndpointSlices, Leases, Events.

use serde_json::{Value, json};

use super::{assert_cases, case, errors, raw_errors, set};
use crate::names;

#[test]
fn node() {
    let base = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "node-1.example.com"},
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"],
            "taints": [{"key": "dedicated", "value": "batch", "effect": "NoSchedule"}]
        },
        "status": {"capacity": {"cpu": "4", "memory": "8Gi"}, "allocatable": {"cpu": "4", "memory": "8Gi"}}
    });
    let taint = "/spec/taints/0";
    let cidr = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";
    let cases = vec![
        case(
            &base,
            &format!("{taint}/effect"),
            json!("Never"),
            "spec.taints[0].effect: Unsupported value: \"Never\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        ),
        case(
            &base,
            &format!("{taint}/effect"),
            json!(""),
            "spec.taints[0].effect: Required value",
        ),
        case(
            &base,
            &format!("{taint}/value"),
            json!("a b"),
            format!(
                "spec.taints[0].value: Invalid value: \"a b\": {}",
                names::is_label_value("a b").join(";")
            ),
        ),
        case(
            &base,
            &format!("{taint}/key"),
            json!("a b"),
            format!(
                "spec.taints[0].key: Invalid value: \"a b\": {}",
                names::is_qualified_name("a b").join("")
            ),
        ),
        case(
            &base,
            "/spec/taints/1",
            json!({"key": "dedicated", "value": "other", "effect": "NoSchedule"}),
            "spec.taints[1]: Duplicate value: \"dedicated:NoSchedule\": taints must be unique by key and effect pair",
        ),
        case(
            &base,
            "/spec/podCIDR",
            json!("10.0.0.0/33"),
            format!("spec.podCIDR: Invalid value: \"10.0.0.0/33\": {cidr}"),
        ),
        case(
            &base,
            "/spec/podCIDRs/1",
            json!("fd00:1::"),
            format!("spec.podCIDRs[1]: Invalid value: \"fd00:1::\": {cidr}"),
        ),
        case(
            &base,
            "/spec/podCIDRs/1",
            json!("10.245.0.0/16"),
            "spec.podCIDRs: Invalid value: []string{\"10.244.1.0/24\", \"10.245.0.0/16\"}: may specify no more than one CIDR for each IP family",
        ),
        case(
            &base,
            "/status/capacity/cpu",
            json!("-4"),
            "status.capacity.cpu: Invalid value: \"-4\": must be greater than or equal to 0",
        ),
    ];
    assert_cases(&base, cases);
    // A taint may repeat its key with another effect.
    let other_effect = set(
        base,
        "/spec/taints/1",
        json!({"key": "dedicated", "effect": "NoExecute"}),
    );
    assert_eq!(errors(other_effect), Vec::<String>::new());
}

#[test]
fn namespace() {
    let base = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}, "spec": {"finalizers": ["kubernetes"]}});
    let cases = vec![
        case(
            &base,
            "/spec/finalizers/0",
            json!("example"),
            "spec.finalizers[0]: Invalid value: \"example\": name is neither a standard finalizer name nor is it fully qualified",
        ),
        case(
            &base,
            "/spec/finalizers/0",
            json!("a b/c"),
            format!(
                "spec.finalizers[0]: Invalid value: \"a b/c\": {}",
                names::is_qualified_name("a b/c").join("")
            ),
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn config_map() {
    let base = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
        "data": {"level": "debug"}, "binaryData": {"logo.png": "iVBORw0KGgo="}});
    let key = names::is_config_map_key("bad key").join("");
    let cases = vec![
        case(
            &base,
            "/data/bad key",
            json!("x"),
            format!("data[bad key]: Invalid value: \"bad key\": {key}"),
        ),
        case(
            &base,
            "/binaryData/bad key",
            json!("eA=="),
            format!("binaryData[bad key]: Invalid value: \"bad key\": {key}"),
        ),
        case(
            &base,
            "/data/logo.png",
            json!("x"),
            "data[logo.png]: Invalid value: \"logo.png\": duplicate of key present in binaryData",
        ),
        case(
            &base,
            "/data/big",
            json!("x".repeat(1024 * 1024)),
            "data: Too long: must have at most 1048576 bytes",
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn secret() {
    let base = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"token": "c2VjcmV0"}, "stringData": {"user": "admin"}});
    let key = names::is_config_map_key("a b").join("");
    let tls = |data: Value| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": data});
    let cases = vec![
        case(
            &base,
            "/data/a b",
            json!("eA=="),
            format!("data[a b]: Invalid value: \"a b\": {key}"),
        ),
        // stringData is merged into data by defaulting, before validation
        // (Kubernetes merges it when decoding): the key is reported there.
        case(
            &base,
            "/stringData/a b",
            json!("x"),
            format!("data[a b]: Invalid value: \"a b\": {key}"),
        ),
        case(
            &base,
            "/stringData/big",
            json!("x".repeat(1024 * 1024)),
            "data: Too long: must have at most 1048576 bytes",
        ),
        (
            tls(json!({"tls.crt": "eA=="})),
            "data[tls.key]: Required value".to_string(),
        ),
    ];
    assert_cases(&base, cases);
    // An empty type is defaulted to Opaque; undefaulted it is missing.
    assert_eq!(
        raw_errors(set(base.clone(), "/type", json!(""))),
        vec!["type: Required value"]
    );
    let basic = set(base.clone(), "/type", json!("kubernetes.io/basic-auth"));
    assert_eq!(
        errors(basic),
        vec![
            "data[username]: Required value",
            "data[password]: Required value"
        ]
    );
    // stringData counts as data for the type's required keys.
    let from_string_data = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"},
        "type": "kubernetes.io/tls", "stringData": {"tls.crt": "c", "tls.key": "k"}});
    assert_eq!(errors(from_string_data), Vec::<String>::new());
}

#[test]
fn endpoint_slice() {
    let base = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": "shop"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.7"], "nodeName": "node-1"}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    });
    let cases = vec![
        case(
            &base,
            "/addressType",
            json!("IP"),
            "addressType: Unsupported value: \"IP\": supported values: \"FQDN\", \"IPv4\", \"IPv6\"",
        ),
        case(
            &base,
            "/addressType",
            json!(""),
            "addressType: Required value",
        ),
        case(
            &base,
            "/endpoints/0/addresses",
            json!([]),
            "endpoints[0].addresses: Required value: must contain at least 1 address",
        ),
        case(
            &base,
            "/endpoints/0/addresses/0",
            json!("fd00::1"),
            "endpoints[0].addresses[0]: Invalid value: \"fd00::1\": must be a valid IPv4 address",
        ),
        case(
            &base,
            "/endpoints/0/addresses/0",
            json!("127.0.0.1"),
            "endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ),
        case(
            &base,
            "/endpoints/0/addresses",
            json!(vec!["10.0.0.1"; 101]),
            "endpoints[0].addresses: Too many: 101: must have at most 100 items",
        ),
        case(
            &base,
            "/endpoints",
            json!(vec![json!({"addresses": ["10.0.0.1"]}); 1001]),
            "endpoints: Too many: 1001: must have at most 1000 items",
        ),
        case(
            &base,
            "/ports/0/port",
            json!(0),
            "ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        case(
            &base,
            "/ports/0/protocol",
            json!("ICMP"),
            "ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\"",
        ),
        case(
            &base,
            "/ports/1",
            json!({"name": "http", "port": 8443}),
            "ports[1].name: Duplicate value: \"http\"",
        ),
        case(
            &base,
            "/ports",
            json!(vec![json!({"port": 1}); 101]),
            "ports: Too many: 101: must have at most 100 items",
        ),
    ];
    assert_cases(&base, cases);
    let fqdn = set(
        set(base.clone(), "/addressType", json!("FQDN")),
        "/endpoints/0/addresses/0",
        json!("web.shop.svc"),
    );
    assert_eq!(errors(fqdn.clone()), Vec::<String>::new());
    assert_eq!(
        errors(set(fqdn, "/endpoints/0/addresses/0", json!("web"))),
        vec![
            "endpoints[0].addresses[0]: Invalid value: \"web\": should be a domain with at least two segments separated by dots"
        ]
    );
}

#[test]
fn lease() {
    let base = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "node-1", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40}});
    let cases = vec![
        case(
            &base,
            "/spec/leaseDurationSeconds",
            json!(0),
            "spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0",
        ),
        case(
            &base,
            "/spec/leaseTransitions",
            json!(-1),
            "spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0",
        ),
        case(
            &base,
            "/spec/preferredHolder",
            json!("node-2"),
            "spec.preferredHolder: Forbidden: may only be specified if `strategy` is defined",
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn event() {
    let base = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.17a2", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": "shop"},
        "reason": "Scheduled", "message": "assigned", "type": "Normal"});
    let cases = vec![
        case(
            &base,
            "/involvedObject/kind",
            json!(""),
            "involvedObject.kind: Required value",
        ),
        case(
            &base,
            "/involvedObject/name",
            json!(null),
            "involvedObject.name: Required value",
        ),
        case(
            &base,
            "/involvedObject/namespace",
            json!("other"),
            "involvedObject.namespace: Invalid value: \"other\": does not match event.namespace",
        ),
        case(
            &base,
            "/reason",
            json!("r".repeat(129)),
            "reason: Invalid value: \"\": can have at most 128 characters",
        ),
        case(
            &base,
            "/message",
            json!("m".repeat(1025)),
            "message: Invalid value: \"\": can have at most 1024 characters",
        ),
        case(
            &base,
            "/type",
            json!("Error"),
            "type: Unsupported value: \"Error\": supported values: \"Normal\", \"Warning\"",
        ),
    ];
    assert_cases(&base, cases);
}
