//! ClusterIP balancing at the socket, for real: orch's connect4, sendmsg4,
//! recvmsg4 and getpeername4 programs attached to a cgroup2 directory the
//! test creates, this test process moved into it (cgroup membership is per
//! process: hence one test in this file), backends listening in a network
//! namespace the test creates, and clients dialling service addresses from
//! that namespace. Needs root, BPF and cgroup2; fails (never skips) without
//! them. Everything made is removed on drop, also when an assertion fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{in_netns, run};
use orch_node::dataplane::services::{self, Balancing, Frontend, Protocol, ServiceTable};
use orch_node::dataplane::{PinLayout, bpffs, cgroup2};

const BACKENDS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 250, 0, 1), Ipv4Addr::new(10, 250, 0, 2)];
const BACKEND_PORT: u16 = 8080;
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 10);
const EMPTY_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 11);

/// The namespace, the cgroup (with this process inside) and the node's
/// pins; undone on drop.
struct Fixture {
    netns: String,
    /// The cgroup2 directory this process was in, to go back to.
    cgroup_before: PathBuf,
    cgroup: PathBuf,
    layout: PinLayout,
}

/// This process's cgroup2 directory (`0::/path` in /proc/self/cgroup).
fn own_cgroup(root: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
    let path = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/");
    root.join(path.trim_start_matches('/'))
}

impl Fixture {
    fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test loads eBPF programs, creates a network namespace and a cgroup: run it \
             as root (CI does; `sudo -E cargo xtask test` locally)"
        );
        let pid = std::process::id();
        let cgroup_root = cgroup2::mount_point().expect("a cgroup2 hierarchy");
        let bpffs_root = Path::new(bpffs::BPFFS_ROOT);
        let fixture = Fixture {
            netns: format!("orch-test-lb-{pid}"),
            cgroup: cgroup_root.join(format!("orch-test-lb-{pid}")),
            cgroup_before: own_cgroup(&cgroup_root),
            layout: PinLayout::new(bpffs_root, &format!("test-lb-{pid}")).expect("layout"),
        };
        run("ip", &["netns", "add", &fixture.netns]);
        run("ip", &["-n", &fixture.netns, "link", "set", "lo", "up"]);
        for backend in BACKENDS {
            let address = format!("{backend}/32");
            run(
                "ip",
                &["-n", &fixture.netns, "addr", "add", &address, "dev", "lo"],
            );
        }
        std::fs::create_dir(&fixture.cgroup).expect("create the test cgroup");
        std::fs::write(fixture.cgroup.join("cgroup.procs"), pid.to_string())
            .expect("move this process into the test cgroup");
        fixture
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::write(
            self.cgroup_before.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = services::detach(&self.layout);
        let _ = self.layout.remove_all();
        // The child the move test makes, if a failure left it.
        let _ = std::fs::remove_dir(self.cgroup.join("moved"));
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Each backend answers a TCP connection, and a UDP datagram, with its
/// index.
fn start_backends(fixture: &Fixture) {
    for (index, address) in BACKENDS.into_iter().enumerate() {
        let ready = in_netns(&fixture.netns, move || {
            let tcp = TcpListener::bind((address, BACKEND_PORT)).expect("bind tcp");
            let udp = UdpSocket::bind((address, BACKEND_PORT)).expect("bind udp");
            std::thread::spawn(move || {
                for stream in tcp.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let _ = stream.write_all(&[index as u8]);
                }
            });
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(&[index as u8], from);
                }
            });
        });
        ready.join().expect("backend started");
    }
}

/// Which backend answered, and the peer the client's socket reports.
fn dial_tcp(service: SocketAddrV4) -> std::io::Result<(u8, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&service.into(), Duration::from_secs(5))?;
    let peer = stream.peer_addr()?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer)?;
    Ok((answer[0], peer))
}

