use super::*;
use crate::manifest;
use crate::object::Object;
use k8s_openapi::api::core::v1::Pod;

fn pod(yaml: &str) -> PodSpec {
    let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{yaml}");
    match manifest::parse_str(&text, "test")
        .expect("pod manifest")
        .remove(0)
        .object
    {
        Object::Pod(pod) => {
            let pod: Pod = *pod;
            pod.spec.expect("spec")
        }
        other => panic!("not a pod: {other:?}"),
    }
}

fn node(labels: &[(&str, &str)]) -> Node {
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    node.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    node
}

fn taint(key: &str, value: &str, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: Some(value.into()).filter(|v: &String| !v.is_empty()),
        effect: effect.into(),
        time_added: None,
    }
}

#[test]
fn pod_requests_take_the_larger_of_running_and_init_containers() {
    let spec = pod(r#"
  initContainers:
  - {name: setup, image: x, resources: {requests: {cpu: "2", memory: 64Mi}}}
  - {name: proxy, image: x, restartPolicy: Always, resources: {requests: {cpu: 100m, memory: 32Mi}}}
  containers:
  - {name: a, image: x, resources: {requests: {cpu: 250m, memory: 128Mi}}}
  - {name: b, image: x, resources: {requests: {cpu: 250m, memory: 128Mi}}}
  overhead: {cpu: 10m}
"#);
    let requests = pod_requests(&spec);
    // cpu: init "2" alone (the sidecar starts after it) beats 600m running.
    assert_eq!(requests.milli_cpu, 2010);
    // memory: running 288Mi beats the init container's 64Mi.
    assert_eq!(requests.memory, 288 * 1024 * 1024);
    assert_eq!(requests.pods, 1);
}

#[test]
fn tolerations_match_like_kubernetes() {
    let gpu = taint("gpu", "true", NO_SCHEDULE);
    let equal = Toleration {
        key: Some("gpu".into()),
        operator: Some("Equal".into()),
        value: Some("true".into()),
        effect: Some(NO_SCHEDULE.into()),
        toleration_seconds: None,
    };
    assert!(tolerates(&equal, &gpu));
    let other_value = Toleration {
        value: Some("false".into()),
        ..equal.clone()
    };
    assert!(!tolerates(&other_value, &gpu));
    let exists_any = Toleration {
        operator: Some("Exists".into()),
        ..Toleration::default()
    };
    assert!(
        tolerates(&exists_any, &gpu),
        "empty key with Exists tolerates all"
    );
    let wrong_effect = Toleration {
        effect: Some(NO_EXECUTE.into()),
        ..equal.clone()
    };
    assert!(!tolerates(&wrong_effect, &gpu));
    let taints = [taint("soft", "", PREFER_NO_SCHEDULE), gpu.clone()];
    assert_eq!(
        untolerated_taint(&[], &taints, &[NO_SCHEDULE, NO_EXECUTE]).map(describe_taint),
        Some("{gpu: true}".to_string())
    );
    assert!(untolerated_taint(&[equal], &taints, &[NO_SCHEDULE, NO_EXECUTE]).is_none());
}

#[test]
fn node_selector_and_required_affinity_are_anded() {
    let spec = pod(r#"
  nodeSelector: {disk: ssd}
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms:
        - matchExpressions:
          - {key: cores, operator: Gt, values: ["8"]}
          - {key: zone, operator: NotIn, values: [a]}
        - matchFields:
          - {key: metadata.name, operator: In, values: [n1]}
      preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 30
        preference: {matchExpressions: [{key: zone, operator: In, values: [b]}]}
      - weight: 5
        preference: {matchExpressions: [{key: disk, operator: Exists}]}
  containers: [{name: a, image: x}]
"#);
    let fast = node(&[("disk", "ssd"), ("cores", "16"), ("zone", "b")]);
    assert!(required_affinity_matches(&spec, &fast));
    assert_eq!(preferred_affinity_weight(&spec, &fast), 35);
    // The second term matches by name even where the first fails.
    let small = node(&[("disk", "ssd"), ("cores", "4")]);
    assert!(required_affinity_matches(&spec, &small));
    let mut elsewhere = small.clone();
    elsewhere.metadata.name = Some("n2".into());
    assert!(!required_affinity_matches(&spec, &elsewhere));
    let hdd = node(&[("disk", "hdd"), ("cores", "16")]);
    assert!(
        !required_affinity_matches(&spec, &hdd),
        "nodeSelector is required too"
    );
}
