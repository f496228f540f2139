//! Scenario 2: a rolling update under a steady request load through the
//! Service fails no request. New pods take traffic once ready; a deleted
//! pod's endpoint turns terminating at once, every node stops sending it
//! new connections, and its preStop sleep keeps it serving meanwhile.

use std::time::Duration;

use orch_tests::cluster::Cluster;

use super::support::{
    IMAGE, Load, NODE_PORT, apply, binaries, cluster_ip, one_cluster, spec, state_dir, tag,
    until_web_ready, web, within,
};

/// A pod (not behind the Service) requesting the ClusterIP in a loop,
/// keeping `<answered> <failed>` in /tmp/count (replaced by a rename, so
/// a reader never catches it truncated and empty) and logging each failure
/// (`timeout`, since Debian's busybox wget crashes on its own `-T`).
fn loader(cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: loader, namespace: default, labels: {{app: loader}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: loader
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, 'ok=0; failed=0; while true; do if timeout 5 wget -q -O /dev/null http://{cluster_ip}/; then ok=$((ok+1)); else failed=$((failed+1)); echo failed at $(date +%T); fi; echo $ok $failed > /tmp/count.new; mv /tmp/count.new /tmp/count; sleep 0.02; done']
"
    )
}

/// The loader's (answered, failed).
fn loader_count(cluster: &Cluster) -> Result<(u64, u64), String> {
    let output = cluster.orchctl(&["exec", "loader", "--", "cat", "/tmp/count"]);
    let text = String::from_utf8_lossy(&output.stdout);
    let mut numbers = text.split_whitespace().map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(answered)), Some(Ok(failed))) if output.status.success() => Ok((answered, failed)),
        _ => Err(format!(
            "{text:?} {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

#[test]
fn a_rolling_update_under_load_fails_no_request() {
    let _one = one_cluster();
    let tag = tag("mr");
    let (_root, dir) = state_dir("scenario-2");
    let cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(&cluster, &web(6));
    let old = until_web_ready(&cluster, 6, Duration::from_secs(120));
    let ip = cluster_ip(&cluster, "web");
    apply(&cluster, &loader(&ip));
    // Both loads answer before the update starts.
    within(
        Duration::from_secs(60),
        "the loader's first answers",
        || {
            loader_count(&cluster).and_then(|(answered, _)| {
                if answered > 0 {
                    Ok(())
                } else {
                    let log = cluster.orchctl(&["logs", "loader", "--tail", "5"]);
                    Err(format!(
                        "no answer yet: {}",
                        String::from_utf8_lossy(&log.stdout)
                    ))
                }
            })
        },
    );
    let targets = cluster
        .nodes
        .iter()
        .map(|node| (node.address, NODE_PORT))
        .collect();
    let load = Load::start(&cluster, targets, Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(2));
    let (loader_before, _) = loader_count(&cluster).expect("the loader's count");

    cluster.orchctl_ok(&["rollout", "restart", "deployment/web"]);
    cluster.orchctl_ok(&["rollout", "status", "deployment/web", "--timeout", "120s"]);
    // Every old pod gone (its preStop and grace included), six new ready.
    let new = until_web_ready(&cluster, 6, Duration::from_secs(60));
    for pod in &new {
        assert!(
            old.iter().all(|o| o.name != pod.name),
            "{} outlived the update",
            pod.name
        );
    }
    // The load goes on against the new pods alone for a while.
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop();
    let (loader_answered, loader_failed) = loader_count(&cluster).expect("the loader's count");
    let loader_log = cluster.orchctl(&["logs", "loader"]);
    eprintln!(
        "NodePort load: {} answered, {} failed; ClusterIP load from a pod: {} answered during the update, {} failed",
        report.answered,
        report.failures.len(),
        loader_answered - loader_before,
        loader_failed
    );
    assert!(
        report.failures.is_empty(),
        "requests to the NodePort failed during the update: {:?}\n{}",
        report.failures,
        cluster.logs()
    );
    assert_eq!(
        loader_failed,
        0,
        "requests to the ClusterIP failed during the update: {}",
        String::from_utf8_lossy(&loader_log.stdout)
    );
    assert!(
        loader_answered - loader_before > 50,
        "the ClusterIP load was not steady: {loader_answered} answers"
    );
    // Old pods answered, then new ones did: the load spanned the update.
    let answered_by = |pods: &[super::support::WebPod]| {
        pods.iter()
            .filter(|pod| report.answers.contains_key(&pod.name))
            .count()
    };
    assert!(
        answered_by(&old) > 0 && answered_by(&new) > 0,
        "the load did not span the update: {:?}",
        report.answers
    );
    assert!(report.answered > 200, "the NodePort load was not steady");
}
