//! Pod networking end to end: a control-plane host and two nodes, each a
//! network namespace on one LAN; on each node a real orch-node with
//! `--pod-network-interface eth0` and `--service-cgroup` runs real
//! containers (busybox httpd from the node's image store). Pods get
//! addresses from their node's podCIDR (assigned by the control plane),
//! reach each other across nodes with no NAT, reach a ClusterIP Service
//! balanced over both; a client host on the LAN reaches both through
//! one node's NodePort (and only that node's pod, keeping its address,
//! with `externalTrafficPolicy: Local`), and a LoadBalancer address from
//! the configured range; deleted pods give their address back.

mod common;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::exec::exec_in;
use k8s_openapi::api::core::v1::Pod;
use orch_core::api::ApiClient;
use orch_core::object::{Kind, Object};
use orch_node::dataplane::pod_network::host_interface_name;
use orch_node::dataplane::{PinLayout, bpffs, cgroup2};
use orch_tests::netns::{Lan, in_netns, run};

const CONTROL_PLANE: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 254);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 100);
/// LoadBalancer addresses (the client routes them through node 1, as a
/// router announcing them would).
const LOAD_BALANCERS: &str = "10.210.100.0/28";
const NODE_ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 210, 0, 1), Ipv4Addr::new(10, 210, 0, 2)];
const IMAGE: &str = "orch.test/web:1";

/// One node: its namespace, name, state and service cgroup.
#[derive(Clone)]
struct NodeHost {
    netns: String,
    name: String,
    address: Ipv4Addr,
    state: PathBuf,
    cgroup: PathBuf,
}

/// What the nodes leave behind, released on drop (after the agents are
/// gone): pods' shims, containers and mounts, service cgroups, pins.
struct Nodes(Vec<NodeHost>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for node in &self.0 {
            if let Err(error) = orch_node::runtime::release::release_all(&node.state, &node.name) {
                eprintln!("releasing node {}'s pods: {error}", node.name);
            }
            for _ in 0..50 {
                match std::fs::remove_dir(&node.cgroup) {
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
            if let Ok(layout) = PinLayout::new(Path::new(bpffs::BPFFS_ROOT), &node.name) {
                let _ = layout.remove_all();
            }
        }
    }
}

/// An orch-node process, killed on drop.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn orch_node() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_orch-control")).with_file_name("orch-node")
}

/// Starts node `node`'s agent inside its namespace (what a thread forks
/// starts in the thread's namespace).
fn start_agent(node: &NodeHost, config: &Path) -> Agent {
    let node = node.clone();
    let config = config.to_path_buf();
    let netns = node.netns.clone();
    let child = in_netns(&netns, move || {
        Command::new(orch_node())
            .args(["--node-name", &node.name, "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&node.state)
            .args(["--node-ip", &node.address.to_string()])
            .args(["--address", &node.address.to_string(), "--port", "0"])
            .args(["--pod-network-interface", "eth0", "--service-cgroup"])
            .arg(&node.cgroup)
            .args(["--image-gc-high-threshold", "100"])
            .env_remove("RUST_BACKTRACE")
            // The kernel programs' aya-log records, at debug level.
            .env("RUST_LOG", "info,orch_ebpf=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(node.state.with_extension("log")).expect("log"))
            .spawn()
            .expect("start orch-node")
    })
    .join()
    .expect("agent spawner");
    Agent(child)
}

fn object(yaml: &str) -> Object {
    orch_core::manifest::parse_str(yaml, "test")
        .expect("manifest")
        .remove(0)
        .object
}

fn web_pod(name: &str, node: &str) -> Object {
    object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {IMAGE}\n    ports: [{{name: http, containerPort: 8080}}]\n    command: [sh, -c, 'mkdir -p /www; hostname > /www/index.html; exec httpd -f -p 8080 -h /www']\n    readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}\n"
    ))
}

async fn pod(client: &mut ApiClient, name: &str) -> Option<Pod> {
    match client.get(Kind::Pod, Some("default"), name).await {
        Ok(Object::Pod(pod)) => Some(*pod),
        _ => None,
    }
}

