//! Scenario 6: a backup (`orchctl snapshot save`), the whole control
//! plane destroyed, a new one restored from the backup: the workloads are
//! all there, the nodes reconnect (their watches relist: the restored
//! store's revisions moved on) and act on what is written after.

use std::time::{Duration, Instant};

use orch_tests::cluster::{Cluster, http_get_in};

use super::support::{
    NODE_PORT, apply, binaries, one_cluster, spec, state_dir, tag, until_web_ready, web, within,
};

fn config_map(name: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: default}}\n")
}

#[test]
fn a_control_plane_restored_from_a_backup_keeps_the_workloads_and_the_nodes() {
    let _one = one_cluster();
    let tag = tag("mb");
    let (_root, dir) = state_dir("scenario-6");
    let mut cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(
        &cluster,
        &format!("{}---\n{}", web(6), config_map("in-backup")),
    );
    let before = until_web_ready(&cluster, 6, Duration::from_secs(120));

    let backup = cluster.dir.join("backup.snap");
    let raft: Vec<String> = cluster.replicas.iter().map(|r| r.raft()).collect();
    cluster.orchctl_ok(&[
        "snapshot",
        "save",
        &backup.to_string_lossy(),
        "--server",
        &raft.join(","),
    ]);
    // Written after the backup: the restore goes back to before it.
    apply(&cluster, &config_map("after-backup"));

    let replaced_at = orch_core::time::now();
    cluster.replace_control_plane(&backup);
    let restored = Instant::now();
    // Every agent renews its Lease with the new control plane.
    let nodes_back = within(
        Duration::from_secs(60),
        "every node's Lease renewed",
        || {
            for node in &cluster.nodes {
                let output = cluster.orchctl(&[
                    "get",
                    "lease",
                    &node.name,
                    "-n",
                    "kube-node-lease",
                    "-o",
                    "json",
                ]);
                let lease: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .map_err(|e| format!("{}: {e}", node.name))?;
                let renewed: Option<k8s_openapi::jiff::Timestamp> = lease["spec"]["renewTime"]
                    .as_str()
                    .and_then(|t| t.parse().ok());
                if renewed.is_none_or(|t| t <= replaced_at) {
                    return Err(format!("{} last renewed {renewed:?}", node.name));
                }
            }
            Ok(restored.elapsed())
        },
    );
    for index in 0..cluster.nodes.len() {
        cluster.wait_node_ready(index);
    }
    // The same pods: their containers ran on through the outage.
    let after = until_web_ready(&cluster, 6, Duration::from_secs(60));
    let names = |pods: &[super::support::WebPod]| {
        let mut names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
        names.sort();
        names
    };
    assert_eq!(names(&after), names(&before));
    let config_maps = cluster.orchctl_ok(&["get", "configmaps", "-o", "name"]);
    assert!(config_maps.contains("configmap/in-backup"), "{config_maps}");
    assert!(
        !config_maps.contains("configmap/after-backup"),
        "{config_maps}"
    );
    for node in &cluster.nodes {
        let answer = within(
            Duration::from_secs(30),
            &format!("the NodePort at {}", node.name),
            || http_get_in(&cluster.client, node.address, NODE_PORT, "/"),
        );
        assert!(after.iter().any(|p| p.name == answer), "{answer} answered");
    }
    // The nodes act on what the new control plane says.
    cluster.orchctl_ok(&["scale", "deployment/web", "--replicas", "9"]);
    let scaled = until_web_ready(&cluster, 9, Duration::from_secs(90));
    for node in &cluster.nodes {
        assert!(
            scaled.iter().any(|p| p.node == node.name),
            "{} runs none of the 9 pods",
            node.name
        );
    }
    eprintln!(
        "control plane restored from a backup: every node's Lease renewed {:.1}s after, scaled to 9 after {:.1}s",
        nodes_back.as_secs_f64(),
        restored.elapsed().as_secs_f64()
    );
}
