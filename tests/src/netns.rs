//! Test hosts as network namespaces: a LAN (a bridge in a namespace of its
//! own) and hosts on it, each a namespace with `eth0` on the bridge. All of
//! it is removed on drop, a failed assertion included, and no address of
//! it is routed out of the machine (the host's namespace is not touched).

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs a setup command (ip, bpftool, ...) that must succeed; its stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (run `cargo xtask setup`)"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `work` on a thread of its own inside the network namespace
/// `/var/run/netns/<netns>` (a thread's network namespace is its own; the
/// process stays where it is, and what the thread forks starts there).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{netns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        work()
    })
}

/// Runs the future `make` gives on a runtime of its own, on a thread
/// inside `netns` (netlink and tc calls, and every socket the future
/// opens, act there); its output.
pub fn block_on_in<T, F, Fut>(netns: &str, make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    in_netns(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(make())
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A network namespace with loopback up, deleted on drop.
pub struct Namespace(pub String);

impl Namespace {
    pub fn new(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test creates network namespaces: run it as root (CI does; `sudo -E cargo \
             xtask test` locally)"
        );
        run("ip", &["netns", "add", name]);
        let namespace = Namespace(name.to_string());
        run("ip", &["-n", name, "link", "set", "lo", "up"]);
        namespace
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    /// The path its namespace file is bound at.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/var/run/netns/{}", self.0))
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// A /24 with a bridge, and the hosts on it.
pub struct Lan {
    tag: String,
    /// Dropped first: hosts before the bridge's namespace.
    hosts: Vec<Namespace>,
    bridge: Namespace,
}

impl Lan {
    /// A LAN whose namespaces are named `<tag>-...` (make `tag` unique to
    /// the test and process).
    pub fn new(tag: &str) -> Self {
        let bridge = Namespace::new(&format!("{tag}-lan"));
        run(
            "ip",
            &["-n", bridge.name(), "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", bridge.name(), "link", "set", "br0", "up"]);
        Lan {
            tag: tag.to_string(),
            hosts: Vec::new(),
            bridge,
        }
    }

    /// A host `<tag>-<name>` on the LAN: `eth0` with `address`/24, up.
    /// Returns its namespace's name.
    pub fn add_host(&mut self, name: &str, address: Ipv4Addr) -> String {
        let host = Namespace::new(&format!("{}-{name}", self.tag));
        let port = format!("port{}", self.hosts.len());
        let lan = self.bridge.name();
        run(
            "ip",
            &[
                "-n",
                lan,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.name(),
            ],
        );
        run(
            "ip",
            &["-n", lan, "link", "set", &port, "master", "br0", "up"],
        );
        let cidr = format!("{address}/24");
        run(
            "ip",
            &["-n", host.name(), "addr", "add", &cidr, "dev", "eth0"],
        );
        run("ip", &["-n", host.name(), "link", "set", "eth0", "up"]);
        let name = host.name().to_string();
        self.hosts.push(host);
        name
    }
}
