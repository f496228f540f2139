//! A pod's shim for the container tests: started from the sealed copies
//! cargo builds, with its pod directory, sandbox and cgroups removed
//! however a test ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use orch_node::image::build::{self, BUSYBOX};
use orch_node::image::{ImageStore, Reference, unpack};
use orch_node::runtime::shim::ShimPrograms;
use orch_node::runtime::shim::client::ShimClient;
use orch_node::runtime::shim::protocol::{ContainerState, Request, Status};
use orch_node::runtime::spec::{ContainerSpec, Resources};
use orch_node::runtime::{cgroups, rootfs, sandbox};

/// busybox's unpacked layers, from an image built in a store under `dir`.
pub fn busybox_layers(dir: &Path) -> Vec<PathBuf> {
    let store = ImageStore::open(&dir.join("images")).expect("store");
    let reference = Reference::parse("orch.test/busybox:1").expect("reference");
    build::busybox_image(&store, &reference, Path::new(BUSYBOX), &[], &["sh"]).expect("image");
    let image = store
        .image(&store.resolve(&reference).expect("resolve").expect("named"))
        .expect("image");
    unpack::unpacked_layers(&store, &image).expect("layers")
}

/// The shim process; killed (with what it runs) if the test fails early.
pub struct Shim {
    pub child: Child,
    pub client: ShimClient,
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.client.call(&Request::Shutdown);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pod directory, sandbox and mounts, removed however the test ends.
pub struct Pod {
    pub dir: PathBuf,
    pub containers: Vec<PathBuf>,
}

impl Drop for Pod {
    fn drop(&mut self) {
        for container in &self.containers {
            let _ = rootfs::remove(container);
        }
        let _ = sandbox::remove(&self.dir);
        let _ = cgroups::remove(&cgroup_parent());
    }
}

impl Pod {
    /// Pod directory `dir` with a sandbox whose hostname is `hostname`.
    pub fn create(dir: PathBuf, hostname: &str) -> Self {
        std::fs::create_dir(&dir).expect("pod dir");
        let pod = Self {
            dir,
            containers: Vec::new(),
        };
        sandbox::create(&pod.dir, hostname).expect("sandbox");
        pod
    }
}

/// This test run's cgroup parent.
pub fn cgroup_parent() -> String {
    format!("/orch-test-containers-{}", std::process::id())
}

/// Starts orch-shim for `pod_dir`, with `flags` added to the agent's.
pub fn start_shim(pod_dir: &Path, flags: &[&str]) -> Shim {
    // orch-shim and orch-runtime, which cargo builds beside orch-node.
    let programs = ShimPrograms::beside(Path::new(env!("CARGO_BIN_EXE_orch-shim")))
        .expect("sealed orch-shim and orch-runtime");
    let child = programs
        .shim_command(pod_dir)
        .expect("the shim's command")
        .args(flags)
        .env_remove("RUST_BACKTRACE")
        // libcontainer's debug logs must reach the shim's log, never a
        // container's output (asserted below).
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(pod_dir.join("shim.log")).expect("shim log"))
        .spawn()
        .expect("start the shim");
    let client = ShimClient::new(pod_dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !client.alive() {
        assert!(
            Instant::now() < deadline,
            "the shim did not answer: {}",
            std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Shim { child, client }
}

/// The directory of `child` of this run's cgroup parent in each of
/// `hierarchies` (the parent itself for an empty `child`).
pub fn in_hierarchies(hierarchies: &[&str], child: &str) -> Vec<PathBuf> {
    // A pure cgroup v2 host has the one hierarchy at the root.
    let pure_v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let hierarchies = if pure_v2 { &[""][..] } else { hierarchies };
    hierarchies
        .iter()
        .map(|h| {
            Path::new("/sys/fs/cgroup")
                .join(h)
                .join(cgroup_parent().trim_start_matches('/'))
                .join(child)
        })
        .collect()
}

pub fn container_spec(rootfs: PathBuf, pod_dir: &Path, name: &str, args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        rootfs,
        readonly_rootfs: false,
        privileged: false,
        add_capabilities: vec![],
        drop_capabilities: vec![],
        seccomp: true,
        no_new_privileges: true,
        namespaces: sandbox::namespaces(pod_dir),
        cgroups_path: format!("{}/{name}", cgroup_parent()),
        resources: Resources::default(),
        mounts: vec![],
        oom_score_adj: 0,
    }
}

/// Container `id` once exited, through the shim's Wait (which must agree
/// with what State then says).
pub fn wait_exited(client: &ShimClient, id: &str) -> ContainerState {
    let exited = client
        .wait(id, Some(Duration::from_secs(20)))
        .unwrap_or_else(|e| panic!("waiting for {id}: {e}"));
    assert_eq!(exited.status, Status::Exited, "{id}");
    let listed = client
        .state()
        .expect("state")
        .into_iter()
        .find(|c| c.id == id)
        .expect("container known");
    assert_eq!(listed, exited, "Wait and State agree on {id}");
    exited
}

/// The live (not yet reaped) children of process `pid`, any thread's.
pub fn children(pid: u32) -> Vec<i32> {
    let mut found: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the shim's threads")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .filter(|child| {
            // A zombie is a child the shim has yet to reap.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
        })
        .collect();
    found.sort();
    found
}
