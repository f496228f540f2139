//! `cargo xtask up` and `cargo xtask down`: a single-node cluster on this
//! machine, as background daemons with their logs and pid files under one
//! state directory.
//!
//! The node is a network namespace (`orch-up`) joined to this machine by a
//! veth pair, with no default route: the pods' and services' addresses
//! never leave the machine, and `down` removes the node with the
//! namespace. orch-control runs on this machine and serves the API on its
//! end of the pair; orch-node runs in the namespace with the pod network
//! on its `eth0`, so a NodePort answers at the node's address from here.

mod check;
mod demo;

pub use check::check_up_and_down;
use demo::{DEMO_IMAGE, DEMO_MANIFEST, Orchctl, http_get, print_next_steps, wait_for_demo};

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, run_command, setup, workspace_root};

/// The node's network namespace, and its name in the cluster.
const NODE: &str = "orch-up";
/// This machine's end of the veth pair; the node's end is its `eth0`.
const HOST_LINK: &str = "orch-up0";
const HOST_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 1);
const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(172, 31, 254, 2);
const LINK_PREFIX: u8 = 30;
const API_PORT: u16 = 6443;
const RAFT_PORT: u16 = 7101;
const HEALTH_PORT: u16 = 6451;
/// The pod network (orch-control's --cluster-cidr), routed from this
/// machine to the node so pods (and, on a pure cgroup v2 host where this
/// machine's sockets are balanced too, services) answer from here.
const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Names the state directory of the cluster whose namespace exists, so
/// `up` and `down` of another state directory do not tear half of it down.
const OWNER_FILE: &str = "/run/orch-up.state-dir";
/// In every state directory `up` makes: `down` deletes no other directory.
const MARKER: &str = ".orch-up";

/// Where `up` keeps a cluster unless told otherwise.
const DEFAULT_STATE_DIR: &str = "/var/lib/orch-up";
/// Where orch-node pins each node's programs and maps.
const BPF_PINS: &str = "/sys/fs/bpf/orch";

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the cluster keeps its data, logs and pid files.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Use debug builds (what `cargo xtask test` already built) instead of
    /// release ones.
    #[arg(long)]
    debug: bool,
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// The state directory `up` used.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// The paths of one cluster's state directory.
struct State {
    root: PathBuf,
}

impl State {
    fn control(&self) -> PathBuf {
        self.root.join("control")
    }
    fn node(&self) -> PathBuf {
        self.root.join("node")
    }
    fn log(&self, daemon: &str) -> PathBuf {
        self.root.join("logs").join(format!("{daemon}.log"))
    }
    fn pid_file(&self, daemon: &str) -> PathBuf {
        self.root.join("run").join(format!("{daemon}.pid"))
    }
    /// Where the binaries `up` started live (read back by `down`).
    fn bin_file(&self) -> PathBuf {
        self.root.join("run").join("bin-dir")
    }
    /// Written once an `up` finished: a cluster without it is half-made.
    fn complete(&self) -> PathBuf {
        self.root.join("run").join("up-complete")
    }
    fn admin_config(&self) -> PathBuf {
        self.control().join("pki").join("admin.conf")
    }
    fn node_config(&self) -> PathBuf {
        self.node().join("node.conf")
    }
    fn manifest(&self) -> PathBuf {
        self.root.join("web.yaml")
    }

    /// The pid in `daemon`'s pid file, when that process still runs: the
    /// program is `daemon` and its arguments name this state directory (a
    /// pid reused after a reboot is someone else's).
    fn running(&self, daemon: &str) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(self.pid_file(daemon))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let ours = String::from_utf8_lossy(&cmdline).contains(&*self.root.to_string_lossy());
        (ours
            && exe
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(daemon)))
        .then_some(pid)
    }

    /// Refuses when another state directory's cluster exists.
    fn check_owner(&self) -> Result<()> {
        let Ok(owner) = std::fs::read_to_string(OWNER_FILE) else {
            return Ok(());
        };
        let owner = PathBuf::from(owner.trim());
        if owner != self.root && (owner.exists() || namespace_exists()) {
            bail!(
                "the cluster on this machine is `cargo xtask up --state-dir {owner}`'s: `cargo xtask down --state-dir {owner}` first",
                owner = owner.display()
            );
        }
        Ok(())
    }
}

/// `dir` made absolute (the daemons and shims get it as an argument).
fn state_of(dir: &Path) -> Result<State> {
    Ok(State {
        root: std::path::absolute(dir).with_context(|| format!("--state-dir {}", dir.display()))?,
    })
}

