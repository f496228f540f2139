//! Real containers through a pod shim (libcontainer): a busybox image
//! built here, unpacked and mounted as an overlay, run in a pod sandbox
//! (its own network, IPC and UTS namespaces) with the default seccomp
//! profile, capabilities and limits; exit codes, signals, OOM kills and
//! CRI-format logs as the shim reports them. Needs root.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::shim::{
    Pod, busybox_layers, children, container_spec, in_hierarchies, start_shim, wait_exited,
};
use orch_node::runtime::exec::{self, ExecIo, ExecOptions};
use orch_node::runtime::shim::protocol::{LogRotation, Request, Status};
use orch_node::runtime::spec::Resources;
use orch_node::runtime::{bundle, rootfs, sandbox, spec};

#[test]
fn containers_run_in_a_pod_sandbox_through_the_shim() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layers = busybox_layers(dir.path());

    let pod_dir = dir.path().join("pod");
    let mut pod = Pod::create(pod_dir.clone(), "pod-a");
    let shim = start_shim(&pod_dir, &[]);
    let client = &shim.client;
    // The shim runs from a sealed in-memory copy of orch-shim, not the file.
    let exe = std::fs::read_link(format!("/proc/{}/exe", shim.child.id())).expect("shim exe");
    assert!(
        exe.to_string_lossy().contains("memfd:"),
        "{}",
        exe.display()
    );

    // It never maps libcontainer (or its libseccomp): the runtime calls run
    // in orch-runtime processes of their own.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", shim.child.id())).expect("maps");
    assert!(!maps.contains("libseccomp"), "{maps}");
    let shim_pid = shim.child.id();

    // Creates container `name` (its bundle, then the shim's Create).
    let mut create = |name: &str,
                      args: &[&str],
                      resources: Resources,
                      log_rotation: Option<LogRotation>|
     -> (String, PathBuf) {
        let container_dir = pod_dir.join("containers").join(name);
        pod.containers.push(container_dir.clone());
        let root = rootfs::mount(&container_dir, &layers).expect("rootfs");
        let mut config = container_spec(root, &pod_dir, name, args);
        config.resources = resources;
        bundle::write(&container_dir, &spec::runtime_spec(&config)).expect("bundle");
        let id = format!("{name}-0");
        let log = pod_dir.join("logs").join(name).join("0.log");
        client
            .call(&Request::Create {
                id: id.clone(),
                bundle: container_dir.clone(),
                log: log.clone(),
                log_rotation,
            })
            .unwrap_or_else(|e| {
                panic!(
                    "create {name}: {e}\nshim log:\n{}",
                    std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
                )
            });
        (id, log)
    };
    // Creates and starts it.
    let mut run = |name: &str,
                   args: &[&str],
                   resources: Resources,
                   log_rotation: Option<LogRotation>|
     -> (String, PathBuf) {
        let (id, log) = create(name, args, resources, log_rotation);
        client
            .call(&Request::Start { id: id.clone() })
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        (id, log)
    };

    // Output, exit code, the sandbox's hostname and loopback, seccomp
    // filtering (a user namespace refused) and no_new_privs as the process
    // sees them.
    let (id, log) = run(
        "hello",
        &[
            "sh",
            "-c",
            "echo hello; hostname; echo lo $(cat /sys/class/net/lo/flags); grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; unshare -U true 2>&1 | grep -o 'Operation not permitted'; echo oops >&2; exit 3",
        ],
        Resources::default(),
        None,
    );
    let state = wait_exited(client, &id);
    assert_eq!(state.exit_code, Some(3));
    assert!(!state.oom_killed);
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("stderr F oops") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    for expected in [
        "stdout F hello",
        "stdout F pod-a",
        // The sandbox's loopback is up (IFF_UP | IFF_LOOPBACK).
        "stdout F lo 0x9",
        "stdout F Seccomp:\t2",
        "stdout F NoNewPrivs:\t1",
        // A user namespace needs no privilege here; the filter refuses it.
        "stdout F Operation not permitted",
        "stderr F oops",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not in the log:\n{text}"
        );
    }
    assert_eq!(
        text.lines().count(),
        7,
        "only the container's output:\n{text}"
    );
    // CRI format: an RFC 3339 time first.
    let first = text.lines().next().expect("a line");
    assert!(
        first
            .split(' ')
            .next()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{first}"
    );
    // Delete takes the container's own cgroup (every hierarchy) and its
    // runtime state with it.
    let leaf = in_hierarchies(&["memory", "pids", "cpu", "freezer"], "hello");
    let state_dir = pod_dir.join("runtime-state").join(&id);
    assert!(leaf.iter().all(|p| p.exists()) && state_dir.exists());
    client.call(&Request::Delete { id }).expect("delete");
    let left: Vec<_> = leaf.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "cgroups left after delete: {left:?}");
    // By the shim itself, not libcontainer's fallback.
    let shim_log = std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default();
    assert!(
        !shim_log.contains("releasing an exited container"),
        "{shim_log}"
    );
    assert!(!state_dir.exists(), "{} left", state_dir.display());

    // SIGTERM reaches a process that handles it (PID 1 of its namespace
    // ignores signals it does not handle, as in any container)...
    let (id, _) = run(
        "graceful",
        &[
            "sh",
            "-c",
            "trap 'exit 130' TERM; while true; do sleep 0.1; done",
        ],
        Resources::default(),
        None,
    );
    std::thread::sleep(Duration::from_millis(300));
    let running = client.state().expect("state");
    assert_eq!(
        running.iter().find(|c| c.id == id).map(|c| c.status),
        Some(Status::Running)
    );
    client
        .call(&Request::Kill {
            id: id.clone(),
            signal: 15,
        })
        .expect("kill");
    // Its own exit code 130 is not a signal.
    let exited = wait_exited(client, &id);
    assert_eq!((exited.exit_code, exited.signal), (Some(130), None));
    client.call(&Request::Delete { id }).expect("delete");
    // ...and SIGKILL ends anything: 128 + 9.
    let (id, _) = run("sleeper", &["sleep", "1000"], Resources::default(), None);
    // The runtime process that created and started it exits after the
    // start: the container's init is left as the shim's one child.
    let init = client
        .state()
        .expect("state")
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.pid)
        .expect("the sleeper's init");
    let deadline = Instant::now() + Duration::from_secs(5);
    while children(shim_pid) != vec![init] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children(shim_pid), vec![init]);
    client
        .call(&Request::Kill {
            id: id.clone(),
            signal: 9,
        })
        .expect("kill");
    let killed = wait_exited(client, &id);
    assert_eq!((killed.exit_code, killed.signal), (Some(137), Some(9)));
    client.call(&Request::Delete { id }).expect("delete");

    // Processes exec'd into a running container.
    let (id, _) = run("target", &["sleep", "1000"], Resources::default(), None);
    exec_into(&pod_dir, &id);
    client
        .call(&Request::Kill {
            id: id.clone(),
            signal: 9,
        })
        .expect("kill");
    wait_exited(client, &id);
    let refused = exec::start(&pod_dir, &id, vec!["true".into()], ExecOptions::default())
        .err()
        .expect("no exec into a stopped container");
    assert!(refused.to_string().contains("not running"), "{refused}");
    client.call(&Request::Delete { id }).expect("delete");

    // Over its memory limit: killed by the kernel, reported as an OOM kill.
    let (id, _) = run(
        "hog",
        &[
            "sh",
            "-c",
            "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived",
        ],
        Resources {
            memory_limit: 16 << 20,
            ..Resources::default()
        },
        None,
    );
    let state = wait_exited(client, &id);
    assert_eq!(state.exit_code, Some(137), "{state:?}");
    assert!(state.oom_killed, "{state:?}");
    client.call(&Request::Delete { id }).expect("delete");

    // A log rotated by size: the live file and two older ones, the oldest
    // dropped; every record whole.
    let (id, log) = run(
        "chatty",
        &[
            "sh",
            "-c",
            "i=0; while [ $i -lt 200 ]; do echo line-$i-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; i=$((i+1)); done",
        ],
        Resources::default(),
        Some(LogRotation {
            max_bytes: 2000,
            max_files: 3,
        }),
    );
    assert_eq!(wait_exited(client, &id).exit_code, Some(0));
    std::thread::sleep(Duration::from_millis(200));
    let rotated = |k: u32| PathBuf::from(format!("{}.{k}", log.display()));
    assert!(
        rotated(1).exists() && rotated(2).exists(),
        "no rotated files"
    );
    assert!(!rotated(3).exists(), "more files kept than asked");
    // Oldest first, the kept lines are the last ones, in order, none lost
    // between the files.
    let mut numbers = Vec::new();
    for path in [rotated(2), rotated(1), log.clone()] {
        let text = std::fs::read_to_string(&path).expect("log file");
        assert!(
            text.len() < 2000 + 200,
            "{}: {} bytes",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            let number = line
                .split("stdout F line-")
                .nth(1)
                .and_then(|rest| rest.split('-').next())
                .and_then(|n| n.parse::<u32>().ok());
            numbers.push(number.unwrap_or_else(|| panic!("not a whole record: {line}")));
        }
    }
    assert_eq!(numbers.last(), Some(&199), "{numbers:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    client.call(&Request::Delete { id }).expect("delete");

    // Created and never started: its delete goes to the runtime process
    // still holding it, which takes its init, cgroup and state along.
    let (id, _) = create("unstarted", &["true"], Resources::default(), None);
    let created = client.state().expect("state");
    let init = created
        .iter()
        .find(|c| c.id == id)
        .and_then(|c| (c.status == Status::Created).then_some(c.pid).flatten())
        .expect("a created container with an init");
    assert!(Path::new(&format!("/proc/{init}")).exists());
    let leaf = in_hierarchies(&["memory", "pids"], "unstarted");
    assert!(leaf.iter().all(|p| p.exists()), "{leaf:?}");
    let state_dir = pod_dir.join("runtime-state").join(&id);
    client
        .call(&Request::Delete { id })
        .expect("delete a created container");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !children(shim_pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(children(shim_pid), Vec::<i32>::new());
    assert!(!state_dir.exists(), "{} left", state_dir.display());
    let left: Vec<_> = leaf.iter().filter(|p| p.exists()).collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");

    // A bundle without an absolute cgroupsPath below the root is refused
    // before anything runs (the shim kills and removes that cgroup).
    let bare = pod_dir.join("containers").join("bare");
    std::fs::create_dir_all(&bare).expect("bundle dir");
    std::fs::write(
        bare.join("config.json"),
        r#"{"linux": {"cgroupsPath": "/"}}"#,
    )
    .expect("config.json");
    let refused = client
        .call(&Request::Create {
            id: "bare-0".into(),
            bundle: bare,
            log: pod_dir.join("logs").join("bare").join("0.log"),
            log_rotation: None,
        })
        .expect_err("the root cgroup is refused");
    assert!(
        refused.to_string().contains("linux.cgroupsPath \"/\""),
        "{refused}"
    );
    assert_eq!(children(shim_pid), Vec::<i32>::new());

    // Everything goes: the shim on request, the mounts, the cgroups.
    drop(shim);
    drop(pod);
    assert!(!sandbox::exists(&pod_dir));
    let leftover: Vec<_> = in_hierarchies(&["memory", "pids", "cpu", "unified"], "")
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(leftover.is_empty(), "cgroups left: {leftover:?}");
}

fn read_all(fd: std::os::fd::OwnedFd) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text).expect("read");
    text
}

