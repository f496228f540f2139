//! Deployments and ReplicaSets.

use serde_json::{Value, json};

use super::{assert_cases, case, errors, remove, set};
use crate::validation::apps::percent_msg;

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web", "tier": "frontend"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    })
}

#[test]
fn deployment_spec() {
    let base = deployment();
    let cases = vec![
        case(
            &base,
            "/spec/replicas",
            json!(-1),
            "spec.replicas: Invalid value: -1: must be greater than or equal to 0",
        ),
        case(
            &base,
            "/spec/template/metadata/labels",
            json!({"app": "api"}),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"api\"}: `selector` does not match template `labels`",
        ),
        case(
            &base,
            "/spec/selector",
            json!({}),
            "spec.selector: Invalid value: {}: empty selector is invalid for deployment",
        ),
        case(
            &base,
            "/spec/selector",
            json!({"matchExpressions": [{"key": "app", "operator": "Is", "values": ["web"]}]}),
            "spec.selector.matchExpressions[0].operator: Invalid value: \"Is\": not a valid selector operator",
        ),
        case(
            &base,
            "/spec/template/spec/restartPolicy",
            json!("Never"),
            "spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\"",
        ),
        case(
            &base,
            "/spec/template/spec/activeDeadlineSeconds",
            json!(60),
            "spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported",
        ),
        case(
            &base,
            "/spec/template/spec/containers/0/image",
            json!(""),
            "spec.template.spec.containers[0].image: Required value",
        ),
        case(
            &base,
            "/spec/revisionHistoryLimit",
            json!(-1),
            "spec.revisionHistoryLimit: Invalid value: -1: must be greater than or equal to 0",
        ),
        case(
            &base,
            "/spec/minReadySeconds",
            json!(-1),
            "spec.minReadySeconds: Invalid value: -1: must be greater than or equal to 0",
        ),
        (
            set(
                set(base.clone(), "/spec/minReadySeconds", json!(30)),
                "/spec/progressDeadlineSeconds",
                json!(30),
            ),
            "spec.progressDeadlineSeconds: Invalid value: 30: must be greater than minReadySeconds"
                .to_string(),
        ),
    ];
    assert_cases(&base, cases);
    // The selector may select fewer labels than the template has, by expression too.
    let exprs = set(
        deployment(),
        "/spec/selector",
        json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend", "backend"]}]}),
    );
    assert_eq!(errors(exprs), Vec::<String>::new());
}

#[test]
fn deployment_strategy() {
    let base = deployment();
    let rolling = |surge: Value, unavailable: Value| json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}});
    let s = "spec.strategy.rollingUpdate";
    let cases = vec![
        case(
            &base,
            "/spec/strategy",
            json!({"type": "BlueGreen"}),
            "spec.strategy.type: Unsupported value: \"BlueGreen\": supported values: \"Recreate\", \"RollingUpdate\"",
        ),
        case(
            &base,
            "/spec/strategy",
            json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
            "spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'",
        ),
        case(
            &base,
            "/spec/strategy",
            rolling(json!(0), json!(0)),
            format!("{s}.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"),
        ),
        case(
            &base,
            "/spec/strategy",
            rolling(json!("0%"), json!(0)),
            format!("{s}.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"),
        ),
        case(
            &base,
            "/spec/strategy",
            rolling(json!(1), json!("110%")),
            format!("{s}.maxUnavailable: Invalid value: 110%: must not be greater than 100%"),
        ),
        case(
            &base,
            "/spec/strategy",
            rolling(json!("abc"), json!(1)),
            format!("{s}.maxSurge: Invalid value: abc: {}", percent_msg()),
        ),
        case(
            &base,
            "/spec/strategy",
            rolling(json!(-1), json!(1)),
            format!("{s}.maxSurge: Invalid value: -1: must be greater than or equal to 0"),
        ),
    ];
    assert_cases(&base, cases);
    for ok in [
        rolling(json!("200%"), json!(0)),
        json!({"type": "Recreate"}),
        rolling(json!(1), json!("10%")),
    ] {
        assert_eq!(
            errors(set(deployment(), "/spec/strategy", ok)),
            Vec::<String>::new()
        );
    }
}

#[test]
fn replica_set() {
    let base = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "cache"},
        "spec": {
            "replicas": 2,
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["cache"]}]},
            "template": {
                "metadata": {"labels": {"app": "cache"}},
                "spec": {"containers": [{"name": "cache", "image": "redis"}]}
            }
        }
    });
    let cases = vec![
        case(
            &base,
            "/spec/replicas",
            json!(-2),
            "spec.replicas: Invalid value: -2: must be greater than or equal to 0",
        ),
        (
            remove(base.clone(), "/spec/template"),
            "spec.template: Required value".to_string(),
        ),
        case(
            &base,
            "/spec/template/metadata/labels/app",
            json!("db"),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"db\"}: `selector` does not match template `labels`",
        ),
        case(
            &base,
            "/spec/selector",
            json!({}),
            "spec.selector: Invalid value: {}: empty selector is invalid for replicaset",
        ),
        case(
            &base,
            "/spec/template/spec/containers/0/name",
            json!("cache_1"),
            format!(
                "spec.template.spec.containers[0].name: Invalid value: \"cache_1\": {}",
                crate::names::is_dns1123_label("cache_1").join("")
            ),
        ),
    ];
    assert_cases(&base, cases);
}
