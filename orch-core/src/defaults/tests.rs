//! Defaulting: table tests per kind, and idempotence.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{apply_defaults, pull_policy_for};
use crate::object::{Kind, Object};

fn object(json: Value) -> Object {
    let api_version = json["apiVersion"].as_str().unwrap_or_default().to_string();
    let kind = json["kind"].as_str().unwrap_or_default().to_string();
    let kind = Kind::from_type_meta(&api_version, &kind).expect("a kind orch serves");
    kind.deserialize(json).expect("the test manifest decodes")
}

/// The defaulted object as JSON.
fn defaulted(json: Value) -> Value {
    let mut object = object(json);
    apply_defaults(&mut object);
    object.to_json()
}

/// Asserts the value at each JSON pointer of the defaulted object.
fn assert_defaults(input: Value, expected: &[(&str, Value)]) {
    let out = defaulted(input);
    for (pointer, value) in expected {
        assert_eq!(out.pointer(pointer), Some(value), "{pointer} in {out:#}");
    }
}

#[test]
fn image_pull_policy_follows_the_tag() {
    let table = [
        ("busybox", "Always"),
        ("busybox:latest", "Always"),
        ("busybox:1.36", "IfNotPresent"),
        ("registry.local:5000/busybox", "Always"),
        ("registry.local:5000/busybox:1.36", "IfNotPresent"),
        ("registry.local:5000/team/busybox:latest", "Always"),
        (
            "busybox@sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c",
            "IfNotPresent",
        ),
        (
            "busybox:latest@sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c",
            "Always",
        ),
        ("", "IfNotPresent"),
    ];
    for (image, policy) in table {
        assert_eq!(pull_policy_for(image), policy, "{image}");
    }
}

#[test]
fn pod_defaults() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {
            "containers": [{
                "name": "app", "image": "busybox",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m"}},
                "livenessProbe": {"httpGet": {"port": 80}, "periodSeconds": 0},
                "readinessProbe": {"exec": {"command": ["true"]}, "timeoutSeconds": 5},
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
            }],
            "initContainers": [{"name": "init", "image": "busybox:1.36", "imagePullPolicy": "Never"}],
            "volumes": [
                {"name": "scratch"},
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 256}},
                {"name": "logs", "hostPath": {"path": "/var/log"}}
            ]
        }
    });
    let c = "/spec/containers/0";
    assert_defaults(
        pod,
        &[
            ("/spec/restartPolicy", json!("Always")),
            ("/spec/dnsPolicy", json!("ClusterFirst")),
            ("/spec/schedulerName", json!("default-scheduler")),
            ("/spec/terminationGracePeriodSeconds", json!(30)),
            (&format!("{c}/imagePullPolicy"), json!("Always")),
            (
                &format!("{c}/terminationMessagePath"),
                json!("/dev/termination-log"),
            ),
            (&format!("{c}/terminationMessagePolicy"), json!("File")),
            (&format!("{c}/ports/0/protocol"), json!("TCP")),
            (
                &format!("{c}/resources/requests"),
                json!({"cpu": "100m", "memory": "1Gi"}),
            ),
            (
                &format!("{c}/livenessProbe"),
                json!({
                    "httpGet": {"port": 80, "path": "/", "scheme": "HTTP"},
                    "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3
                }),
            ),
            (&format!("{c}/readinessProbe/timeoutSeconds"), json!(5)),
            (
                &format!("{c}/env/0/valueFrom/fieldRef/apiVersion"),
                json!("v1"),
            ),
            ("/spec/initContainers/0/imagePullPolicy", json!("Never")),
            (
                "/spec/initContainers/0/terminationMessagePolicy",
                json!("File"),
            ),
            (
                "/spec/volumes/0",
                json!({"name": "scratch", "emptyDir": {}}),
            ),
            ("/spec/volumes/1/configMap/defaultMode", json!(420)),
            ("/spec/volumes/2/secret/defaultMode", json!(256)),
            ("/spec/volumes/3/hostPath/type", json!("")),
        ],
    );
}

