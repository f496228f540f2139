//! `cargo xtask bench dataplane`: what a connection through a Service
//! costs, against the pod dialled directly and against kube-proxy's
//! iptables mode, on the same namespaces in the same run. A benchmark, not
//! a test: it prints figures and ratios, it never fails on them.
//!
//! One node (a network namespace with orch's pod network: veths, tc
//! programs, the socket balancer on a cgroup) runs an echo server pod and
//! two client pods. Each client connection is connect, 64 bytes each way,
//! close (RST, so no TIME_WAIT piles up), by 4 client threads for a few
//! seconds, in rounds that take turns so the machine's noise falls on all:
//! - direct: the client dials the server pod's address, both of its
//!   ports in turn (the services spread over both: the same server work
//!   on every path), from the balancer's cgroup as every pod of an orch
//!   node is (the hook runs and finds no service);
//! - orch: the client, in the socket balancer's cgroup, dials a ClusterIP
//!   in orch's service table;
//! - iptables: the other client dials a ClusterIP that nat rules built as
//!   kube-proxy builds them (a KUBE-SERVICES chain with one rule per
//!   service, a chain per service picking an endpoint by probability, a
//!   DNAT chain per endpoint) send to the server.
//!
//! With 1, 1,000 and 10,000 services installed (the one dialled sits in the
//! middle of the iptables chain: the average walk). Then the time to apply
//! one backend change with 10,000 services: an orch map update against
//! `iptables-restore` of the full table, as kube-proxy applies changes.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_node::dataplane::pod_network::{PodInterface, PodNetwork};
use orch_node::dataplane::services::{self, Frontend, Protocol, ServiceTable};
use orch_node::dataplane::{PinLayout, bpffs, cgroup2};
use orch_node::net::ipam::PodCidr;
use orch_tests::netns::{Lan, Namespace, in_netns};

const NODE: Ipv4Addr = Ipv4Addr::new(10, 230, 0, 1);
const POD_CIDR: &str = "10.231.0.0/16";
const PORTS: [u16; 2] = [8080, 8081];
const MESSAGE: usize = 64;
const CLIENT_THREADS: usize = 4;
const SERVICE_COUNTS: [usize; 3] = [1, 1_000, 10_000];

/// The address of service `index` (orch's ClusterIPs and iptables' share
/// the pattern, in different /16s).
fn service_address(base: u8, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, base, (index / 250) as u8, (index % 250 + 1) as u8)
}

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--client") {
        return client(args.collect());
    }
    let quick = std::env::args().any(|a| a == "--quick");
    assert!(
        nix::unistd::geteuid().is_root(),
        "the dataplane benchmark builds namespaces and loads eBPF programs: run it as root"
    );
    let bench = Bench::new();
    let seconds = if quick { 1.0 } else { 2.0 };
    let rounds = if quick { 1 } else { 5 };
    println!(
        "dataplane: {CLIENT_THREADS} client threads, connect + {MESSAGE} B each way + close, {seconds} s per run, medians of {rounds} rounds; \"vs direct\" is the median of each round's ratio to the direct run beside it"
    );
    println!(
        "{:>9} {:<9} {:>10} {:>10} {:>10} {:>14}",
        "services", "path", "conn/s", "p50 µs", "p99 µs", "vs direct"
    );
    let mut report = String::new();
    for count in SERVICE_COUNTS {
        let fill = bench.install(count);
        let mut runs: [Vec<Run>; 3] = Default::default();
        for _ in 0..rounds {
            for (path, slot) in PATHS.iter().zip(runs.iter_mut()) {
                slot.push(bench.load(*path, seconds));
            }
        }
        // Each round's ratio to the direct run of the same round: the
        // machine's drift between rounds cancels out.
        let ratios: Vec<f64> = runs
            .iter()
            .map(|path_runs| {
                let mut ratios: Vec<f64> = path_runs
                    .iter()
                    .zip(&runs[0])
                    .map(|(run, direct)| run.rate / direct.rate)
                    .collect();
                ratios.sort_by(f64::total_cmp);
                ratios[ratios.len() / 2]
            })
            .collect();
        let medians = runs.map(median_run);
        for ((path, run), ratio) in PATHS.iter().zip(&medians).zip(&ratios) {
            println!(
                "{count:>9} {:<9} {:>10.0} {:>10.0} {:>10.0} {:>13.3}x",
                path.name(),
                run.rate,
                run.p50_us,
                run.p99_us,
                ratio
            );
        }
        let _ = writeln!(
            report,
            "{count:>9} services installed: orch table filled in {:.1} ms, iptables-restore of the table took {:.1} ms",
            fill.orch.as_secs_f64() * 1e3,
            fill.iptables.as_secs_f64() * 1e3
        );
    }
    print!("{report}");
    let (orch, iptables) = bench.backend_change(if quick { 2 } else { 5 });
    println!(
        "one backend change with {} services: orch map update {:.1} µs (median of 100), iptables-restore {:.1} ms (median), ratio {:.0}x",
        SERVICE_COUNTS[2],
        orch.as_secs_f64() * 1e6,
        iptables.as_secs_f64() * 1e3,
        iptables.as_secs_f64() / orch.as_secs_f64()
    );
}

