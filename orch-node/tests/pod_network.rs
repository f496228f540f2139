//! Pod networking with the real kernel programs: two nodes (network
//! namespaces on a bridge in a third), pods as network namespaces plumbed
//! by `PodNetwork` (veth, /32, link-local gateway, `pod_from_pod` and
//! `pod_from_net`), routes to the other node's podCIDR from
//! `node_routes`. Pod to pod on one node and across nodes, host to pod and
//! pod to the other node; an agent restart that keeps every pod reachable
//! and every address; removal that releases the address.
//!
//! A packet `bpf_redirect_peer` delivers skips the host veth's transmit
//! path, so the host veth's tx counter tells the programs delivered it,
//! not the kernel's forwarding. NodePort: a client host on the LAN reaches
//! pods on both nodes through one node's address, local backends seeing
//! the client's address, remote ones the node's (SNAT), over TCP and UDP.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_netns, run};
use orch_node::dataplane::monitor::Monitor;
use orch_node::dataplane::pod_network::{PodInterface, PodNetwork, host_interface_name};
use orch_node::dataplane::services::{Frontend, Protocol, ServiceTable};
use orch_node::dataplane::{PinLayout, bpffs};
use orch_node::net::ipam::PodCidr;
use orch_node::net::netlink;
use orch_node::net::node_routes::{self, NodeRoute};
use orch_tests::netns::{Lan, Namespace, block_on_in};

const NODE_ADDRESSES: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 200, 0, 1), Ipv4Addr::new(10, 200, 0, 2)];
const POD_CIDRS: [&str; 2] = ["10.201.1.0/24", "10.201.2.0/24"];
const ECHO_PORT: u16 = 8080;

/// The namespaces, state directories and pins of the test; undone on drop
/// (a failed assertion included).
struct Cluster {
    /// What namespaces are named after.
    prefix: String,
    /// Pods before the LAN (its hosts are the nodes).
    pods: Vec<Namespace>,
    lan: Lan,
    nodes: [String; 2],
    layouts: [PinLayout; 2],
    state: tempfile::TempDir,
}

impl Cluster {
    /// Namespaces and pins named after `tag` (one per test).
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let prefix = format!("orch-{tag}{pid}");
        let mut lan = Lan::new(&prefix);
        let nodes = [
            lan.add_host("n1", NODE_ADDRESSES[0]),
            lan.add_host("n2", NODE_ADDRESSES[1]),
        ];
        let bpffs_root = Path::new(bpffs::BPFFS_ROOT);
        Cluster {
            prefix,
            pods: Vec::new(),
            lan,
            nodes,
            layouts: [1, 2].map(|n| {
                PinLayout::new(bpffs_root, &format!("test-{tag}-{pid}-n{n}")).expect("layout")
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
        let netns = Namespace::new(&format!("{}-{name}", self.prefix));
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
        block_on_in(&self.nodes[node], move || async move {
            let network = PodNetwork::start(&layout, &state, "eth0", NODE_ADDRESSES[node])
                .expect("pod network");
            work(network).await
        })
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

    /// Each node routes the other's podCIDR through it.
    fn route_between_nodes(&self) {
        for (node, other) in [(0, 1), (1, 0)] {
            let cidr = PodCidr::parse(POD_CIDRS[other]).expect("cidr");
            let route = NodeRoute {
                network: cidr.network(),
                prefix: cidr.prefix(),
                via: NODE_ADDRESSES[other],
            };
            let installed = self.routes(node, BTreeSet::from([route]));
            assert_eq!(installed, BTreeSet::from([route]), "node {node}'s routes");
        }
    }

    fn routes(&self, node: usize, wanted: BTreeSet<NodeRoute>) -> BTreeSet<NodeRoute> {
        block_on_in(&self.nodes[node], move || async move {
            let handle = netlink::connect().expect("netlink");
            node_routes::apply(&handle, &wanted)
                .await
                .expect("apply routes");
            node_routes::installed(&handle).await.expect("list routes")
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for layout in &self.layouts {
            let _ = layout.remove_all();
        }
    }
}

/// TCP and UDP servers in `netns` on `address:port` that answer each
/// connection or datagram with `<own address> <peer address>`.
fn serve_peer_address(netns: &str, address: Ipv4Addr, port: u16) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let udp_ready = ready_tx.clone();
    let _tcp = in_netns(netns, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(address, port)).expect("bind");
        ready_tx.send(()).expect("ready");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Ok(peer) = stream.peer_addr() {
                let _ = stream.write_all(format!("{address} {}", peer.ip()).as_bytes());
            }
        }
    });
    let _udp = in_netns(netns, move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(address, port)).expect("bind udp");
        udp_ready.send(()).expect("ready");
        let mut buffer = [0u8; 64];
        while let Ok((_, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(format!("{address} {}", peer.ip()).as_bytes(), peer);
        }
    });
    for _ in 0..2 {
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the servers listen");
    }
}

