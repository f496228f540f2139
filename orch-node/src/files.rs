//! Writing files so a crash leaves the old content or the new, never a
//! torn one: a temporary file beside the target (named `.tmp-*`, which the
//! image store sweeps away at start), synced, then renamed over it. And
//! removing directory trees that may already be gone.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// A process-unique suffix for temporary names.
pub fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `path` whole or not at all. On failure, the error names the
/// file it happened on.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let temporary = path.with_file_name(format!(
        ".tmp-{}-{}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        unique_suffix()
    ));
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err((temporary, error));
    }
    std::fs::rename(&temporary, path).map_err(|error| (path.to_path_buf(), error))
}

/// Removes a file when dropped (a temporary one, however its user ends).
pub struct RemoveOnDrop(pub std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Removes the directory `dir` and everything in it; one already gone is
/// fine (removals are retried after a crash or a failed attempt).
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}
