//! The default seccomp profile, loaded into a real process both ways a
//! container gets it: compiled by libcontainer (as a container's init
//! loads a profile), and as the program the agent compiles ahead and
//! orch-runtime installs (`seccomp_program`). What each lets through and
//! refuses with which errno must be the same. A forked child loads the
//! filter and makes the calls; the test reads what each one returned.
//!
//! Needs root (loading a filter without no_new_privs takes CAP_SYS_ADMIN;
//! CI runs as root).

use std::io::Read as _;
use std::os::fd::AsRawFd as _;

use libcontainer::oci_spec::runtime::LinuxSeccomp;
use nix::libc;
use orch_node::runtime::seccomp::default_profile;
use orch_node::runtime::seccomp_program;

/// How the child gets its filter.
#[derive(Clone, Copy, Debug)]
enum Loader {
    Libcontainer,
    Precompiled,
}

/// What a call returned: `ok` or the errno's number.
fn outcome(result: libc::c_long) -> String {
    if result >= 0 {
        "ok".into()
    } else {
        std::io::Error::last_os_error()
            .raw_os_error()
            .map_or_else(|| "?".into(), |e| e.to_string())
    }
}

/// A clone of this process that only exits, reaped at once.
fn clone_with(flags: libc::c_long) -> libc::c_long {
    // SAFETY: raw clone without a new stack (fork semantics); the child
    // only calls _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags | libc::SIGCHLD as libc::c_long,
            0,
            0,
            0,
            0,
        )
    };
    if pid == 0 {
        // SAFETY: the child leaves at once.
        unsafe { libc::_exit(0) };
    }
    if pid > 0 {
        let mut status = 0;
        // SAFETY: waiting for the child just made.
        unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    }
    pid
}

/// A named system call made with fixed arguments.
type Call = (&'static str, fn() -> libc::c_long);

/// The calls, in the order the child makes them.
fn calls() -> Vec<Call> {
    // SAFETY (every raw syscall below): no pointer arguments, or null ones
    // the kernel checks; the results are only compared.
    vec![
        ("getpid", || unsafe { libc::syscall(libc::SYS_getpid) }),
        ("clone", || clone_with(0)),
        ("clone NEWUSER", || {
            clone_with(libc::CLONE_NEWUSER as libc::c_long)
        }),
        ("clone NEWNET", || {
            clone_with(libc::CLONE_NEWNET as libc::c_long)
        }),
        ("clone3", || unsafe {
            libc::syscall(libc::SYS_clone3, 0, 0)
        }),
        ("unshare", || unsafe { libc::syscall(libc::SYS_unshare, 0) }),
        ("mount", || unsafe {
            libc::syscall(libc::SYS_mount, 0, 0, 0, 0, 0)
        }),
        ("keyctl", || unsafe {
            libc::syscall(libc::SYS_keyctl, 0, 0)
        }),
        ("io_uring_setup", || unsafe {
            libc::syscall(libc::SYS_io_uring_setup, 1, 0)
        }),
        ("socket inet", || unsafe {
            let fd = libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_DGRAM, 0);
            if fd >= 0 {
                libc::close(fd as libc::c_int);
            }
            fd
        }),
        ("socket vsock", || unsafe {
            libc::syscall(libc::SYS_socket, libc::AF_VSOCK, libc::SOCK_STREAM, 0)
        }),
        ("personality query", || unsafe {
            libc::syscall(libc::SYS_personality, 0xffff_ffff_u64)
        }),
    ]
}

/// Loads the profile for these capabilities in a forked child, makes
/// every call there, and returns `name=outcome` for each.
fn run_under(capabilities: &[String], loader: Loader) -> Vec<String> {
    let profile: LinuxSeccomp = serde_json::from_value(default_profile(capabilities))
        .expect("the profile is a valid linux.seccomp section");
    let program = seccomp_program::compile(&profile).expect("the profile compiles");
    let report = in_child(|| {
        let loaded = match loader {
            Loader::Libcontainer => libcontainer::seccomp::initialize_seccomp(&profile)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Loader::Precompiled => seccomp_program::install(&program).map_err(|e| e.to_string()),
        };
        match loaded {
            Ok(()) => calls()
                .iter()
                .map(|(name, call)| format!("{name}={}", outcome(call())))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(error) => format!("load failed: {error}"),
        }
    });
    report.lines().map(str::to_string).collect()
}