#[test]
fn cluster_ips_balance_at_the_socket() {
    let fixture = Fixture::new();
    start_backends(&fixture);
    let _ebpf = services::attach(&fixture.layout, &fixture.cgroup).expect("attach");
    let mut table = ServiceTable::open(&fixture.layout).expect("open the service table");
    let backends: Vec<SocketAddrV4> = BACKENDS
        .iter()
        .map(|a| SocketAddrV4::new(*a, BACKEND_PORT))
        .collect();
    let tcp = Frontend {
        address: SERVICE,
        port: 80,
        protocol: Protocol::Tcp,
    };
    let udp = Frontend {
        address: SERVICE,
        port: 53,
        protocol: Protocol::Udp,
    };
    let empty = Frontend {
        address: EMPTY_SERVICE,
        port: 80,
        protocol: Protocol::Tcp,
    };
    table.set(tcp, &backends, 0).expect("tcp service");
    table.set(udp, &backends, 0).expect("udp service");
    table.set(empty, &[], 0).expect("service without endpoints");

    // TCP: spread over both backends, and the client sees the service as
    // its peer.
    let spread = in_netns(&fixture.netns, || {
        let mut answers: BTreeMap<u8, usize> = BTreeMap::new();
        for _ in 0..40 {
            let (backend, peer) = dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect");
            assert_eq!(peer, SocketAddr::from((SERVICE, 80)), "getpeername");
            *answers.entry(backend).or_default() += 1;
        }
        answers
    })
    .join()
    .expect("tcp client");
    assert_eq!(
        spread.len(),
        2,
        "40 connections all went to one backend: {spread:?}"
    );

    // UDP, unconnected: the reply comes from the service address.
    let (answer, from) = in_netns(&fixture.netns, || {
        let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        socket
            .send_to(b"ping", (SERVICE, 53))
            .expect("send to the service");
        let mut buf = [0u8; 8];
        let (_, from) = socket.recv_from(&mut buf).expect("a reply");
        (buf[0], from)
    })
    .join()
    .expect("udp client");
    assert!(usize::from(answer) < BACKENDS.len());
    assert_eq!(from, SocketAddr::from((SERVICE, 53)), "recvmsg source");

    // No endpoints: refused at once, not after a timeout.
    let (refused, took) = in_netns(&fixture.netns, || {
        let started = Instant::now();
        let result = dial_tcp(SocketAddrV4::new(EMPTY_SERVICE, 80));
        (result.map(|_| ()).map_err(|e| e.kind()), started.elapsed())
    })
    .join()
    .expect("client of the empty service");
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
    assert!(took < Duration::from_millis(500), "refusal took {took:?}");

    // sessionAffinity ClientIP: a client keeps its backend; when that
    // backend leaves, the client is given another.
    table.set(tcp, &backends, 60).expect("affinity");
    let kept = in_netns(&fixture.netns, || {
        (0..20)
            .map(|_| dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect").0)
            .collect::<BTreeSet<u8>>()
    })
    .join()
    .expect("tcp client");
    assert_eq!(kept.len(), 1, "affinity gave {kept:?}");
    let first = *kept.first().expect("a backend");
    let others: Vec<SocketAddrV4> = backends
        .iter()
        .copied()
        .filter(|b| *b.ip() != BACKENDS[usize::from(first)])
        .collect();
    table
        .set(tcp, &others, 60)
        .expect("affinity without the kept backend");
    let moved = in_netns(&fixture.netns, || {
        dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect").0
    })
    .join()
    .expect("tcp client");
    assert_ne!(moved, first);

    // Backends come and go under a steady connection load: make-before-
    // break, no connection ever fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        in_netns(&fixture.netns, move || {
            let (mut made, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match dial_tcp(SocketAddrV4::new(SERVICE, 80)) {
                    Ok(_) => made += 1,
                    Err(error) => failed.push(error.to_string()),
                }
            }
            (made, failed)
        })
    };
    let started = Instant::now();
    let mut changes = 0;
    while started.elapsed() < Duration::from_secs(2) {
        for set in [&backends[..1], &backends[..], &backends[1..], &backends[..]] {
            table.set(tcp, set, 0).expect("change the backends");
            changes += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (made, failed) = load.join().expect("load thread");
    assert!(
        failed.is_empty(),
        "{} of {} connections failed over {changes} backend changes: {:?}",
        failed.len(),
        made as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(
        made > 100 && changes > 100,
        "{made} connections, {changes} changes"
    );

    // Down to one backend: every new connection goes there.
    table.set(tcp, &backends[1..], 0).expect("shrink");
    let only = in_netns(&fixture.netns, || {
        (0..10)
            .map(|_| dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect").0)
            .collect::<Vec<u8>>()
    })
    .join()
    .expect("tcp client");
    assert_eq!(only, vec![1u8; 10]);

    // The table reads back decoded; a removed service is no longer
    // translated (the address is nobody's: the connect fails).
    let listed = table.list().expect("list");
    assert_eq!(
        listed,
        vec![
            (udp, Balancing::without_affinity(backends.clone())),
            (tcp, Balancing::without_affinity(backends[1..].to_vec())),
            (empty, Balancing::without_affinity(Vec::new())),
        ]
    );
    assert!(table.remove(empty).expect("remove"));
    assert!(!table.remove(empty).expect("remove again"));
    assert_eq!(table.list().expect("list").len(), 2);

    // orch-node prints the same table decoded.
    let printed = Command::new(env!("CARGO_BIN_EXE_orch-node"))
        .args(["--node-name", &format!("test-lb-{}", std::process::id())])
        .args(["dataplane", "dump"])
        .output()
        .expect("orch-node dataplane dump");
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains("10.96.100.10:80") && printed.contains("10.250.0.2:8080"),
        "{printed}"
    );
    assert!(printed.contains("10.96.100.10:53"), "{printed}");

    // bpftool shows the pinned map with its field names (BTF).
    let services_pin = fixture.layout.map("SERVICES");
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(&services_pin)
        .output()
        .expect("bpftool (run `cargo xtask setup`)");
    let dump = String::from_utf8_lossy(&dump.stdout);
    for field in ["\"address\"", "\"port\"", "\"protocol\"", "\"backends\""] {
        assert!(dump.contains(field), "bpftool dump lacks {field}: {dump}");
    }

    // A second attach (an upgraded agent) swaps new programs into the
    // pinned links: same links, new programs, still balancing.
    let before = pinned_link(&fixture.layout);
    let again = services::attach(&fixture.layout, &fixture.cgroup).expect("attach again");
    drop(again);
    let after = pinned_link(&fixture.layout);
    assert_eq!(before.0, after.0, "the link stays");
    assert_ne!(before.1, after.1, "the program is replaced");
    let (backend, _) = in_netns(&fixture.netns, || {
        dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect")
    })
    .join()
    .expect("tcp client");
    assert_eq!(backend, 1);

    // Given another cgroup, the programs move there.
    let moved = fixture.cgroup.join("moved");
    std::fs::create_dir(&moved).expect("child cgroup");
    let _moved = services::attach(&fixture.layout, &moved).expect("attach elsewhere");
    let shown = |cgroup: &Path| {
        let output = Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup)
            .output()
            .expect("bpftool");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(
        !shown(&fixture.cgroup).contains("sock4_connect"),
        "{}",
        shown(&fixture.cgroup)
    );
    assert!(shown(&moved).contains("sock4_connect"), "{}", shown(&moved));
    std::fs::write(moved.join("cgroup.procs"), std::process::id().to_string())
        .expect("into the child cgroup");
    let (backend, _) = in_netns(&fixture.netns, || {
        dial_tcp(SocketAddrV4::new(SERVICE, 80)).expect("connect")
    })
    .join()
    .expect("tcp client");
    assert_eq!(backend, 1);
    std::fs::write(
        fixture.cgroup.join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .expect("back out of the child cgroup");
    services::detach(&fixture.layout).expect("detach");
    std::fs::remove_dir(&moved).expect("remove the child cgroup");
}

/// (link id, program id) of the pinned connect4 link.
fn pinned_link(layout: &PinLayout) -> (u64, u64) {
    let path = layout.link("sock4_connect", "cgroup");
    let json = run(
        "bpftool",
        &[
            "-j",
            "link",
            "show",
            "pinned",
            path.to_str().expect("utf-8"),
        ],
    );
    let link: serde_json::Value = serde_json::from_str(&json).expect("bpftool json");
    (
        link["id"].as_u64().expect("link id"),
        link["prog_id"].as_u64().expect("prog id"),
    )
}