#[derive(Clone, Copy)]
enum Way {
    Direct,
    Orch,
    Iptables,
}

const PATHS: [Way; 3] = [Way::Direct, Way::Orch, Way::Iptables];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::Orch => "orch",
            Way::Iptables => "iptables",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Run {
    rate: f64,
    p50_us: f64,
    p99_us: f64,
}

fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    runs[runs.len() / 2]
}

struct Fill {
    orch: Duration,
    iptables: Duration,
}

/// The namespaces, the pod network, the programs and the tables.
struct Bench {
    _pods: Vec<Namespace>,
    _lan: Lan,
    layout: PinLayout,
    cgroup: PathBuf,
    server: PodInterface,
    /// Client pods: one in the balancer's cgroup (direct and orch), one
    /// with the iptables rules.
    client: String,
    iptables_client: String,
    table: Mutex<ServiceTable>,
    /// The iptables rules of the last install, and their service count.
    rules: Mutex<(usize, String)>,
    _state: tempfile::TempDir,
    _network: std::thread::JoinHandle<()>,
}

impl Bench {
    fn new() -> Self {
        let pid = std::process::id();
        let mut lan = Lan::new(&format!("orch-b{pid}"));
        let node = lan.add_host("n1", NODE);
        let layout =
            PinLayout::new(Path::new(bpffs::BPFFS_ROOT), &format!("bench-{pid}")).expect("layout");
        let state = tempfile::tempdir().expect("state dir");
        let names = ["server", "client", "client-ipt"];
        let pods: Vec<Namespace> = names
            .iter()
            .map(|n| Namespace::new(&format!("orch-b{pid}-{n}")))
            .collect();
        let paths: Vec<PathBuf> = pods.iter().map(Namespace::path).collect();
        // The node's agent side: a thread in the node's namespace, its
        // runtime kept for the netlink connection's life.
        let (sender, receiver) = std::sync::mpsc::channel();
        let (layout_for_node, state_dir) = (layout.clone(), state.path().to_path_buf());
        let network = in_netns(&node, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let network = PodNetwork::start(&layout_for_node, &state_dir, "eth0", NODE)
                    .expect("pod network");
                let cidr = PodCidr::parse(POD_CIDR).expect("cidr");
                let mut interfaces = Vec::new();
                for (index, path) in paths.iter().enumerate() {
                    let uid = format!("bench-pod-{index}");
                    interfaces.push(network.add(cidr, &uid, path).await.expect("pod"));
                }
                sender.send(interfaces).expect("send");
                // Kept until the process ends (the programs stay pinned).
                std::future::pending::<()>().await;
            })
        });
        let interfaces = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("the pod network");
        let cgroup = cgroup2::mount_point()
            .expect("a cgroup2 hierarchy")
            .join(format!("orch-bench-{pid}"));
        std::fs::create_dir_all(&cgroup).expect("cgroup");
        // Attached through pinned links: the loader may go.
        services::attach(&layout, &cgroup).expect("socket balancer");
        let server = interfaces[0].clone();
        for port in PORTS {
            serve(pods[0].name(), server.address, port);
        }
        for pod in &pods[1..] {
            // Client-side limits, so the port range and conntrack never
            // throttle the runs (per namespace).
            let name = pod.name().to_string();
            in_netns(&name, || {
                let _ = std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65000");
                let _ = std::fs::write(
                    "/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait",
                    "1",
                );
            })
            .join()
            .expect("sysctls");
        }
        Bench {
            client: pods[1].name().to_string(),
            iptables_client: pods[2].name().to_string(),
            _pods: pods,
            _lan: lan,
            table: Mutex::new(ServiceTable::open(&layout).expect("service table")),
            layout,
            cgroup,
            server,
            rules: Mutex::new((0, String::new())),
            _state: state,
            _network: network,
        }
    }

    fn backends(&self) -> Vec<SocketAddrV4> {
        PORTS
            .iter()
            .map(|port| SocketAddrV4::new(self.server.address, *port))
            .collect()
    }

    /// Installs `count` services in both tables; the one dialled is in the
    /// middle.
    fn install(&self, count: usize) -> Fill {
        let target = count / 2;
        let mut table = self.table.lock().expect("table");
        for (frontend, _) in table.list().expect("list") {
            table.remove(frontend).expect("remove");
        }
        let started = Instant::now();
        for index in 0..count {
            let frontend = Frontend {
                address: service_address(96, index),
                port: 80,
                protocol: Protocol::Tcp,
            };
            let backends = if index == target {
                self.backends()
            } else {
                dummy_backends(index)
            };
            table.set(frontend, &backends, 0).expect("service");
        }
        let orch = started.elapsed();
        let rules = iptables_rules(count, target, &self.backends());
        let iptables = iptables_restore(&self.iptables_client, &rules);
        *self.rules.lock().expect("rules") = (count, rules);
        Fill { orch, iptables }
    }

    fn load(&self, path: Way, seconds: f64) -> Run {
        let count = self.rules.lock().expect("rules").0;
        let target = count / 2;
        let (netns, address, cgroup) = match path {
            Way::Direct => (&self.client, self.server.address, Some(&self.cgroup)),
            Way::Orch => (
                &self.client,
                service_address(96, target),
                Some(&self.cgroup),
            ),
            Way::Iptables => (&self.iptables_client, service_address(97, target), None),
        };
        // Direct dials both server ports in turn, as the services spread
        // over both backends: the same server work on every path.
        let targets = match path {
            Way::Direct => PORTS.map(|p| format!("{address}:{p}")).join(","),
            _ => format!("{address}:80"),
        };
        let mut command = Command::new(std::env::current_exe().expect("this binary"));
        command
            .arg("--client")
            .arg(targets)
            .arg(seconds.to_string())
            .arg(cgroup.map_or_else(String::new, |c| c.display().to_string()))
            .stdout(Stdio::piped());
        let output = in_netns(netns, move || command.output().expect("client"))
            .join()
            .expect("client thread");
        let text = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| -> f64 {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from the client's {text:?}"))
        };
        Run {
            rate: field("rate="),
            p50_us: field("p50_us="),
            p99_us: field("p99_us="),
        }
    }

    /// One backend change with the largest table: orch's map update and
    /// kube-proxy's full `iptables-restore` (medians).
    fn backend_change(&self, restores: usize) -> (Duration, Duration) {
        let count = SERVICE_COUNTS[2];
        if self.rules.lock().expect("rules").0 != count {
            self.install(count);
        }
        let frontend = Frontend {
            address: service_address(96, count / 2),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let mut table = self.table.lock().expect("table");
        let both = self.backends();
        let mut orch: Vec<Duration> = (0..100)
            .map(|i| {
                let backends = if i % 2 == 0 { &both[..1] } else { &both[..] };
                let started = Instant::now();
                table.set(frontend, backends, 0).expect("update");
                started.elapsed()
            })
            .collect();
        let mut iptables: Vec<Duration> = (0..restores)
            .map(|i| {
                let backends = if i % 2 == 0 { &both[..1] } else { &both[..] };
                let rules = iptables_rules(count, count / 2, backends);
                iptables_restore(&self.iptables_client, &rules)
            })
            .collect();
        orch.sort();
        iptables.sort();
        (orch[orch.len() / 2], iptables[iptables.len() / 2])
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = services::detach(&self.layout);
        let _ = self.layout.remove_all();
        let _ = std::fs::remove_dir(&self.cgroup);
    }
}

