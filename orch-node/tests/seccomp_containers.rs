//! Real containers under a precompiled seccomp program (the agent
//! compiles a profile once; orch-runtime installs the program right
//! before the exec, `runtime::bundle`): with and without no_new_privs,
//! the process runs filtered, with exactly its bounding set of
//! capabilities (the CAP_SYS_ADMIN the bundle lends for installing the
//! filter is gone), and an exec'd process is filtered too. Needs root.

mod common;

use std::time::{Duration, Instant};

use common::shim::{Pod, busybox_layers, container_spec, start_shim, wait_exited};
use orch_node::runtime::exec::{self, ExecIo, ExecOptions};
use orch_node::runtime::shim::protocol::Request;
use orch_node::runtime::{bundle, rootfs, spec};

/// What the container's process reports about itself.
const REPORT: &str = "grep -E '^(Seccomp|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status; \
                      unshare -U true 2>&1 | grep -o 'Operation not permitted'";

/// The `Name:\tvalue` lines of a report, as a map.
fn fields(report: &str) -> std::collections::HashMap<String, String> {
    report
        .lines()
        .filter_map(|line| {
            let line = line.rsplit(" F ").next().unwrap_or(line);
            line.split_once(":\t")
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

fn log_text(log: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks one report: filtered, no_new_privs as asked, no CAP_SYS_ADMIN
/// (bit 21) anywhere; root holds exactly its bounding set, another user
/// nothing (what the kernel leaves after an exec).
fn check(report: &str, no_new_privs: bool, root: bool) {
    let f = fields(report);
    assert_eq!(f.get("Seccomp").map(String::as_str), Some("2"), "{report}");
    let nnp = if no_new_privs { "1" } else { "0" };
    assert_eq!(
        f.get("NoNewPrivs").map(String::as_str),
        Some(nnp),
        "{report}"
    );
    let bounding = f.get("CapBnd").expect("CapBnd").clone();
    let held = if root {
        bounding.clone()
    } else {
        "0".repeat(16)
    };
    for set in ["CapPrm", "CapEff"] {
        assert_eq!(f.get(set), Some(&held), "{set}: {report}");
    }
    for set in ["CapBnd", "CapInh", "CapAmb"] {
        let bits = u64::from_str_radix(f.get(set).expect(set), 16).expect("hex");
        assert_eq!(bits & (1 << 21), 0, "CAP_SYS_ADMIN in {set}: {report}");
    }
    assert!(
        bounding != "0".repeat(16),
        "no capabilities at all: {report}"
    );
    assert!(report.contains("Operation not permitted"), "{report}");
}

#[test]
fn precompiled_filters_hold_with_and_without_no_new_privs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let layers = busybox_layers(dir.path());
    let pod_dir = dir.path().join("pod");
    let mut pod = Pod::create(pod_dir.clone(), "pod-seccomp");
    let shim = start_shim(&pod_dir, &[]);
    let client = &shim.client;

    // (no_new_privs, uid): Kubernetes' default, allowPrivilegeEscalation
    // false, and a non-root user without no_new_privs (the lent
    // capability kept across libcontainer's setuid).
    for (no_new_privs, uid) in [(false, 0), (true, 0), (false, 1000)] {
        let name = match (no_new_privs, uid) {
            (true, _) => "nnp",
            (false, 0) => "escalating",
            _ => "user",
        };
        let container_dir = pod_dir.join("containers").join(name);
        pod.containers.push(container_dir.clone());
        let root = rootfs::mount(&container_dir, &layers).expect("rootfs");
        let mut config = container_spec(
            root,
            &pod_dir,
            name,
            &["sh", "-c", &format!("{REPORT}; echo done; sleep 1000")],
        );
        config.no_new_privileges = no_new_privs;
        config.uid = uid;
        config.gid = uid;
        bundle::write(&container_dir, &spec::runtime_spec(&config)).expect("bundle");
        // The program is there for orch-runtime to install.
        assert!(
            bundle::precompiled(&container_dir)
                .expect("readable")
                .is_some()
        );
        let id = format!("{name}-0");
        let log = pod_dir.join("logs").join(name).join("0.log");
        client
            .call(&Request::Create {
                id: id.clone(),
                bundle: container_dir.clone(),
                log: log.clone(),
                log_rotation: None,
            })
            .unwrap_or_else(|e| {
                panic!(
                    "create {name}: {e}\nshim log:\n{}",
                    std::fs::read_to_string(pod_dir.join("shim.log")).unwrap_or_default()
                )
            });
        client
            .call(&Request::Start { id: id.clone() })
            .expect("start");
        let text = log_text(&log, "stdout F done");
        check(&text, no_new_privs, uid == 0);

        // An exec'd process runs under the same filter (always with
        // no_new_privs, as runc exec does).
        let (process, io) = exec::start(
            &pod_dir,
            &id,
            vec!["sh".into(), "-c".into(), REPORT.into()],
            ExecOptions {
                stdin: false,
                tty: false,
            },
        )
        .expect("exec");
        let ExecIo::Pipes { stdout, .. } = io else {
            panic!("pipes were asked for");
        };
        let mut output = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(stdout), &mut output)
            .expect("exec output");
        assert_eq!(process.wait().expect("wait"), 0, "{output}");
        check(&output, true, uid == 0);

        client
            .call(&Request::Kill {
                id: id.clone(),
                signal: 9,
            })
            .expect("kill");
        wait_exited(client, &id);
        client.call(&Request::Delete { id }).expect("delete");
    }

    // The program in the bundle is what runs: an empty-handed one (a
    // filter that allows everything) lets the user namespace through.
    let container_dir = pod_dir.join("containers").join("nnp");
    let allow_all = [
        0x06_u16.to_ne_bytes().as_slice(),
        &[0, 0],
        &0x7fff_0000_u32.to_ne_bytes(),
    ]
    .concat();
    std::fs::write(
        container_dir
            .join(bundle::PRECOMPILED)
            .join(bundle::PROGRAM),
        allow_all,
    )
    .expect("replace the program");
    let log = pod_dir.join("logs").join("nnp").join("1.log");
    client
        .call(&Request::Create {
            id: "nnp-1".into(),
            bundle: container_dir,
            log: log.clone(),
            log_rotation: None,
        })
        .expect("create");
    client
        .call(&Request::Start { id: "nnp-1".into() })
        .expect("start");
    let text = log_text(&log, "stdout F done");
    assert!(text.contains("stdout F done"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
    assert!(!text.contains("Operation not permitted"), "{text}");
    client
        .call(&Request::Kill {
            id: "nnp-1".into(),
            signal: 9,
        })
        .expect("kill");
    wait_exited(client, "nnp-1");
    client
        .call(&Request::Delete { id: "nnp-1".into() })
        .expect("delete");
    drop(shim);
}
