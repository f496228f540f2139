//! Removing cgroups, in every hierarchy (the v1 controllers and the
//! unified one on hybrid hosts): an exited container's leaf (the shim's
//! delete), and the pod's and the node's parents (the agent's).

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// Where `path` (absolute, like a cgroupsPath) lives in each hierarchy.
fn locations(path: &str) -> Vec<PathBuf> {
    let relative = path.trim_start_matches('/');
    let mut found = Vec::new();
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        // Pure cgroup v2.
        found.push(root.join(relative));
        return found;
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let hierarchy = entry.path();
            // Symlinks (cpu -> cpu,cpuacct) name a hierarchy twice.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(hierarchy.join(relative));
            }
        }
    }
    found
}

/// Removes the cgroup `path` and every cgroup below it, in every
/// hierarchy. Fails (EBUSY) while a process is still in one of them.
pub fn remove(path: &str) -> std::io::Result<()> {
    for location in locations(path) {
        remove_tree(&location)?;
    }
    Ok(())
}

/// `remove`, waiting (briefly, with back-off) while a cgroup is busy: a
/// killed process still on its way out. Other errors return at once.
pub fn remove_waiting_while_busy(path: &str) -> std::io::Result<()> {
    let mut pause = std::time::Duration::from_millis(2);
    let mut removed = remove(path);
    while removed
        .as_ref()
        .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EBUSY))
        && pause < std::time::Duration::from_millis(300)
    {
        std::thread::sleep(pause);
        pause *= 2;
        removed = remove(path);
    }
    removed
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    // A cgroup directory goes with rmdir, its control files with it.
    match std::fs::remove_dir(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Removes the cgroup `path` where it has no child cgroups left (shared
/// parents); leaves it where it still has some.
pub fn remove_if_empty(path: &str) -> std::io::Result<()> {
    for location in locations(path) {
        match std::fs::remove_dir(&location) {
            Ok(()) => {}
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::NotFound)
                    || error.raw_os_error() == Some(nix::libc::EBUSY)
                    || error.raw_os_error() == Some(nix::libc::ENOTEMPTY) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// SIGKILLs every process left in the cgroup `path` and below (in every
/// hierarchy): what a dead shim can no longer stop. Returns how many.
pub fn kill_all(path: &str) -> usize {
    fn walk(dir: &Path, killed: &mut usize) {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .is_ok()
                {
                    *killed += 1;
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&entry.path(), killed);
                }
            }
        }
    }
    let mut killed = 0;
    for location in locations(path) {
        walk(&location, &mut killed);
    }
    killed
}
