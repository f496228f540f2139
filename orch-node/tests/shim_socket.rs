//! The shim's socket: one request per connection, read by the thread that
//! accepts and answered by the shim's main loop. A client that connects
//! and says nothing, or sends something unreadable, must not stop the
//! shim answering the next one; a wait for a running container must not
//! hold up other calls, and is answered when the container exits. The
//! shim starts in a session of its own with the sealed orch-runtime moved
//! off its stdin. Needs root.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::shim::{Pod, busybox_layers, container_spec, start_shim};
use orch_node::runtime::shim::client::socket_path;
use orch_node::runtime::shim::protocol::{Request, Status};
use orch_node::runtime::{bundle, rootfs, spec};

/// One test, one pod and one shim: the container tests of a file share a
/// cgroup parent, which a second pod's cleanup would remove under the
/// first.
#[test]
fn the_shim_socket_serves_past_bad_clients_and_pending_waits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layers = busybox_layers(dir.path());
    let pod_dir = dir.path().join("pod");
    let mut pod = Pod::create(pod_dir.clone(), "pod-socket");
    let shim = start_shim(&pod_dir, &[]);

    // Started as the agent starts it: a session of its own (it outlives
    // the agent), stdin /dev/null once the sealed orch-runtime it came on
    // has moved to a close-on-exec descriptor.
    let pid = shim.child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let session: u32 = after_name
        .split(' ')
        .nth(3)
        .and_then(|s| s.parse().ok())
        .expect("session");
    assert_eq!(session, pid, "{stat}");
    let stdin = std::fs::read_link(format!("/proc/{pid}/fd/0")).expect("stdin");
    assert_eq!(stdin, std::path::Path::new("/dev/null"));
    let sealed_runtime: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            target
                .to_string_lossy()
                .starts_with("/memfd:")
                .then(|| fd.file_name().to_string_lossy().into_owned())
        })
        .collect();
    assert_eq!(sealed_runtime.len(), 1, "{sealed_runtime:?}");
    let flags = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", sealed_runtime[0]))
        .expect("fdinfo");
    let flags = flags
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .expect("flags");
    assert_ne!(
        flags & 0o2000000,
        0,
        "the sealed orch-runtime is not close-on-exec"
    );

    // Connected, never writing: the shim gives up on it and answers the
    // next caller.
    let silent = UnixStream::connect(socket_path(&pod_dir)).expect("connect");
    let asked = Instant::now();
    let containers = shim.client.state().expect("state past a silent client");
    assert!(containers.is_empty(), "{containers:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "answered after {:?}",
        asked.elapsed()
    );
    drop(silent);

    // Not a request: an error that says so, on the same connection.
    let mut garbled = UnixStream::connect(socket_path(&pod_dir)).expect("connect");
    garbled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    garbled
        .write_all(b"{\"op\":\"nonsense\"}\n")
        .expect("write");
    let mut answer = String::new();
    BufReader::new(&garbled)
        .read_line(&mut answer)
        .expect("an answer");
    assert!(
        answer.contains("unreadable request") && answer.contains("nonsense"),
        "{answer}"
    );
    assert!(shim.client.alive(), "the shim stopped answering");

    // A client that sends a byte a second and never a whole line is
    // dropped at the request limit (5 s), not served for as long as it
    // dribbles.
    let dribbling = UnixStream::connect(socket_path(&pod_dir)).expect("connect");
    let dribbler = std::thread::spawn(move || {
        let mut dribbling = dribbling;
        for _ in 0..20 {
            if dribbling.write_all(b" ").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    let asked = Instant::now();
    shim.client.state().expect("state past a dribbling client");
    assert!(
        asked.elapsed() < Duration::from_secs(12),
        "answered after {:?}, behind a client dribbling for 20 s",
        asked.elapsed()
    );
    dribbler.join().expect("dribbler");

    let container_dir = pod_dir.join("containers").join("c");
    pod.containers.push(container_dir.clone());
    let root = rootfs::mount(&container_dir, &layers).expect("rootfs");
    let config = container_spec(root, &pod_dir, "c", &["sleep", "600"]);
    let runtime_spec = serde_json::to_value(spec::runtime_spec(&config)).expect("spec");
    bundle::write(&container_dir, &runtime_spec).expect("bundle");
    let client = &shim.client;
    client
        .call(&Request::Create {
            id: "c-0".into(),
            bundle: container_dir.clone(),
            log: pod_dir.join("logs").join("c").join("0.log"),
            log_rotation: None,
        })
        .expect("create");
    client
        .call(&Request::Start { id: "c-0".into() })
        .expect("start");

    // The wait is queued in the shim (it holds the wait's connection: a
    // socket it did not have before) before the calls below. Sockets, not
    // a count of descriptors: the start's connection may still be open
    // here, and be closed as the wait's is accepted.
    let shim_pid = shim.child.id();
    let sockets = || -> std::collections::HashSet<String> {
        std::fs::read_dir(format!("/proc/{shim_pid}/fd"))
            .expect("the shim's descriptors")
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .map(|target| target.to_string_lossy().into_owned())
            .filter(|target| target.starts_with("socket:"))
            .collect()
    };
    let before = sockets();
    let waiting = {
        let pod_dir = pod_dir.clone();
        std::thread::spawn(move || {
            orch_node::runtime::shim::client::ShimClient::new(&pod_dir)
                .wait("c-0", Some(Duration::from_secs(60)))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sockets().is_subset(&before) {
        assert!(Instant::now() < deadline, "the wait never reached the shim");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Calls go on being answered while it is pending.
    for _ in 0..5 {
        let states = client.state().expect("state while a wait is pending");
        assert_eq!(states.len(), 1, "{states:?}");
        assert_eq!(states[0].status, Status::Running);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !waiting.is_finished(),
        "the wait was answered while the container ran"
    );
    client
        .call(&Request::Kill {
            id: "c-0".into(),
            signal: 9,
        })
        .expect("kill");
    let exited = waiting
        .join()
        .expect("wait thread")
        .expect("the wait is answered at exit");
    assert_eq!(exited.status, Status::Exited);
    assert_eq!(exited.signal, Some(9), "{exited:?}");
    client
        .call(&Request::Delete { id: "c-0".into() })
        .expect("delete");
    drop(shim);
    drop(pod);
}
