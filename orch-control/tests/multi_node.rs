//! The whole cluster on several hosts: control-plane replicas and node
//! agents as real processes, each host a network namespace on one LAN
//! (`orch_tests::cluster`), real containers from images built on the
//! nodes. Issue 8's scenarios grow here.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orch_tests::cluster::{Binaries, Cluster, ClusterSpec, http_get_in, is_ready, leftovers};

const IMAGE: &str = "orch.test/web:1";
const NODE_PORT: u16 = 30080;

fn binaries() -> Binaries {
    let orch_control = PathBuf::from(env!("CARGO_BIN_EXE_orch-control"));
    Binaries {
        orch_node: orch_control.with_file_name("orch-node"),
        orchctl: PathBuf::from(env!("CARGO_BIN_EXE_orchctl")),
        orch_control,
    }
}

fn spec(tag: &str, replicas: usize, nodes: usize) -> ClusterSpec {
    ClusterSpec {
        tag: tag.to_string(),
        replicas,
        nodes,
        busybox_images: vec![IMAGE.to_string()],
        control_plane_args: Vec::new(),
        node_args: Vec::new(),
    }
}

/// One cluster at a time: on the 2-core CI machine two would starve
/// each other (and every test's namespaces stay apart anyway).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Deployment of `replicas` busybox httpd pods answering with their
/// names, a ClusterIP Service and a NodePort Service in front of them.
fn web(replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 2
      containers:
      - name: httpd
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
        readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web-nodeport, namespace: default}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http, nodePort: {NODE_PORT}}}]
"
    )
}

/// The web pods: (name, node, ready).
fn web_pods(cluster: &Cluster) -> Vec<(String, String, bool)> {
    let json = cluster.orchctl_ok(&["get", "pods", "-l", "app=web", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("orchctl's JSON");
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|pod| {
                    (
                        pod["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        pod["spec"]["nodeName"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        is_ready(pod),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Retries `check` until it answers or `limit` passes.
fn within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "{what} within {limit:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn apply(cluster: &Cluster, yaml: &str) {
    let file = cluster.dir.join("manifest.yaml");
    std::fs::write(&file, yaml).expect("manifest");
    cluster.orchctl_ok(&["apply", "-f", &file.to_string_lossy()]);
}

fn state_dir(test: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join(test);
    std::fs::create_dir_all(&dir).expect("state dir");
    (root, dir)
}

/// Scenario 1: 3 control-plane replicas and 3 nodes; a Deployment of 6
/// spreads over the nodes, its ClusterIP answers from pods on every node
/// and its NodePort from a host that is not a node, at every node.
#[test]
fn a_deployment_spreads_over_three_nodes_and_answers_by_cluster_ip_and_node_port() {
    let _one = one_cluster();
    let tag = format!("mn{}", std::process::id());
    let (_root, dir) = state_dir("scenario-1");
    let cluster = Cluster::start(binaries(), spec(&tag, 3, 3), &dir);
    apply(&cluster, &web(6));
    let pods = within(Duration::from_secs(120), "6 ready web pods", || {
        let pods = web_pods(&cluster);
        let ready = pods.iter().filter(|(_, _, ready)| *ready).count();
        if ready == 6 && pods.len() == 6 {
            Ok(pods)
        } else {
            Err(format!(
                "{ready} of {} ready\n{}",
                pods.len(),
                cluster.logs()
            ))
        }
    });
    let mut by_node = std::collections::BTreeMap::<String, Vec<String>>::new();
    for (name, node, _) in &pods {
        by_node.entry(node.clone()).or_default().push(name.clone());
    }
    let nodes: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        by_node.keys().map(String::as_str).collect::<Vec<_>>(),
        nodes,
        "the pods are not spread over every node: {by_node:?}"
    );
    eprintln!("web pods by node: {by_node:?}");
    let names: Vec<&str> = pods.iter().map(|(name, _, _)| name.as_str()).collect();

    let service = cluster.orchctl_ok(&["get", "service", "web", "-o", "json"]);
    let service: serde_json::Value = serde_json::from_str(&service).expect("service JSON");
    let cluster_ip = service["spec"]["clusterIP"]
        .as_str()
        .expect("a clusterIP")
        .to_string();
    let node_of = |pod: &str| {
        pods.iter()
            .find(|(name, _, _)| name == pod)
            .map(|(_, node, _)| node.clone())
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

/// The harness's own promise: a test that panics with a cluster running
/// (a pod's containers, mounts and cgroups included) leaves nothing of it
/// behind.
#[test]
fn a_cluster_leaves_nothing_behind_even_when_its_test_panics() {
    let _one = one_cluster();
    let tag = format!("mz{}", std::process::id());
    let (_root, dir) = state_dir("leftovers");
    let started = {
        let dir = dir.clone();
        let tag = tag.clone();
        std::panic::catch_unwind(move || {
            let cluster = Cluster::start(binaries(), spec(&tag, 1, 1), &dir);
            apply(&cluster, &web(1));
            within(Duration::from_secs(90), "a ready web pod", || {
                let pods = web_pods(&cluster);
                if pods.iter().any(|(_, _, ready)| *ready) {
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
