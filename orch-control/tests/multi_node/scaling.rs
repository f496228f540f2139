//! Scenario 3: scaling 6 -> 30 -> 2 runs every pod and every node's
//! service table follows within seconds. Scenario 5: the control-plane
//! leader killed in the middle of that scaling: the API answers again
//! within seconds, no object is lost and no pod is made twice.

use std::time::{Duration, Instant};

use orch_tests::cluster::Cluster;

use super::support::{
    apply, binaries, one_cluster, spec, state_dir, tag, until_tables_converge, until_web_ready,
    web, web_pods, within,
};

/// How long after every pod is ready each node's table may lag.
const TABLES_CONVERGE: Duration = Duration::from_secs(10);

fn scale(cluster: &Cluster, replicas: usize) {
    cluster.orchctl_ok(&[
        "scale",
        "deployment/web",
        "--replicas",
        &replicas.to_string(),
    ]);
}

#[test]
fn scaling_six_to_thirty_to_two_converges_on_every_node() {
    let _one = one_cluster();
    let tag = tag("ms");
    let (_root, dir) = state_dir("scenario-3");
    let cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(&cluster, &web(6));
    let pods = until_web_ready(&cluster, 6, Duration::from_secs(120));
    until_tables_converge(&cluster, &pods, TABLES_CONVERGE);
    for (replicas, limit) in [(30, Duration::from_secs(180)), (2, Duration::from_secs(60))] {
        let started = Instant::now();
        scale(&cluster, replicas);
        let pods = until_web_ready(&cluster, replicas, limit);
        let ready = started.elapsed();
        let converged = until_tables_converge(&cluster, &pods, TABLES_CONVERGE);
        if replicas == 30 {
            for node in &cluster.nodes {
                let there = pods.iter().filter(|pod| pod.node == node.name).count();
                assert!(there >= 5, "{} runs {there} of 30 pods", node.name);
            }
        }
        eprintln!(
            "scaled to {replicas}: every pod ready (or gone) {:.1}s after the scale, every node's table {:.1}s later",
            ready.as_secs_f64(),
            converged.as_secs_f64()
        );
    }
}

/// ConfigMaps written before the leader dies, to be found after.
fn config_maps(count: usize) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: before-{i}, namespace: default}}\ndata: {{index: \"{i}\"}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

fn names(cluster: &Cluster, kind: &str) -> Result<Vec<String>, String> {
    let output = cluster.orchctl(&["get", kind, "-o", "name"]);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn the_leader_dies_while_scaling_and_no_object_is_lost_or_doubled() {
    let _one = one_cluster();
    let tag = tag("ml");
    let (_root, dir) = state_dir("scenario-5");
    let mut spec = spec(&tag, 3, 3);
    // The controllers move to another replica within seconds too.
    spec.control_plane_args = [
        "--leader-elect-lease-duration-ms",
        "4000",
        "--leader-elect-renew-deadline-ms",
        "3000",
        "--leader-elect-retry-period-ms",
        "500",
    ]
    .map(String::from)
    .to_vec();
    let mut cluster = Cluster::start(binaries(), spec, &dir);
    apply(&cluster, &format!("{}---\n{}", web(6), config_maps(20)));
    until_web_ready(&cluster, 6, Duration::from_secs(120));
    let before_config_maps = names(&cluster, "configmaps").expect("configmaps");
    let leader = cluster.leader().expect("a leader");

    scale(&cluster, 30);
    // Killed as soon as the scale is committed: the controllers are
    // still creating pods.
    cluster.kill_replica(leader);
    let killed = Instant::now();
    let (reads_back, pods_then) = within(Duration::from_secs(15), "the API reading again", || {
        web_pods(&cluster).map(|pods| (killed.elapsed(), pods.len()))
    });
    let file = cluster.dir.join("after.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: after, namespace: default}\n",
    )
    .expect("manifest");
    let writes_back = within(Duration::from_secs(15), "the API writing again", || {
        let output = cluster.orchctl(&["apply", "-f", &file.to_string_lossy()]);
        if output.status.success() {
            Ok(killed.elapsed())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    });
    let new_leader = within(Duration::from_secs(15), "a new leader", || {
        cluster.leader().ok_or_else(|| "none yet".to_string())
    });
    assert_ne!(new_leader, leader);

    let pods = until_web_ready(&cluster, 30, Duration::from_secs(180));
    let ready = killed.elapsed();
    // No pod made twice: the count stays at 30 with one ReplicaSet.
    std::thread::sleep(Duration::from_secs(3));
    let after = web_pods(&cluster).expect("the web pods");
    assert_eq!(after.len(), 30, "{after:?}");
    let replica_sets = names(&cluster, "replicasets").expect("replicasets");
    assert_eq!(replica_sets.len(), 1, "{replica_sets:?}");
    // Nor made and then taken back: the ReplicaSet never deleted a pod.
    let events: serde_json::Value =
        serde_json::from_str(&cluster.orchctl_ok(&["get", "events", "-o", "json"]))
            .expect("events JSON");
    let deletions: Vec<&serde_json::Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["reason"] == "SuccessfulDelete")
        .collect();
    assert!(deletions.is_empty(), "pods made twice: {deletions:?}");
    // Nothing written before the kill is lost.
    let config_maps = names(&cluster, "configmaps").expect("configmaps");
    for name in &before_config_maps {
        assert!(config_maps.contains(name), "{name} was lost");
    }
    assert!(config_maps.contains(&"configmap/after".to_string()));
    let converged = until_tables_converge(&cluster, &pods, TABLES_CONVERGE);

    // The killed replica comes back as a follower and catches up.
    cluster.start_replica(leader);
    eprintln!(
        "leader (replica {}) killed during the scaling: reads answered after {:.1}s ({pods_then} pods then), writes after {:.1}s, 30 pods ready after {:.1}s, node tables {:.1}s later; replica {} leads now",
        leader + 1,
        reads_back.as_secs_f64(),
        writes_back.as_secs_f64(),
        ready.as_secs_f64(),
        converged.as_secs_f64(),
        new_leader + 1
    );
}
