//! A whole cluster of real processes for tests: control-plane replicas and
//! node agents, each host a network namespace on one LAN (a bridge in a
//! namespace of the harness's own), and a client host for traffic from
//! outside the nodes. Pod and service traffic stays on that LAN: no host
//! namespace route, no address routed out of the machine.
//!
//! The harness drives the binaries only (`orch-control`, `orch-node`,
//! `orchctl`), as an operator would. Dropping the cluster, a panic
//! included, kills every process it started, resets every node
//! (`orch-node reset`: pods, mounts, cgroups, pins), removes the service
//! cgroups, the namespaces and the state directory.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{Lan, in_netns};

mod control_plane;
mod leftovers;
pub use leftovers::leftovers;

/// The programs the cluster runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub orch_control: PathBuf,
    pub orch_node: PathBuf,
    pub orchctl: PathBuf,
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Names every namespace (`<tag>-...`) and node (`<tag>-n<i>`): unique
    /// per test and process.
    pub tag: String,
    pub replicas: usize,
    pub nodes: usize,
    /// Images built on every node from Debian's busybox-static.
    pub busybox_images: Vec<String>,
    /// Extra orch-control flags (timings, ranges).
    pub control_plane_args: Vec<String>,
    /// Extra orch-node flags.
    pub node_args: Vec<String>,
}

/// The LAN's first three octets; hosts are .1-.99 nodes, .101-.109
/// replicas, .200 the client.
const LAN: [u8; 3] = [10, 211, 0];
const API_PORT: u16 = 6443;
const RAFT_PORT: u16 = 7101;
const HEALTH_PORT: u16 = 6451;

fn lan_address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(LAN[0], LAN[1], LAN[2], host)
}

/// A process of the cluster, killed (SIGKILL) when dropped.
pub struct Daemon(Child);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

/// A log file opened for appending: a restarted process adds to it.
fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A control-plane replica.
pub struct Replica {
    pub id: usize,
    pub netns: String,
    pub address: Ipv4Addr,
    pub dir: PathBuf,
    pub process: Option<Daemon>,
}

impl Replica {
    pub fn api(&self) -> String {
        format!("{}:{API_PORT}", self.address)
    }
    pub fn raft(&self) -> String {
        format!("{}:{RAFT_PORT}", self.address)
    }
}

/// A node and its agent.
pub struct Node {
    pub name: String,
    pub netns: String,
    pub address: Ipv4Addr,
    pub state: PathBuf,
    pub config: PathBuf,
    pub cgroup: PathBuf,
    pub process: Option<Daemon>,
}

/// A running cluster. Field order is drop order after `Drop::drop`: the
/// LAN (namespaces) goes after the processes are gone.
pub struct Cluster {
    pub bins: Binaries,
    pub spec: ClusterSpec,
    pub replicas: Vec<Replica>,
    pub nodes: Vec<Node>,
    /// The client host's namespace (not a node): traffic from outside.
    pub client: String,
    pub client_address: Ipv4Addr,
    /// orchctl's config: every replica's API, the admin certificate.
    pub admin_config: PathBuf,
    /// The nodes' `--join SERVERS --token T --ca-cert-hash H`.
    pub join_args: Vec<String>,
    pub dir: PathBuf,
    lan: Option<Lan>,
}

/// Spawns `command` from a thread inside `netns` (so it runs there).
pub fn spawn_in(netns: &str, mut command: Command) -> Child {
    in_netns(netns, move || command.spawn())
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .expect("spawn a cluster process")
}

/// Runs `command` to its end inside `netns`: its output.
pub fn output_in(netns: &str, mut command: Command) -> Output {
    in_netns(netns, move || command.output())
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        .expect("run a cluster command")
}

