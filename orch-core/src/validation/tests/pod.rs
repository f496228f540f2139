//! Containers: names, images, ports, env, resources, probes, mounts.

use serde_json::{Value, json};

use super::{assert_cases, case, errors, raw_errors, set};
use crate::names;
use crate::quantity::QUANTITY_REGEX;

pub(super) fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "busybox:1.36",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "MODE", "value": "batch"}],
                "resources": {
                    "requests": {"cpu": "250m", "memory": "64Mi"},
                    "limits": {"cpu": "1", "memory": "128Mi"}
                },
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"httpGet": {"port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}}
            }],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    })
}

const C: &str = "spec.containers[0]";

#[test]
fn container_names_and_images() {
    let base = pod();
    let label = names::is_dns1123_label("App").join("");
    let second = json!({"name": "app", "image": "busybox"});
    let cases = vec![
        case(
            &base,
            "/spec/containers/0/name",
            json!(""),
            format!("{C}.name: Required value"),
        ),
        case(
            &base,
            "/spec/containers/0/name",
            json!("App"),
            format!("{C}.name: Invalid value: \"App\": {label}"),
        ),
        case(
            &base,
            "/spec/containers/1",
            second.clone(),
            "spec.containers[1].name: Duplicate value: \"app\"",
        ),
        case(
            &base,
            "/spec/initContainers/0",
            second,
            "spec.initContainers[0].name: Duplicate value: \"app\"",
        ),
        case(
            &base,
            "/spec/containers/0/image",
            json!(""),
            format!("{C}.image: Required value"),
        ),
        case(
            &base,
            "/spec/containers/0/image",
            json!(" busybox"),
            format!(
                "{C}.image: Invalid value: \" busybox\": must not have leading or trailing whitespace"
            ),
        ),
        case(
            &base,
            "/spec/containers/0/imagePullPolicy",
            json!("Sometimes"),
            format!(
                "{C}.imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
            ),
        ),
        case(
            &base,
            "/spec/containers/0/terminationMessagePolicy",
            json!("Stdout"),
            format!(
                "{C}.terminationMessagePolicy: Unsupported value: \"Stdout\": supported values: \"File\", \"FallbackToLogsOnError\""
            ),
        ),
        case(
            &base,
            "/spec/containers/0/restartPolicy",
            json!("Always"),
            format!("{C}.restartPolicy: Forbidden: may not be set for non-init containers"),
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn no_containers() {
    let json = set(pod(), "/spec/containers", json!([]));
    assert_eq!(errors(json), vec!["spec.containers: Required value"]);
}

#[test]
fn container_ports() {
    let base = pod();
    let port = "/spec/containers/0/ports/0";
    let hyphens = names::is_iana_svc_name("web--ui").join("");
    let cases = vec![
        case(
            &base,
            &format!("{port}/containerPort"),
            json!(0),
            format!("{C}.ports[0].containerPort: Required value"),
        ),
        case(
            &base,
            &format!("{port}/containerPort"),
            json!(70000),
            format!(
                "{C}.ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ),
        ),
        case(
            &base,
            &format!("{port}/hostPort"),
            json!(70000),
            format!(
                "{C}.ports[0].hostPort: Invalid value: 70000: must be between 1 and 65535, inclusive"
            ),
        ),
        case(
            &base,
            &format!("{port}/protocol"),
            json!("ICMP"),
            format!(
                "{C}.ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
            ),
        ),
        case(
            &base,
            &format!("{port}/name"),
            json!("web--ui"),
            format!("{C}.ports[0].name: Invalid value: \"web--ui\": {hyphens}"),
        ),
        case(
            &base,
            "/spec/containers/0/ports/1",
            json!({"containerPort": 8080}),
            format!("{C}.ports[1]: Duplicate value: \"8080/TCP\""),
        ),
        case(
            &base,
            "/spec/containers/1",
            json!({"name": "side", "image": "busybox", "ports": [{"name": "http", "containerPort": 9090}]}),
            "spec.containers[1].ports[0].name: Duplicate value: \"http\"",
        ),
        case(
            &base,
            "/spec/containers/1",
            json!({"name": "side", "image": "busybox", "ports": [{"containerPort": 80, "hostPort": 80}, {"containerPort": 81, "hostPort": 80}]}),
            "spec.containers[1].ports[1].hostPort: Duplicate value: \"TCP//80\"",
        ),
    ];
    assert_cases(&base, cases);
    // The same number over another protocol is another port.
    let udp = set(
        pod(),
        "/spec/containers/0/ports/1",
        json!({"containerPort": 8080, "protocol": "UDP"}),
    );
    assert_eq!(errors(udp), Vec::<String>::new());
}

#[test]
fn environment() {
    let base = pod();
    let env = "/spec/containers/0/env/0";
    let bad_name = names::is_env_var_name("1MODE").join("");
    let bad_key = names::is_config_map_key("a/b").join("");
    let from = |source: Value| json!({"name": "X", "valueFrom": source});
    let cases = vec![
        case(
            &base,
            &format!("{env}/name"),
            json!(""),
            format!("{C}.env[0].name: Required value"),
        ),
        case(
            &base,
            &format!("{env}/name"),
            json!("1MODE"),
            format!("{C}.env[0].name: Invalid value: \"1MODE\": {bad_name}"),
        ),
        case(
            &base,
            env,
            from(json!({})),
            format!(
                "{C}.env[0].valueFrom: Invalid value: \"\": must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
            ),
        ),
        case(
            &base,
            env,
            json!({"name": "X", "value": "v", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}),
            format!(
                "{C}.env[0].valueFrom: Invalid value: \"\": may not be specified when `value` is not empty"
            ),
        ),
        case(
            &base,
            env,
            from(
                json!({"configMapKeyRef": {"name": "cm", "key": "k"}, "secretKeyRef": {"name": "s", "key": "k"}}),
            ),
            format!(
                "{C}.env[0].valueFrom: Invalid value: \"\": may not have more than one field specified at a time"
            ),
        ),
        case(
            &base,
            env,
            from(json!({"configMapKeyRef": {"name": "cm", "key": ""}})),
            format!("{C}.env[0].valueFrom.configMapKeyRef.key: Required value"),
        ),
        case(
            &base,
            env,
            from(json!({"configMapKeyRef": {"name": "", "key": "k"}})),
            format!("{C}.env[0].valueFrom.configMapKeyRef.name: Required value"),
        ),
        case(
            &base,
            env,
            from(json!({"secretKeyRef": {"name": "s", "key": "a/b"}})),
            format!("{C}.env[0].valueFrom.secretKeyRef.key: Invalid value: \"a/b\": {bad_key}"),
        ),
        case(
            &base,
            env,
            from(json!({"fieldRef": {"fieldPath": "spec.hostname"}})),
            format!(
                "{C}.env[0].valueFrom.fieldRef.fieldPath: Unsupported value: \"spec.hostname\": supported values: \"metadata.name\", \"metadata.namespace\", \"metadata.uid\", \"spec.nodeName\", \"spec.serviceAccountName\", \"status.hostIP\", \"status.hostIPs\", \"status.podIP\", \"status.podIPs\""
            ),
        ),
    ];
    assert_cases(&base, cases);
    let labels = set(
        pod(),
        env,
        from(json!({"fieldRef": {"fieldPath": "metadata.labels['app']"}})),
    );
    assert_eq!(errors(labels), Vec::<String>::new());
}

#[test]
fn resources() {
    let base = pod();
    let res = "/spec/containers/0/resources";
    let mut cases = vec![
        case(
            &base,
            &format!("{res}/limits/memory"),
            json!("12Qi"),
            format!(
                "{C}.resources.limits[memory]: Invalid value: \"12Qi\": quantities must match the regular expression '{QUANTITY_REGEX}'"
            ),
        ),
        case(
            &base,
            &format!("{res}/requests/cpu"),
            json!("-1"),
            format!(
                "{C}.resources.requests[cpu]: Invalid value: \"-1\": must be greater than or equal to 0"
            ),
        ),
        case(
            &base,
            &format!("{res}/requests/cpu"),
            json!("1500m"),
            format!(
                "{C}.resources.requests: Invalid value: \"1500m\": must be less than or equal to cpu limit of 1"
            ),
        ),
        case(
            &base,
            &format!("{res}/requests/memory"),
            json!("1Gi"),
            format!(
                "{C}.resources.requests: Invalid value: \"1Gi\": must be less than or equal to memory limit of 128Mi"
            ),
        ),
    ];
    // Extended resources: whole numbers, requests equal to limits.
    let gpu = set(
        base.clone(),
        &format!("{res}/limits"),
        json!({"cpu": "1", "memory": "128Mi", "example.com/gpu": "2"}),
    );
    let gpu = set(
        gpu,
        &format!("{res}/requests"),
        json!({"cpu": "250m", "memory": "64Mi", "example.com/gpu": "1"}),
    );
    cases.push((gpu, format!("{C}.resources.requests: Invalid value: \"1\": must be equal to example.com/gpu limit of 2")));
    assert_cases(&base, cases);
    // Not defaulted, so limits are not copied into requests.
    let half = set(
        base.clone(),
        &format!("{res}/limits"),
        json!({"cpu": "1", "memory": "128Mi", "example.com/gpu": "500m"}),
    );
    assert_eq!(
        raw_errors(half),
        vec![format!(
            "{C}.resources.limits[example.com/gpu]: Invalid value: 500m: must be an integer"
        )]
    );
    let json = set(pod(), &format!("{res}/limits/cpus"), json!("1"));
    assert_eq!(
        raw_errors(json),
        vec![format!(
            "{C}.resources.limits[cpus]: Invalid value: \"cpus\": must be a standard resource for containers"
        )]
    );
}

#[test]
fn probes() {
    let base = pod();
    let liveness = "/spec/containers/0/livenessProbe";
    let readiness = "/spec/containers/0/readinessProbe";
    let bad_port = names::is_iana_svc_name("no_such").join("");
    let cases = vec![
        case(
            &base,
            &format!("{readiness}/tcpSocket"),
            json!({"port": 8080}),
            format!(
                "{C}.readinessProbe.tcpSocket: Forbidden: may not specify more than 1 handler type"
            ),
        ),
        case(
            &base,
            liveness,
            json!({"periodSeconds": 5}),
            format!("{C}.livenessProbe: Required value: must specify a handler type"),
        ),
        case(
            &base,
            &format!("{liveness}/periodSeconds"),
            json!(-1),
            format!(
                "{C}.livenessProbe.periodSeconds: Invalid value: -1: must be greater than or equal to 1"
            ),
        ),
        case(
            &base,
            &format!("{liveness}/failureThreshold"),
            json!(-3),
            format!(
                "{C}.livenessProbe.failureThreshold: Invalid value: -3: must be greater than or equal to 1"
            ),
        ),
        case(
            &base,
            &format!("{liveness}/initialDelaySeconds"),
            json!(-5),
            format!(
                "{C}.livenessProbe.initialDelaySeconds: Invalid value: -5: must be greater than or equal to 0"
            ),
        ),
        case(
            &base,
            &format!("{liveness}/successThreshold"),
            json!(2),
            format!("{C}.livenessProbe.successThreshold: Invalid value: 2: must be 1"),
        ),
        case(
            &base,
            &format!("{liveness}/tcpSocket/port"),
            json!(0),
            format!(
                "{C}.livenessProbe.tcpSocket.port: Invalid value: 0: must be between 1 and 65535, inclusive"
            ),
        ),
        case(
            &base,
            &format!("{readiness}/httpGet/port"),
            json!("no_such"),
            format!("{C}.readinessProbe.httpGet.port: Invalid value: \"no_such\": {bad_port}"),
        ),
        case(
            &base,
            &format!("{readiness}/httpGet/scheme"),
            json!("FTP"),
            format!(
                "{C}.readinessProbe.httpGet.scheme: Unsupported value: \"FTP\": supported values: \"HTTP\", \"HTTPS\""
            ),
        ),
        case(
            &base,
            "/spec/initContainers/0",
            json!({"name": "init", "image": "busybox", "livenessProbe": {"exec": {"command": ["true"]}}}),
            "spec.initContainers[0].livenessProbe: Forbidden: may not be set for init containers without restartPolicy=Always",
        ),
        case(
            &base,
            "/spec/initContainers/0",
            json!({"name": "init", "image": "busybox", "restartPolicy": "Never"}),
            "spec.initContainers[0].restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ),
    ];
    assert_cases(&base, cases);
    // Sidecars (restartPolicy Always) may have probes; 0 means "default".
    let sidecar = json!({"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
        "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 0}});
    assert_eq!(
        errors(set(pod(), "/spec/initContainers/0", sidecar)),
        Vec::<String>::new()
    );
}

#[test]
fn volume_mounts() {
    let base = pod();
    let mount = "/spec/containers/0/volumeMounts";
    let cases = vec![
        case(
            &base,
            &format!("{mount}/0/name"),
            json!("nope"),
            format!("{C}.volumeMounts[0].name: Not found: \"nope\""),
        ),
        case(
            &base,
            &format!("{mount}/0/mountPath"),
            json!(""),
            format!("{C}.volumeMounts[0].mountPath: Required value"),
        ),
        case(
            &base,
            &format!("{mount}/0/mountPath"),
            json!("data"),
            format!(
                "{C}.volumeMounts[0].mountPath: Invalid value: \"data\": must be an absolute path"
            ),
        ),
        case(
            &base,
            &format!("{mount}/1"),
            json!({"name": "data", "mountPath": "/data"}),
            format!("{C}.volumeMounts[1].mountPath: Invalid value: \"/data\": must be unique"),
        ),
        case(
            &base,
            &format!("{mount}/0/subPath"),
            json!("../etc"),
            format!(
                "{C}.volumeMounts[0].subPath: Invalid value: \"../etc\": must not contain '..'"
            ),
        ),
        case(
            &base,
            &format!("{mount}/0/mountPropagation"),
            json!("Bidirectional"),
            format!(
                "{C}.volumeMounts[0].mountPropagation: Forbidden: Bidirectional mount propagation is available only to privileged containers"
            ),
        ),
    ];
    assert_cases(&base, cases);
}
