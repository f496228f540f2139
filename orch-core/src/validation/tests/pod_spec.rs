//! Pod-level fields: volumes, policies, scheduling constraints.

use serde_json::json;

use super::pod::pod;
use super::{assert_cases, case, errors, raw_errors, set};
use crate::names;

#[test]
fn volumes() {
    let base = pod();
    let extra = "/spec/volumes/1";
    let label = names::is_dns1123_label("Cache").join("");
    let cases = vec![
        case(
            &base,
            extra,
            json!({"name": "data", "emptyDir": {}}),
            "spec.volumes[1].name: Duplicate value: \"data\"",
        ),
        case(
            &base,
            extra,
            json!({"name": "Cache", "emptyDir": {}}),
            format!("spec.volumes[1].name: Invalid value: \"Cache\": {label}"),
        ),
        case(
            &base,
            extra,
            json!({"name": "", "emptyDir": {}}),
            "spec.volumes[1].name: Required value",
        ),
        case(
            &base,
            extra,
            json!({"name": "both", "emptyDir": {}, "hostPath": {"path": "/x"}}),
            "spec.volumes[1].hostPath: Forbidden: may not specify more than 1 volume type",
        ),
        case(
            &base,
            extra,
            json!({"name": "host", "hostPath": {"path": ""}}),
            "spec.volumes[1].hostPath.path: Required value",
        ),
        case(
            &base,
            extra,
            json!({"name": "host", "hostPath": {"path": "/var/../etc"}}),
            "spec.volumes[1].hostPath.path: Invalid value: \"/var/../etc\": must not contain '..'",
        ),
        case(
            &base,
            extra,
            json!({"name": "host", "hostPath": {"path": "/x", "type": "Dir"}}),
            "spec.volumes[1].hostPath.type: Unsupported value: \"Dir\": supported values: \"\", \"BlockDevice\", \"CharDevice\", \"Directory\", \"DirectoryOrCreate\", \"File\", \"FileOrCreate\", \"Socket\"",
        ),
        case(
            &base,
            extra,
            json!({"name": "tmp", "emptyDir": {"sizeLimit": "1Gb"}}),
            format!(
                "spec.volumes[1].emptyDir.sizeLimit: Invalid value: \"1Gb\": {}",
                crate::quantity::QuantityError::FormatWrong
            ),
        ),
        case(
            &base,
            extra,
            json!({"name": "tmp", "emptyDir": {"sizeLimit": "-1Gi"}}),
            "spec.volumes[1].emptyDir.sizeLimit: Forbidden: SizeLimit field must be a valid resource quantity",
        ),
        case(
            &base,
            extra,
            json!({"name": "cm", "configMap": {"name": ""}}),
            "spec.volumes[1].configMap.name: Required value",
        ),
        case(
            &base,
            extra,
            json!({"name": "cm", "configMap": {"name": "c", "defaultMode": 512}}),
            "spec.volumes[1].configMap.defaultMode: Invalid value: 512: must be a number between 0 and 0777 (octal), both inclusive",
        ),
        case(
            &base,
            extra,
            json!({"name": "cm", "configMap": {"name": "c", "items": [{"key": "", "path": "a"}]}}),
            "spec.volumes[1].configMap.items[0].key: Required value",
        ),
        case(
            &base,
            extra,
            json!({"name": "cm", "configMap": {"name": "c", "items": [{"key": "k", "path": "/abs"}]}}),
            "spec.volumes[1].configMap.items[0].path: Invalid value: \"/abs\": must be a relative path",
        ),
        case(
            &base,
            extra,
            json!({"name": "s", "secret": {}}),
            "spec.volumes[1].secret.secretName: Required value",
        ),
    ];
    assert_cases(&base, cases);
    // Other Kubernetes sources are accepted (the field registry warns).
    let nfs = set(
        pod(),
        "/spec/volumes/1",
        json!({"name": "share", "nfs": {"server": "nfs", "path": "/x"}}),
    );
    assert_eq!(errors(nfs), Vec::<String>::new());
    // Without defaulting, a volume needs a source; defaulting makes it an emptyDir.
    let bare = set(pod(), "/spec/volumes/1", json!({"name": "scratch"}));
    assert_eq!(
        raw_errors(bare.clone()),
        vec!["spec.volumes[1]: Required value: must specify a volume type"]
    );
    assert_eq!(errors(bare), Vec::<String>::new());
}

#[test]
fn an_invalid_volume_cannot_be_mounted() {
    let json = set(pod(), "/spec/volumes/0/hostPath", json!({"path": "/x"}));
    assert_eq!(
        errors(json),
        vec![
            "spec.volumes[0].hostPath: Forbidden: may not specify more than 1 volume type",
            "spec.containers[0].volumeMounts[0].name: Not found: \"data\"",
        ]
    );
}

