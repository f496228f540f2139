//! A fake kubelet for simulated nodes (Node objects a test writes, with no
//! agent behind them): pods bound to those nodes are reported Running and
//! Ready with an address of their own (10.<100 + node>.x.y), pods being
//! deleted there are removed, as an agent would once their containers
//! stopped, and each node's Lease is renewed every second. Scheduler and controller tests need no real
//! containers; the node agent's own tests run real ones.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError, ListOptions};
use orch_core::object::{Kind, Object};

/// Runs until the returned task is aborted (dropping the handle does not
/// stop it: abort it, or let the test end).
pub fn start(client: ApiClient, nodes: &[&str]) -> tokio::task::JoinHandle<()> {
    let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    tokio::spawn(async move {
        let mut client = client;
        let mut next_host = 1u32;
        for round in 0u64.. {
            if round % 10 == 0 {
                for node in &nodes {
                    renew_lease(&mut client, node).await;
                }
            }
            if let Ok(list) = client.list(Kind::Pod, None, &ListOptions::default()).await {
                for item in list.items {
                    let Object::Pod(pod) = &item else { continue };
                    let node = pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .and_then(|n| nodes.iter().position(|ours| ours == n));
                    let Some(node) = node else {
                        continue;
                    };
                    if pod.metadata.deletion_timestamp.is_some() {
                        let _ = client
                            .delete(
                                Kind::Pod,
                                pod.metadata.namespace.as_deref(),
                                pod.metadata.name.as_deref().unwrap_or_default(),
                                &DeleteRequest {
                                    grace_period_seconds: Some(0),
                                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                                    ..DeleteRequest::default()
                                },
                            )
                            .await;
                        continue;
                    }
                    let running =
                        pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                    if !running {
                        let mut started = pod.as_ref().clone();
                        let status = started.status.get_or_insert_with(Default::default);
                        status.phase = Some("Running".into());
                        status.pod_ip = Some(format!(
                            "10.{}.{}.{}",
                            100 + node,
                            next_host / 250,
                            next_host % 250 + 1
                        ));
                        next_host += 1;
                        let now = Some(Time(orch_core::time::now()));
                        let conditions = status.conditions.get_or_insert_with(Vec::new);
                        conditions.retain(|c| c.type_ != "Ready");
                        conditions.push(PodCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            last_transition_time: now,
                            ..PodCondition::default()
                        });
                        let _ = client.update_status(&Object::from(started)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Creates or renews `kube-node-lease/<node>`, as an agent does.
async fn renew_lease(client: &mut ApiClient, node: &str) {
    let now = orch_core::time::now_micro();
    match client.get(Kind::Lease, Some("kube-node-lease"), node).await {
        Ok(Object::Lease(mut lease)) => {
            lease.spec.get_or_insert_with(Default::default).renew_time = Some(now);
            let _ = client.update(&Object::Lease(lease), false).await;
        }
        _ => {
            let lease = k8s_openapi::api::coordination::v1::Lease {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some(node.into()),
                    namespace: Some("kube-node-lease".into()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(node.into()),
                    lease_duration_seconds: Some(40),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            let _ = client.create(&Object::from(lease), false).await;
        }
    }
}

/// A node as an agent registers it: Ready (unless `ready` is false), with
/// `cpu` allocatable and the given labels, spec and extra status.
pub async fn register_node(
    client: &mut ApiClient,
    name: &str,
    cpu: &str,
    labels: &str,
    spec: &str,
    ready: bool,
) {
    let parse = |yaml: &str| {
        orch_core::manifest::parse_str(yaml, "test")
            .expect("manifest")
            .remove(0)
            .object
    };
    let node = parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{kubernetes.io/hostname: {name}{labels}}}\nspec: {{{spec}}}\n"
    ));
    client.create(&node, false).await.expect("create node");
    let status = parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  capacity: {{cpu: '{cpu}', memory: 8Gi, pods: '110'}}\n  allocatable: {{cpu: '{cpu}', memory: 8Gi, pods: '110'}}\n  conditions:\n  - {{type: Ready, status: '{}', reason: KubeletReady}}\n",
        if ready { "True" } else { "False" }
    ));
    let Object::Node(status) = status else {
        panic!("not a node")
    };
    // Node IPAM writes the node meanwhile: on a conflict, read again.
    for _ in 0..10 {
        let Object::Node(mut node) = client.get(Kind::Node, None, name).await.expect("get node")
        else {
            panic!("not a node")
        };
        node.status = status.status.clone();
        match client.update_status(&Object::Node(node)).await {
            Ok(_) => return,
            Err(ApiError::Conflict(_)) => continue,
            Err(error) => panic!("node status: {error}"),
        }
    }
    panic!("node {name}: status kept conflicting");
}