/// Two endpoints of another service, addresses no one answers at.
fn dummy_backends(index: usize) -> Vec<SocketAddrV4> {
    let base = 100 + (index % 100) as u8;
    vec![
        SocketAddrV4::new(Ipv4Addr::new(10, 231, base, 1), 8080),
        SocketAddrV4::new(Ipv4Addr::new(10, 231, base, 2), 8080),
    ]
}

/// kube-proxy's iptables-mode nat table for `count` services (two
/// endpoints each); service `target` sends to `backends`.
fn iptables_rules(count: usize, target: usize, backends: &[SocketAddrV4]) -> String {
    let mut chains = String::from("*nat\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    for index in 0..count {
        let endpoints = if index == target {
            backends.to_vec()
        } else {
            dummy_backends(index)
        };
        let svc = format!("KUBE-SVC-{index:08X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"default/svc-{index}:http cluster IP\" -m tcp --dport 80 -j {svc}",
            service_address(97, index)
        );
        let total = endpoints.len();
        for (n, endpoint) in endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{index:08X}-{n}");
            let _ = writeln!(chains, ":{sep} - [0:0]");
            if n + 1 < total {
                let probability = 1.0 / (total - n) as f64;
                let _ = writeln!(
                    rules,
                    "-A {svc} -m statistic --mode random --probability {probability:.11} -j {sep}"
                );
            } else {
                let _ = writeln!(rules, "-A {svc} -j {sep}");
            }
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {endpoint}"
            );
        }
    }
    chains + &rules + "COMMIT\n"
}

