//! The interface counter loaded for real: a veth pair into a network
//! namespace the test creates, the `orch-node` binary attaching the tc
//! programs, real ICMP traffic, and the counters read back through orch-node
//! and through bpftool. Needs root and BPF; fails (never skips) without them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::run;
use serde_json::Value;

const ORCH_NODE: &str = env!("CARGO_BIN_EXE_orch-node");
/// 100 bytes of ICMP payload: 14 (ethernet) + 20 (IPv4) + 8 (ICMP) + 100.
const FRAME_BYTES: u64 = 142;
const PINGS: u64 = 10;
/// ARP may add a request and a reply in each direction during a window.
const NOISE_PACKETS: u64 = 4;
const NOISE_BYTES: u64 = NOISE_PACKETS * 64;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads eBPF programs and creates network namespaces: run it as root \
         (CI does; `sudo -E cargo xtask test` locally)"
    );
}

/// A veth pair: `host` in this namespace, its peer in a namespace of its own.
/// Removed on drop, also when an assertion fails.
struct TestLink {
    netns: String,
    host: String,
    node: String,
    peer_addr: String,
}

impl TestLink {
    fn new(tag: &str, subnet: u8) -> Self {
        let pid = std::process::id();
        let link = TestLink {
            netns: format!("orch-test-{tag}-{pid}"),
            host: format!("ot{tag}{}", pid % 100_000),
            node: format!("test-{tag}.{pid}"),
            peer_addr: format!("10.251.{subnet}.2"),
        };
        let peer = format!("{}p", link.host);
        run("ip", &["netns", "add", &link.netns]);
        run(
            "ip",
            &[
                "link", "add", &link.host, "type", "veth", "peer", "name", &peer,
            ],
        );
        run("ip", &["link", "set", &peer, "netns", &link.netns]);
        // IPv6 off on both ends: no router solicitations or MLD reports
        // landing in the counted window.
        run(
            "sysctl",
            &[
                "-qw",
                &format!("net.ipv6.conf.{}.disable_ipv6=1", link.host),
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &link.netns,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{peer}.disable_ipv6=1"),
            ],
        );
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.251.{subnet}.1/30"),
                "dev",
                &link.host,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &link.netns,
                "addr",
                "add",
                &format!("{}/30", link.peer_addr),
                "dev",
                &peer,
            ],
        );
        run("ip", &["-n", &link.netns, "link", "set", &peer, "up"]);
        run("ip", &["link", "set", &link.host, "up"]);
        link
    }

    fn orch_node(&self, args: &[&str]) -> String {
        let mut full = vec!["--node-name", &self.node, "dataplane"];
        full.extend_from_slice(args);
        run(ORCH_NODE, &full)
    }

    fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/orch").join(self.node.replace('.', "_"))
    }

    fn ifindex(&self) -> u64 {
        let index = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.host))
            .expect("host-side veth exists");
        index.trim().parse().expect("ifindex is a number")
    }

    fn ping(&self) {
        let count = PINGS.to_string();
        run(
            "busybox",
            &[
                "ping",
                "-c",
                &count,
                "-i",
                "0.05",
                "-s",
                "100",
                "-W",
                "2",
                &self.peer_addr,
            ],
        );
    }

    /// (packets, bytes) of one direction of the host-side veth, per orch-node.
    fn counters(&self, direction: &str) -> (u64, u64) {
        let json: Value = serde_json::from_str(&self.orch_node(&["counters", "-o", "json"]))
            .expect("orch-node prints JSON");
        let rows = json.as_array().expect("a JSON list");
        rows.iter()
            .find(|row| row["ifindex"] == self.ifindex() && row["direction"] == direction)
            .map(|row| {
                assert_eq!(row["interface"], self.host.as_str());
                (
                    row["packets"].as_u64().unwrap_or(0),
                    row["bytes"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    }

    /// Pings and checks that both directions counted exactly that traffic.
    fn assert_counts_ping(&self) {
        let before = [self.counters("ingress"), self.counters("egress")];
        self.ping();
        let after = [self.counters("ingress"), self.counters("egress")];
        for (direction, (b, a)) in ["ingress", "egress"].iter().zip(before.iter().zip(after)) {
            let packets = a.0 - b.0;
            let bytes = a.1 - b.1;
            assert!(
                (PINGS..=PINGS + NOISE_PACKETS).contains(&packets),
                "{direction}: counted {packets} packets for {PINGS} pings"
            );
            assert!(
                (PINGS * FRAME_BYTES..=PINGS * FRAME_BYTES + NOISE_BYTES).contains(&bytes),
                "{direction}: counted {bytes} bytes for {PINGS} frames of {FRAME_BYTES}"
            );
        }
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        // Best effort, and quiet: the test's own assertion is what matters.
        let _ = Command::new(ORCH_NODE)
            .args([
                "--node-name",
                &self.node,
                "dataplane",
                "detach-counters",
                "-i",
                &self.host,
                "--mode",
                "clsact",
            ])
            .output();
        let _ = Command::new(ORCH_NODE)
            .args(["--node-name", &self.node, "dataplane", "remove"])
            .output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .output();
    }
}

/// Kills the child on drop so a failed assertion leaves no process behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tcx_counts_real_traffic_and_bpftool_sees_it() {
    require_root();
    let link = TestLink::new("tcx", 1);
    link.orch_node(&["attach-counters", "-i", &link.host, "--mode", "tcx"]);
    // Programs, links and the map are pinned under the node's directory.
    for pin in [
        "IFACE_COUNTERS",
        "iface_count_ingress",
        "iface_count_egress",
        &format!("link_iface_count_ingress_{}", link.host),
        &format!("link_iface_count_egress_{}", link.host),
    ] {
        assert!(link.pin_dir().join(pin).exists(), "{pin} is not pinned");
    }
    // The agent process has exited: the pinned links keep the programs attached.
    link.assert_counts_ping();

    // Attaching again is idempotent: the program is swapped inside the same
    // link and the pinned map keeps its counts.
    let (kept, _) = link.counters("egress");
    link.orch_node(&["attach-counters", "-i", &link.host, "--mode", "tcx"]);
    assert!(
        link.counters("egress").0 >= kept,
        "re-attach lost the counts"
    );
    link.assert_counts_ping();

    let prog_pin = link.pin_dir().join("iface_count_ingress");
    let prog = run(
        "bpftool",
        &[
            "prog",
            "show",
            "pinned",
            prog_pin.to_str().unwrap_or_default(),
        ],
    );
    assert!(
        prog.contains("sched_cls") && prog.contains("iface_count_ingress"),
        "{prog}"
    );

    // bpftool decodes keys and values by field name thanks to BTF.
    let (orch_packets, orch_bytes) = link.counters("egress");
    let map_pin = link.pin_dir().join("IFACE_COUNTERS");
    let dump: Value = serde_json::from_str(&run(
        "bpftool",
        &[
            "-j",
            "map",
            "dump",
            "pinned",
            map_pin.to_str().unwrap_or_default(),
        ],
    ))
    .expect("bpftool prints JSON");
    let entry = dump
        .as_array()
        .and_then(|entries| {
            entries.iter().find(|e| {
                let key = e.get("formatted").map_or(&e["key"], |f| &f["key"]);
                key["ifindex"] == link.ifindex() && key["direction"] == 1
            })
        })
        .unwrap_or_else(|| panic!("no field-named egress entry for the veth in {dump}"));
    let values = entry
        .get("formatted")
        .map_or(&entry["values"], |f| &f["values"]);
    let sum = |field: &str| -> u64 {
        values
            .as_array()
            .map(|cpus| cpus.iter().filter_map(|c| c["value"][field].as_u64()).sum())
            .unwrap_or(0)
    };
    assert!(
        (orch_packets..=orch_packets + NOISE_PACKETS).contains(&sum("packets")),
        "bpftool says {} packets, orch-node {orch_packets}",
        sum("packets")
    );
    assert!(
        (orch_bytes..=orch_bytes + NOISE_BYTES).contains(&sum("bytes")),
        "bpftool says {} bytes, orch-node {orch_bytes}",
        sum("bytes")
    );

    // Detach: the links are unpinned and traffic is no longer counted.
    let out = link.orch_node(&["detach-counters", "-i", &link.host, "--mode", "tcx"]);
    assert!(out.contains("detached"), "{out}");
    assert!(
        !link
            .pin_dir()
            .join(format!("link_iface_count_ingress_{}", link.host))
            .exists()
    );
    let before = link.counters("egress");
    link.ping();
    assert_eq!(link.counters("egress"), before, "counted after detach");
}

#[test]
fn clsact_attach_logs_through_aya_log() {
    require_root();
    let link = TestLink::new("cls", 2);
    let child = Command::new(ORCH_NODE)
        .args([
            "--node-name",
            &link.node,
            "dataplane",
            "attach-counters",
            "-i",
            &link.host,
            "--mode",
            "clsact",
            "--follow",
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start orch-node");
    let mut agent = KillOnDrop(child);
    let stderr = agent.0.stderr.take().expect("piped stderr");
    let lines = std::thread::spawn(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });

    let deadline = Instant::now() + Duration::from_secs(20);
    while !link.pin_dir().join("iface_count_egress").exists() {
        assert!(
            Instant::now() < deadline,
            "orch-node did not attach within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The clsact filter is visible to tc, by program name.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let filters = run("tc", &["filter", "show", "dev", &link.host, "egress"]);
        if filters.contains("iface_count_egress") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no clsact filter on {}: {filters}",
            link.host
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    link.assert_counts_ping();

    // SIGINT: orch-node flushes and exits; its log holds the kernel's record.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal orch-node");
    let status = agent.0.wait().expect("orch-node exits");
    assert!(status.success(), "orch-node --follow exited with {status}");
    let log = lines.join().expect("log reader").join("\n");
    let expected = format!("orch: counting ifindex {} direction 1", link.ifindex());
    assert!(
        log.contains(&expected),
        "kernel log line `{expected}` missing from:\n{log}"
    );

    // The filter outlives the process until it is detached.
    link.assert_counts_ping();
    link.orch_node(&["detach-counters", "-i", &link.host, "--mode", "clsact"]);
    let filters = run("tc", &["filter", "show", "dev", &link.host, "egress"]);
    assert!(!filters.contains("iface_count_egress"), "{filters}");
}
