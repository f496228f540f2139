//! The node agent (`orch-node`, a real process) against a real
//! `orch-control`: it registers its Node with the machine's capacity minus
//! what is reserved, keeps its Lease in kube-node-lease renewed, and takes
//! its Node back after a restart.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::exec::exec_in;
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

/// An agent that never collects images (whatever this machine's disk
/// holds, the tests' images stay).
fn start_agent(config: &std::path::Path, state: &std::path::Path, log: &std::path::Path) -> Agent {
    start_agent_with(config, state, log, &["--image-gc-high-threshold", "100"])
}

fn start_agent_with(
    config: &std::path::Path,
    state: &std::path::Path,
    log: &std::path::Path,
    extra: &[&str],
) -> Agent {
    let child = Command::new(orch_node())
        .args(["--node-name", "n1", "--config"])
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--system-reserved",
            "cpu=100m,memory=128Mi",
            "--node-lease-duration-seconds",
            "4",
            "--node-status-update-frequency-ms",
            "300",
        ])
        .args(extra)
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
    let (replica, _, mut client) = control_plane(dir.path());

    // The node's own credentials, as an operator makes them: a
    // certificate of the cluster CA for system:node:n1 in group
    // system:nodes, written by `orch-control node-config`.
    let config_path = dir.path().join("node.conf");
    let made = Command::new(env!("CARGO_BIN_EXE_orch-control"))
        .arg("node-config")
        .arg("--data-dir")
        .arg(&replica.dir)
        .args(["--node-name", "n1", "--server", &replica.api_addr, "-o"])
        .arg(&config_path)
        .output()
        .expect("orch-control node-config");
    assert!(made.status.success(), "{made:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&config_path)
            .expect("node.conf")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

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
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1"),
        "{addresses:?}"
    );
    // The agent's port, where the API servers reach it for logs and exec.
    let port = status
        .daemon_endpoints
        .clone()
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .unwrap_or_default();
    assert!(port > 0, "{:?}", status.daemon_endpoints);
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
/// A replica bootstrapping a new cluster under `dir`, its admin config,
/// and a client of it.
fn control_plane(
    dir: &std::path::Path,
) -> (
    common::Replica,
    orch_core::api::config::ClientConfig,
    ApiClient,
) {
    let mut replica = common::Replica::new(1, dir.join("replica-1"));
    replica.start(&["--init"]);
    let config = replica.api_config(std::slice::from_ref(&replica.api_addr));
    let client = ApiClient::new(&config, Duration::from_secs(20)).expect("client");
    (replica, config, client)
}

/// Waits until the cluster has made its `default` namespace.
async fn until_default_namespace(client: &mut ApiClient) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(Kind::Namespace, None, "default").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "namespace default never appeared"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Node n1's config (its certificate signed by `replica`'s CA), written
/// under `dir`.
fn node_config_file(replica: &common::Replica, dir: &std::path::Path) -> std::path::PathBuf {
    let node_config = orch_control::pki::Pki::new(&replica.dir)
        .node_config("n1", std::slice::from_ref(&replica.api_addr))
        .expect("node certificate");
    let path = dir.join("node.conf");
    std::fs::write(&path, node_config.to_yaml()).expect("node config");
    path
}

