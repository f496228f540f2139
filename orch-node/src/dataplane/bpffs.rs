//! The BPF filesystem, where orch pins programs, links and maps so they outlive
//! the agent process.

use std::io;
use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::DataplaneError;

/// Where bpffs is mounted on every mainstream distribution.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Mounts bpffs at `root` unless it is already there. Some machines (this
/// project's CI among them) boot without it.
pub fn ensure_mounted(root: &Path) -> Result<(), DataplaneError> {
    if is_bpffs(root) {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|source| DataplaneError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|errno| DataplaneError::Io {
        path: root.to_path_buf(),
        source: io::Error::from(errno),
    })?;
    tracing::info!(path = %root.display(), "mounted bpffs");
    Ok(())
}

/// Whether `path` is the root of, or inside, a bpffs mount.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path)
        .map(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
        .unwrap_or(false)
}
