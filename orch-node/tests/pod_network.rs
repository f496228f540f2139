//! Pod networking with the real kernel programs: two nodes (network
//! namespaces on a bridge in a third), pods as network namespaces plumbed
//! by `PodNetwork` (veth, /32, link-local gateway, `pod_from_pod` and
//! `pod_from_net`), routes to the other node's podCIDR from
//! `node_routes`. Pod to pod on one node and across nodes, host to pod and
//! pod to the other node; an agent restart that keeps every pod reachable
//! and every address; removal that releases the address.
//!
//! The nodes' own interface has forwarding off, so the kernel would never
//! forward another node's packet to a pod: that it arrives proves
//! `pod_from_net`'s redirect did it.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_netns, run};
use orch_node::dataplane::pod_network::{PodInterface, PodNetwork, host_interface_name};
use orch_node::dataplane::{PinLayout, bpffs};
use orch_node::net::ipam::PodCidr;
use orch_node::net::netlink;
use orch_node::net::node_routes::{self, NodeRoute};
use orch_tests::netns::{Lan, Namespace};

const NODE_ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2)];
const POD_CIDRS: [&str; 2] = ["10.201.1.0/24", "10.201.2.0/24"];
const ECHO_PORT: u16 = 8080;

/// The namespaces, state directories and pins of the test; undone on drop
/// (a failed assertion included).
struct Cluster {
    /// Pods before the LAN (its hosts are the nodes).
    pods: Vec<Namespace>,
    _lan: Lan,
    nodes: [String; 2],
    layouts: [PinLayout; 2],
    state: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Self {
        let pid = std::process::id();
        let mut lan = Lan::new(&format!("orch-t{pid}"));
        let nodes = [
            lan.add_host("n1", NODE_ADDRESSES[0]),
            lan.add_host("n2", NODE_ADDRESSES[1]),
        ];
        let bpffs_root = Path::new(bpffs::BPFFS_ROOT);
        Cluster {
            pods: Vec::new(),
            _lan: lan,
            nodes,
            layouts: [1, 2].map(|n| {
                PinLayout::new(bpffs_root, &format!("test-podnet-{pid}-n{n}")).expect("layout")
            }),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn state_dir(&self, node: usize) -> PathBuf {
        let dir = self.state.path().join(format!("n{node}"));
        std::fs::create_dir_all(&dir).expect("state dir");
        dir
    }

    /// A pod sandbox: a network namespace with loopback up.
    fn pod_namespace(&mut self, name: &str) -> String {
        let netns = Namespace::new(&format!("orch-t{}-{name}", std::process::id()));
        let name = netns.name().to_string();
        self.pods.push(netns);
        name
    }

    /// Runs `work` as node `node`'s agent would: in the node's namespace,
    /// on a runtime of its own, with the node's pod network started afresh
    /// (so every call is also an agent restart that adopts the pins).
    fn as_agent<T, F>(&self, node: usize, work: impl FnOnce(PodNetwork) -> F + Send + 'static) -> T
    where
        T: Send + 'static,
        F: std::future::Future<Output = T>,
    {
        let layout = self.layouts[node].clone();
        let state = self.state_dir(node);
        in_netns(&self.nodes[node], move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let network = PodNetwork::start(&layout, &state, "eth0").expect("pod network");
                work(network).await
            })
        })
        .join()
        .expect("agent thread")
    }

    fn add_pod(&mut self, node: usize, uid: &str) -> (String, PodInterface) {
        let netns = self.pod_namespace(uid);
        let path = PathBuf::from(format!("/var/run/netns/{netns}"));
        let cidr = PodCidr::parse(POD_CIDRS[node]).expect("cidr");
        let uid = uid.to_string();
        let interface = self.as_agent(node, move |network| async move {
            network.add(cidr, &uid, &path).await.expect("add pod")
        });
        (netns, interface)
    }

    fn routes(&self, node: usize, wanted: BTreeSet<NodeRoute>) -> BTreeSet<NodeRoute> {
        in_netns(&self.nodes[node], move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let handle = netlink::connect().expect("netlink");
                node_routes::apply(&handle, &wanted)
                    .await
                    .expect("apply routes");
                node_routes::installed(&handle).await.expect("list routes")
            })
        })
        .join()
        .expect("routes thread")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for layout in &self.layouts {
            let _ = layout.remove_all();
        }
    }
}

/// A TCP server in `netns` that answers each connection with the address
/// it came from, and closes.
fn serve_peer_address(netns: &str, address: Ipv4Addr, port: u16) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let _server = in_netns(netns, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(address, port)).expect("bind");
        ready_tx.send(()).expect("ready");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Ok(peer) = stream.peer_addr() {
                let _ = stream.write_all(peer.ip().to_string().as_bytes());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the server listens");
}

