//! Releasing a pod: its containers stopped (SIGTERM, the grace period,
//! SIGKILL) and deleted through its shim, the shim stopped, and the root
//! filesystems, sandbox, cgroups and files it held removed.

use std::path::Path;
use std::time::{Duration, Instant};

use super::shim::client::ShimClient;
use super::shim::protocol::Request;
use super::{cgroups, rootfs, sandbox};

/// Releases every pod held under `state_dir` at once (no grace) and the
/// node's cgroups: what tearing a node down leaves behind is nothing.
pub fn release_all(state_dir: &Path, node: &str) -> Result<(), String> {
    let pods = state_dir.join("pods");
    if let Ok(entries) = std::fs::read_dir(&pods) {
        for entry in entries.flatten() {
            let uid = entry.file_name().to_string_lossy().into_owned();
            release(
                &entry.path(),
                &format!("/orch/{node}/pod{uid}"),
                Duration::ZERO,
            )?;
        }
    }
    cgroups::remove(&format!("/orch/{node}")).map_err(|e| format!("cgroup /orch/{node}: {e}"))?;
    // The shared parent goes once no node uses it.
    let _ = cgroups::remove_if_empty("/orch");
    Ok(())
}

/// Releases the pod in `dir` (whose cgroup is `cgroup`).
pub fn release(dir: &Path, cgroup: &str, grace: Duration) -> Result<(), String> {
    let shim = ShimClient::new(dir);
    if shim.alive() {
        for id in shim.running() {
            let _ = shim.call(&Request::Kill { id, signal: 15 });
        }
        let deadline = Instant::now() + grace;
        while !shim.running().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        for id in shim.running() {
            let _ = shim.call(&Request::Kill { id, signal: 9 });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !shim.running().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for container in shim.state().unwrap_or_default() {
            shim.call(&Request::Delete {
                id: container.id.clone(),
            })
            .map_err(|e| format!("deleting {}: {e}", container.id))?;
        }
        let _ = shim.call(&Request::Shutdown);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shim.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir.join("containers")) {
        for entry in entries.flatten() {
            rootfs::remove(&entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()))?;
        }
    }
    // Whatever is still in the pod's cgroups (a shim that died left its
    // containers behind) is killed before the cgroups go.
    if cgroups::kill_all(cgroup) > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    sandbox::remove(dir).map_err(|e| e.to_string())?;
    super::subpath::release(&dir.join("volume-subpaths"))
        .map_err(|e| format!("{}: {e}", dir.join("volume-subpaths").display()))?;
    crate::agent::volume_writer::unmount_all(&dir.join("volumes"))
        .map_err(|e| format!("{}: {e}", dir.join("volumes").display()))?;
    cgroups::remove(cgroup).map_err(|e| format!("cgroup {cgroup}: {e}"))?;
    crate::files::remove_tree(dir).map_err(|error| format!("{}: {error}", dir.display()))
}