/// Runs `work` in a forked child (one thread, which leaves with _exit
/// after writing what `work` returned) and returns that report.
fn in_child(work: impl FnOnce() -> String) -> String {
    let (mut read, write) = std::io::pipe().expect("pipe");
    // SAFETY: the child runs one thread and leaves with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let report = work();
            let bytes = report.as_bytes();
            // SAFETY: writing a buffer we own to our pipe end.
            unsafe { libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut report = String::new();
            read.read_to_string(&mut report)
                .expect("the child's report");
            nix::sys::wait::waitpid(child, None).expect("waitpid");
            report
        }
    }
}

#[test]
fn the_default_profile_allows_everyday_calls_and_refuses_reaching_out() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test loads seccomp filters without no_new_privs: run it as root"
    );
    let eperm = libc::EPERM.to_string();
    let enosys = libc::ENOSYS.to_string();
    let expected = [
        ("getpid", "ok"),
        ("clone", "ok"),
        // New namespaces: refused as Docker and containerd refuse them.
        ("clone NEWUSER", eperm.as_str()),
        ("clone NEWNET", eperm.as_str()),
        // libc falls back to clone, whose flags the filter reads.
        ("clone3", enosys.as_str()),
        ("unshare", eperm.as_str()),
        ("mount", eperm.as_str()),
        ("keyctl", eperm.as_str()),
        // Not on the list at all: "the kernel lacks it".
        ("io_uring_setup", enosys.as_str()),
        ("socket inet", "ok"),
        // The hypervisor's sockets are out of reach (the default errno).
        ("socket vsock", enosys.as_str()),
        ("personality query", "ok"),
    ];
    let expected: Vec<String> = expected
        .iter()
        .map(|(name, outcome)| format!("{name}={outcome}"))
        .collect();
    for loader in [Loader::Libcontainer, Loader::Precompiled] {
        let report = run_under(&[], loader);
        assert_eq!(report, expected, "under the default profile, {loader:?}");

        // CAP_SYS_ADMIN added: namespaces and mounts are the capability's
        // business again (the caller here holds it, so unshare(0)
        // succeeds).
        let report = run_under(&["CAP_SYS_ADMIN".to_string()], loader);
        for line in ["unshare=ok", "clone NEWUSER=ok", "keyctl=1"] {
            assert!(
                report.iter().any(|l| l == line),
                "{line} with CAP_SYS_ADMIN, {loader:?}: {report:?}"
            );
        }
    }
}

/// In a forked child set up as libcontainer leaves a container's init
/// without no_new_privs (CAP_SYS_ADMIN out of the bounding and effective
/// sets, lent in the permitted set only), installs the precompiled
/// program and reports `/proc/self/status` before any exec.
fn install_with_lent_admin(lent: bool) -> String {
    let profile: LinuxSeccomp = serde_json::from_value(default_profile(&[])).expect("the profile");
    let program = seccomp_program::compile(&profile).expect("the profile compiles");
    in_child(|| {
        let admin = caps::Capability::CAP_SYS_ADMIN;
        let prepared = caps::drop(None, caps::CapSet::Bounding, admin)
            .and_then(|()| caps::drop(None, caps::CapSet::Effective, admin))
            .and_then(|()| match lent {
                true => Ok(()),
                false => caps::drop(None, caps::CapSet::Permitted, admin),
            });
        match prepared {
            Err(error) => format!("setup failed: {error}"),
            Ok(()) => match seccomp_program::installable()
                .and_then(|()| seccomp_program::install(&program))
            {
                Ok(()) => std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
                Err(error) => format!("refused: {error}"),
            },
        }
    })
}

#[test]
fn the_lent_capability_is_gone_once_the_filter_is_installed() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes capability sets: run it as root"
    );
    let status = install_with_lent_admin(true);
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap_or_else(|| panic!("no {name} in {status}"));
        u64::from_str_radix(line.trim(), 16)
            .unwrap_or_else(|_| line.trim().parse().unwrap_or(u64::MAX))
    };
    assert_eq!(field("Seccomp"), 2, "{status}");
    assert_eq!(field("NoNewPrivs"), 0, "{status}");
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            field(set) & (1 << 21),
            0,
            "CAP_SYS_ADMIN in {set}: {status}"
        );
    }
    // Everything else stays: the effective set is what it was.
    assert_ne!(field("CapEff"), 0, "{status}");
    // Nothing lent, no no_new_privs: refused before anything is loaded.
    let refused = install_with_lent_admin(false);
    assert!(refused.starts_with("refused:"), "{refused}");
    assert!(refused.contains("CAP_SYS_ADMIN"), "{refused}");
}