#[test]
fn pod_level_fields() {
    let base = pod();
    let label = names::is_label_value("a b").join("");
    let cases = vec![
        case(
            &base,
            "/spec/restartPolicy",
            json!("Sometimes"),
            "spec.restartPolicy: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\"",
        ),
        case(
            &base,
            "/spec/dnsPolicy",
            json!("Google"),
            "spec.dnsPolicy: Unsupported value: \"Google\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\"",
        ),
        case(
            &base,
            "/spec/dnsPolicy",
            json!("None"),
            "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None",
        ),
        case(
            &base,
            "/spec/terminationGracePeriodSeconds",
            json!(-1),
            "spec.terminationGracePeriodSeconds: Invalid value: -1: must be greater than or equal to 0",
        ),
        case(
            &base,
            "/spec/activeDeadlineSeconds",
            json!(0),
            "spec.activeDeadlineSeconds: Invalid value: 0: must be between 1 and 2147483647, inclusive",
        ),
        case(
            &base,
            "/spec/nodeSelector",
            json!({"disk": "a b"}),
            format!("spec.nodeSelector: Invalid value: \"a b\": {label}"),
        ),
    ];
    assert_cases(&base, cases);
}

#[test]
fn host_network_ports() {
    // A pod on the host network gets its host ports defaulted, so it is valid.
    let host_network = set(pod(), "/spec/hostNetwork", json!(true));
    assert_eq!(errors(host_network.clone()), Vec::<String>::new());
    assert_eq!(
        raw_errors(host_network.clone()),
        vec![
            "spec.containers[0].ports[0].hostPort: Invalid value: 0: must match `containerPort` when `hostNetwork` is true"
        ]
    );
    let mismatch = set(
        host_network,
        "/spec/containers/0/ports/0/hostPort",
        json!(9090),
    );
    assert_eq!(
        errors(mismatch),
        vec![
            "spec.containers[0].ports[0].hostPort: Invalid value: 9090: must match `containerPort` when `hostNetwork` is true"
        ]
    );
}

#[test]
fn tolerations() {
    let base = set(
        pod(),
        "/spec/tolerations",
        json!([{"key": "dedicated", "operator": "Equal", "value": "batch", "effect": "NoSchedule"}]),
    );
    let t = "/spec/tolerations/0";
    let cases = vec![
        case(
            &base,
            t,
            json!({"key": "dedicated", "operator": "Exists", "value": "x"}),
            "spec.tolerations[0].operator: Invalid value: \"x\": value must be empty when `operator` is 'Exists'",
        ),
        case(
            &base,
            t,
            json!({"key": "k", "operator": "Like"}),
            "spec.tolerations[0].operator: Unsupported value: \"Like\": supported values: \"Equal\", \"Exists\"",
        ),
        case(
            &base,
            t,
            json!({"operator": "Equal", "value": "x"}),
            "spec.tolerations[0].operator: Invalid value: \"Equal\": operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        ),
        case(
            &base,
            t,
            json!({"key": "k", "effect": "Never"}),
            "spec.tolerations[0].effect: Unsupported value: \"Never\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\"",
        ),
        case(
            &base,
            t,
            json!({"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30}),
            "spec.tolerations[0].effect: Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set",
        ),
    ];
    assert_cases(&base, cases);
    let all = set(
        pod(),
        "/spec/tolerations",
        json!([{"operator": "Exists"}, {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]),
    );
    assert_eq!(errors(all), Vec::<String>::new());
}

#[test]
fn affinity() {
    let base = set(
        pod(),
        "/spec/affinity",
        json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                    {"key": "cpus", "operator": "Gt", "values": ["4"]}
                ]}]},
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 50, "preference": {"matchExpressions": [{"key": "zone", "operator": "Exists"}]}}]
            },
            "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}
            ]}
        }),
    );
    let required = "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms/0/matchExpressions";
    let r = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions";
    let cases = vec![
        case(
            &base,
            &format!("{required}/0/values"),
            json!([]),
            format!(
                "{r}[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            ),
        ),
        case(
            &base,
            &format!("{required}/0/operator"),
            json!("Near"),
            format!("{r}[0].operator: Invalid value: \"Near\": not a valid selector operator"),
        ),
        case(
            &base,
            &format!("{required}/1/values"),
            json!(["four"]),
            format!("{r}[1].values[0]: Invalid value: \"four\": must be an integer"),
        ),
        case(
            &base,
            &format!("{required}/1/values"),
            json!(["1", "2"]),
            format!(
                "{r}[1].values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'"
            ),
        ),
        case(
            &base,
            &format!("{required}/0/operator"),
            json!("Exists"),
            format!(
                "{r}[0].values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            ),
        ),
        case(
            &base,
            "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
            json!([]),
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: Required value: must have at least one node selector term",
        ),
        case(
            &base,
            "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution/0/weight",
            json!(0),
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 0: must be in the range 1-100",
        ),
        case(
            &base,
            "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/0/topologyKey",
            json!(""),
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Required value: can not be empty",
        ),
        case(
            &base,
            "/spec/affinity/podAntiAffinity/requiredDuringSchedulingIgnoredDuringExecution/0/labelSelector/matchExpressions",
            json!([{"key": "app", "operator": "In"}]),
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        case(
            &base,
            "/spec/affinity/podAffinity/preferredDuringSchedulingIgnoredDuringExecution/0",
            json!({"weight": 101, "podAffinityTerm": {"topologyKey": "zone"}}),
            "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight: Invalid value: 101: must be in the range 1-100",
        ),
    ];
    assert_cases(&base, cases);
}
