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