/// An answer of the servers: (the server's address, the peer it saw).
type Answer = (Ipv4Addr, Ipv4Addr);

fn parse_answer(text: &str) -> Result<Answer, String> {
    let (own, peer) = text.split_once(' ').ok_or(format!("answer {text:?}"))?;
    let parse = |a: &str| a.parse().map_err(|e| format!("answer {text:?}: {e}"));
    Ok((parse(own)?, parse(peer)?))
}

/// Reads a server's whole answer from `stream`.
fn read_answer(mut stream: TcpStream, target: Ipv4Addr) -> Result<Answer, String> {
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read from {target}: {e}"))?;
    parse_answer(&answer)
}

/// From `netns`, over TCP: who answered at `target:port`, and whom it saw.
fn exchange(netns: &str, target: Ipv4Addr, port: u16) -> Result<Answer, String> {
    in_netns(netns, move || {
        let address = SocketAddrV4::new(target, port).into();
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
            .map_err(|e| format!("connect {target}:{port}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        read_answer(stream, target)
    })
    .join()
    .expect("client thread")
}

/// [`exchange`] from the client port `source_port`.
fn exchange_from(
    netns: &str,
    target: Ipv4Addr,
    port: u16,
    source_port: u16,
) -> Result<Answer, String> {
    in_netns(netns, move || {
        let stream = connect_bound(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, source_port),
            SocketAddrV4::new(target, port),
        )?;
        read_answer(stream, target)
    })
    .join()
    .expect("client thread")
}

/// The same over UDP, from a socket bound to `port` (so the client's port
/// is known).
fn exchange_udp(netns: &str, target: Ipv4Addr, port: u16) -> Result<Answer, String> {
    in_netns(netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        socket
            .send_to(b"who", SocketAddrV4::new(target, port))
            .map_err(|e| format!("send to {target}:{port}: {e}"))?;
        let mut buffer = [0u8; 64];
        let (length, from) = socket
            .recv_from(&mut buffer)
            .map_err(|e| format!("udp {target}:{port}: {e}"))?;
        // The answer comes from the address dialled (reverse translation).
        if from != SocketAddrV4::new(target, port).into() {
            return Err(format!("answer from {from}, not {target}:{port}"));
        }
        parse_answer(&String::from_utf8_lossy(&buffer[..length]))
    })
    .join()
    .expect("client thread")
}

/// From `netns`, the peer address `target` saw, or the connection error.
fn peer_seen(netns: &str, target: Ipv4Addr, port: u16) -> Result<Ipv4Addr, String> {
    exchange(netns, target, port).map(|(_, peer)| peer)
}

/// A TCP connection to `target` from the local address `local` (its
/// port reusable at once), sends and reads bounded to 2 s.
fn connect_bound(local: SocketAddrV4, target: SocketAddrV4) -> Result<TcpStream, String> {
    use nix::sys::socket::{
        AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, setsockopt, socket, sockopt,
    };
    use std::os::fd::AsRawFd as _;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| e.to_string())?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| e.to_string())?;
    let timeout = nix::sys::time::TimeVal::new(2, 0);
    setsockopt(&fd, sockopt::SendTimeout, &timeout).map_err(|e| e.to_string())?;
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|e| e.to_string())?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).map_err(|e| format!("bind {local}: {e}"))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(target))
        .map_err(|e| format!("connect {target}: {e}"))?;
    Ok(TcpStream::from(fd))
}

/// A TCP connect to `target` from the local address `source` (2 s at
/// most).
fn connect_from(source: Ipv4Addr, target: SocketAddrV4) -> Result<(), String> {
    connect_bound(SocketAddrV4::new(source, 0), target).map(|_| ())
}