/// Runs `command` to completion; panics with its output when it fails.
fn must(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `GET path` at `address:port` over plain TCP, from this thread's
/// network namespace: the body of a 200 answer.
pub fn http_get(address: Ipv4Addr, port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read as _, Write as _};
    let target = std::net::SocketAddr::from((address, port));
    let mut stream = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
        .map_err(|e| format!("connect {target}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(|e| format!("send to {target}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read from {target}: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.split_whitespace().nth(1) == Some("200") => {
            Ok(body.trim().to_string())
        }
        _ => Err(format!(
            "{target}{path}: {:?}",
            response.lines().next().unwrap_or_default()
        )),
    }
}

/// [`http_get`] from inside `netns`.
pub fn http_get_in(
    netns: &str,
    address: Ipv4Addr,
    port: u16,
    path: &str,
) -> Result<String, String> {
    let path = path.to_string();
    in_netns(netns, move || http_get(address, port, &path))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Whether an object's JSON (a Pod's or a Node's) has condition Ready True.
pub fn is_ready(object: &serde_json::Value) -> bool {
    object["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// The cgroup2 hierarchy's mount point.
pub fn cgroup2_mount() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .expect("a cgroup2 hierarchy is mounted")
}

impl Cluster {
    /// Builds the LAN, starts the replicas (the first with `--init`, the
    /// others joining it), waits until each is ready, then starts the node
    /// agents and waits until every node is Ready.
    pub fn start(bins: Binaries, spec: ClusterSpec, dir: &Path) -> Self {
        assert!(spec.replicas >= 1 && spec.replicas <= 9, "1-9 replicas");
        assert!(spec.nodes <= 99, "at most 99 nodes");
        let mut lan = Lan::new(&spec.tag);
        let client_address = lan_address(200);
        let client = lan.add_host("client", client_address);
        let mut cluster = Cluster {
            bins,
            replicas: Vec::new(),
            nodes: Vec::new(),
            client,
            client_address,
            admin_config: dir.join("admin.conf"),
            join_args: Vec::new(),
            dir: dir.to_path_buf(),
            lan: Some(lan),
            spec,
        };
        for id in 1..=cluster.spec.replicas {
            let address = lan_address(100 + id as u8);
            let netns = cluster
                .lan
                .as_mut()
                .expect("the LAN")
                .add_host(&format!("cp{id}"), address);
            cluster.replicas.push(Replica {
                id,
                netns,
                address,
                dir: dir.join(format!("replica-{id}")),
                process: None,
            });
        }
        for index in 0..cluster.replicas.len() {
            cluster.start_replica(index);
        }
        cluster.write_admin_config();
        cluster.join_args = cluster.join_command();
        let cgroup_root = cgroup2_mount();
        for index in 0..cluster.spec.nodes {
            let short = format!("n{}", index + 1);
            let address = lan_address(index as u8 + 1);
            let netns = cluster
                .lan
                .as_mut()
                .expect("the LAN")
                .add_host(&short, address);
            let name = format!("{}-{short}", cluster.spec.tag);
            let cgroup = cgroup_root.join(&name);
            std::fs::create_dir_all(&cgroup).expect("the node's service cgroup");
            cluster.nodes.push(Node {
                state: dir.join(&name),
                config: dir.join(format!("{name}.conf")),
                name,
                netns,
                address,
                cgroup,
                process: None,
            });
        }
        for index in 0..cluster.nodes.len() {
            cluster.prepare_node(index);
            cluster.start_node(index);
        }
        for index in 0..cluster.nodes.len() {
            cluster.wait_node_ready(index);
        }
        cluster
    }

    /// The node's images.
    fn prepare_node(&self, index: usize) {
        let node = &self.nodes[index];
        std::fs::create_dir_all(&node.state).expect("node state dir");
        for image in &self.spec.busybox_images {
            must(
                Command::new(&self.bins.orch_node)
                    .args(["image", "--state-dir"])
                    .arg(&node.state)
                    .args(["build-busybox", image]),
            );
        }
    }

    /// Starts (or restarts) node `index`'s agent in its namespace.
    pub fn start_node(&mut self, index: usize) {
        let node = &self.nodes[index];
        let mut command = Command::new(&self.bins.orch_node);
        command
            .args(["--node-name", &node.name, "--config"])
            .arg(&node.config)
            // Joins at its first start; later starts use the config.
            .args(&self.join_args)
            .arg("--state-dir")
            .arg(&node.state)
            .args(["--node-ip", &node.address.to_string()])
            .args(["--address", &node.address.to_string(), "--port", "10250"])
            .args(["--pod-network-interface", "eth0", "--service-cgroup"])
            .arg(&node.cgroup)
            .args(["--metrics-bind-address", "127.0.0.1:0"])
            .args(["--image-gc-high-threshold", "100"])
            .args(&self.spec.node_args)
            .env_remove("RUST_BACKTRACE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&node.state.with_extension("log")));
        let child = spawn_in(&node.netns, command);
        self.nodes[index].process = Some(Daemon(child));
    }

    /// Kills node `index`'s agent (SIGKILL); its pods keep running.
    pub fn kill_node(&mut self, index: usize) {
        self.nodes[index].process = None;
    }

    /// Waits until node `index` is registered and Ready.
    pub fn wait_node_ready(&mut self, index: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exited) = self.nodes[index].process.as_mut().and_then(Daemon::exited) {
                panic!(
                    "the agent of {} exited ({exited}): {}",
                    self.nodes[index].name,
                    std::fs::read_to_string(self.nodes[index].state.with_extension("log"))
                        .unwrap_or_default()
                );
            }
            let node = &self.nodes[index];
            let json = self.orchctl(&["get", "node", &node.name, "-o", "json"]);
            let ready = json.status.success()
                && serde_json::from_slice::<serde_json::Value>(&json.stdout)
                    .is_ok_and(|node| is_ready(&node));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {} was not Ready within 60 s:\n{}",
                node.name,
                std::fs::read_to_string(node.state.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Runs orchctl from the client host with the admin config.
    pub fn orchctl(&self, args: &[&str]) -> Output {
        let mut command = Command::new(&self.bins.orchctl);
        command.args(args).env("ORCH_CONFIG", &self.admin_config);
        output_in(&self.client, command)
    }

    /// orchctl that must succeed: its stdout.
    pub fn orchctl_ok(&self, args: &[&str]) -> String {
        let output = self.orchctl(args);
        assert!(
            output.status.success(),
            "orchctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every agent's and replica's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut text = String::new();
        for path in self
            .replicas
            .iter()
            .map(|r| r.dir.with_extension("log"))
            .chain(self.nodes.iter().map(|n| n.state.with_extension("log")))
        {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            text.push_str(&format!(
                "--- {} ---\n{}\n",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            ));
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process = None;
        }
        for replica in &mut self.replicas {
            replica.process = None;
        }
        for node in &self.nodes {
            let reset = Command::new(&self.bins.orch_node)
                .args(["--node-name", &node.name, "reset", "--state-dir"])
                .arg(&node.state)
                .output();
            match &reset {
                Ok(output) if output.status.success() => {}
                Ok(output) => eprintln!(
                    "orch-node reset of {}: {}",
                    node.name,
                    String::from_utf8_lossy(&output.stderr)
                ),
                Err(error) => eprintln!("orch-node reset of {}: {error}", node.name),
            }
            // Whatever a failed reset left: the pins, and every process
            // still in the node's service cgroup (its pods' shims).
            let _ = std::fs::remove_dir_all(Path::new("/sys/fs/bpf/orch").join(&node.name));
            let _ = std::fs::write(node.cgroup.join("cgroup.kill"), "1");
            for _ in 0..100 {
                match std::fs::remove_dir(&node.cgroup) {
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => break,
                }
            }
        }
        // The namespaces, hosts before the bridge.
        self.lan = None;
        // Never into a mount a failed reset left (a pod's volumes).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.to_string_lossy().into_owned();
        if mounts.contains(&dir) {
            eprintln!("still mounted under {dir}: leaving it");
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