/// From `netns`, the peer address `target` saw, or the connection error.
fn peer_seen(netns: &str, target: Ipv4Addr, port: u16) -> Result<Ipv4Addr, String> {
    in_netns(netns, move || {
        let mut stream = TcpStream::connect_timeout(
            &SocketAddrV4::new(target, port).into(),
            Duration::from_secs(2),
        )
        .map_err(|e| format!("connect {target}:{port}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| format!("read from {target}: {e}"))?;
        answer
            .parse()
            .map_err(|e| format!("answer {answer:?}: {e}"))
    })
    .join()
    .expect("client thread")
}

fn read_sysctl(netns: &str, key: &'static str) -> String {
    in_netns(netns, move || {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{key}")).expect("sysctl")
    })
    .join()
    .expect("sysctl thread")
    .trim()
    .to_string()
}

#[test]
fn pods_reach_each_other_on_a_node_and_across_nodes() {
    let mut cluster = Cluster::new();
    let (ns_a, a) = cluster.add_pod(0, "pod-a");
    let (ns_b, b) = cluster.add_pod(0, "pod-b");
    let (ns_c, c) = cluster.add_pod(1, "pod-c");
    assert_eq!(a.address, Ipv4Addr::new(10, 201, 1, 1));
    assert_eq!(b.address, Ipv4Addr::new(10, 201, 1, 2));
    assert_eq!(c.address, Ipv4Addr::new(10, 201, 2, 1));
    assert_eq!(a.host_interface, host_interface_name("pod-a"));
    for (node, other) in [(0, 1), (1, 0)] {
        let cidr = PodCidr::parse(POD_CIDRS[other]).expect("cidr");
        let route = NodeRoute {
            network: cidr.network(),
            prefix: cidr.prefix(),
            via: NODE_ADDRESSES[other],
        };
        let installed = cluster.routes(node, BTreeSet::from([route]));
        assert_eq!(installed, BTreeSet::from([route]), "node {node}'s routes");
    }
    // The kernel would not forward from the node network to a pod.
    for node in &cluster.nodes {
        assert_eq!(read_sysctl(node, "conf/eth0/forwarding"), "0", "{node}");
    }
    for (netns, pod) in [(&ns_a, &a), (&ns_b, &b), (&ns_c, &c)] {
        serve_peer_address(netns, pod.address, ECHO_PORT);
    }
    serve_peer_address(&cluster.nodes[1], NODE_ADDRESSES[1], ECHO_PORT);

    // Same node, both ways: no address translation.
    assert_eq!(peer_seen(&ns_a, b.address, ECHO_PORT), Ok(a.address));
    assert_eq!(peer_seen(&ns_b, a.address, ECHO_PORT), Ok(b.address));
    // Across nodes, both ways.
    assert_eq!(peer_seen(&ns_a, c.address, ECHO_PORT), Ok(a.address));
    assert_eq!(peer_seen(&ns_c, b.address, ECHO_PORT), Ok(c.address));
    // The node itself reaches its pods (through the /32 route)...
    assert_eq!(
        peer_seen(&cluster.nodes[0], a.address, ECHO_PORT),
        Ok(NODE_ADDRESSES[0])
    );
    // ...and a pod reaches another node's address (FIB, redirect_neigh).
    assert_eq!(
        peer_seen(&ns_a, NODE_ADDRESSES[1], ECHO_PORT),
        Ok(a.address)
    );

    // The local pods as the kernel sees them, readable by bpftool.
    let dump = run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            cluster.layouts[0]
                .map("POD_ENDPOINTS")
                .to_str()
                .expect("utf-8"),
        ],
    );
    for field in ["\"address\"", "\"ifindex\"", "\"pod_mac\"", "\"host_mac\""] {
        assert!(dump.contains(field), "{field} in {dump}");
    }
    assert_eq!(dump.matches("\"key\"").count(), 2, "{dump}");

    // A restarted agent (every as_agent call starts afresh) keeps what it
    // gave: a new pod gets the next address, and the old ones still answer.
    let (ns_d, d) = cluster.add_pod(0, "pod-d");
    assert_eq!(d.address, Ipv4Addr::new(10, 201, 1, 3));
    serve_peer_address(&ns_d, d.address, ECHO_PORT);
    assert_eq!(peer_seen(&ns_c, d.address, ECHO_PORT), Ok(c.address));
    assert_eq!(peer_seen(&ns_c, a.address, ECHO_PORT), Ok(c.address));

    // Removal: the interface, the map entry and the address go.
    let (held, endpoints) = cluster.as_agent(0, |network| async move {
        network.remove("pod-b").await.expect("remove");
        // Twice is fine (a retried release).
        network.remove("pod-b").await.expect("remove again");
        (
            network.address_of("pod-b"),
            network.endpoints().expect("endpoints"),
        )
    });
    assert_eq!(held, None);
    let listed: BTreeSet<Ipv4Addr> = endpoints.iter().map(|(address, _)| *address).collect();
    assert_eq!(listed, BTreeSet::from([a.address, d.address]));
    let links = run("ip", &["-n", &cluster.nodes[0], "-o", "link", "show"]);
    assert!(!links.contains(&b.host_interface), "{links}");
    assert!(peer_seen(&ns_a, b.address, ECHO_PORT).is_err());
    // Round robin: the released address is not the next one given.
    let (_, e) = cluster.add_pod(0, "pod-e");
    assert_eq!(e.address, Ipv4Addr::new(10, 201, 1, 4));

    // Routes no Node wants any more go.
    assert!(cluster.routes(0, BTreeSet::new()).is_empty());
    assert!(peer_seen(&ns_a, c.address, ECHO_PORT).is_err());
}