/// Packets sent through `interface` in `netns`.
fn tx_packets(netns: &str, interface: &str) -> u64 {
    let json = run(
        "ip",
        &["-n", netns, "-j", "-s", "link", "show", "dev", interface],
    );
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j");
    links[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx counter in {json}"))
}

#[test]
fn pods_reach_each_other_on_a_node_and_across_nodes() {
    let mut cluster = Cluster::new("t");
    let (ns_a, a) = cluster.add_pod(0, "pod-a");
    let (ns_b, b) = cluster.add_pod(0, "pod-b");
    let (ns_c, c) = cluster.add_pod(1, "pod-c");
    assert_eq!(a.address, Ipv4Addr::new(10, 201, 1, 1));
    assert_eq!(b.address, Ipv4Addr::new(10, 201, 1, 2));
    assert_eq!(c.address, Ipv4Addr::new(10, 201, 2, 1));
    assert_eq!(a.host_interface, host_interface_name("pod-a"));
    cluster.route_between_nodes();
    for (netns, pod) in [(&ns_a, &a), (&ns_b, &b), (&ns_c, &c)] {
        serve_peer_address(netns, pod.address, ECHO_PORT);
    }
    serve_peer_address(&cluster.nodes[1], NODE_ADDRESSES[1], ECHO_PORT);

    // Same node, both ways: no address translation.
    assert_eq!(peer_seen(&ns_a, b.address, ECHO_PORT), Ok(a.address));
    assert_eq!(peer_seen(&ns_b, a.address, ECHO_PORT), Ok(b.address));
    // Across nodes, both ways; the programs deliver (the host veth never
    // transmits the packets: bpf_redirect_peer skips it).
    let sent_before = tx_packets(&cluster.nodes[1], &c.host_interface);
    for _ in 0..5 {
        assert_eq!(peer_seen(&ns_a, c.address, ECHO_PORT), Ok(a.address));
    }
    let sent = tx_packets(&cluster.nodes[1], &c.host_interface) - sent_before;
    assert!(sent < 5, "{sent} packets went through the host veth");
    assert_eq!(peer_seen(&ns_c, b.address, ECHO_PORT), Ok(c.address));
    // The node itself reaches its pods (through the /32 route, so the
    // host veth does transmit: the counter above counts)...
    let sent_before = tx_packets(&cluster.nodes[0], &a.host_interface);
    assert_eq!(
        peer_seen(&cluster.nodes[0], a.address, ECHO_PORT),
        Ok(NODE_ADDRESSES[0])
    );
    let sent = tx_packets(&cluster.nodes[0], &a.host_interface) - sent_before;
    assert!(sent >= 3, "only {sent} packets through the host veth");
    // ...and a pod reaches another node's address (FIB, redirect_neigh).
    assert_eq!(
        peer_seen(&ns_a, NODE_ADDRESSES[1], ECHO_PORT),
        Ok(a.address)
    );

    // A pod cannot send as another address (its veth's program drops it).
    run(
        "ip",
        &["-n", &ns_a, "addr", "add", "10.201.1.99/32", "dev", "eth0"],
    );
    // The drop is seen in the node's event ring buffer, with its reason.
    let target = SocketAddrV4::new(c.address, ECHO_PORT);
    let (layout, client_ns) = (cluster.layouts[0].clone(), ns_a.clone());
    let dropped = block_on_in(&cluster.nodes[0], move || async move {
        let monitor = Monitor::start(&layout).expect("monitor");
        let mut watch = monitor.watch(false);
        let spoofer = in_netns(&client_ns, move || {
            connect_from(Ipv4Addr::new(10, 201, 1, 99), target)
        });
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match watch.events.recv().await {
                    Ok(event) if event.reason == "source not the pod's" => return Some(event),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
        .await;
        let _ = spoofer.join();
        seen.ok().flatten()
    })
    .expect("a drop of the forged packet");
    assert_eq!(dropped.kind, "drop");
    assert_eq!(dropped.source.split(':').next(), Some("10.201.1.99"));
    assert_eq!(dropped.destination, target.to_string());
    assert_eq!(dropped.interface, a.host_interface);
    // From the pod's own address, the same connect goes through.
    let address = a.address;
    let genuine = in_netns(&ns_a, move || connect_from(address, target))
        .join()
        .expect("client");
    assert_eq!(genuine, Ok(()));
    run(
        "ip",
        &["-n", &ns_a, "addr", "del", "10.201.1.99/32", "dev", "eth0"],
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

#[test]
fn node_ports_take_clients_from_outside_the_nodes() {
    let mut cluster = Cluster::new("np");
    let client_address = Ipv4Addr::new(10, 200, 0, 100);
    let client = cluster.lan.add_host("client", client_address);
    let (ns_a, a) = cluster.add_pod(0, "pod-a");
    let (ns_c, c) = cluster.add_pod(1, "pod-c");
    cluster.route_between_nodes();
    serve_peer_address(&ns_a, a.address, ECHO_PORT);
    serve_peer_address(&ns_c, c.address, ECHO_PORT);
    let node = NODE_ADDRESSES[0];
    let backends = [
        SocketAddrV4::new(a.address, ECHO_PORT),
        SocketAddrV4::new(c.address, ECHO_PORT),
    ];
    // What service sync writes for a NodePort Service (policy Cluster:
    // every ready endpoint; Local: the node's own; none: refused).
    let mut table = ServiceTable::open(&cluster.layouts[0]).expect("service table");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let frontend = |port| Frontend {
            address: node,
            port,
            protocol,
        };
        table.set(frontend(30080), &backends, 0).expect("cluster");
        table
            .set(frontend(30081), &backends[..1], 0)
            .expect("local");
        table.set(frontend(30082), &[], 0).expect("none");
        table.set(frontend(30083), &backends, 60).expect("affinity");
    }

    // Policy Cluster: both pods answer through node 1; the local one sees
    // the client, the remote one node 1 (whose address the flow took, so
    // the reply comes back through it).
    for (protocol, exchange) in [
        (
            "tcp",
            exchange as fn(&str, Ipv4Addr, u16) -> Result<Answer, String>,
        ),
        ("udp", exchange_udp),
    ] {
        let mut seen = BTreeMap::new();
        for _ in 0..64 {
            let (server, peer) = exchange(&client, node, 30080).expect(protocol);
            seen.insert(server, peer);
            if seen.len() == 2 {
                break;
            }
        }
        assert_eq!(
            seen,
            BTreeMap::from([(a.address, client_address), (c.address, node)]),
            "{protocol}"
        );
        // Policy Local: only the node's pod, which sees the client.
        for _ in 0..8 {
            assert_eq!(
                exchange(&client, node, 30081),
                Ok((a.address, client_address)),
                "{protocol}"
            );
        }
        // No ready endpoint: refused by the node at once (a TCP reset;
        // an ICMP port unreachable an unconnected UDP socket never sees).
        let started = std::time::Instant::now();
        let refused = exchange(&client, node, 30082);
        assert!(refused.is_err(), "{protocol}");
        if protocol == "tcp" {
            let error = refused.unwrap_err();
            assert!(error.contains("refused"), "{error}");
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "{:?}",
                started.elapsed()
            );
        }
        // sessionAffinity ClientIP: the client keeps one backend.
        let kept: BTreeSet<Answer> = (0..16)
            .map(|_| exchange(&client, node, 30083).expect(protocol))
            .collect();
        assert_eq!(kept.len(), 1, "{protocol}: affinity gave {kept:?}");
    }

    // A client that reuses its source port right after a connection on it
    // closed gets a backend from the table as it is now: the closed
    // connection's backend may be gone.
    let tcp = Frontend {
        address: node,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    let (first, _) = exchange_from(&client, node, 30080, 40_123).expect("first connection");
    let other = *backends
        .iter()
        .find(|backend| *backend.ip() != first)
        .expect("another backend");
    table.set(tcp, &[other], 0).expect("one backend left");
    for _ in 0..4 {
        let (second, _) = exchange_from(&client, node, 30080, 40_123).expect("the port reused");
        assert_eq!(second, *other.ip(), "a reused port kept a removed backend");
    }

    // The connection table as bpftool shows it.
    let dump = run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            cluster.layouts[0].map("CONNTRACK").to_str().expect("utf-8"),
        ],
    );
    for field in ["\"src_address\"", "\"dst_port\"", "\"protocol\""] {
        assert!(dump.contains(field), "{field} in {dump}");
    }
}
