//! Services reach a node's kernel maps: a real control plane (controllers
//! included) turns a Service and a Deployment's pods into EndpointSlices,
//! and orch-node's service sync writes them into the node's pinned service
//! table, following a scale-down and the Service's deletion, and clearing
//! what no Service wants when it starts. The socket programs are attached
//! to a cgroup the test creates (traffic through them is orch-node's
//! `service_lb` test). Needs root and BPF; fails (never skips) without.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::kubelet::register_node;
use orch_core::api::{ApiClient, ListOptions};
use orch_core::manifest;
use orch_core::object::{Kind, Object};
use orch_node::dataplane::service_sync::ServiceSync;
use orch_node::dataplane::services::{self, Balancing, Frontend, Protocol, ServiceTable};
use orch_node::dataplane::{PinLayout, bpffs, cgroup2};

/// The node's pins and the cgroup the programs attach to; removed on drop.
struct NodeDataplane {
    name: String,
    layout: PinLayout,
    cgroup: PathBuf,
}

impl NodeDataplane {
    /// `tag` tells apart the tests of this process.
    fn new(tag: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads eBPF programs and creates a cgroup: run it as root (CI does)"
        );
        let name = format!("test-svc-{tag}-{}", std::process::id());
        let cgroup = cgroup2::mount_point()
            .expect("a cgroup2 hierarchy")
            .join(format!("orch-{name}"));
        let layout = PinLayout::new(Path::new(bpffs::BPFFS_ROOT), &name).expect("layout");
        let made = Self {
            name,
            layout,
            cgroup,
        };
        std::fs::create_dir(&made.cgroup).expect("create the test cgroup");
        made
    }
}

