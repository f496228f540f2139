//! volumeMounts[].subPath, mounted safely. A volume's contents are the
//! container's to change: a symlink it plants (`sub -> /etc`) must not make
//! the agent mount a host path into a container. So the sub path is
//! opened beneath the volume's root with openat2(RESOLVE_BENEATH) (a
//! symlink may only lead somewhere inside the volume), created as a
//! directory when missing, and what was opened is bind-mounted through
//! its descriptor onto a staging path in the pod's directory, which the
//! container's spec then mounts; nothing is looked up by name again.

use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::path::{Component, Path};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

fn beneath(root: &OwnedFd, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    openat2(
        root,
        path,
        OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

fn refused(sub_path: &str, why: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("subPath {sub_path:?}: {why}"),
    )
}

/// Opens `sub_path` beneath `root` (O_PATH), making the directories that
/// are missing.
fn open_beneath(root: &Path, sub_path: &str) -> io::Result<OwnedFd> {
    let relative = Path::new(sub_path);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(refused(sub_path, "must be a relative path without .."));
    }
    let root_fd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::other(format!("{}: {e}", root.display())))?;
    match beneath(&root_fd, relative, OFlag::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(nix::Error::ENOENT) => {}
        Err(nix::Error::EXDEV) => return Err(refused(sub_path, "leads out of the volume")),
        Err(error) => return Err(refused(sub_path, error)),
    }
    // Missing: each directory is made beneath the one before it.
    let mut at = std::path::PathBuf::new();
    for component in relative.components() {
        at.push(component);
        match beneath(&root_fd, &at, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(_) => continue,
            Err(nix::Error::ENOENT) => {}
            Err(nix::Error::EXDEV) => return Err(refused(sub_path, "leads out of the volume")),
            Err(error) => return Err(refused(sub_path, error)),
        }
        let parent = match at.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => beneath(&root_fd, parent, OFlag::O_PATH | OFlag::O_DIRECTORY)
                .map_err(|e| refused(sub_path, e))?,
            None => root_fd.try_clone().map_err(|e| refused(sub_path, e))?,
        };
        let name = at.file_name().unwrap_or_default();
        match nix::sys::stat::mkdirat(&parent, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(error) => return Err(refused(sub_path, error)),
        }
    }
    beneath(&root_fd, relative, OFlag::O_PATH).map_err(|e| refused(sub_path, e))
}

/// Bind-mounts `root/sub_path`, resolved safely, onto `staging` (made a
/// file or a directory to match; a mount already there, from the
/// container's previous instance, is replaced).
pub fn prepare(root: &Path, sub_path: &str, staging: &Path) -> io::Result<()> {
    let opened = open_beneath(root, sub_path)?;
    let is_dir = nix::sys::stat::fstat(&opened)
        .map(|s| s.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR)
        .map_err(io::Error::from)?;
    if let Some(parent) = staging.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = nix::mount::umount2(staging, nix::mount::MntFlags::MNT_DETACH);
    // The sub path may have changed between a file and a directory since
    // the container's previous instance.
    if let Ok(meta) = std::fs::symlink_metadata(staging)
        && meta.is_dir() != is_dir
    {
        if meta.is_dir() {
            std::fs::remove_dir(staging)?;
        } else {
            std::fs::remove_file(staging)?;
        }
    }
    if !staging.exists() {
        if is_dir {
            std::fs::create_dir(staging)?;
        } else {
            std::fs::File::create(staging)?;
        }
    }
    let source = format!("/proc/self/fd/{}", opened.as_raw_fd());
    nix::mount::mount(
        Some(source.as_str()),
        staging,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| io::Error::other(format!("mounting subPath {sub_path:?}: {e}")))
}

/// Unmounts every staging mount under `dir` (the pod's
/// `volume-subpaths`), for a pod being released. An error when one stays
/// mounted: removing the directory then would delete the volume's data
/// through it.
pub fn release(dir: &Path) -> io::Result<()> {
    let Ok(containers) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for container in containers.flatten() {
        for mount in std::fs::read_dir(container.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            // EINVAL: not a mount point; nothing to do.
            let _ = nix::mount::umount2(&mount.path(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let prefix = dir.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    if let Some(left) = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .find(|point| point.starts_with(prefix.as_str()))
    {
        return Err(io::Error::other(format!("{left} is still mounted")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_in_their_volume() {
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = dir.path().join("volume");
        std::fs::create_dir_all(volume.join("inside")).expect("dirs");
        std::os::unix::fs::symlink("/etc", volume.join("escape")).expect("symlink");
        std::os::unix::fs::symlink("../../", volume.join("inside/up")).expect("symlink");
        std::os::unix::fs::symlink("inside", volume.join("alias")).expect("symlink");
        assert!(
            open_beneath(&volume, "alias").is_ok(),
            "a link within the volume"
        );
        for bad in ["escape", "inside/up", "../x", "/etc"] {
            let error = open_beneath(&volume, bad).expect_err(bad).to_string();
            assert!(error.contains(&format!("subPath {bad:?}")), "{error}");
        }
        // Missing: made, as a directory.
        open_beneath(&volume, "new/deeper").expect("made");
        assert!(volume.join("new/deeper").is_dir());
    }
}
