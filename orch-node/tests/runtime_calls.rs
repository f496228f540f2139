//! A libcontainer call that never returns (here a createRuntime hook that
//! sleeps) must not take its pod's shim with it: the shim kills the
//! runtime process and what it started after its call timeout, cleans up
//! the half-made container and goes on serving. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::shim::{Pod, busybox_layers, children, container_spec, start_shim, wait_exited};
use orch_node::runtime::shim::protocol::Request;
use orch_node::runtime::{bundle, rootfs, sandbox, spec};

#[test]
fn a_hung_runtime_call_is_killed_and_the_shim_serves_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layers = busybox_layers(dir.path());
    let pod_dir = dir.path().join("pod");
    let mut pod = Pod::create(pod_dir.clone(), "pod-hang");
    let shim = start_shim(&pod_dir, &["--runtime-call-timeout", "2"]);
    let client = &shim.client;
    let shim_pid = shim.child.id();

    let container_dir = pod_dir.join("containers").join("c");
    pod.containers.push(container_dir.clone());
    let root = rootfs::mount(&container_dir, &layers).expect("rootfs");
    let config = container_spec(root, &pod_dir, "c", &["true"]);
    let write_bundle = |hook: bool| {
        let mut bundle = serde_json::to_value(spec::runtime_spec(&config)).expect("spec");
        if hook {
            // Run by libcontainer inside the create call, which waits for
            // it (no hook timeout given).
            bundle["hooks"] = serde_json::json!({
                "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "600"]}]
            });
        }
        bundle::write(&container_dir, &bundle).expect("bundle");
    };
    let create = || {
        client.call(&Request::Create {
            id: "c-0".into(),
            bundle: container_dir.clone(),
            log: pod_dir.join("logs").join("c").join("0.log"),
            log_rotation: None,
        })
    };

    write_bundle(true);
    let asked = Instant::now();
    let refused = create().expect_err("a create stuck in its hook fails");
    let took = asked.elapsed();
    assert!(
        refused
            .to_string()
            .contains("orch-runtime did not answer within 2s"),
        "{refused}\nshim log:\n{}",
        std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
    );
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    // The runtime process, its hook and the container's init are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children(shim_pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children(shim_pid), Vec::<i32>::new());
    let sleepers: Vec<_> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x00600\x00"))
        .map(|p| p.file_name())
        .collect();
    assert!(sleepers.is_empty(), "hook processes left: {sleepers:?}");

    // The shim still serves, and the id is free again: the same container
    // without the hook runs.
    write_bundle(false);
    create().unwrap_or_else(|e| {
        panic!(
            "create after the timeout: {e}\nshim log:\n{}",
            std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
        )
    });
    client
        .call(&Request::Start { id: "c-0".into() })
        .expect("start");
    assert_eq!(wait_exited(client, "c-0").exit_code, Some(0));
    client
        .call(&Request::Delete { id: "c-0".into() })
        .expect("delete");
    drop(shim);
    drop(pod);
    assert!(!sandbox::exists(&pod_dir));
}
