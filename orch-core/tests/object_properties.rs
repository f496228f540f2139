//! Property tests: objects orch accepts survive being written out as YAML or
//! JSON and read back, in multi-document files, with no warnings.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, PodSpec, PodTemplateSpec, ResourceRequirements, Service, ServicePort,
    ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orch_core::manifest::{load_str, parse_str};
use orch_core::object::Object;
use proptest::prelude::*;

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        "([a-z0-9]{1,8}\\.){0,2}[a-z]{1,8}/[a-z][a-z0-9_.-]{0,10}[a-z]|[a-z][a-z0-9]{0,10}",
        "([A-Za-z0-9]([A-Za-z0-9_.-]{0,20}[A-Za-z0-9])?)?",
        1..4,
    )
}

fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..4000).prop_map(|m| format!("{m}m")),
        (1u32..64).prop_map(|g| format!("{g}Gi")),
        (1u32..1024).prop_map(|m| format!("{m}Mi")),
        (1u32..9).prop_map(|n| format!("{n}")),
    ]
}

prop_compose! {
    fn deployment()(
        name in dns_label(),
        namespace in dns_label(),
        replicas in 0i32..100,
        selector in labels(),
        extra in labels(),
        containers in prop::collection::btree_map(dns_label(), (1i32..65536, quantity()), 1..4),
    ) -> Object {
        let mut template_labels = extra;
        template_labels.extend(selector.clone());
        let containers = containers
            .into_iter()
            .enumerate()
            .map(|(i, (name, (port, cpu)))| Container {
                name,
                image: Some(format!("registry.local:5000/app{i}:v{i}")),
                ports: Some(vec![ContainerPort {
                    container_port: port,
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some([("cpu".to_string(), Quantity(cpu))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        Object::from(Deployment {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(selector),
                    ..Default::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(template_labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers,
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

prop_compose! {
    fn service()(
        name in dns_label().prop_filter("DNS-1035: starts with a letter", |n| n.starts_with(|c: char| c.is_ascii_lowercase())),
        selector in labels(),
        ports in prop::collection::btree_map(1i32..65536, prop::option::of(1i32..65536), 1..4),
    ) -> Object {
        let ports = ports
            .into_iter()
            .enumerate()
            .map(|(i, (port, target))| ServicePort {
                name: Some(format!("p{i}")),
                port,
                target_port: target.map(IntOrString::Int),
                ..Default::default()
            })
            .collect();
        Object::from(Service {
            metadata: ObjectMeta { name: Some(name), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: Some(ports),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn yaml_and_json_round_trip(objects in prop::collection::vec(prop_oneof![deployment(), service()], 1..5)) {
        let yaml: String = objects
            .iter()
            .map(|o| format!("---\n{}", serde_yaml_ng::to_string(o).expect("serializes")))
            .collect();
        let parsed = parse_str(&yaml, "generated.yaml").map_err(|e| TestCaseError::fail(e.to_string()))?;
        let decoded: Vec<&Object> = parsed.iter().map(|d| &d.object).collect();
        prop_assert_eq!(decoded, objects.iter().collect::<Vec<_>>());
        prop_assert!(parsed.iter().all(|d| d.warnings.is_empty()));

        for object in &objects {
            let json = serde_json::to_string_pretty(object).expect("serializes");
            let parsed = parse_str(&json, "generated.json").map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(&parsed[0].object, object);
        }

        // Everything generated is valid, and defaulting + validation keeps
        // the user's fields as they were written.
        let loaded = load_str(&yaml, "generated.yaml").map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (document, original) in loaded.iter().zip(&objects) {
            prop_assert_eq!(document.object.metadata(), original.metadata());
        }
    }
}

/// One deliberate defect and the field path validation must name for it.
#[derive(Clone, Debug)]
enum Defect {
    UppercaseName,
    NegativeReplicas(i32),
    PortOutOfRange(i32),
    SelectorMismatch,
    BadQuantity,
}

fn defect() -> impl Strategy<Value = Defect> {
    prop_oneof![
        Just(Defect::UppercaseName),
        (i32::MIN..0).prop_map(Defect::NegativeReplicas),
        prop_oneof![i32::MIN..1, 65536..i32::MAX].prop_map(Defect::PortOutOfRange),
        Just(Defect::SelectorMismatch),
        Just(Defect::BadQuantity),
    ]
}

fn break_deployment(object: &mut Object, defect: &Defect) -> &'static str {
    let Object::Deployment(deployment) = object else {
        unreachable!("the generator makes Deployments");
    };
    let spec = deployment.spec.as_mut().expect("generated with a spec");
    let pod = spec
        .template
        .spec
        .as_mut()
        .expect("generated with a pod spec");
    match defect {
        Defect::UppercaseName => {
            deployment.metadata.name = Some("Web".into());
            "metadata.name: Invalid value: \"Web\""
        }
        Defect::NegativeReplicas(n) => {
            spec.replicas = Some(*n);
            "spec.replicas: Invalid value"
        }
        Defect::PortOutOfRange(port) => {
            if let Some(ports) = pod.containers[0].ports.as_mut() {
                ports[0].container_port = *port;
            }
            "spec.template.spec.containers[0].ports[0].containerPort: Invalid value"
        }
        Defect::SelectorMismatch => {
            spec.selector.match_labels =
                Some([("orch-test".into(), "never-in-template".into())].into());
            "spec.template.metadata.labels: Invalid value"
        }
        Defect::BadQuantity => {
            pod.containers[0].resources = Some(ResourceRequirements {
                limits: Some([("memory".to_string(), Quantity("12Qi".into()))].into()),
                ..Default::default()
            });
            "spec.template.spec.containers[0].resources.limits[memory]: Invalid value: \"12Qi\""
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn validation_names_the_broken_field(mut object in deployment(), defect in defect()) {
        prop_assert!(orch_core::validation::validate(&object).is_ok());
        let expected = break_deployment(&mut object, &defect);
        let errors = orch_core::validation::validate(&object)
            .expect_err("a broken object must not validate")
            .to_string();
        prop_assert!(errors.contains(expected), "{:?}: `{}` not in {}", defect, expected, errors);
    }
}
