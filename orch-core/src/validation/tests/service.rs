//! Services.

use serde_json::{Value, json};

use super::{assert_cases, case, errors, set};
use crate::names;

fn service() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]
        }
    })
}

#[test]
fn service_spec() {
    let base = service();
    let second = |port: Value| set(base.clone(), "/spec/ports/1", port);
    let not_label = names::is_dns1123_label("Metrics").join("");
    let subdomain = names::is_dns1123_subdomain("db_1.example.com").join("");
    let cases = vec![
        case(&base, "/spec/type", json!("Magic"), "spec.type: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        case(&base, "/spec/ports", json!([]), "spec.ports: Required value"),
        (second(json!({"port": 443})), "spec.ports[1].name: Required value".to_string()),
        (second(json!({"name": "http", "port": 443})), "spec.ports[1].name: Duplicate value: \"http\"".to_string()),
        (second(json!({"name": "Metrics", "port": 9090})), format!("spec.ports[1].name: Invalid value: \"Metrics\": {not_label}")),
        (second(json!({"name": "alt", "port": 80})), "spec.ports[1]: Duplicate value: \"80/TCP\"".to_string()),
        case(&base, "/spec/ports/0/port", json!(0), "spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"),
        case(&base, "/spec/ports/0/protocol", json!("ICMP"), "spec.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
        case(&base, "/spec/ports/0/targetPort", json!(70000), "spec.ports[0].targetPort: Invalid value: 70000: must be between 1 and 65535, inclusive"),
        case(&base, "/spec/ports/0/nodePort", json!(30080), "spec.ports[0].nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"),
        case(&base, "/spec/clusterIP", json!("10.0.0.300"), "spec.clusterIP: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"),
        case(&base, "/spec/selector/app", json!("a b"), format!("spec.selector: Invalid value: \"a b\": {}", names::is_label_value("a b").join(""))),
        case(&base, "/spec/sessionAffinity", json!("Sticky"), "spec.sessionAffinity: Unsupported value: \"Sticky\": supported values: \"ClientIP\", \"None\""),
        case(&base, "/spec/sessionAffinityConfig", json!({"clientIP": {"timeoutSeconds": 60}}), "spec.sessionAffinityConfig: Forbidden: must not be set when session affinity is None"),
        (set(set(base.clone(), "/spec/sessionAffinity", json!("ClientIP")), "/spec/sessionAffinityConfig/clientIP/timeoutSeconds", json!(0)),
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds: Invalid value: 0: must be greater than 0 and less than 86400".to_string()),
        case(&base, "/spec/externalTrafficPolicy", json!("Local"), "spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"),
        case(&base, "/spec/internalTrafficPolicy", json!("Node"), "spec.internalTrafficPolicy: Unsupported value: \"Node\": supported values: \"Cluster\", \"Local\""),
        (json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": {"type": "ExternalName"}}),
            "spec.externalName: Required value".to_string()),
        (json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"}, "spec": {"type": "ExternalName", "externalName": "db_1.example.com"}}),
            format!("spec.externalName: Invalid value: \"db_1.example.com\": {subdomain}")),
    ];
    assert_cases(&base, cases);
}

#[test]
fn node_ports() {
    let base = set(service(), "/spec/type", json!("NodePort"));
    let base = set(base, "/spec/ports/0/nodePort", json!(30080));
    let cases = vec![
        case(
            &base,
            "/spec/ports/0/nodePort",
            json!(80),
            "spec.ports[0].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767",
        ),
        case(
            &base,
            "/spec/ports/1",
            json!({"name": "https", "port": 443, "nodePort": 30080}),
            "spec.ports[1].nodePort: Duplicate value: 30080",
        ),
        case(
            &base,
            "/spec/externalTrafficPolicy",
            json!("Everywhere"),
            "spec.externalTrafficPolicy: Unsupported value: \"Everywhere\": supported values: \"Cluster\", \"Local\"",
        ),
        case(
            &base,
            "/spec/clusterIP",
            json!("None"),
            "spec.clusterIP: Invalid value: \"None\": may not be set to 'None' for NodePort services",
        ),
    ];
    assert_cases(&base, cases);
    let local = set(base, "/spec/externalTrafficPolicy", json!("Local"));
    assert_eq!(errors(local), Vec::<String>::new());
}

#[test]
fn headless_and_external_name_services_need_no_ports() {
    let headless = set(
        set(service(), "/spec/clusterIP", json!("None")),
        "/spec/ports",
        json!([]),
    );
    assert_eq!(errors(headless), Vec::<String>::new());
    let external = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "db"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com."}});
    assert_eq!(errors(external), Vec::<String>::new());
}

#[test]
fn dual_stack_cluster_ips() {
    let ok = set(
        set(service(), "/spec/clusterIP", json!("10.96.0.10")),
        "/spec/clusterIPs",
        json!(["10.96.0.10", "fd00::10"]),
    );
    assert_eq!(errors(ok.clone()), Vec::<String>::new());
    let same_family = set(ok, "/spec/clusterIPs/1", json!("10.96.0.11"));
    assert_eq!(
        errors(same_family),
        vec![
            "spec.clusterIPs: Invalid value: []string{\"10.96.0.10\", \"10.96.0.11\"}: may specify no more than one IP for each IP family"
        ]
    );
}
