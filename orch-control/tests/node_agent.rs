//! The node agent (`orch-node`, a real process) against a real
//! `orch-control`: it registers its Node with the machine's capacity minus
//! what is reserved, keeps its Lease in kube-node-lease renewed, and takes
//! its Node back after a restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_core::api::ApiClient;
use orch_core::object::{Kind, Object};

/// orch-node, built beside orch-control by the workspace's `cargo test`.
fn orch_node() -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_orch-control")).with_file_name("orch-node");
    assert!(
        path.exists(),
        "{} is missing: build the workspace's binaries (cargo build --workspace, or cargo xtask test)",
        path.display()
    );
    path
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(config: &std::path::Path, state: &std::path::Path, log: &std::path::Path) -> Agent {
    let child = Command::new(orch_node())
        .args(["--node-name", "n1", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-ip",
            "10.99.0.1",
            "--system-reserved",
            "cpu=100m,memory=128Mi",
            "--node-lease-duration-seconds",
            "4",
            "--node-status-update-frequency-ms",
            "300",
        ])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start orch-node");
    Agent(child)
}

async fn node(client: &mut ApiClient) -> Option<k8s_openapi::api::core::v1::Node> {
    match client.get(Kind::Node, None, "n1").await {
        Ok(Object::Node(node)) => Some(*node),
        _ => None,
    }
}

async fn lease(client: &mut ApiClient) -> Option<k8s_openapi::api::coordination::v1::Lease> {
    match client.get(Kind::Lease, Some("kube-node-lease"), "n1").await {
        Ok(Object::Lease(lease)) => Some(*lease),
        _ => None,
    }
}