/// exec with pipes (stdin, stdout, stderr apart) and with a terminal.
fn exec_into(pod_dir: &Path, id: &str) {
    use std::io::Write as _;
    let script = "echo out; echo err >&2; hostname; id -u; grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status; \
                  cat; exit 4";
    let (process, io) = exec::start(
        pod_dir,
        id,
        vec!["sh".into(), "-c".into(), script.into()],
        ExecOptions {
            stdin: true,
            tty: false,
        },
    )
    .expect("exec with pipes");
    let ExecIo::Pipes {
        stdin: Some(stdin),
        stdout,
        stderr,
    } = io
    else {
        panic!("pipes with a stdin were asked for");
    };
    let mut stdin = std::fs::File::from(stdin);
    stdin.write_all(b"typed in\n").expect("write stdin");
    drop(stdin);
    let errors = std::thread::spawn(move || read_all(stderr));
    let output = read_all(stdout);
    assert_eq!(process.wait().expect("wait"), 4);
    assert_eq!(errors.join().expect("stderr"), "err\n");
    for expected in [
        "out\n",
        "pod-a\n",
        "0\n",
        "Seccomp:\t2",
        "NoNewPrivs:\t1",
        "typed in\n",
    ] {
        assert!(output.contains(expected), "{expected:?} not in {output:?}");
    }

    // A terminal: the process sees a tty and reads what is typed into it.
    let (process, io) = exec::start(
        pod_dir,
        id,
        vec!["sh".into()],
        ExecOptions {
            stdin: true,
            tty: true,
        },
    )
    .expect("exec with a terminal");
    let ExecIo::Terminal { master } = io else {
        panic!("a terminal was asked for");
    };
    let mut terminal = std::fs::File::from(master);
    terminal
        .write_all(b"tty; echo done-$((6 * 7)); exit 5\n")
        .expect("type");
    let mut screen = Vec::new();
    let mut buffer = [0u8; 4096];
    // Reading the master fails with EIO once the process is gone.
    while let Ok(read @ 1..) = std::io::Read::read(&mut terminal, &mut buffer) {
        screen.extend_from_slice(&buffer[..read]);
    }
    assert_eq!(process.wait().expect("wait"), 5);
    let screen = String::from_utf8_lossy(&screen);
    assert!(screen.contains("/dev/pts/"), "{screen}");
    assert!(screen.contains("done-42"), "{screen}");

    // A command the image does not have: refused, with the reason.
    let missing = exec::start(
        pod_dir,
        id,
        vec!["no-such-command".into()],
        ExecOptions::default(),
    )
    .err()
    .expect("a missing command is refused");
    assert!(missing.to_string().contains("no-such-command"), "{missing}");
}
