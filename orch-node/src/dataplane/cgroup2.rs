//! The cgroup2 hierarchy, where the socket programs attach. Found from the
//! mount table rather than assumed at /sys/fs/cgroup: hosts with cgroup v1
//! controllers mount it elsewhere (/sys/fs/cgroup/unified on this project's
//! CI), and attaching to a v1 directory fails.

use std::path::PathBuf;

use super::DataplaneError;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The mount point of the cgroup2 hierarchy.
pub fn mount_point() -> Result<PathBuf, DataplaneError> {
    let text = std::fs::read_to_string(MOUNTINFO).map_err(|source| DataplaneError::Io {
        path: MOUNTINFO.into(),
        source,
    })?;
    find(&text).ok_or_else(|| DataplaneError::Io {
        path: MOUNTINFO.into(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup/unified)",
        ),
    })
}

/// `path` as a cgroup2 directory: absolute paths as they are, others
/// under the cgroup2 mount ("" is the whole machine).
pub fn resolve(path: &std::path::Path) -> Result<PathBuf, DataplaneError> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(mount_point()?.join(path))
}

/// mountinfo lines: `id parent major:minor root mount-point options ... -
/// fstype source super-options`.
fn find(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let fstype = fs.split_whitespace().next()?;
        let point = mount.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_among_v1_mounts() {
        let mountinfo = "25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw\n\
            26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:8 - cgroup2 cgroup2 rw\n\
            27 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            find(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find("27 25 0:25 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"),
            None
        );
    }
}
