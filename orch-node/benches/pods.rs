//! `cargo xtask bench pods`: orch-node's container runtime next to runc
//! and crun (Debian's) on the same bundle, in the same run: create, start,
//! wait and delete of `true`, one container after another. A benchmark,
//! not a test: it prints figures and ratios, it never fails on them.
//!
//! All three run the same config.json (the spec orch-node builds: new pid
//! and mount namespaces, the pod sandbox's network/IPC/UTS joined, cgroup
//! limits, capabilities, seccomp) on the same read-only busybox root.
//! crun refuses this host's hybrid cgroup layout, so it runs in a mount
//! namespace of its own without /sys/fs/cgroup/unified, one shell loop
//! timing each run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use orch_node::image::build::{self, BUSYBOX};
use orch_node::image::{ImageStore, Reference, unpack};
use orch_node::runtime::shim::ShimPrograms;
use orch_node::runtime::shim::client::ShimClient;
use orch_node::runtime::shim::protocol::{Request, Status};
use orch_node::runtime::spec::{ContainerSpec, Resources};
use orch_node::runtime::{self, cgroups, sandbox, spec};

const RUNS: usize = 200;
/// Runs of one runtime before the next takes its turn.
const ROUND: usize = 20;

fn median_and_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |p: f64| {
        let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
        samples[index].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

fn bundle(dir: &Path, rootfs: &Path, pod_dir: &Path, cgroup: &str) -> PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let config = ContainerSpec {
        args: vec!["/bin/true".into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        additional_gids: vec![],
        rootfs: rootfs.to_path_buf(),
        readonly_rootfs: true,
        privileged: false,
        add_capabilities: vec![],
        drop_capabilities: vec![],
        seccomp: true,
        no_new_privileges: true,
        namespaces: sandbox::namespaces(pod_dir),
        cgroups_path: cgroup.into(),
        resources: Resources {
            memory_limit: 64 << 20,
            pids_limit: 100,
            ..Resources::default()
        },
        mounts: vec![],
        oom_score_adj: 0,
    };
    // config.json (what runc and crun run) and orch-runtime's
    // precompiled seccomp program beside it, as the agent writes them.
    runtime::bundle::write(&bundle, &spec::runtime_spec(&config)).expect("bundle");
    bundle
}

/// One orch shim, timed per phase of each run.
struct Orch {
    shim: std::process::Child,
    client: ShimClient,
    log: PathBuf,
    runs: usize,
}

/// How long each phase of one orch run took.
struct OrchRun {
    phases: [Duration; 4],
}

impl OrchRun {
    fn total(&self) -> Duration {
        self.phases.iter().sum()
    }
}

const PHASES: [&str; 4] = ["create", "start", "wait", "delete"];

impl Orch {
    fn start(pod_dir: &Path) -> Self {
        let orch_node =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/orch-node");
        let programs = ShimPrograms::beside(&orch_node)
            .unwrap_or_else(|e| panic!("{e} (cargo build --release -p orch-node first)"));
        let shim = programs
            .shim_command(pod_dir)
            .unwrap_or_else(|e| panic!("orch-shim's command: {e}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting orch-shim: {e}"));
        let client = ShimClient::new(pod_dir);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.alive() {
            assert!(Instant::now() < deadline, "the shim did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            shim,
            client,
            log: pod_dir.join("bench.log"),
            runs: 0,
        }
    }

    fn run(&mut self, bundle: &Path) -> OrchRun {
        let id = format!("true-{}", self.runs);
        self.runs += 1;
        let started = Instant::now();
        self.client
            .call(&Request::Create {
                id: id.clone(),
                bundle: bundle.to_path_buf(),
                log: self.log.clone(),
                log_rotation: None,
            })
            .expect("create");
        let created = started.elapsed();
        self.client
            .call(&Request::Start { id: id.clone() })
            .expect("start");
        let running = started.elapsed();
        let exited = self.client.wait(&id, None).expect("wait");
        assert_eq!(exited.status, Status::Exited);
        let waited = started.elapsed();
        self.client.call(&Request::Delete { id }).expect("delete");
        OrchRun {
            phases: [
                created,
                running - created,
                waited - running,
                started.elapsed() - waited,
            ],
        }
    }

    fn stop(mut self) {
        let _ = self.client.call(&Request::Shutdown);
        let _ = self.shim.wait();
    }
}

/// Times each `<runtime> run` of a shell loop (nanoseconds, one per line).
fn shell_loop(
    prefix: &str,
    runtime: &str,
    root: &Path,
    bundle: &Path,
    runs: usize,
) -> Vec<Duration> {
    let script = format!(
        "{prefix}for i in $(seq {runs}); do s=$(date +%s%N); {runtime} --root {root} run -b {bundle} bench-$$-$i >/dev/null 2>&1 || exit 1; e=$(date +%s%N); echo $((e - s)); done",
        root = root.display(),
        bundle = bundle.display()
    );
    let output = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("{runtime}: {e}"));
    assert!(
        output.status.success(),
        "{runtime} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(Duration::from_nanos)
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::open(&dir.path().join("images")).expect("store");
    let reference = Reference::parse("orch.bench/busybox:1").expect("reference");
    build::busybox_image(&store, &reference, Path::new(BUSYBOX), &[], &["sh"]).expect("image");
    let image = store
        .image(&store.resolve(&reference).expect("resolve").expect("named"))
        .expect("image");
    let layers = unpack::unpacked_layers(&store, &image).expect("layers");
    let pod_dir = dir.path().join("pod");
    std::fs::create_dir_all(&pod_dir).expect("pod dir");
    sandbox::create(&pod_dir, "bench").expect("sandbox");
    let cgroup = format!("/orch-bench-{}", std::process::id());
    let bundle = bundle(dir.path(), &layers[0], &pod_dir, &format!("{cgroup}/c"));

    // The three take turns, ROUND runs at a time, so that a change in the
    // machine's load (it is shared) falls on all of them alike. The same
    // shell loop timing costs each external runtime a fork and two `date`
    // runs per sample; the figure is what a caller waits.
    let mut orch = Orch::start(&pod_dir);
    let mut orch_runs = Vec::with_capacity(RUNS);
    let (mut runc_samples, mut crun_samples) = (Vec::new(), Vec::new());
    for _ in 0..RUNS / ROUND {
        orch_runs.extend((0..ROUND).map(|_| orch.run(&bundle)));
        runc_samples.extend(shell_loop(
            "",
            "runc",
            &dir.path().join("runc-state"),
            &bundle,
            ROUND,
        ));
        crun_samples.extend(shell_loop(
            "umount /sys/fs/cgroup/unified 2>/dev/null; ",
            "crun",
            &dir.path().join("crun-state"),
            &bundle,
            ROUND,
        ));
    }
    orch.stop();
    // The loop's own cost (a fork, two `date` runs) is measured with a
    // command that does nothing and taken off the anchors' samples.
    let (overhead, _) = median_and_p99(shell_loop("", "true", dir.path(), &bundle, RUNS));
    let less_overhead = |samples: Vec<Duration>| -> Vec<Duration> {
        let overhead = Duration::from_secs_f64(overhead / 1000.0);
        samples
            .into_iter()
            .map(|s| s.saturating_sub(overhead))
            .collect()
    };
    let (runc_samples, crun_samples) = (less_overhead(runc_samples), less_overhead(crun_samples));
    let _ = sandbox::remove(&pod_dir);
    let _ = cgroups::remove(&cgroup);

    let orch_samples: Vec<Duration> = orch_runs.iter().map(OrchRun::total).collect();
    let (orch_p50, orch_p99) = median_and_p99(orch_samples);
    println!(
        "pods benchmark: {RUNS} runs each, taking turns {ROUND} at a time; create + start + wait + delete of `true`, same bundle"
    );
    println!(
        "(the anchors' shell-loop overhead, {overhead:.2} ms median, is taken off their samples)"
    );
    println!(
        "{:<48} {:>10} {:>10} {:>10}",
        "measure", "orch", "anchor", "ratio"
    );
    for (anchor, samples) in [("runc", runc_samples), ("crun", crun_samples)] {
        let (p50, p99) = median_and_p99(samples);
        println!(
            "{:<48} {:>10.2} {:>10.2} {:>9.2}x",
            format!("p50 ms (anchor {anchor})"),
            orch_p50,
            p50,
            orch_p50 / p50
        );
        println!(
            "{:<48} {:>10.2} {:>10.2} {:>9.2}x",
            format!("p99 ms (anchor {anchor})"),
            orch_p99,
            p99,
            orch_p99 / p99
        );
    }
    let phases: Vec<String> = PHASES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (p50, _) = median_and_p99(orch_runs.iter().map(|r| r.phases[i]).collect());
            format!("{name} {p50:.2}")
        })
        .collect();
    println!("orch's p50 per call, ms: {}", phases.join(", "));
}
