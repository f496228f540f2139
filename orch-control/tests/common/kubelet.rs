//! A fake kubelet for simulated nodes (Node objects a test writes, with no
//! agent behind them): pods bound to those nodes are reported Running and
//! Ready with an address of their own (10.<100 + node>.x.y), and pods being
//! deleted there are removed, as an agent would once their containers
//! stopped. Scheduler and controller tests need no real
//! containers; the node agent's own tests run real ones.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ListOptions};
use orch_core::object::{Kind, Object};

/// Runs until the returned task is aborted (dropping the handle does not
/// stop it: abort it, or let the test end).
pub fn start(client: ApiClient, nodes: &[&str]) -> tokio::task::JoinHandle<()> {
    let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    tokio::spawn(async move {
        let mut client = client;
        let mut next_host = 1u32;
        loop {
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
