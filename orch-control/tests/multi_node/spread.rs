//! Scenario 1: a Deployment spreads over the nodes and answers by
//! ClusterIP from pods on every node and by NodePort from outside them.

use std::time::Duration;

use orch_tests::cluster::{Cluster, http_get_in};

use super::support::{
    NODE_PORT, apply, binaries, cluster_ip, one_cluster, spec, state_dir, tag, until_web_ready,
    web, within,
};

/// Scenario 1: 3 control-plane replicas and 3 nodes; a Deployment of 6
/// spreads over the nodes, its ClusterIP answers from pods on every node
/// and its NodePort from a host that is not a node, at every node.
#[test]
fn a_deployment_spreads_over_three_nodes_and_answers_by_cluster_ip_and_node_port() {
    let _one = one_cluster();
    let tag = tag("mn");
    let (_root, dir) = state_dir("scenario-1");
    let cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(&cluster, &web(6));
    let pods = until_web_ready(&cluster, 6, Duration::from_secs(120));
    let mut by_node = std::collections::BTreeMap::<String, Vec<String>>::new();
    for pod in &pods {
        by_node
            .entry(pod.node.clone())
            .or_default()
            .push(pod.name.clone());
    }
    let nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        by_node.keys().map(String::as_str).collect::<Vec<_>>(),
        nodes,
        "the pods are not spread over every node: {by_node:?}"
    );
    eprintln!("web pods by node: {by_node:?}");
    let names: Vec<&str> = pods.iter().map(|pod| pod.name.as_str()).collect();
    let cluster_ip = cluster_ip(&cluster, "web");
    let node_of = |name: &str| {
        pods.iter()
            .find(|pod| pod.name == name)
            .map(|pod| pod.node.clone())
    };
    // Each check retries until a pod on another node answers: the
    // balancing spans nodes, not only local backends.
    for (node, pods_there) in &by_node {
        let from = &pods_there[0];
        let answer = within(
            Duration::from_secs(30),
            &format!("the ClusterIP from pod {from} on {node}, answered from another node"),
            || {
                let output = cluster.orchctl(&[
                    "exec",
                    from,
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    &format!("http://{cluster_ip}/"),
                ]);
                let body = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if output.status.success()
                    && names.contains(&body.as_str())
                    && node_of(&body).as_ref() != Some(node)
                {
                    Ok(body)
                } else {
                    Err(format!(
                        "{body} {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    ))
                }
            },
        );
        eprintln!("http://{cluster_ip}/ from {from} on {node}: {answer}");
    }
    for node in &cluster.nodes {
        let answer = within(
            Duration::from_secs(30),
            &format!(
                "the NodePort at {} from the client host, answered from another node",
                node.name
            ),
            || {
                let answer = http_get_in(&cluster.client, node.address, NODE_PORT, "/")?;
                match node_of(&answer) {
                    Some(there) if there != node.name => Ok(answer),
                    _ => Err(format!("{answer} answered")),
                }
            },
        );
        assert!(
            names.contains(&answer.as_str()),
            "{answer} is not a web pod"
        );
        eprintln!(
            "NodePort {}:{NODE_PORT} from the client host: {answer}",
            node.address
        );
    }
}
