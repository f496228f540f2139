//! The pod sandbox: network, IPC and UTS namespaces of the pod's own,
//! kept alive by bind mounts of their nsfs files (`<pod dir>/ns/net`,
//! `ipc`, `uts`), like `ip netns add` does, so no pause process is needed;
//! every container of the pod joins them by path. The hostname is the
//! pod's name; loopback is up. (The dataplane adds the pod's interface.)

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use thiserror::Error;

use super::spec::SandboxNamespaces;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the pod's namespaces: {0}")]
    Namespaces(String),
}

const KINDS: [&str; 3] = ["net", "ipc", "uts"];

pub fn namespaces(pod_dir: &Path) -> SandboxNamespaces {
    let dir = pod_dir.join("ns");
    SandboxNamespaces {
        network: dir.join("net"),
        ipc: dir.join("ipc"),
        uts: dir.join("uts"),
    }
}

/// Whether the sandbox of `pod_dir` exists (its namespaces are mounted).
pub fn exists(pod_dir: &Path) -> bool {
    // The net namespace's nsfs file is bind-mounted there.
    super::mounts::is_mount_point(&pod_dir.join("ns").join("net"))
}

/// Creates the sandbox (idempotent: an existing one is kept).
pub fn create(pod_dir: &Path, hostname: &str) -> Result<SandboxNamespaces, SandboxError> {
    let paths = namespaces(pod_dir);
    if exists(pod_dir) {
        return Ok(paths);
    }
    let dir = pod_dir.join("ns");
    std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Io {
        what: "creating",
        path: dir.clone(),
        source,
    })?;
    for kind in KINDS {
        let file = dir.join(kind);
        std::fs::File::create(&file).map_err(|source| SandboxError::Io {
            what: "creating",
            path: file.clone(),
            source,
        })?;
    }
    let hostname = hostname.to_string();
    let target = dir.clone();
    // Namespaces are per thread: a thread of its own enters new ones,
    // pins them with bind mounts and ends.
    let made = std::thread::spawn(move || -> Result<(), String> {
        nix::sched::unshare(
            CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS,
        )
        .map_err(|e| format!("unshare: {e}"))?;
        nix::unistd::sethostname(&hostname)
            .map_err(|e| format!("sethostname {hostname:?}: {e}"))?;
        crate::net::netlink::loopback_up_here().map_err(|e| format!("setting lo up: {e}"))?;
        let tid = nix::unistd::gettid();
        for kind in KINDS {
            let source = PathBuf::from(format!("/proc/self/task/{tid}/ns/{kind}"));
            nix::mount::mount(
                Some(&source),
                &target.join(kind),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("bind-mounting {}: {e}", source.display()))?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| SandboxError::Namespaces("the namespace thread panicked".into()))?;
    if let Err(reason) = made {
        let _ = remove(pod_dir);
        return Err(SandboxError::Namespaces(reason));
    }
    Ok(paths)
}

/// Removes the sandbox's namespaces (idempotent).
pub fn remove(pod_dir: &Path) -> Result<(), SandboxError> {
    let dir = pod_dir.join("ns");
    for kind in KINDS {
        let file = dir.join(kind);
        // Detached: a container still joined keeps its namespace, the
        // file is free at once.
        let _ = nix::mount::umount2(&file, MntFlags::MNT_DETACH);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "removing",
                    path: file,
                    source,
                });
            }
        }
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}
