//! Whether something is mounted on a path.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

/// Whether `path` is a mount point: on another device than its parent (a
/// bind-mounted nsfs file, an overlay root, a tmpfs volume).
pub fn is_mount_point(path: &Path) -> bool {
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(inner), Some(Ok(outer))) => inner.dev() != outer.dev(),
        _ => false,
    }
}