/// Waits until pod `name` is Ready; its address.
async fn ready_address(client: &mut ApiClient, name: &str, logs: &[PathBuf]) -> Ipv4Addr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = pod(client, name).await.and_then(|p| p.status);
        let ready = status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready && let Some(ip) = status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
            return ip.parse().expect("podIP");
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} never became ready: {status:?}\n{}",
            logs.iter()
                .map(|l| std::fs::read_to_string(l).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pod_cidr(client: &mut ApiClient, node: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Object::Node(node)) = client.get(Kind::Node, None, node).await
            && let Some(cidr) = node.spec.and_then(|s| s.pod_cidr)
        {
            return cidr;
        }
        assert!(Instant::now() < deadline, "node {node} got no podCIDR");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `wget` in pod `from`: what `url` answered (a pod's hostname).
async fn fetch(client: &mut ApiClient, from: &str, url: &str) -> Result<String, String> {
    // Debian's busybox wget crashes on -T: `timeout` bounds it instead.
    let command = ["timeout", "5", "wget", "-q", "-O", "-", url];
    match exec_in(client, from, &command, None, false).await {
        Ok((out, _, Some(0))) => Ok(out.trim().to_string()),
        Ok((out, err, code)) => Err(format!("{url} from {from}: {code:?} {out} {err}")),
        Err(error) => Err(format!("{url} from {from}: {error}")),
    }
}

/// `orchctl node monitor ...` running, its lines read as they come.
struct Monitor {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Monitor {
    fn start(config: &str, args: &[&str]) -> Self {
        let mut child = Command::new(common::ORCHCTL)
            .args(["node", "monitor"])
            .args(args)
            .env("ORCH_CONFIG", config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("orchctl node monitor");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let monitor = Monitor { child, lines };
        // The header comes once the node's stream is open.
        let header = monitor
            .lines
            .recv_timeout(Duration::from_secs(10))
            .expect("the monitor's header");
        assert!(header.starts_with("TIME"), "{header}");
        monitor
    }

    /// The first line (within a second) that `wanted` picks.
    fn find(&mut self, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /` at `address:port` over plain TCP: the body (a pod's hostname).
fn http_get(address: Ipv4Addr, port: u16) -> Result<String, String> {
    orch_tests::cluster::http_get(address, port, "/")
}

fn in_cidr(address: Ipv4Addr, cidr: &str) -> bool {
    let (network, prefix) = cidr.split_once('/').expect("cidr");
    let network: Ipv4Addr = network.parse().expect("network");
    let mask = u32::MAX << (32 - prefix.parse::<u32>().expect("prefix"));
    u32::from(address) & mask == u32::from(network)
}

#[test]
fn pods_on_two_nodes_talk_directly_and_through_a_cluster_ip() {
    let pid = std::process::id();
    let mut lan = Lan::new(&format!("orch-e{pid}"));
    let control_plane = lan.add_host("cp", CONTROL_PLANE);
    let client_host = lan.add_host("client", CLIENT);
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup_root = cgroup2::mount_point().expect("a cgroup2 hierarchy");
    let nodes: Vec<NodeHost> = NODE_ADDRESSES
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let short = format!("n{}", index + 1);
            let node = NodeHost {
                netns: lan.add_host(&short, *address),
                name: format!("pn{pid}-{short}"),
                address: *address,
                state: dir.path().join(&short),
                cgroup: cgroup_root.join(format!("orch-e{pid}-{short}")),
            };
            std::fs::create_dir_all(&node.cgroup).expect("service cgroup");
            node
        })
        .collect();
    let _nodes = Nodes(nodes.clone());
    let root = dir.path().to_path_buf();
    let scenario = in_netns(&control_plane, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario(root, nodes, client_host))
    });
    if let Err(panic) = scenario.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn scenario(dir: PathBuf, nodes: Vec<NodeHost>, client_host: String) {
    // The control plane serves the API on the LAN (every process this
    // thread starts is in the control-plane namespace).
    let mut replica = common::Replica::new(1, dir.join("replica-1"));
    replica.api_addr = format!("{CONTROL_PLANE}:0");
    let mut args = vec!["--init"];
    args.extend(common::FAST_ELECTION);
    args.extend(["--load-balancer-ip-range", LOAD_BALANCERS]);
    replica.start(&args);
    let mut client = common::client_of(&replica).await;
    let logs: Vec<PathBuf> = nodes
        .iter()
        .map(|n| n.state.with_extension("log"))
        .collect();
    let mut agents = Vec::new();
    for node in &nodes {
        std::fs::create_dir_all(&node.state).expect("state dir");
        let store = orch_node::image::ImageStore::open(&node.state).expect("image store");
        orch_node::image::build::busybox_image(
            &store,
            &orch_node::image::Reference::parse(IMAGE).expect("reference"),
            Path::new(orch_node::image::build::BUSYBOX),
            &[],
            &["sh"],
        )
        .expect("image");
        let config = orch_control::pki::Pki::new(&replica.dir)
            .node_config(&node.name, std::slice::from_ref(&replica.api_addr))
            .expect("node certificate");
        let path = node.state.with_extension("conf");
        std::fs::write(&path, config.to_yaml()).expect("node config");
        agents.push(start_agent(node, &path));
    }
    let cidrs = [
        pod_cidr(&mut client, &nodes[0].name).await,
        pod_cidr(&mut client, &nodes[1].name).await,
    ];
    for (name, node) in [("web-a", &nodes[0]), ("web-b", &nodes[1])] {
        client
            .create(&web_pod(name, &node.name), false)
            .await
            .expect("create pod");
    }
    let service = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n",
    );
    let Object::Service(service) = client.create(&service, false).await.expect("service") else {
        panic!("not a service");
    };
    let cluster_ip = service.spec.and_then(|s| s.cluster_ip).expect("clusterIP");
    let a = ready_address(&mut client, "web-a", &logs).await;
    let b = ready_address(&mut client, "web-b", &logs).await;
    assert!(in_cidr(a, &cidrs[0]), "{a} in {}", cidrs[0]);
    assert!(in_cidr(b, &cidrs[1]), "{b} in {}", cidrs[1]);

    // Pod to pod across the nodes, both ways, as themselves.
    assert_eq!(
        fetch(&mut client, "web-a", &format!("http://{b}:8080/")).await,
        Ok("web-b".into())
    );
    assert_eq!(
        fetch(&mut client, "web-b", &format!("http://{a}:8080/")).await,
        Ok("web-a".into())
    );

    // The ClusterIP, from a pod: balanced over both pods once the
    // EndpointSlice reached the nodes' tables.
    let url = format!("http://{cluster_ip}/");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answered = std::collections::BTreeSet::new();
    while answered.len() < 2 {
        match fetch(&mut client, "web-a", &url).await {
            Ok(name) => {
                answered.insert(name);
            }
            Err(error) => assert!(Instant::now() < deadline, "{error}"),
        }
        assert!(
            Instant::now() < deadline,
            "the ClusterIP answered only as {answered:?}"
        );
    }
    assert_eq!(
        answered,
        ["web-a", "web-b"].map(String::from).into_iter().collect()
    );

    // NodePorts from a host that is not a node, through node 1.
    let mut node_ports = Vec::new();
    for (name, policy) in [("web-cluster", "Cluster"), ("web-local", "Local")] {
        let service = object(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: {policy}\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
        ));
        let Object::Service(service) = client.create(&service, false).await.expect("service")
        else {
            panic!("not a service");
        };
        let port = service
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().and_then(|p| p.node_port))
            .expect("a nodePort");
        node_ports.push(u16::try_from(port).expect("port"));
    }
    let node = nodes[0].address;
    let answers_at = |address: Ipv4Addr, port: u16, tries: usize| {
        in_netns(&client_host, move || {
            (0..tries)
                .map(|_| http_get(address, port))
                .collect::<Vec<Result<String, String>>>()
        })
        .join()
        .expect("client thread")
    };
    let answers = |port: u16, tries: usize| answers_at(node, port, tries);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: std::collections::BTreeSet<String> =
            answers(node_ports[0], 16).into_iter().flatten().collect();
        if seen.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NodePort {} answered only as {seen:?}",
            node_ports[0]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Local: only node 1's pod ever answers. The Service was made with the
    // Cluster one, whose answers the loop above waited for; this one's
    // frontend may reach the node's table a moment later (refused until
    // then), so the check runs once every answer comes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answered = answers(node_ports[1], 8);
        for body in answered.iter().flatten() {
            assert_eq!(body, "web-a", "externalTrafficPolicy Local");
        }
        if answered.iter().all(Result::is_ok) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "NodePort {} (Local) never answered: {answered:?}",
            node_ports[1]
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The node's dataplane through the API: its table, decoded, and how
    // full its maps are.
    let admin = dir.join("admin.conf");
    std::fs::write(
        &admin,
        replica
            .api_config(std::slice::from_ref(&replica.api_addr))
            .to_yaml(),
    )
    .expect("admin config");
    let admin = admin.to_string_lossy().into_owned();
    let table = common::ok(&admin, &["node", "dataplane", &nodes[0].name]);
    for expected in [
        format!("{cluster_ip}:80"),
        format!("{node}:{}", node_ports[0]),
        "CONNTRACK".to_string(),
        "(LRU)".to_string(),
    ] {
        assert!(table.contains(&expected), "{expected} in {table}");
    }

    // The monitor: a NodePort with no endpoint refuses the client (the
    // node's stack answers), and the drop is reported with its reason.
    let nobody = object(
        "apiVersion: v1\nkind: Service\nmetadata: {name: nobody, namespace: default}\nspec:\n  type: NodePort\n  selector: {app: nobody}\n  ports: [{port: 80, targetPort: 8080}]\n",
    );
    let Object::Service(nobody) = client.create(&nobody, false).await.expect("service") else {
        panic!("not a service");
    };
    let empty_port = nobody
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.first().and_then(|p| p.node_port))
        .and_then(|p| u16::try_from(p).ok())
        .expect("a nodePort");
    let mut drops = Monitor::start(&admin, &[&nodes[0].name, "--drops"]);
    let mut traces = Monitor::start(&admin, &[&nodes[0].name, "--pod", "web-a"]);
    let dropped = format!("{node}:{empty_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        // The frontend reaches the table soon after the Service is made.
        let _ = answers(empty_port, 1);
        let _ = answers(node_ports[1], 1);
        if let Some(line) = drops.find(|l| l.contains("no backend") && l.contains(&dropped)) {
            break line;
        }
        assert!(Instant::now() < deadline, "no drop reported for {dropped}");
    };
    assert!(
        line.contains("drop") && line.contains("TCP") && line.contains("eth0"),
        "{line}"
    );
    let traced = traces
        .find(|l| l.contains("trace") && l.contains(&a.to_string()))
        .expect("a trace of web-a's traffic");
    assert!(
        traced.contains("NodePort flow") || traced.contains("to local pod"),
        "{traced}"
    );
    drop((drops, traces));

    // The kernel's own log records reach the agent's log.
    let log = std::fs::read_to_string(&logs[0]).unwrap_or_default();
    assert!(log.contains("orch: NodePort flow to"), "{log}");

    // The dataplane outlives its agent: node 1's agent is killed and
    // started again under a steady NodePort load (both pods, one of them
    // on the other node), and no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let port = node_ports[0];
        in_netns(&client_host, move || {
            let (mut answered, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get(node, port) {
                    Ok(body) if body.starts_with("web-") => answered += 1,
                    Ok(body) => failed.push(format!("answer {body:?}")),
                    Err(error) => failed.push(error),
                }
            }
            (answered, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(agents.remove(0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    agents.insert(
        0,
        start_agent(&nodes[0], &nodes[0].state.with_extension("conf")),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (answered, failed) = load.join().expect("load thread");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the agent's restart: {:?}",
        failed.len(),
        answered as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(answered > 50, "only {answered} requests in 5.5 s");
    eprintln!("{answered} NodePort requests across the agent's kill and restart, none failed");
    // The restarted agent took its pods back.
    assert_eq!(
        fetch(&mut client, "web-a", &format!("http://{b}:8080/")).await,
        Ok("web-b".into())
    );

    // A deleted pod's interface goes with it.
    let Some(uid) = pod(&mut client, "web-b").await.and_then(|p| p.metadata.uid) else {
        panic!("web-b has no uid");
    };
    client
        .delete(Kind::Pod, Some("default"), "web-b", &Default::default())
        .await
        .expect("delete");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod(&mut client, "web-b").await.is_some() {
        assert!(Instant::now() < deadline, "web-b was never removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let links = run("ip", &["-n", &nodes[1].netns, "-o", "link", "show"]);
    assert!(!links.contains(&host_interface_name(&uid)), "{links}");
    assert!(
        fetch(&mut client, "web-a", &format!("http://{b}:8080/"))
            .await
            .is_err()
    );
    drop(agents);
}