/// busybox running `cmd`, built as `local` in `builder` and pushed to
/// `target` (with `credentials` when the registry wants some).
async fn push_busybox(
    builder: &orch_node::image::ImageStore,
    local: &str,
    cmd: &str,
    target: &str,
    credentials: Option<&orch_node::image::registry::Credentials>,
) -> orch_node::image::Reference {
    use orch_node::image::Reference;
    let local = Reference::parse(local).expect("reference");
    orch_node::image::build::busybox_image(
        builder,
        &local,
        std::path::Path::new(orch_node::image::build::BUSYBOX),
        &[],
        &[cmd],
    )
    .expect("image");
    orch_node::image::registry::RegistryClient::new(Vec::new())
        .expect("registry client")
        .push(
            builder,
            &local,
            &Reference::parse(target).expect("ref"),
            credentials,
        )
        .await
        .expect("push");
    local
}

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
/// Waits for the pod's phase to be `phase`.
async fn until_phase(
    client: &mut ApiClient,
    name: &str,
    within: Duration,
    phase: &str,
) -> k8s_openapi::api::core::v1::PodStatus {
    until_status(client, name, within, phase, |s| {
        s.phase.as_deref() == Some(phase)
    })
    .await
}

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
    use orch_node::image::ImageStore;
    use orch_node::image::local_registry::LocalRegistry;

    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, config, mut client) = control_plane(dir.path());

    // busybox, built here and served by a registry on loopback.
    let registry =
        LocalRegistry::start(&dir.path().join("registry")).unwrap_or_else(|e| panic!("{e}"));
    let builder = ImageStore::open(&dir.path().join("builder")).expect("builder store");
    let image = format!("{}/busybox:1", registry.addr);
    let local = push_busybox(&builder, "orch.test/busybox:1", "sh", &image, None).await;

    let config_path = node_config_file(&replica, dir.path());
    let state = dir.path().join("node-state");
    let log = dir.path().join("orch-node.log");
    // However the test ends, no shim, container, mount or cgroup is left.
    let _release = Release(state.clone());
    let mut agent = start_agent(&config_path, &state, &log);

    until_default_namespace(&mut client).await;

    // A long-running pod: Running, ready, its output in its log.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 10\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, \"echo started; trap 'echo bye; exit 0' TERM; while true; do sleep 0.2; done\"]\n    lifecycle: {{preStop: {{exec: {{command: [sh, -c, 'echo pre-stop > /proc/1/fd/1']}}}}}}\n"
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
    assert_eq!(running.host_ip.as_deref(), Some("127.0.0.1"));
    let web = first_container(&running);
    assert_eq!(web.restart_count, 0);
    assert!(web.image_id.contains("@sha256:"), "{}", web.image_id);
    // The node reports the image it now holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = node_images(&mut client).await;
        if held.contains(&image) {
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

    logs_and_exec(&mut client, &config, dir.path()).await;

    import_through_the_api(&mut client, &config, dir.path()).await;

    // A ConfigMap as a volume and as an environment value, and a Secret
    // as a volume; the volumes hold their files seconds after the start.
    client
        .create(
            &pod("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {greeting: hello-volume}\n"),
            false,
        )
        .await
        .expect("create configmap");
    client
        .create(
            &pod("apiVersion: v1\nkind: Secret\nmetadata: {name: token, namespace: default}\nstringData: {token: t0ps3cret}\n"),
            false,
        )
        .await
        .expect("create secret");
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: reader, namespace: default}}\nspec:\n  nodeName: n1\n  volumes: [{{name: config, configMap: {{name: settings}}}}, {{name: token, secret: {{secretName: token}}}}]\n  containers:\n  - name: c\n    image: {image}\n    env: [{{name: GREETING, valueFrom: {{configMapKeyRef: {{name: settings, key: greeting}}}}}}]\n    volumeMounts: [{{name: config, mountPath: /config}}, {{name: token, mountPath: /secret}}]\n    command: [sh, -c, 'echo env=$GREETING; sleep 2.5; echo file=$(cat /config/greeting); sleep 1000']\n    readinessProbe: {{exec: {{command: [test, -f, /config/absent]}}, periodSeconds: 1}}\n"
            )),
            false,
        )
        .await
        .expect("create reader pod");
    until_phase(&mut client, "reader", Duration::from_secs(30), "Running").await;
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
    // The secret is there, on a tmpfs (never on the node's disk).
    let (out, _, code) = exec_in(
        &mut client,
        "reader",
        &[
            "sh",
            "-c",
            "cat /secret/token; echo; awk '$2==\"/secret\" {print $3}' /proc/mounts",
        ],
        None,
        false,
    )
    .await
    .expect("exec in reader");
    assert_eq!((out.as_str(), code), ("t0ps3cret\ntmpfs\n", Some(0)));
    // An update of the ConfigMap reaches the running container's volume.
    client
        .patch(
            Kind::ConfigMap,
            Some("default"),
            "settings",
            &serde_json::json!({"data": {"greeting": "hello-again"}}),
            false,
        )
        .await
        .expect("update the configmap");
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (out, _, _) = exec_in(
            &mut client,
            "reader",
            &["cat", "/config/greeting"],
            None,
            false,
        )
        .await
        .expect("exec cat");
        if out == "hello-again" {
            break;
        }
        assert_eq!(out, "hello-volume", "neither the old nor the new value");
        assert!(
            Instant::now() < deadline,
            "the update never reached the volume"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // An init container runs to completion first: what it leaves in an
    // emptyDir is there when the app container starts.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: staged, namespace: default}}\nspec:\n  nodeName: n1\n  volumes: [{{name: work, emptyDir: {{}}}}]\n  initContainers:\n  - name: setup\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /work}}]\n    command: [sh, -c, 'sleep 0.5; echo prepared > /work/flag; mkdir /work/sub; echo inner > /work/sub/file']\n  containers:\n  - name: c\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /work}}, {{name: work, mountPath: /data, subPath: sub}}]\n    command: [sh, -c, 'echo found=$(cat /work/flag); sleep 1000']\n    readinessProbe: {{exec: {{command: [grep, -q, prepared, /work/flag]}}, periodSeconds: 1}}\n"
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

    // A volume's sub path, mounted alone.
    let (out, _, _) = exec_in(&mut client, "staged", &["cat", "/data/file"], None, false)
        .await
        .expect("exec in staged");
    assert_eq!(out, "inner\n");
    // A sub path the container made a symlink out of the volume is
    // refused, naming it: nothing of the host is mounted.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: escaper, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 0\n  volumes: [{{name: work, emptyDir: {{}}}}]\n  initContainers:\n  - name: plant\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /work}}]\n    command: [ln, -s, /etc, /work/escape]\n  containers:\n  - name: c\n    image: {image}\n    volumeMounts: [{{name: work, mountPath: /host-etc, subPath: escape}}]\n    command: [sleep, '1000']\n"
            )),
            false,
        )
        .await
        .expect("create escaper");
    let escaper = until_status(
        &mut client,
        "escaper",
        Duration::from_secs(30),
        "refused",
        |s| waiting_reason(s).as_deref() == Some("CreateContainerConfigError"),
    )
    .await;
    let message = first_container(&escaper)
        .state
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(
        message.contains("subPath \"escape\"") && message.contains("out of the volume"),
        "{message}"
    );

    // Every shim runs from the agent's one sealed in-memory copy of
    // orch-shim, never from the file on disk nor from a copy of its own.
    let shims = shim_executables(&state);
    assert!(shims.len() >= 3, "{shims:?}");
    assert!(
        shims
            .iter()
            .all(|(_, exe, inode)| exe.contains("memfd:") && *inode == shims[0].2),
        "{shims:?}"
    );

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
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: crash, namespace: default}}\nspec:\n  nodeName: n1\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, 'echo crashing; exit 3']\n"
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
    // The log of the instance before the last restart.
    let previous = read_logs(
        &mut client,
        orch_core::api::proto::PodLogsRequest {
            namespace: "default".into(),
            name: "crash".into(),
            previous: true,
            ..Default::default()
        },
    )
    .await
    .expect("previous log");
    assert_eq!(previous, "crashing\n");
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

    // Over its memory limit: killed by the kernel, and the status says
    // OOMKilled.
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: hog, namespace: default}}\nspec:\n  nodeName: n1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {image}\n    resources: {{limits: {{memory: 16Mi}}}}\n    command: [sh, -c, \"x=$(head -c 100000000 /dev/zero | tr '\\\\0' a); echo survived\"]\n"
            )),
            false,
        )
        .await
        .expect("create hog");
    let hog = until_status(
        &mut client,
        "hog",
        Duration::from_secs(60),
        "OOMKilled",
        |s| {
            first_container(s)
                .state
                .and_then(|st| st.terminated)
                .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"))
        },
    )
    .await;
    let killed = first_container(&hog)
        .state
        .and_then(|st| st.terminated)
        .expect("terminated");
    assert_eq!((killed.exit_code, killed.signal), (137, Some(9)));
    assert_eq!(hog.phase.as_deref(), Some("Failed"));

    private_registry(&mut client, dir.path(), &builder, &local).await;

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

    // Followed, the log streams until the container exits.
    let mut follower = client.clone();
    let followed = tokio::spawn(async move {
        read_logs(
            &mut follower,
            orch_core::api::proto::PodLogsRequest {
                namespace: "default".into(),
                name: "web".into(),
                follow: true,
                ..Default::default()
            },
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!followed.is_finished(), "a followed log ended early");

    // Deleted: the preStop hook (writing to the container's output), then
    // SIGTERM (the trap says bye), then everything is released and the Pod
    // object goes.
    client
        .delete(Kind::Pod, Some("default"), "web", &Default::default())
        .await
        .expect("delete web");
    let followed = tokio::time::timeout(Duration::from_secs(30), followed)
        .await
        .expect("the followed log ends with the container")
        .expect("follow task")
        .expect("followed log");
    assert!(followed.starts_with("started\n"), "{followed}");
    assert!(followed.ends_with("pre-stop\nbye\n"), "{followed}");
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
    for name in [
        "crash", "missing", "reader", "staged", "probed", "escaper", "hog",
    ] {
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

/// The shims of the node whose state is `state`: pid, what /proc says
/// their executable is, and its inode.
fn shim_executables(state: &std::path::Path) -> Vec<(u32, String, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let needle = state.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let is_shim = args.first().is_some_and(|a| a == "orch-shim")
                && args.iter().any(|a| a.starts_with(&needle));
            if !is_shim {
                return None;
            }
            let exe = std::fs::read_link(entry.path().join("exe")).ok()?;
            let inode = std::fs::metadata(entry.path().join("exe")).ok()?.ino();
            Some((pid, exe.to_string_lossy().into_owned(), inode))
        })
        .collect()
}

/// A registry that wants a password: a pod without an image pull secret
/// fails to pull and says why; with a dockerconfigjson Secret naming the
/// registry it runs.
async fn private_registry(
    client: &mut ApiClient,
    dir: &std::path::Path,
    builder: &orch_node::image::ImageStore,
    local: &orch_node::image::Reference,
) {
    use orch_node::image::local_registry::LocalRegistry;
    use orch_node::image::registry::Credentials;
    let hash = bcrypt::hash("s3cret", 4).expect("bcrypt");
    let registry = LocalRegistry::start_with_htpasswd(
        &dir.join("private-registry"),
        Some(&format!("puller:{hash}\n")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let image = format!("{}/private/busybox:1", registry.addr);
    let credentials = Credentials {
        username: "puller".into(),
        password: "s3cret".into(),
    };
    push_busybox(
        builder,
        &local.to_string(),
        "sh",
        &image,
        Some(&credentials),
    )
    .await;
    let pod_yaml = |name: &str, secrets: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 0\n{secrets}  containers:\n  - name: c\n    image: {image}\n    command: [sleep, '1000']\n"
        )
    };
    client
        .create(&pod(&pod_yaml("private-denied", "")), false)
        .await
        .expect("create pod without a pull secret");
    let denied = until_status(
        client,
        "private-denied",
        Duration::from_secs(30),
        "refused by the registry",
        |s| {
            matches!(
                waiting_reason(s).as_deref(),
                Some("ErrImagePull" | "ImagePullBackOff")
            )
        },
    )
    .await;
    let message = first_container(&denied)
        .state
        .and_then(|s| s.waiting)
        .and_then(|w| w.message)
        .unwrap_or_default();
    assert!(message.contains("imagePullSecrets"), "{message}");

    let config = serde_json::json!({"auths": {registry.addr.clone(): {
        "auth": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "puller:s3cret"),
    }}});
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pull", "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": config.to_string()},
    });
    client
        .create(&pod(&secret.to_string()), false)
        .await
        .expect("create the pull secret");
    client
        .create(
            &pod(&pod_yaml(
                "private-ok",
                "  imagePullSecrets: [{name: pull}]\n",
            )),
            false,
        )
        .await
        .expect("create pod with a pull secret");
    until_status(
        client,
        "private-ok",
        Duration::from_secs(30),
        "Running with the pull secret",
        |s| s.phase.as_deref() == Some("Running"),
    )
    .await;
    for name in ["private-denied", "private-ok"] {
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
}

