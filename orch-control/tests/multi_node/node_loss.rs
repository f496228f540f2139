//! Scenario 4: a node lost (its agent killed with SIGKILL, its link cut):
//! after the grace the node is Unknown, its pods stop being Ready (the
//! Services drop them) and are evicted, their replacements run on the
//! other nodes, and the Service answers from those. The node back, its
//! agent finishes the evicted pods.

use std::time::{Duration, Instant};

use orch_tests::cluster::{Cluster, http_get_in};
use orch_tests::netns::run;

use super::support::{
    NODE_PORT, WebPod, apply, binaries, one_cluster, spec, state_dir, tag,
    until_tables_converge_on, until_web_ready, web, web_pods, within,
};

#[test]
fn a_lost_nodes_pods_run_again_elsewhere_and_the_service_keeps_answering() {
    let _one = one_cluster();
    let tag = tag("mk");
    let (_root, dir) = state_dir("scenario-4");
    let mut spec = spec(&tag, 3, 3);
    // A node is given up on 4 s after its last renewal (renewed every
    // second), its pods 3 s after that.
    spec.control_plane_args = [
        "--node-monitor-grace-period",
        "4",
        "--default-unreachable-toleration-seconds",
        "3",
        "--default-not-ready-toleration-seconds",
        "3",
    ]
    .map(String::from)
    .to_vec();
    spec.node_args = ["--node-lease-duration-seconds", "4"]
        .map(String::from)
        .to_vec();
    let mut cluster = Cluster::start(binaries(), spec, &dir);
    apply(&cluster, &web(6));
    let before = until_web_ready(&cluster, 6, Duration::from_secs(120));
    let lost = cluster.nodes.len() - 1;
    let lost_name = cluster.nodes[lost].name.clone();
    let lost_pods: Vec<&WebPod> = before.iter().filter(|p| p.node == lost_name).collect();
    assert!(!lost_pods.is_empty(), "no pod on {lost_name}: {before:?}");

    cluster.kill_node(lost);
    set_uplink(&cluster, lost, "down");
    let cut = Instant::now();
    // Its pods leave the Services before they are evicted.
    let not_ready = within(Duration::from_secs(30), "the lost pods not Ready", || {
        let pods = web_pods(&cluster)?;
        let ready: Vec<&str> = pods
            .iter()
            .filter(|p| p.node == lost_name && p.ready)
            .map(|p| p.name.as_str())
            .collect();
        if ready.is_empty() {
            Ok(cut.elapsed())
        } else {
            Err(format!("{ready:?} still Ready"))
        }
    });
    // Six ready pods again, on the nodes that are left.
    let replaced = within(Duration::from_secs(90), "six ready pods elsewhere", || {
        let pods = web_pods(&cluster)?;
        let serving: Vec<WebPod> = pods
            .into_iter()
            .filter(|p| p.node != lost_name && p.ready && !p.terminating)
            .collect();
        if serving.len() == 6 {
            Ok((cut.elapsed(), serving))
        } else {
            Err(format!("{} ready elsewhere", serving.len()))
        }
    });
    let (replaced_after, serving) = replaced;
    let converged = until_tables_converge_on(
        &cluster,
        &[lost_name.as_str()],
        &serving,
        Duration::from_secs(10),
    );
    // The Service answers at every node left, from the pods there.
    let survivors: Vec<_> = cluster.nodes[..lost].iter().map(|n| n.address).collect();
    for round in 0..30 {
        let address = survivors[round % survivors.len()];
        let answer = http_get_in(&cluster.client, address, NODE_PORT, "/")
            .unwrap_or_else(|e| panic!("request {round} to {address}:{NODE_PORT}: {e}"));
        assert!(
            serving.iter().any(|p| p.name == answer),
            "{answer} answered, not a pod of the nodes left"
        );
    }
    eprintln!(
        "{lost_name} lost: its pods not Ready after {:.1}s, six ready elsewhere after {:.1}s, tables {:.1}s later",
        not_ready.as_secs_f64(),
        replaced_after.as_secs_f64(),
        converged.as_secs_f64()
    );

    // Back: the agent finishes what was evicted (stops the containers,
    // removes the pods) and the node is Ready again.
    set_uplink(&cluster, lost, "up");
    cluster.start_node(lost);
    cluster.wait_node_ready(lost);
    within(Duration::from_secs(60), "the evicted pods gone", || {
        let left: Vec<String> = web_pods(&cluster)?
            .into_iter()
            .filter(|p| lost_pods.iter().any(|l| l.name == p.name))
            .map(|p| p.name)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?} left"))
        }
    });
    until_web_ready(&cluster, 6, Duration::from_secs(30));
}

/// Takes node `index`'s link to the LAN `down` or `up`.
fn set_uplink(cluster: &Cluster, index: usize, state: &str) {
    run(
        "ip",
        &[
            "-n",
            &cluster.nodes[index].netns,
            "link",
            "set",
            "eth0",
            state,
        ],
    );
}