#[test]
fn explicit_values_are_kept() {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {
            "restartPolicy": "Never", "dnsPolicy": "Default", "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                "ports": [{"containerPort": 53, "protocol": "UDP"}]}]
        }
    });
    assert_defaults(
        pod,
        &[
            ("/spec/restartPolicy", json!("Never")),
            ("/spec/dnsPolicy", json!("Default")),
            ("/spec/terminationGracePeriodSeconds", json!(0)),
            ("/spec/containers/0/imagePullPolicy", json!("IfNotPresent")),
            ("/spec/containers/0/ports/0/protocol", json!("UDP")),
        ],
    );
}

#[test]
fn host_network_pods_get_host_ports() {
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"hostNetwork": true, "containers": [{"name": "a", "image": "b", "ports": [{"containerPort": 53}]}]}});
    assert_defaults(pod, &[("/spec/containers/0/ports/0/hostPort", json!(53))]);
}

#[test]
fn templates_get_pod_spec_defaults_but_not_requests() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27", "resources": {"limits": {"cpu": "1"}}}]}}
        }
    });
    let out = defaulted(deployment);
    assert_eq!(out["spec"]["replicas"], json!(1));
    assert_eq!(
        out["spec"]["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
    );
    assert_eq!(out["spec"]["revisionHistoryLimit"], json!(10));
    assert_eq!(out["spec"]["progressDeadlineSeconds"], json!(600));
    assert_eq!(out["spec"].get("minReadySeconds"), None);
    let spec = &out["spec"]["template"]["spec"];
    assert_eq!(spec["restartPolicy"], json!("Always"));
    assert_eq!(
        spec["containers"][0]["imagePullPolicy"],
        json!("IfNotPresent")
    );
    assert_eq!(spec["containers"][0]["resources"].get("requests"), None);
}

#[test]
fn deployment_strategy_defaults() {
    let with = |strategy: Value| {
        let json = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}}, "strategy": strategy,
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}});
        defaulted(json)["spec"].clone()
    };
    assert_eq!(
        with(json!({"type": "Recreate"}))["strategy"],
        json!({"type": "Recreate"})
    );
    assert_eq!(
        with(json!({"rollingUpdate": {"maxSurge": 1}}))["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}})
    );
    assert_eq!(with(json!({}))["replicas"], json!(0));
}

#[test]
fn replica_set_defaults() {
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "r"},
        "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
    assert_defaults(
        rs,
        &[
            ("/spec/replicas", json!(1)),
            ("/spec/template/spec/dnsPolicy", json!("ClusterFirst")),
            (
                "/spec/template/spec/containers/0/imagePullPolicy",
                json!("IfNotPresent"),
            ),
        ],
    );
}

#[test]
fn service_defaults() {
    let service = |spec: Value| json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec});
    assert_defaults(
        service(
            json!({"ports": [{"port": 80}, {"port": 53, "protocol": "UDP", "targetPort": "dns"}]}),
        ),
        &[
            ("/spec/type", json!("ClusterIP")),
            ("/spec/sessionAffinity", json!("None")),
            ("/spec/internalTrafficPolicy", json!("Cluster")),
            ("/spec/ports/0/protocol", json!("TCP")),
            ("/spec/ports/0/targetPort", json!(80)),
            ("/spec/ports/1/targetPort", json!("dns")),
        ],
    );
    let out = defaulted(service(json!({"ports": [{"port": 80}]})));
    assert_eq!(out["spec"].get("externalTrafficPolicy"), None);
    assert_eq!(out["spec"].get("sessionAffinityConfig"), None);
    assert_defaults(
        service(
            json!({"type": "NodePort", "sessionAffinity": "ClientIP", "ports": [{"port": 80, "targetPort": 0}]}),
        ),
        &[
            ("/spec/externalTrafficPolicy", json!("Cluster")),
            (
                "/spec/sessionAffinityConfig",
                json!({"clientIP": {"timeoutSeconds": 10800}}),
            ),
            ("/spec/ports/0/targetPort", json!(80)),
        ],
    );
    let external = defaulted(service(
        json!({"type": "ExternalName", "externalName": "db.example.com"}),
    ));
    assert_eq!(external["spec"].get("internalTrafficPolicy"), None);
}

