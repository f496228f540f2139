//! Scenario 7: bad input end to end. A manifest with a broken field is
//! refused with the field named and nothing written; an image that exists
//! nowhere leaves its pod waiting with the pull's reason; a pod asking more
//! CPU than any node has stays Pending, saying why; a node joining with a
//! bad token or CA pin is refused. The running workload is not disturbed.

use std::time::Duration;

use orch_tests::cluster::{Cluster, http_get_in, spawn_in};

use super::support::{
    IMAGE, NODE_PORT, apply, binaries, one_cluster, spec, state_dir, tag, until_web_ready, web,
    web_pods, within,
};

fn pod_json(cluster: &Cluster, name: &str) -> Result<serde_json::Value, String> {
    let output = cluster.orchctl(&["get", "pod", name, "-o", "json"]);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

/// An agent joining from the client host as `node` with `token` and the
/// CA pin `hash`: (whether it ran, its stderr, whether it wrote a config).
fn try_join(cluster: &Cluster, node: &str, token: &str, hash: &str) -> (bool, String, bool) {
    let state = cluster.dir.join("joiner");
    let mut command = std::process::Command::new(&cluster.bins.orch_node);
    command
        .args(["--node-name", node, "--state-dir"])
        .arg(&state)
        .args(["--join", &cluster.replicas[0].api(), "--token", token])
        .args([
            "--ca-cert-hash",
            hash,
            "--metrics-bind-address",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = spawn_in(&cluster.client, command);
    // A join that wrongly succeeded would run an agent: stop it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let ran = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.success();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (ran, stderr, state.join("node.conf").exists())
}

#[test]
fn bad_input_gets_precise_errors_and_disturbs_nothing() {
    let _one = one_cluster();
    let tag = tag("mx");
    let (_root, dir) = state_dir("scenario-7");
    let cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(&cluster, &web(3));
    let before = until_web_ready(&cluster, 3, Duration::from_secs(120));

    // A broken field: refused by name, nothing written.
    let broken = cluster.dir.join("broken.yaml");
    std::fs::write(
        &broken,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: broken, namespace: default}}\nspec:\n  containers:\n  - name: c\n    image: {IMAGE}\n    ports: [{{containerPort: 70000}}]\n"
        ),
    )
    .expect("manifest");
    let refused = cluster.orchctl(&["apply", "-f", &broken.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a broken manifest was applied");
    assert!(
        stderr.contains("spec.containers[0].ports[0].containerPort") && stderr.contains("70000"),
        "the error does not name the field: {stderr}"
    );
    assert!(
        pod_json(&cluster, "broken").is_err(),
        "a refused pod was written"
    );

    // An image no registry has (a registry address where nothing listens,
    // on the node's own loopback): the pod waits, saying why.
    // A pod asking more CPU than any node has: Pending, and why.
    apply(
        &cluster,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: no-image, namespace: default}}\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5999/orch/missing:1\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: too-big, namespace: default}}\nspec:\n  containers:\n  - name: c\n    image: {IMAGE}\n    imagePullPolicy: Never\n    resources: {{requests: {{cpu: '64'}}}}\n"
        ),
    );
    let waiting = within(Duration::from_secs(60), "no-image's pull to fail", || {
        let pod = pod_json(&cluster, "no-image")?;
        let state = &pod["status"]["containerStatuses"][0]["state"]["waiting"];
        match state["reason"].as_str() {
            Some(reason @ ("ErrImagePull" | "ImagePullBackOff")) => Ok((
                reason.to_string(),
                state["message"].as_str().unwrap_or_default().to_string(),
            )),
            _ => Err(format!("{}", pod["status"])),
        }
    });
    assert!(
        waiting.1.contains("127.0.0.1:5999/orch/missing:1") && waiting.1.contains("refused"),
        "the pull's message does not name the image and the cause: {waiting:?}"
    );
    let unschedulable = within(
        Duration::from_secs(30),
        "too-big to be unschedulable",
        || {
            let pod = pod_json(&cluster, "too-big")?;
            let condition = pod["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "PodScheduled"))
                .cloned()
                .unwrap_or_default();
            if condition["status"] == "False" && condition["reason"] == "Unschedulable" {
                Ok((
                    pod["status"]["phase"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    condition["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ))
            } else {
                Err(format!("{}", pod["status"]))
            }
        },
    );
    assert_eq!(unschedulable.0, "Pending");
    assert!(
        unschedulable.1.contains("0/3 nodes are available")
            && unschedulable.1.contains("Insufficient cpu"),
        "{unschedulable:?}"
    );
    eprintln!(
        "broken field: {}\nmissing image: {waiting:?}\ntoo big: {unschedulable:?}",
        stderr.trim()
    );

    // Joining with an unknown token, an expired one, or a pin that is not
    // the cluster's CA: refused with the reason, no config written.
    let pin = cluster.join_args[5].clone();
    let expired = cluster.token_create(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let wrong_pin = format!("sha256:{}", "0".repeat(64));
    let valid = cluster.join_args[3].as_str();
    let taken = cluster.nodes[0].name.as_str();
    for (node, token, hash, reason) in [
        (
            "joiner",
            "abcdef.0123456789abcdef",
            pin.as_str(),
            "invalid bootstrap token",
        ),
        ("joiner", expired.trim(), pin.as_str(), "expired at"),
        (
            "joiner",
            valid,
            wrong_pin.as_str(),
            "does not match --ca-cert-hash",
        ),
        // A valid token never takes over a registered node's name.
        (taken, valid, pin.as_str(), "already registered"),
    ] {
        let (joined, stderr, written) = try_join(&cluster, node, token, hash);
        assert!(!joined, "joined with {token} {hash}");
        assert!(stderr.contains(reason), "{reason:?} not in: {stderr}");
        assert!(!written, "a refused join wrote a config");
        eprintln!(
            "join refused: {}",
            stderr.trim().lines().last().unwrap_or_default()
        );
    }

    // Nothing else disturbed: the same web pods, ready, answering.
    let after = web_pods(&cluster).expect("web pods");
    let mut names: Vec<&str> = after.iter().map(|p| p.name.as_str()).collect();
    let mut before_names: Vec<&str> = before.iter().map(|p| p.name.as_str()).collect();
    names.sort();
    before_names.sort();
    assert_eq!(names, before_names);
    assert!(after.iter().all(|p| p.ready), "{after:?}");
    for node in &cluster.nodes {
        let answer = http_get_in(&cluster.client, node.address, NODE_PORT, "/")
            .unwrap_or_else(|e| panic!("the NodePort at {}: {e}", node.name));
        assert!(before_names.contains(&answer.as_str()), "{answer} answered");
    }
}
