//! configMap and secret volumes laid out as the kubelet's atomic writer
//! lays them out, so a running container sees an update all at once:
//! the files live in a `..<version>` directory, `..data` is a symlink to
//! the current one, and each top-level name is a symlink through `..data`.
//! An update writes a new version and swaps `..data` with one rename.
//! Secret volumes are a tmpfs: their files never reach the disk.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::runtime::mounts::is_mount_point;

const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// One projected file: its path in the volume, contents, mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFile {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// Makes `dir` a small tmpfs (once).
pub fn mount_tmpfs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if is_mount_point(dir) {
        return Ok(());
    }
    use nix::mount::MsFlags;
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        // A Secret holds at most 1 MiB; an update keeps two versions.
        Some("mode=0755,size=8m"),
    )
    .map_err(io::Error::from)
}

/// Unmounts the tmpfs volumes under `volumes_dir` (a pod being released).
pub fn unmount_all(volumes_dir: &Path) -> io::Result<()> {
    let Ok(entries) = std::fs::read_dir(volumes_dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if is_mount_point(&entry.path()) {
            nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH)
                .map_err(io::Error::from)?;
        }
    }
    Ok(())
}

/// Whether a projected path is one the volume may hold: relative, no
/// `..`, and not starting with `..` (the writer's own names).
pub fn valid_path(path: &str) -> bool {
    !path.starts_with("..")
        && !path.is_empty()
        && Path::new(path)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// The current version directory: only ever a `..<digits>` name in
/// `dir` (anything else in `..data` was not written here and is ignored).
fn current(dir: &Path) -> Option<PathBuf> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let name = target.to_str()?;
    let digits = name.strip_prefix("..")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| dir.join(name))
}

/// Whether the current version holds exactly `files`.
fn holds(version: &Path, files: &[VolumeFile]) -> bool {
    let mut found = BTreeSet::new();
    let mut stack = vec![version.to_path_buf()];
    while let Some(at) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            return false;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Never through a symlink: this version holds only what was
            // written, regular files and directories.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                return false;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if !meta.is_file() {
                return false;
            } else if let Ok(relative) = path.strip_prefix(version) {
                found.insert(relative.to_string_lossy().into_owned());
            }
        }
    }
    found.len() == files.len()
        && files.iter().all(|file| {
            let path = version.join(&file.path);
            // `found` lists regular files reached without symlinks only.
            found.contains(&file.path)
                && std::fs::read(&path).is_ok_and(|bytes| bytes == file.bytes)
                && std::fs::metadata(&path)
                    .is_ok_and(|m| m.permissions().mode() & 0o7777 == file.mode)
        })
}

/// Makes `dir` hold `files`; false when it already did.
pub fn write(dir: &Path, files: &[VolumeFile]) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let old = current(dir);
    if old.as_deref().is_some_and(|version| holds(version, files)) {
        return Ok(false);
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("..{stamp}");
    let version = dir.join(&name);
    std::fs::create_dir(&version)?;
    for file in files {
        let path = version.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, &file.bytes)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file.mode))?;
    }
    // The swap: one rename of a symlink over `..data`.
    let tmp = dir.join(DATA_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // Top-level names point through `..data`; names no longer projected go.
    let wanted: BTreeSet<String> = files
        .iter()
        .filter_map(|f| {
            Path::new(&f.path)
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    for entry in std::fs::read_dir(dir)?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if entry_name.starts_with("..") || wanted.contains(&entry_name) {
            continue;
        }
        let path = entry.path();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&path)?,
            _ => std::fs::remove_file(&path)?,
        }
    }
    for top in &wanted {
        let link = dir.join(top);
        let target = Path::new(DATA).join(top);
        if std::fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&target, &link)?;
    }
    // Every other version goes (directories of this writer's names only;
    // remove_dir_all does not follow symlinks).
    for entry in std::fs::read_dir(dir)?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let is_version = entry_name
            .strip_prefix("..")
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
        if is_version
            && entry_name != name
            && std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir())
        {
            std::fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> VolumeFile {
        VolumeFile {
            path: path.into(),
            bytes: text.as_bytes().to_vec(),
            mode: 0o644,
        }
    }

    #[test]
    fn updates_swap_the_whole_volume() {
        let dir = tempfile::tempdir().expect("temp dir");
        let volume = dir.path().join("config");
        assert!(write(&volume, &[file("a", "1"), file("sub/b", "2")]).expect("first"));
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "1");
        assert_eq!(
            std::fs::read_to_string(volume.join("sub/b")).expect("b"),
            "2"
        );
        // The same content: nothing is written.
        assert!(!write(&volume, &[file("a", "1"), file("sub/b", "2")]).expect("same"));
        // An update: new content, a name gone, a name new.
        assert!(write(&volume, &[file("a", "3"), file("c", "4")]).expect("update"));
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "3");
        assert_eq!(std::fs::read_to_string(volume.join("c")).expect("c"), "4");
        assert!(!volume.join("sub").exists());
        // One version left beside the links.
        let versions = std::fs::read_dir(&volume)
            .expect("read")
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("..") && name != DATA
            })
            .count();
        assert_eq!(versions, 1);
        // A `..data` pointing elsewhere (planted) is never followed, and
        // what it points at is never removed.
        let victim = dir.path().join("victim");
        std::fs::create_dir(&victim).expect("victim");
        std::fs::write(victim.join("keep"), "x").expect("keep");
        std::fs::remove_file(volume.join(DATA)).expect("unlink");
        std::os::unix::fs::symlink(&victim, volume.join(DATA)).expect("plant");
        assert!(write(&volume, &[file("a", "5")]).expect("rewrite"));
        assert!(
            victim.join("keep").exists(),
            "the planted target was removed"
        );
        assert_eq!(std::fs::read_to_string(volume.join("a")).expect("a"), "5");
        for bad in ["..data", "../x", "/etc/passwd", "a/../b", ""] {
            assert!(!valid_path(bad), "{bad}");
        }
        assert!(valid_path("dir/file.txt"));
    }
}