/// `orchctl image import FILE --node n1`: an OCI layout tarball goes to
/// the node through the API server and the node lists the image; a node
/// that does not exist and an archive that is not one are refused.
async fn import_through_the_api(
    client: &mut ApiClient,
    admin: &orch_core::api::config::ClientConfig,
    dir: &std::path::Path,
) {
    use orch_node::image::build::{self, BUSYBOX};
    use orch_node::image::{ImageStore, Reference};
    let layout = dir.join("export");
    let store = ImageStore::open(&layout).expect("export store");
    let reference = Reference::parse("orch.test/imported:1").expect("reference");
    build::busybox_image(
        &store,
        &reference,
        std::path::Path::new(BUSYBOX),
        &[],
        &["sh"],
    )
    .expect("image");
    let archive = dir.join("imported.oci.tar");
    let packed = Command::new("tar")
        .arg("-C")
        .arg(store.root())
        .arg("-cf")
        .arg(&archive)
        .args(["index.json", "oci-layout", "blobs"])
        .output()
        .expect("tar");
    assert!(packed.status.success(), "{packed:?}");
    let admin_path = dir.join("admin-import.conf");
    std::fs::write(&admin_path, admin.to_yaml()).expect("admin config");
    let orchctl = |file: &std::path::Path, node: &str| {
        Command::new(env!("CARGO_BIN_EXE_orchctl"))
            .args(["image", "import"])
            .arg(file)
            .args(["--node", node, "--config"])
            .arg(&admin_path)
            .output()
            .expect("orchctl")
    };
    let imported = orchctl(&archive, "n1");
    assert!(imported.status.success(), "{imported:?}");
    assert_eq!(
        String::from_utf8_lossy(&imported.stdout),
        "orch.test/imported:1 imported on node n1\n"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node_images(client)
        .await
        .contains(&"orch.test/imported:1".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "the node does not list the import"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let nowhere = orchctl(&archive, "nope");
    assert!(!nowhere.status.success());
    assert!(
        String::from_utf8_lossy(&nowhere.stderr).contains("NotFound"),
        "{nowhere:?}"
    );
    let garbage = dir.join("garbage.tar");
    std::fs::write(&garbage, b"not an archive").expect("garbage");
    let refused = orchctl(&garbage, "n1");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("the uploaded image archive"),
        "{refused:?}"
    );
}

/// A whole log, as text.
async fn read_logs(
    client: &mut ApiClient,
    request: orch_core::api::proto::PodLogsRequest,
) -> Result<String, orch_core::api::ApiError> {
    let mut stream = client.pod_logs(request).await?;
    let mut text = Vec::new();
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| orch_core::api::ApiError::from_status(&s))?
    {
        text.extend(chunk.data);
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// `orchctl logs` and `orchctl exec` against the running pod `web`, the
/// same through the typed client (stdin, a terminal), the refusals, and
/// the node's port refusing anyone but a control-plane replica.
async fn logs_and_exec(
    client: &mut ApiClient,
    admin: &orch_core::api::config::ClientConfig,
    dir: &std::path::Path,
) {
    let admin_path = dir.join("admin.conf");
    std::fs::write(&admin_path, admin.to_yaml()).expect("admin config");
    let orchctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_orchctl"))
            .arg(args[0])
            .arg("--config")
            .arg(&admin_path)
            .args(&args[1..])
            .stdin(Stdio::null())
            .output()
            .expect("orchctl")
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();

    let logs = orchctl(&["logs", "web"]);
    assert!(logs.status.success(), "{logs:?}");
    assert_eq!(text(&logs.stdout), "started\n");
    let stamped = orchctl(&["logs", "pod/web", "--timestamps", "--tail", "1"]);
    let line = text(&stamped.stdout);
    assert!(
        line.ends_with("Z started\n") && line.contains('T'),
        "{line}"
    );

    let ran = orchctl(&["exec", "web", "--", "sh", "-c", "hostname; exit 4"]);
    assert_eq!(ran.status.code(), Some(4), "{ran:?}");
    assert_eq!(text(&ran.stdout), "web\n");
    assert!(
        text(&ran.stderr).contains("command terminated with exit code 4"),
        "{ran:?}"
    );

    let (out, err, code) = exec_in(
        client,
        "web",
        &["sh", "-c", "echo out; echo err >&2; cat; exit 3"],
        Some(b"typed\n"),
        false,
    )
    .await
    .expect("exec with stdin");
    assert_eq!(
        (out.as_str(), err.as_str(), code),
        ("out\ntyped\n", "err\n", Some(3))
    );

    let (screen, _, code) = exec_in(
        client,
        "web",
        &["sh"],
        Some(b"tty; echo tty-$((6 * 7)); exit 5\n"),
        true,
    )
    .await
    .expect("exec with a terminal");
    assert_eq!(code, Some(5), "{screen}");
    assert!(
        screen.contains("/dev/pts/") && screen.contains("tty-42"),
        "{screen}"
    );

    let mut wrong = client.clone();
    let error = read_logs(
        &mut wrong,
        orch_core::api::proto::PodLogsRequest {
            namespace: "default".into(),
            name: "web".into(),
            container: "nope".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("no such container");
    assert!(
        error
            .to_string()
            .contains("container nope is not valid for pod web"),
        "{error}"
    );
    let missing = exec_in(client, "web", &["no-such-command"], None, false)
        .await
        .expect_err("a command the image lacks");
    assert!(missing.to_string().contains("no-such-command"), "{missing}");

    // A caller that leaves mid-session: its process is hung up, not left
    // running in the container.
    {
        let (input, inbound) = tokio::sync::mpsc::channel(1);
        let start = orch_core::api::proto::ExecStart {
            namespace: "default".into(),
            name: "web".into(),
            command: vec!["sleep".into(), "4242".into()],
            ..Default::default()
        };
        let session = client.pod_exec(start, inbound).await.expect("exec sleep");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (listing, _, _) = exec_in(client, "web", &["ps"], None, false)
            .await
            .expect("exec ps");
        assert!(listing.contains("sleep 4242"), "{listing}");
        drop(session);
        drop(input);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (listing, _, _) = exec_in(client, "web", &["ps"], None, false)
            .await
            .expect("exec ps");
        if !listing.contains("sleep 4242") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "an abandoned exec still runs: {listing}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The node's port takes only replicas: an administrator's certificate
    // of the same CA is refused there.
    let node = match client.get(Kind::Node, None, "n1").await {
        Ok(Object::Node(node)) => node,
        other => panic!("node n1: {other:?}"),
    };
    let port = node
        .status
        .and_then(|s| s.daemon_endpoints)
        .and_then(|d| d.kubelet_endpoint)
        .map(|e| e.port)
        .expect("the node's port");
    let tls =
        orch_control::store::raft::peer_tls::PeerTls::from_client_config(admin).expect("admin tls");
    let channel = tls
        .endpoint_for(
            &format!("127.0.0.1:{port}"),
            &orch_core::api::identity::node_serving_name("n1"),
        )
        .expect("endpoint")
        .connect()
        .await
        .expect("the node's port answers TLS for n1");
    let status = orch_core::api::proto::node_agent_client::NodeAgentClient::new(channel)
        .container_logs(orch_core::api::proto::PodLogsRequest::default())
        .await
        .expect_err("an administrator may not call the node directly");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
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

/// The images node n1 lists in its status.
async fn node_images(client: &mut ApiClient) -> Vec<String> {
    node(client)
        .await
        .and_then(|n| n.status)
        .and_then(|s| s.images)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|i| i.names.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_images_are_collected_under_disk_pressure() {
    use orch_node::image::ImageStore;
    use orch_node::image::local_registry::LocalRegistry;

    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, _, mut client) = control_plane(dir.path());
    // Two different images: one a running pod uses, one a finished pod
    // used.
    let registry =
        LocalRegistry::start(&dir.path().join("registry")).unwrap_or_else(|e| panic!("{e}"));
    let builder = ImageStore::open(&dir.path().join("builder")).expect("builder store");
    let mut images = Vec::new();
    for (tag, cmd) in [("kept", "sh"), ("spare", "ls")] {
        let image = format!("{}/{tag}:1", registry.addr);
        push_busybox(&builder, &format!("orch.test/{tag}:1"), cmd, &image, None).await;
        images.push(image);
    }
    let (kept, spare) = (images[0].clone(), images[1].clone());

    let config_path = node_config_file(&replica, dir.path());
    let state = dir.path().join("node-state");
    let _release = Release(state.clone());
    // Any use of the disk counts as pressure: every unused image goes.
    let _agent = start_agent_with(
        &config_path,
        &state,
        &dir.path().join("orch-node.log"),
        &[
            "--image-gc-high-threshold",
            "1",
            "--image-gc-low-threshold",
            "0",
            "--minimum-image-ttl-duration",
            "0",
        ],
    );
    until_default_namespace(&mut client).await;
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: keeper, namespace: default}}\nspec:\n  nodeName: n1\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: {kept}\n    command: [sleep, '1000']\n"
            )),
            false,
        )
        .await
        .expect("create keeper");
    client
        .create(
            &pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: once, namespace: default}}\nspec:\n  nodeName: n1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: {spare}\n    command: ['true']\n"
            )),
            false,
        )
        .await
        .expect("create once");
    until_phase(&mut client, "keeper", Duration::from_secs(60), "Running").await;
    until_phase(&mut client, "once", Duration::from_secs(60), "Succeeded").await;
    // While a pod names it, even a finished one, the image stays.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let listed = node_images(&mut client).await;
    assert!(
        listed.contains(&spare) && listed.contains(&kept),
        "{listed:?}"
    );

    client
        .delete(
            Kind::Pod,
            Some("default"),
            "once",
            &orch_core::api::proto::DeleteRequest {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await
        .expect("delete once");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = node_images(&mut client).await;
        if !listed.contains(&spare) {
            assert!(listed.contains(&kept), "the image in use went: {listed:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unused image stayed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The running pod never noticed.
    let keeper = pod_status(&mut client, "keeper").await.expect("keeper");
    assert_eq!(keeper.phase.as_deref(), Some("Running"));
    assert_eq!(first_container(&keeper).restart_count, 0);
}