/// Replaces the nat table of `netns` with `rules`; how long it took.
fn iptables_restore(netns: &str, rules: &str) -> Duration {
    let rules = rules.to_string();
    in_netns(netns, move || {
        let started = Instant::now();
        let mut child = Command::new("iptables-restore")
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("iptables-restore (run `cargo xtask setup`)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("rules");
        let output = child.wait_with_output().expect("iptables-restore");
        assert!(
            output.status.success(),
            "iptables-restore: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        started.elapsed()
    })
    .join()
    .expect("iptables thread")
}

/// An echo server on `address:port` in `netns`: 64 bytes back for 64.
fn serve(netns: &str, address: Ipv4Addr, port: u16) {
    let (ready, wait) = std::sync::mpsc::channel();
    let _ = in_netns(netns, move || {
        let listener = TcpListener::bind((address, port)).expect("bind");
        ready.send(()).expect("ready");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0u8; MESSAGE];
                while stream.read_exact(&mut buffer).is_ok() {
                    if stream.write_all(&buffer).is_err() {
                        break;
                    }
                }
            });
        }
    });
    wait.recv_timeout(Duration::from_secs(5)).expect("server");
}

/// The client process: `--client ADDR:PORT[,ADDR:PORT...] SECONDS
/// [CGROUP]` (several targets are dialled in turn). It enters
/// the cgroup (the balancer's, for orch) before its first connect, then
/// prints `rate=... p50_us=... p99_us=...`.
fn client(args: Vec<String>) {
    let targets: Vec<SocketAddrV4> = args[0]
        .split(',')
        .map(|t| t.parse().expect("target"))
        .collect();
    let seconds: f64 = args[1].parse().expect("seconds");
    if let Some(cgroup) = args.get(2).filter(|c| !c.is_empty()) {
        std::fs::write(
            Path::new(cgroup).join("cgroup.procs"),
            std::process::id().to_string(),
        )
        .expect("enter the cgroup");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let stop = stop.clone();
            let targets = targets.clone();
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                let mut buffer = [7u8; MESSAGE];
                for target in targets.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let started = Instant::now();
                    let exchanged = TcpStream::connect(target).and_then(|mut stream| {
                        stream.set_nodelay(true)?;
                        stream.write_all(&buffer)?;
                        stream.read_exact(&mut buffer)?;
                        // RST on close: no TIME_WAIT left behind.
                        set_linger_zero(&stream);
                        Ok(())
                    });
                    match exchanged {
                        Ok(()) => latencies.push(started.elapsed()),
                        Err(_) => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failures = 0;
    for worker in workers {
        let (mine, failed) = worker.join().expect("worker");
        latencies.extend(mine);
        failures += failed;
    }
    latencies.sort();
    let at = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    println!(
        "rate={:.1} p50_us={:.1} p99_us={:.1} failures={failures}",
        latencies.len() as f64 / seconds,
        at(0.5),
        at(0.99)
    );
}

fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsFd as _;
    let _ = nix::sys::socket::setsockopt(
        &stream.as_fd(),
        nix::sys::socket::sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}
