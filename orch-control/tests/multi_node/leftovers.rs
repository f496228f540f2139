//! The harness's own promise, checked: nothing of a cluster outlives its
//! test, even one that panics.

use std::path::Path;
use std::time::Duration;

use orch_tests::cluster::{Cluster, leftovers};

use super::support::{apply, binaries, one_cluster, spec, state_dir, tag, web, web_pods, within};

/// The harness's own promise: a test that panics with a cluster running
/// (a pod's containers, mounts and cgroups included) leaves nothing of it
/// behind.
#[test]
fn a_cluster_leaves_nothing_behind_even_when_its_test_panics() {
    let _one = one_cluster();
    let tag = tag("mz");
    let (_root, dir) = state_dir("leftovers");
    let started = {
        let dir = dir.clone();
        let tag = tag.clone();
        std::panic::catch_unwind(move || {
            let cluster = Cluster::start(binaries(), spec(&tag, 1, 1), &dir);
            apply(&cluster, &web(1));
            within(Duration::from_secs(90), "a ready web pod", || {
                let pods = web_pods(&cluster)?;
                if pods.iter().any(|pod| pod.ready) {
                    Ok(())
                } else {
                    Err(format!("{pods:?}"))
                }
            });
            // The check below finds each kind of thing while it is there.
            let running = leftovers(&tag, &dir).join("\n");
            for kind in [
                "network namespace",
                "bpffs pins",
                "service cgroup",
                "cgroup ",
                "mount ",
                "process ",
                "directory",
            ] {
                assert!(
                    running.contains(kind),
                    "leftovers() does not see the running cluster's {kind}:\n{running}"
                );
            }
            panic!("failing on purpose with the cluster running");
        })
    };
    let panic = started.expect_err("the closure panics");
    assert_eq!(leftovers(&tag, Path::new(&dir)), Vec::<String>::new());
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert_eq!(
        message, "failing on purpose with the cluster running",
        "the cluster did not come up"
    );
}
