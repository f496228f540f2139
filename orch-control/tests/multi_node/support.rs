//! What the scenarios share: the cluster's programs and shape, the web
//! workload, polling with a bound, and a steady request load.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use orch_tests::cluster::{Binaries, Cluster, ClusterSpec, http_get, is_ready};
use orch_tests::netns::in_netns;

pub const IMAGE: &str = "orch.test/web:1";
pub const NODE_PORT: u16 = 30080;

pub fn binaries() -> Binaries {
    let orch_control = PathBuf::from(env!("CARGO_BIN_EXE_orch-control"));
    Binaries {
        orch_node: orch_control.with_file_name("orch-node"),
        orchctl: PathBuf::from(env!("CARGO_BIN_EXE_orchctl")),
        orch_control,
    }
}

pub fn spec(tag: &str, replicas: usize, nodes: usize) -> ClusterSpec {
    ClusterSpec {
        tag: tag.to_string(),
        replicas,
        nodes,
        busybox_images: vec![IMAGE.to_string()],
        control_plane_args: Vec::new(),
        node_args: Vec::new(),
    }
}

/// A tag unique to this test process and scenario (namespaces, nodes).
pub fn tag(scenario: &str) -> String {
    format!("{scenario}{}", std::process::id())
}

/// One cluster at a time: on the 2-core CI machine two would starve
/// each other (and every test's namespaces stay apart anyway).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn one_cluster() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A Deployment of `replicas` busybox httpd pods answering with their
/// names, a ClusterIP Service and a NodePort Service in front of them.
/// A pod keeps serving 3 s into its deletion (preStop sleep), more than
/// every node needs to stop sending it new connections (~0.1 s here).
pub fn web(replicas: usize) -> String {
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
      terminationGracePeriodSeconds: 8
      containers:
      - name: httpd
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
        readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
        lifecycle: {{preStop: {{sleep: {{seconds: 3}}}}}}
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

/// A pod of the web Deployment as the API has it.
#[derive(Clone, Debug)]
pub struct WebPod {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub ready: bool,
    pub terminating: bool,
}

/// The web pods, or why orchctl could not list them.
pub fn web_pods(cluster: &Cluster) -> Result<Vec<WebPod>, String> {
    let output = cluster.orchctl(&["get", "pods", "-l", "app=web", "-o", "json"]);
    if !output.status.success() {
        return Err(format!(
            "orchctl get pods: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let list: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| format!("orchctl's JSON: {e}"))?;
    let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
    Ok(list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|pod| WebPod {
                    name: text(&pod["metadata"]["name"]),
                    node: text(&pod["spec"]["nodeName"]),
                    ip: text(&pod["status"]["podIP"]),
                    ready: is_ready(pod),
                    terminating: !pod["metadata"]["deletionTimestamp"].is_null(),
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Waits until the web Deployment has exactly `count` pods, all ready and
/// none terminating; returns them.
pub fn until_web_ready(cluster: &Cluster, count: usize, limit: Duration) -> Vec<WebPod> {
    within(limit, &format!("{count} ready web pods"), || {
        let pods = web_pods(cluster)?;
        let ready = pods.iter().filter(|p| p.ready && !p.terminating).count();
        if ready == count && pods.len() == count {
            Ok(pods)
        } else {
            Err(format!(
                "{ready} of {} ready\n{}",
                pods.len(),
                cluster.logs()
            ))
        }
    })
}

/// Retries `check` until it answers or `limit` passes.
pub fn within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "{what} within {limit:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

pub fn apply(cluster: &Cluster, yaml: &str) {
    let file = cluster.dir.join("manifest.yaml");
    std::fs::write(&file, yaml).expect("manifest");
    cluster.orchctl_ok(&["apply", "-f", &file.to_string_lossy()]);
}

pub fn state_dir(test: &str) -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join(test);
    std::fs::create_dir_all(&dir).expect("state dir");
    (root, dir)
}

/// A Service's clusterIP.
pub fn cluster_ip(cluster: &Cluster, service: &str) -> String {
    let json = cluster.orchctl_ok(&["get", "service", service, "-o", "json"]);
    let service: serde_json::Value = serde_json::from_str(&json).expect("service JSON");
    service["spec"]["clusterIP"]
        .as_str()
        .expect("a clusterIP")
        .to_string()
}

/// What a load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub answered: usize,
    /// Each failed request: when (since the start) and why.
    pub failures: Vec<String>,
    /// Who answered (the pods' names), with how often.
    pub answers: std::collections::BTreeMap<String, usize>,
}

/// Steady HTTP requests from the client host, round robin over
/// `targets`, one at a time, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    worker: Option<std::thread::JoinHandle<LoadReport>>,
}

impl Load {
    pub fn start(cluster: &Cluster, targets: Vec<(Ipv4Addr, u16)>, pause: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let worker = in_netns(&cluster.client, move || {
            let started = Instant::now();
            let mut report = LoadReport::default();
            for (address, port) in targets.iter().cycle() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                match http_get(*address, *port, "/") {
                    Ok(body) => {
                        report.answered += 1;
                        *report.answers.entry(body).or_default() += 1;
                    }
                    Err(why) => report.failures.push(format!(
                        "{} ({:.1}s in): {why}",
                        orch_core::time::now(),
                        started.elapsed().as_secs_f64()
                    )),
                }
                std::thread::sleep(pause);
            }
            report
        });
        Self {
            stop,
            worker: Some(worker),
        }
    }

    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        self.worker
            .take()
            .expect("a running load")
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The backends node `node` balances `address:port` (TCP) over, as its
/// pinned service table says; None when the frontend is not there.
pub fn node_backends(
    node: &str,
    address: Ipv4Addr,
    port: u16,
) -> Result<Option<BTreeSet<SocketAddrV4>>, String> {
    use orch_node::dataplane::PinLayout;
    use orch_node::dataplane::services::{Protocol, ServiceTable};
    let layout =
        PinLayout::new(std::path::Path::new("/sys/fs/bpf"), node).map_err(|e| e.to_string())?;
    let table = ServiceTable::open(&layout)
        .and_then(|table| table.list())
        .map_err(|e| format!("{node}'s service table: {e}"))?;
    Ok(table
        .into_iter()
        .find(|(frontend, _)| {
            frontend.address == address
                && frontend.port == port
                && frontend.protocol == Protocol::Tcp
        })
        .map(|(_, balancing)| balancing.backends.into_iter().collect()))
}

/// Waits until every node balances the web ClusterIP and its own NodePort
/// over exactly `pods`' addresses; returns how long that took.
pub fn until_tables_converge(cluster: &Cluster, pods: &[WebPod], limit: Duration) -> Duration {
    until_tables_converge_on(cluster, &[], pods, limit)
}

/// [`until_tables_converge`] on every node but those named in `skip`.
pub fn until_tables_converge_on(
    cluster: &Cluster,
    skip: &[&str],
    pods: &[WebPod],
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    let ip: Ipv4Addr = cluster_ip(cluster, "web")
        .parse()
        .expect("an IPv4 clusterIP");
    let wanted: BTreeSet<SocketAddrV4> = pods
        .iter()
        .map(|pod| SocketAddrV4::new(pod.ip.parse().expect("a pod IP"), 8080))
        .collect();
    within(limit, "every node's service table to converge", || {
        for node in cluster
            .nodes
            .iter()
            .filter(|node| !skip.contains(&node.name.as_str()))
        {
            for (address, port) in [(ip, 80), (node.address, NODE_PORT)] {
                let have = node_backends(&node.name, address, port)?;
                if have.as_ref() != Some(&wanted) {
                    return Err(format!(
                        "{} balances {address}:{port} over {have:?}, not {} backends",
                        node.name,
                        wanted.len()
                    ));
                }
            }
        }
        Ok(())
    });
    started.elapsed()
}
