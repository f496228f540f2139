//! A container's root filesystem: an overlay of the image's unpacked
//! layers (read-only, shared) with a writable layer of the container's
//! own, mounted at `<container dir>/rootfs`.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

/// Mounts the overlay; returns the rootfs path. `layers` bottom first.
pub fn mount(container_dir: &Path, layers: &[PathBuf]) -> std::io::Result<PathBuf> {
    let rootfs = container_dir.join("rootfs");
    let upper = container_dir.join("upper");
    let work = container_dir.join("work");
    for dir in [&rootfs, &upper, &work] {
        std::fs::create_dir_all(dir)?;
    }
    if super::mounts::is_mount_point(&rootfs) {
        return Ok(rootfs);
    }
    // overlayfs lists the top layer first.
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &rootfs,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(std::io::Error::from)?;
    Ok(rootfs)
}

/// Unmounts the rootfs and removes the container's directory.
pub fn remove(container_dir: &Path) -> std::io::Result<()> {
    let rootfs = container_dir.join("rootfs");
    if super::mounts::is_mount_point(&rootfs) {
        nix::mount::umount2(&rootfs, MntFlags::MNT_DETACH).map_err(std::io::Error::from)?;
    }
    crate::files::remove_tree(container_dir)
}