impl Drop for NodeDataplane {
    fn drop(&mut self) {
        let _ = services::detach(&self.layout);
        let _ = self.layout.remove_all();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

async fn until_table(
    table: &ServiceTable,
    what: &str,
    check: impl Fn(&[(Frontend, Balancing)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = table.list().expect("list the table");
        if check(&listed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the table holds {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The addresses of the Deployment's running pods, at `port`.
async fn pod_backends(client: &mut ApiClient, port: u16) -> Vec<SocketAddrV4> {
    let options = ListOptions {
        label_selector: "app=web".into(),
        ..ListOptions::default()
    };
    let pods = client
        .list(Kind::Pod, Some("default"), &options)
        .await
        .expect("list pods");
    let mut backends: Vec<SocketAddrV4> = pods
        .items
        .iter()
        .filter_map(|pod| match pod {
            Object::Pod(pod) if pod.metadata.deletion_timestamp.is_none() => {
                pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
            }
            _ => None,
        })
        .map(|ip: Ipv4Addr| SocketAddrV4::new(ip, port))
        .collect();
    backends.sort();
    backends
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_and_their_endpoints_reach_the_kernel_maps() {
    let node = NodeDataplane::new("sync");
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    register_node(&mut client, "node-1", "64", "", "", true).await;
    let kubelet = common::kubelet::start(client.clone(), &["node-1"]);

    let _ebpf = services::attach(&node.layout, &node.cgroup).expect("attach");
    let mut table = ServiceTable::open(&node.layout).expect("open the table");
    // Left by an earlier agent, for a Service that is gone.
    let stale = Frontend {
        address: Ipv4Addr::new(10, 96, 255, 1),
        port: 1234,
        protocol: Protocol::Tcp,
    };
    table
        .set(
            stale,
            &[SocketAddrV4::new(Ipv4Addr::new(10, 9, 9, 9), 1)],
            0,
        )
        .expect("stale entry");
    let sync = ServiceSync::new(
        ServiceTable::open(&node.layout).expect("open the table"),
        None,
    );
    let syncing = tokio::spawn(sync.run(client.clone()));

    let objects = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: http}\n  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}, {containerPort: 5353, protocol: UDP}]}]\n";
    let mut cluster_ip = None;
    for document in manifest::parse_str(objects, "test").expect("manifests") {
        let created = client
            .create(&document.object, false)
            .await
            .expect("create");
        if let Object::Service(service) = created {
            cluster_ip = service.spec.and_then(|s| s.cluster_ip);
        }
    }
    let cluster_ip: Ipv4Addr = cluster_ip
        .expect("a ClusterIP")
        .parse()
        .expect("an IPv4 ClusterIP");
    let http = Frontend {
        address: cluster_ip,
        port: 80,
        protocol: Protocol::Tcp,
    };
    let dns = Frontend {
        port: 53,
        protocol: Protocol::Udp,
        ..http
    };

    // Three ready pods behind both ports, the named targetPort resolved;
    // the stale frontend gone.
    until_table(&table, "three backends per port", |listed| {
        listed.len() == 2 && listed.iter().all(|(_, b)| b.backends.len() == 3)
    })
    .await;
    let listed = table.list().expect("list");
    assert_eq!(
        listed,
        vec![
            (
                dns,
                Balancing::without_affinity(pod_backends(&mut client, 5353).await)
            ),
            (
                http,
                Balancing::without_affinity(pod_backends(&mut client, 8080).await)
            ),
        ]
    );

    // Scaled down: only the pod left takes new connections. A merge patch,
    // as `orchctl scale` sends: a get-then-update raced the deployment
    // controller's status writes (CI saw a Conflict).
    client
        .patch(
            Kind::Deployment,
            Some("default"),
            "web",
            &serde_json::json!({"spec": {"replicas": 1}}),
            false,
        )
        .await
        .expect("scale down");
    until_table(&table, "one backend per port", |listed| {
        listed.len() == 2 && listed.iter().all(|(_, b)| b.backends.len() == 1)
    })
    .await;

    // Deleted: nothing left in the table.
    client
        .delete(Kind::Service, Some("default"), "web", &Default::default())
        .await
        .expect("delete the service");
    until_table(&table, "an empty table", <[_]>::is_empty).await;

    syncing.abort();
    kubelet.abort();
}

/// An orch-node process, killed on drop.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_given_a_service_cgroup_balances_its_services() {
    let node = NodeDataplane::new("agent");
    let node_name = node.name.clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, mut client) = common::replica_with_controllers(dir.path()).await;
    let orch_node = Path::new(env!("CARGO_BIN_EXE_orch-control")).with_file_name("orch-node");
    let config = dir.path().join("node.conf");
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_orch-control"))
        .arg("node-config")
        .arg("--data-dir")
        .arg(&replica.dir)
        .args([
            "--node-name",
            &node_name,
            "--server",
            &replica.api_addr,
            "-o",
        ])
        .arg(&config)
        .output()
        .expect("orch-control node-config");
    assert!(made.status.success(), "{made:?}");
    let _agent = Agent(
        std::process::Command::new(&orch_node)
            .args(["--node-name", &node_name, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.path().join("node-state"))
            .args([
                "--node-ip",
                "127.0.0.1",
                "--address",
                "127.0.0.1",
                "--port",
                "0",
                "--metrics-bind-address",
                "127.0.0.1:0",
            ])
            .arg("--service-cgroup")
            .arg(&node.cgroup)
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("orch-node.log")).expect("log"))
            .spawn()
            .expect("start orch-node"),
    );
    // A Service selecting no pod: its ClusterIP refuses connections.
    let service = manifest::parse_str(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lonely}\nspec:\n  selector: {app: nobody}\n  ports: [{port: 8080}]\n",
        "test",
    )
    .expect("manifest")
    .remove(0)
    .object;
    let Object::Service(created) = client.create(&service, false).await.expect("create") else {
        panic!("not a service")
    };
    let cluster_ip = created
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("a ClusterIP");
    let frontend = format!("{cluster_ip}:8080");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = std::process::Command::new(&orch_node)
            .args(["--node-name", &node_name, "dataplane", "dump"])
            .output()
            .expect("orch-node dataplane dump");
        let printed = String::from_utf8_lossy(&dump.stdout);
        if printed.contains(&frontend) {
            assert!(printed.contains("<none: connections refused>"), "{printed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{frontend} never reached the table: {printed}{}\nagent log: {}",
            String::from_utf8_lossy(&dump.stderr),
            std::fs::read_to_string(dir.path().join("orch-node.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The programs hang off the cgroup the agent was given.
    let attached = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&node.cgroup)
        .output()
        .expect("bpftool");
    let attached = String::from_utf8_lossy(&attached.stdout);
    for program in [
        "sock4_connect",
        "sock4_sendmsg",
        "sock4_recvmsg",
        "sock4_getpeername",
    ] {
        assert!(
            attached.contains(program),
            "{program} not attached: {attached}"
        );
    }
}