/// Writes `contents` to `path`, naming it when that fails.
fn write(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

pub fn up(args: &UpArgs) -> Result<()> {
    let state = state_of(&args.state_dir)?;
    state.check_owner()?;
    if state.complete().exists()
        && state.running("orch-control").is_some()
        && state.running("orch-node").is_some()
    {
        eprintln!(
            "a cluster is already up (state in {}); `{}` stops it",
            state.root.display(),
            down_command(&state)
        );
        print_next_steps(&state);
        return Ok(());
    }
    if state.root.exists() || namespace_exists() {
        eprintln!("cleaning up what an earlier `up` left behind");
        teardown(&state)?;
    }
    setup::run()?;
    crate::ebpf::build()?;
    let mut build = cargo();
    build.args(["build", "-p", "orch-control", "-p", "orch-node"]);
    if !args.debug {
        build.arg("--release");
    }
    run_command(&mut build)?;
    let bin = workspace_root()
        .join("target")
        .join(if args.debug { "debug" } else { "release" });

    std::fs::create_dir_all(&state.root)
        .with_context(|| format!("creating {}", state.root.display()))?;
    write(&state.root.join(MARKER), b"made by cargo xtask up\n")?;
    for dir in [
        state.control(),
        state.node(),
        state.root.join("logs"),
        state.root.join("run"),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write(&state.bin_file(), bin.to_string_lossy().as_bytes())?;
    write(&state.manifest(), DEMO_MANIFEST)?;
    let started = Instant::now();
    write(
        Path::new(OWNER_FILE),
        state.root.to_string_lossy().as_bytes(),
    )?;
    node_network()?;
    start_control_plane(&state, &bin)?;
    start_node(&state, &bin)?;
    let orchctl = Orchctl {
        bin: bin.join("orchctl"),
        config: state.admin_config(),
    };
    wait_for_node(&state, &orchctl)?;
    // The control plane makes its system namespaces just after it starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(why) = orchctl.output(&["get", "namespace", "default"]) {
        if Instant::now() > deadline {
            bail!("the default namespace was not made within 60 s: {why}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    orchctl.run(&["apply", "-f", &state.manifest().to_string_lossy()])?;
    wait_for_demo(&orchctl).with_context(|| {
        format!(
            "the demo did not come up (logs in {}; `{}` removes the cluster)",
            state.root.join("logs").display(),
            down_command(&state)
        )
    })?;
    write(&state.complete(), b"")?;
    eprintln!(
        "the cluster is up and the demo answers through its ClusterIP and NodePort ({:.0} s)",
        started.elapsed().as_secs_f64()
    );
    print_next_steps(&state);
    Ok(())
}

pub fn down(args: &DownArgs) -> Result<()> {
    let state = state_of(&args.state_dir)?;
    state.check_owner()?;
    teardown(&state)?;
    eprintln!("the cluster is down; nothing of it is left");
    Ok(())
}

/// The command that stops the cluster of `state`.
fn down_command(state: &State) -> String {
    if state.root == Path::new(DEFAULT_STATE_DIR) {
        "cargo xtask down".to_string()
    } else {
        format!("cargo xtask down --state-dir {}", state.root.display())
    }
}

fn namespace_exists() -> bool {
    Path::new("/run/netns").join(NODE).exists()
}

/// The node's namespace and the veth pair to it, addressed on a /30.
fn node_network() -> Result<()> {
    let ip = |args: &[&str]| run_command(Command::new("ip").args(args));
    ip(&["netns", "add", NODE])?;
    ip(&[
        "link", "add", HOST_LINK, "type", "veth", "peer", "name", "eth0", "netns", NODE,
    ])?;
    ip(&[
        "addr",
        "add",
        &format!("{HOST_ADDRESS}/{LINK_PREFIX}"),
        "dev",
        HOST_LINK,
    ])?;
    ip(&["link", "set", HOST_LINK, "up"])?;
    ip(&[
        "-n",
        NODE,
        "addr",
        "add",
        &format!("{NODE_ADDRESS}/{LINK_PREFIX}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", NODE, "link", "set", "eth0", "up"])?;
    ip(&["-n", NODE, "link", "set", "lo", "up"])?;
    // Goes with the link on `down`.
    ip(&[
        "route",
        "add",
        CLUSTER_CIDR,
        "via",
        &NODE_ADDRESS.to_string(),
        "dev",
        HOST_LINK,
    ])
}

/// Starts `program` with `args` as a daemon: in a session of its own
/// (`setsid`, which execs it: same pid), so neither a Ctrl-C nor the
/// terminal closing reaches it; output to its log, pid in its pid file.
fn daemon(state: &State, name: &str, program: &Path, args: &[OsString]) -> Result<u32> {
    let log = std::fs::File::create(state.log(name))
        .with_context(|| format!("creating {}", state.log(name).display()))?;
    let mut child = Command::new("setsid")
        .arg(program)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    write(&state.pid_file(name), format!("{}\n", child.id()))?;
    // setsid (and nsenter) exec the daemon under the same pid: it is ours
    // once its program is.
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.running(name).is_none() {
        if child.try_wait()?.is_some() || Instant::now() > deadline {
            return check_alive(state, name).map(|()| child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "started {name} (pid {}, log {})",
        child.id(),
        state.log(name).display()
    );
    Ok(child.id())
}

/// Fails with the end of `name`'s log when it is no longer running.
fn check_alive(state: &State, name: &str) -> Result<()> {
    if state.running(name).is_some() {
        return Ok(());
    }
    let log = std::fs::read_to_string(state.log(name)).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    bail!(
        "{name} is not running; the end of {}:\n{}",
        state.log(name).display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

fn start_control_plane(state: &State, bin: &Path) -> Result<()> {
    let args: Vec<OsString> = [
        "--node-id".into(),
        "1".into(),
        "--data-dir".into(),
        state.control().into_os_string(),
        "--listen".into(),
        format!("{HOST_ADDRESS}:{RAFT_PORT}").into(),
        "--api-listen".into(),
        format!("{HOST_ADDRESS}:{API_PORT}").into(),
        "--health-listen".into(),
        format!("{HOST_ADDRESS}:{HEALTH_PORT}").into(),
        "--cluster-cidr".into(),
        CLUSTER_CIDR.into(),
        "--init".into(),
    ]
    .to_vec();
    daemon(state, "orch-control", &bin.join("orch-control"), &args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(state.admin_config().exists() && http_get(HOST_ADDRESS, HEALTH_PORT, "/readyz").is_ok())
    {
        check_alive(state, "orch-control")?;
        if Instant::now() > deadline {
            bail!(
                "orch-control was not ready within 60 s (see {})",
                state.log("orch-control").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The cgroup2 directory whose processes get ClusterIP balancing. On a
/// host with cgroup v1 controllers (cgroup2 mounted on its own) a
/// directory of the node's own; on a pure cgroup v2 host the root, which
/// libcontainer's placement of containers requires (docs/operations.md).
fn service_cgroup() -> Result<(PathBuf, bool)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mount = mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next() == Some("cgroup2"))
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 hierarchy is mounted")?;
    let pure_v2 = mount == Path::new("/sys/fs/cgroup");
    Ok(if pure_v2 {
        (mount, false)
    } else {
        (mount.join(NODE), true)
    })
}

fn start_node(state: &State, bin: &Path) -> Result<()> {
    let orch_control = bin.join("orch-control");
    run_command(
        Command::new(&orch_control)
            .args(["node-config", "--data-dir"])
            .arg(state.control())
            .args(["--node-name", NODE])
            .args(["--server", &format!("{HOST_ADDRESS}:{API_PORT}")])
            .arg("--output")
            .arg(state.node_config()),
    )?;
    let orch_node = bin.join("orch-node");
    run_command(
        Command::new(&orch_node)
            .args(["image", "--state-dir"])
            .arg(state.node())
            .args(["build-busybox", DEMO_IMAGE]),
    )?;
    let (cgroup, own) = service_cgroup()?;
    if own {
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating the service cgroup {}", cgroup.display()))?;
    }
    // nsenter joins the node's network namespace only; `ip netns exec`
    // would also mount a fresh /sys, hiding bpffs from the agent.
    let args: Vec<OsString> = [
        format!("--net=/run/netns/{NODE}").into(),
        "--".into(),
        orch_node.into_os_string(),
        "--node-name".into(),
        NODE.into(),
        "--config".into(),
        state.node_config().into_os_string(),
        "--state-dir".into(),
        state.node().into_os_string(),
        "--node-ip".into(),
        NODE_ADDRESS.to_string().into(),
        "--address".into(),
        NODE_ADDRESS.to_string().into(),
        "--pod-network-interface".into(),
        "eth0".into(),
        "--service-cgroup".into(),
        cgroup.into_os_string(),
    ]
    .to_vec();
    daemon(state, "orch-node", Path::new("nsenter"), &args)?;
    Ok(())
}

/// Waits until the node registered and is Ready, failing with the end of
/// the agent's log when it exits.
fn wait_for_node(state: &State, orchctl: &Orchctl) -> Result<()> {
    let started = Instant::now();
    loop {
        let ready = orchctl
            .output(&["get", "node", NODE, "-o", "json"])
            .ok()
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .is_some_and(|node| {
                node["status"]["conditions"]
                    .as_array()
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            });
        if ready {
            return Ok(());
        }
        check_alive(state, "orch-node")?;
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "node {NODE} was not Ready within 60 s (see {})",
                state.log("orch-node").display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Stops `name` (SIGTERM, then SIGKILL after `grace`).
fn stop(state: &State, name: &str, grace: Duration) -> Result<()> {
    let Some(pid) = state.running(name) else {
        return Ok(());
    };
    let signal = |signal: &str| {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    };
    signal("-TERM");
    let deadline = Instant::now() + grace;
    while state.running(name).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if state.running(name).is_some() {
        signal("-KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while state.running(name).is_some() {
            if Instant::now() > deadline {
                bail!("{name} (pid {pid}) is still there 10 s after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("stopped {name} (pid {pid})");
    Ok(())
}

/// Removes everything `up` made, whatever state it was left in: the
/// daemons, the node's pods (containers, mounts, cgroups, addresses), its
/// pinned kernel programs, the service cgroup, the namespace and veth
/// pair, and the state directory.
fn teardown(state: &State) -> Result<()> {
    let ours = state.root.join(MARKER).exists();
    let empty = std::fs::read_dir(&state.root).map_or(true, |mut entries| entries.next().is_none());
    if !ours && !empty {
        bail!(
            "{} was not made by `cargo xtask up` (it has no {MARKER}); refusing to delete it",
            state.root.display()
        );
    }
    stop(state, "orch-node", Duration::from_secs(10))?;
    stop(state, "orch-control", Duration::from_secs(10))?;
    let bin = std::fs::read_to_string(state.bin_file())
        .map(|dir| PathBuf::from(dir.trim()))
        .unwrap_or_else(|_| workspace_root().join("target").join("release"));
    let orch_node = bin.join("orch-node");
    if orch_node.exists() {
        run_command(
            Command::new(&orch_node)
                .args(["reset", "--node-name", NODE, "--state-dir"])
                .arg(state.node()),
        )?;
    } else if state.node().join("pods").exists() {
        bail!(
            "{} is gone, and it is what releases the node's pods under {}: build it again (`cargo xtask up` does) and rerun `cargo xtask down`",
            orch_node.display(),
            state.node().display()
        );
    }
    // What the reset removes, also when there was no binary to run it.
    let pins = Path::new(BPF_PINS).join(NODE);
    if pins.exists() {
        std::fs::remove_dir_all(&pins).with_context(|| format!("unpinning {}", pins.display()))?;
    }
    if let Ok((cgroup, true)) = service_cgroup() {
        remove_cgroup(&cgroup)?;
    }
    if namespace_exists() {
        run_command(Command::new("ip").args(["netns", "del", NODE]))?;
    }
    // The kernel takes the pair down with the namespace, a moment later;
    // a pair left without its namespace (a crash halfway) goes here.
    let link_exists = || output(Command::new("ip").args(["link", "show", HOST_LINK])).is_some();
    let deadline = Instant::now() + Duration::from_secs(5);
    while link_exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if link_exists() {
        let deleted = Command::new("ip").args(["link", "del", HOST_LINK]).status();
        if link_exists() {
            bail!("cannot remove the interface {HOST_LINK}: `ip link del` gave {deleted:?}");
        }
    }
    if state.root.exists() {
        let mounted = mounts_under(&state.root);
        if !mounted.is_empty() {
            bail!(
                "still mounted under {}: {}",
                state.root.display(),
                mounted.join(", ")
            );
        }
        std::fs::remove_dir_all(&state.root)
            .with_context(|| format!("removing {}", state.root.display()))?;
    }
    if std::fs::read_to_string(OWNER_FILE).is_ok_and(|owner| Path::new(owner.trim()) == state.root)
    {
        std::fs::remove_file(OWNER_FILE).with_context(|| format!("removing {OWNER_FILE}"))?;
    }
    Ok(())
}

/// Mount points at or under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// Removes a cgroup directory once the processes that were in it are gone.
fn remove_cgroup(cgroup: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match std::fs::remove_dir(cgroup) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("removing the cgroup {}", cgroup.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