#[test]
fn cluster_object_defaults() {
    assert_defaults(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}),
        &[
            (
                "/metadata/labels",
                json!({"kubernetes.io/metadata.name": "shop"}),
            ),
            ("/spec/finalizers", json!(["kubernetes"])),
            ("/status/phase", json!("Active")),
        ],
    );
    assert_defaults(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"},
        "spec": {"finalizers": ["example.com/x"]}}),
        &[("/spec/finalizers", json!(["example.com/x", "kubernetes"]))],
    );
    assert_defaults(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}),
        &[("/type", json!("Opaque"))],
    );
    assert_defaults(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": "kubernetes.io/tls"}),
        &[("/type", json!("kubernetes.io/tls"))],
    );
    assert_defaults(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "e"},
        "addressType": "IPv4", "endpoints": [], "ports": [{"port": 80}]}),
        &[(
            "/ports/0",
            json!({"name": "", "port": 80, "protocol": "TCP"}),
        )],
    );
    assert_defaults(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"capacity": {"cpu": "4"}}}),
        &[("/status/allocatable", json!({"cpu": "4"}))],
    );
    let config_map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    assert_eq!(defaulted(config_map.clone()), object(config_map).to_json());
}

/// Manifests exercising every defaulted field, with values drawn at random.
fn manifests() -> impl Strategy<Value = Value> {
    let image = prop::sample::select(vec![
        "busybox",
        "busybox:latest",
        "busybox:1.36",
        "r:5000/b@sha256:00",
        "",
    ]);
    let maybe_string = |values: Vec<&'static str>| prop::option::of(prop::sample::select(values));
    let pod_spec = (
        image,
        maybe_string(vec!["Always", "Never", ""]),
        prop::option::of(0i32..3),
        prop::option::of(0i32..70000),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(image, policy, period, port, host_network, with_volume)| {
            let mut container = json!({"name": "c", "image": image,
                "resources": {"limits": {"cpu": "1"}},
                "livenessProbe": {"httpGet": {"port": 80}}});
            if let Some(policy) = policy {
                container["imagePullPolicy"] = json!(policy);
            }
            if let Some(period) = period {
                container["livenessProbe"]["periodSeconds"] = json!(period);
            }
            if let Some(port) = port {
                container["ports"] = json!([{"containerPort": port}]);
            }
            let mut spec = json!({"containers": [container], "hostNetwork": host_network});
            if with_volume {
                spec["volumes"] =
                    json!([{"name": "v"}, {"name": "s", "secret": {"secretName": "x"}}]);
            }
            spec
        });
    let service = (
        maybe_string(vec![
            "ClusterIP",
            "NodePort",
            "LoadBalancer",
            "ExternalName",
            "",
        ]),
        maybe_string(vec!["None", "ClientIP"]),
        prop::option::of(0i32..3),
    )
        .prop_map(|(kind, affinity, target)| {
            let mut spec = json!({"ports": [{"port": 80}]});
            if let Some(kind) = kind {
                spec["type"] = json!(kind);
            }
            if let Some(affinity) = affinity {
                spec["sessionAffinity"] = json!(affinity);
            }
            if let Some(target) = target {
                spec["ports"][0]["targetPort"] = json!(target);
            }
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": spec})
        });
    prop_oneof![
        pod_spec.clone().prop_map(|spec| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})),
        pod_spec.prop_map(|spec| json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": spec}}})),
        service,
        Just(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}, "spec": {"finalizers": ["a/b"]}})),
        Just(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "type": ""})),
        Just(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "e"},
            "addressType": "IPv4", "endpoints": [], "ports": [{}]})),
        Just(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n"}, "status": {"capacity": {"cpu": "1"}}})),
    ]
}

proptest! {
    #[test]
    fn defaulting_is_idempotent(json in manifests()) {
        let mut once = object(json);
        apply_defaults(&mut once);
        let mut twice = once.clone();
        apply_defaults(&mut twice);
        prop_assert_eq!(once, twice);
    }
}

#[test]
fn secret_string_data_is_merged_into_data() {
    let secret = defaulted(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "default"},
        "data": {"a": "b2xk", "b": "a2VwdA=="},
        "stringData": {"a": "new"},
    }));
    assert_eq!(secret["type"], "Opaque");
    // base64 of "new" and of "kept"; stringData itself is not stored.
    assert_eq!(secret["data"]["a"], "bmV3");
    assert_eq!(secret["data"]["b"], "a2VwdA==");
    assert!(secret.get("stringData").is_none(), "{secret}");
}