fn renewed(lease: &k8s_openapi::api::coordination::v1::Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_and_keeps_its_lease() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let config = replica.api_config(std::slice::from_ref(&replica.api_addr));
    let mut client = ApiClient::new(&config, Duration::from_secs(20)).expect("client");

    // The node's own credentials: a certificate of the cluster CA for
    // system:node:n1 in group system:nodes.
    let node_config = orch_control::pki::Pki::new(&replica.dir)
        .component_config(
            "system:node:n1",
            Some("system:nodes"),
            &[replica.api_addr.clone()],
        )
        .expect("node certificate");
    let config_path = dir.path().join("node.conf");
    std::fs::write(&config_path, node_config.to_yaml()).expect("node config");

    // A config that is not there is named.
    let refused = Command::new(orch_node())
        .args(["--node-name", "n1", "--config", "/nonexistent/node.conf"])
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run orch-node");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("/nonexistent/node.conf"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let state = dir.path().join("node-state");
    let log = dir.path().join("orch-node.log");
    let agent = start_agent(&config_path, &state, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let registered = loop {
        if let Some(node) = node(&mut client).await
            && node
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some()
        {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no Node with conditions after 20 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let labels = registered.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("n1")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let status = registered.status.clone().expect("status");
    let online = Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .expect("getconf");
    let cpus: usize = String::from_utf8_lossy(&online.stdout)
        .trim()
        .parse()
        .expect("a CPU count");
    let capacity = status.capacity.clone().expect("capacity");
    let allocatable = status.allocatable.clone().expect("allocatable");
    assert_eq!(capacity["cpu"].0, cpus.to_string());
    assert_eq!(allocatable["cpu"].0, format!("{}m", cpus * 1000 - 100));
    assert_eq!(capacity["pods"].0, "110");
    let memory_kib = |q: &str| -> u64 {
        q.strip_suffix("Ki")
            .and_then(|n| n.parse().ok())
            .expect("Ki")
    };
    assert_eq!(
        memory_kib(&capacity["memory"].0) - memory_kib(&allocatable["memory"].0),
        128 * 1024
    );
    let addresses = status.addresses.clone().unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "10.99.0.1"),
        "{addresses:?}"
    );
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.status, "True");
    for pressure in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == pressure),
            "{pressure} missing"
        );
    }
    let info = status.node_info.clone().expect("nodeInfo");
    assert_eq!(
        info.kernel_version,
        nix::sys::utsname::uname()
            .expect("uname")
            .release()
            .to_string_lossy()
    );

    // The Lease: held by the node, owned by its Node, renewed every second
    // (a quarter of 4 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        if let Some(lease) = lease(&mut client).await {
            break lease;
        }
        assert!(Instant::now() < deadline, "no Lease kube-node-lease/n1");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let spec = first.spec.clone().expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("n1"));
    assert_eq!(spec.lease_duration_seconds, Some(4));
    let owner = &first.metadata.owner_references.clone().expect("owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        (
            "Node",
            registered.metadata.uid.as_deref().unwrap_or_default()
        )
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = lease(&mut client).await.expect("lease");
    assert_ne!(
        renewed(&first),
        renewed(&later),
        "the lease was not renewed"
    );

    // Killed: renewals stop. Restarted: the same Node is taken back and
    // the Lease renewed again.
    drop(agent);
    let stopped = renewed(&lease(&mut client).await.expect("lease"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(stopped, renewed(&lease(&mut client).await.expect("lease")));
    let _agent = start_agent(&config_path, &state, &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    while renewed(&lease(&mut client).await.expect("lease")) == stopped {
        assert!(
            Instant::now() < deadline,
            "a restarted agent never renewed the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = node(&mut client).await.expect("node");
    assert_eq!(again.metadata.uid, registered.metadata.uid);

    // Deleted by someone: the agent registers the Node anew and points its
    // Lease at the new Node (else the garbage collector would take it).
    client
        .delete(Kind::Node, None, "n1", &Default::default())
        .await
        .expect("delete the node");
    let deadline = Instant::now() + Duration::from_secs(20);
    let renewed_node = loop {
        if let Some(node) = node(&mut client).await
            && node.metadata.uid != registered.metadata.uid
        {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "the Node was not registered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let new_uid = renewed_node.metadata.uid.clone().expect("uid");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let owners = lease(&mut client)
            .await
            .and_then(|l| l.metadata.owner_references)
            .unwrap_or_default();
        if owners.len() == 1 && owners[0].uid == new_uid {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the Lease still names {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pod from YAML.
fn pod(yaml: &str) -> Object {
    orch_core::manifest::parse_str(yaml, "test")
        .expect("pod manifest")
        .remove(0)
        .object
}

async fn pod_status(
    client: &mut ApiClient,
    name: &str,
) -> Option<k8s_openapi::api::core::v1::PodStatus> {
    match client.get(Kind::Pod, Some("default"), name).await {
        Ok(Object::Pod(pod)) => pod.status,
        _ => None,
    }
}

/// Waits until `check` holds for the pod's status; returns it.
async fn until_status(
    client: &mut ApiClient,
    name: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&k8s_openapi::api::core::v1::PodStatus) -> bool,
) -> k8s_openapi::api::core::v1::PodStatus {
    let deadline = Instant::now() + within;
    loop {
        let status = pod_status(client, name).await;
        if let Some(status) = &status
            && check(status)
        {
            return status.clone();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name}: not {what} within {within:?}: {status:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn first_container(
    status: &k8s_openapi::api::core::v1::PodStatus,
) -> k8s_openapi::api::core::v1::ContainerStatus {
    status
        .container_statuses
        .clone()
        .unwrap_or_default()
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn waiting_reason(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    first_container(status)
        .state
        .and_then(|s| s.waiting)
        .and_then(|w| w.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_pods_run_restart_and_stop_gracefully() {
    use orch_node::image::build::{self, BUSYBOX};
    use orch_node::image::local_registry::LocalRegistry;
    use orch_node::image::registry::RegistryClient;
    use orch_node::image::{ImageStore, Reference};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let config = replica.api_config(std::slice::from_ref(&replica.api_addr));
    let mut client = ApiClient::new(&config, Duration::from_secs(20)).expect("client");

    // busybox, built here and served by a registry on loopback.
    let registry =
        LocalRegistry::start(&dir.path().join("registry")).unwrap_or_else(|e| panic!("{e}"));
    let builder = ImageStore::open(&dir.path().join("builder")).expect("builder store");
    let local = Reference::parse("orch.test/busybox:1").expect("reference");
    build::busybox_image(
        &builder,
        &local,
        std::path::Path::new(BUSYBOX),
        &[],
        &["sh"],
    )
    .expect("image");
    let image = format!("{}/busybox:1", registry.addr);
    RegistryClient::new(Vec::new())
        .expect("registry client")
        .push(
            &builder,
            &local,
            &Reference::parse(&image).expect("ref"),
            None,
        )
        .await
        .expect("push");

    let node_config = orch_control::pki::Pki::new(&replica.dir)
        .component_config(
            "system:node:n1",
            Some("system:nodes"),
            &[replica.api_addr.clone()],
        )
        .expect("node certificate");
    let config_path = dir.path().join("node.conf");
    std::fs::write(&config_path, node_config.to_yaml()).expect("node config");
    let state = dir.path().join("node-state");
    let log = dir.path().join("orch-node.log");
    // However the test ends, no shim, container, mount or cgroup is left.
    let _release = Release(state.clone());
    let mut agent = start_agent(&config_path, &state, &log);

    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(Kind::Namespace, None, "default").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "namespace default never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A long-running pod: Running, ready, its output in its log.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, \"echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done\"]\n"
            )),
            false,
        )
        .await
        .expect("create pod");
    let running = until_status(
        &mut client,
        "web",
        Duration::from_secs(60),
        "Running",
        |s| s.phase.as_deref() == Some("Running") && first_container(s).ready,
    )
    .await;
    assert_eq!(running.host_ip.as_deref(), Some("10.99.0.1"));
    let web = first_container(&running);
    assert_eq!(web.restart_count, 0);
    assert!(web.image_id.contains("@sha256:"), "{}", web.image_id);
    // The node reports the image it now holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = node(&mut client)
            .await
            .and_then(|n| n.status)
            .and_then(|s| s.images)
            .unwrap_or_default();
        if held
            .iter()
            .any(|i| i.names.iter().flatten().any(|n| *n == image))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node does not list {image}: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Ok(Object::Pod(web_pod)) = client.get(Kind::Pod, Some("default"), "web").await else {
        panic!("web pod")
    };
    let web_uid = web_pod.metadata.uid.clone().expect("uid");
    let web_log = state.join("pods").join(&web_uid).join("logs/c/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&web_log)
        .unwrap_or_default()
        .contains("stdout F started")
    {
        assert!(
            Instant::now() < deadline,
            "no output in {}",
            web_log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A ConfigMap as a volume and as an environment value; the volume still
    // holds its files seconds after the start (it is not rewritten under
    // the running container).
    client
        .create(
            &pod("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {greeting: hello-volume}\n"),
            false,
        )
        .await
        .expect("create configmap");
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: reader, namespace: default}}\nspec:\n  nodeName: n1\n  volumes: [{{name: config, configMap: {{name: settings}}}}]\n  containers:\n  - name: c\n    image: {image}\n    env: [{{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}]\n    volumeMounts: [{{name: config, mountPath: /config}}]\n    command: [sh, -c, 'echo env=$GREETING; sleep 2.5; echo file=$(cat /config/greeting); sleep 1000']\n    readinessProbe: {{exec: {{command: [test, -f, /config/absent]}}, periodSeconds: 1}}\n"
            )),
            false,
        )
        .await
        .expect("create reader pod");
    until_status(
        &mut client,
        "reader",
        Duration::from_secs(30),
        "Running",
        |s| s.phase.as_deref() == Some("Running"),
    )
    .await;
    let Ok(Object::Pod(reader)) = client.get(Kind::Pod, Some("default"), "reader").await else {
        panic!("reader pod")
    };
    let reader_log = state
        .join("pods")
        .join(reader.metadata.uid.clone().expect("uid"))
        .join("logs/c/0.log");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&reader_log).unwrap_or_default();
        if text.contains("file=") {
            assert!(text.contains("stdout F env=hello-volume"), "{text}");
            assert!(text.contains("stdout F file=hello-volume"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no file= line in {}: {text}",
            reader_log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its exec readiness probe's command fails: running, never ready.
    let reader_status = pod_status(&mut client, "reader").await.expect("status");
    assert!(!first_container(&reader_status).ready, "{reader_status:?}");

    // An init container runs to completion first: what it leaves in an
    // emptyDir is there when the app container starts.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: staged, namespace: default}}\nspec:\n  nodeName: n1\n  volumes: [{{name: work, emptyDir: {{}}}}]\n  initContainers:\n  - name: setup\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /work}}]\n    command: [sh, -c, 'sleep 0.5; echo prepared > /work/flag']\n  containers:\n  - name: c\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /work}}]\n    command: [sh, -c, 'echo found=$(cat /work/flag); sleep 1000']\n    readinessProbe: {{exec: {{command: [grep, -q, prepared, /work/flag]}}, periodSeconds: 1}}\n"
            )),
            false,
        )
        .await
        .expect("create staged pod");
    // Ready once its exec readiness probe's command succeeds.
    let staged = until_status(
        &mut client,
        "staged",
        Duration::from_secs(30),
        "Running and ready",
        |s| s.phase.as_deref() == Some("Running") && first_container(s).ready,
    )
    .await;
    let init = staged.init_container_statuses.clone().unwrap_or_default();
    let setup = init
        .first()
        .and_then(|c| c.state.clone())
        .and_then(|s| s.terminated)
        .expect("the init container terminated");
    assert_eq!(
        (setup.exit_code, setup.reason.as_deref()),
        (0, Some("Completed"))
    );
    let initialized = staged
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Initialized")
        .map(|c| c.status.clone());
    assert_eq!(initialized.as_deref(), Some("True"));
    let Ok(Object::Pod(staged_pod)) = client.get(Kind::Pod, Some("default"), "staged").await else {
        panic!("staged pod")
    };
    let staged_log = state
        .join("pods")
        .join(staged_pod.metadata.uid.clone().expect("uid"))
        .join("logs/c/0.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&staged_log)
        .unwrap_or_default()
        .contains("stdout F found=prepared")
    {
        assert!(
            Instant::now() < deadline,
            "the app container did not see the init container's file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Probes: ready once its port answers (tcpSocket); restarted when its
    // liveness check (httpGet) fails twice, with restartCount counting it.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: probed, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    ports: [{{name: http, containerPort: 8080}}]\n    command: [sh, -c, 'mkdir -p /www; echo ok > /www/healthz; (sleep 4; rm /www/healthz) & exec httpd -f -p 8080 -h /www']\n    readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}\n    livenessProbe: {{httpGet: {{path: /healthz, port: 8080}}, periodSeconds: 1, failureThreshold: 2}}\n"
            )),
            false,
        )
        .await
        .expect("create probed pod");
    until_status(
        &mut client,
        "probed",
        Duration::from_secs(30),
        "ready",
        |s| first_container(s).ready,
    )
    .await;
    let restarted = until_status(
        &mut client,
        "probed",
        Duration::from_secs(60),
        "restarted by its liveness probe",
        |s| first_container(s).restart_count >= 1,
    )
    .await;
    let last = first_container(&restarted)
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated after a liveness restart");
    assert_ne!(last.exit_code, 0, "{last:?}");

    // A container that fails: restarted with back-off (CrashLoopBackOff,
    // its exit in lastState). An image that does not exist: ErrImagePull.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash, namespace: default}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'exit 3']\n"
            )),
            false,
        )
        .await
        .expect("create crashing pod");
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: missing, namespace: default}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: {}/nope:1\n",
                registry.addr
            )),
            false,
        )
        .await
        .expect("create pod with a missing image");
    let crashing = until_status(
        &mut client,
        "crash",
        Duration::from_secs(30),
        "in back-off",
        |s| waiting_reason(s).as_deref() == Some("CrashLoopBackOff"),
    )
    .await;
    let last = first_container(&crashing)
        .last_state
        .and_then(|s| s.terminated)
        .expect("lastState.terminated");
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let missing = until_status(
        &mut client,
        "missing",
        Duration::from_secs(30),
        "failing to pull",
        |s| {
            matches!(
                waiting_reason(s).as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    )
    .await;
    assert_eq!(missing.phase.as_deref(), Some("Pending"));
    let message = first_container(&missing)
        .state
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(message.contains("nope:1"), "{message}");

    // The agent dies: the container keeps running; a new agent adopts it
    // without restarting it.
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = std::fs::read_to_string(&web_log).unwrap_or_default();
    assert!(
        !still.contains("bye"),
        "the container stopped with the agent"
    );
    agent = start_agent(&config_path, &state, &log);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let adopted = until_status(
        &mut client,
        "web",
        Duration::from_secs(20),
        "Running",
        |s| s.phase.as_deref() == Some("Running") && first_container(s).ready,
    )
    .await;
    assert_eq!(first_container(&adopted).restart_count, 0);
    // The same process, not one started again: same start time.
    let started = |status: &k8s_openapi::api::core::v1::ContainerStatus| {
        status
            .state
            .clone()
            .and_then(|s| s.running)
            .and_then(|r| r.started_at)
    };
    assert!(started(&web).is_some());
    assert_eq!(started(&first_container(&adopted)), started(&web));

    // Deleted: SIGTERM (the trap says bye), then everything is released
    // and the Pod object goes.
    client
        .delete(Kind::Pod, Some("default"), "web", &Default::default())
        .await
        .expect("delete web");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(Kind::Pod, Some("default"), "web").await {
            Err(orch_core::api::ApiError::NotFound(_)) => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "pod web was not removed: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        !state.join("pods").join(&web_uid).exists(),
        "the pod's directory is left"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/orch/n1")
            .join(format!("pod{web_uid}"))
            .exists(),
        "the pod's cgroup is left"
    );
    for name in ["crash", "missing", "reader", "staged", "probed"] {
        client
            .delete(
                Kind::Pod,
                Some("default"),
                name,
                &orch_core::api::proto::DeleteRequest {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .await
            .expect("delete");
    }
    // Released by the agent's housekeeping: nothing of the pods is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(state.join("pods"))
        .map(|d| d.count())
        .unwrap_or(0)
        > 0
    {
        assert!(Instant::now() < deadline, "pods left on disk");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent);
}

/// Releases node n1's pods (shims, containers, mounts, cgroups) on drop.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        if let Err(error) = orch_node::runtime::release::release_all(&self.0, "n1") {
            eprintln!("releasing node n1's pods: {error}");
        }
    }
}
