//! Opening redb files without harming damaged ones. redb repairs a file
//! left by a crash as it opens it, writing to it; if the file is also
//! damaged (truncated, corrupt) the repair fails after it has written. So
//! a file is first opened read-only (which never writes), and one that
//! needs repair is repaired on a copy that replaces it only when the
//! repair succeeded: a file that cannot be opened is left as it was.

use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, ReadOnlyDatabase};

use super::StoreError;

/// Opens (or creates) the redb database at `path`.
pub(crate) fn open_database(path: &Path) -> Result<Database, StoreError> {
    prepare(&[path])?;
    Database::create(path).map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes the existing files among `paths` openable, all or none: each is
/// checked read-only; those a crash left needing repair are repaired on
/// copies, and the copies replace them only once every file checked out.
/// On error nothing under `paths` has changed.
pub(crate) fn prepare(paths: &[&Path]) -> Result<(), StoreError> {
    let mut repaired = Vec::new();
    let result = paths.iter().try_for_each(|path| {
        if !path.exists() {
            return Ok(());
        }
        match ReadOnlyDatabase::open(path) {
            Ok(db) => {
                drop(db);
                Ok(())
            }
            Err(DatabaseError::RepairAborted) => {
                repaired.push((repair_copy(path)?, path.to_path_buf()));
                Ok(())
            }
            Err(source) => Err(StoreError::Open {
                path: path.to_path_buf(),
                source,
            }),
        }
    });
    if let Err(error) = result {
        for (copy, _) in &repaired {
            let _ = std::fs::remove_file(copy);
        }
        return Err(error);
    }
    for (copy, path) in repaired {
        std::fs::rename(&copy, &path).map_err(io(&path))?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io(dir))?;
        }
    }
    Ok(())
}

fn io(at: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = at.to_path_buf();
    move |source| StoreError::Io { path, source }
}

/// Repairs a copy of `path` (`<path>.repairing`) and returns it.
fn repair_copy(path: &Path) -> Result<PathBuf, StoreError> {
    tracing::info!(file = %path.display(), "repairing after an unclean shutdown (on a copy)");
    let mut copy = path.as_os_str().to_owned();
    copy.push(".repairing");
    let copy = PathBuf::from(copy);
    std::fs::copy(path, &copy).map_err(io(&copy))?;
    match Database::create(&copy) {
        Ok(db) => {
            drop(db);
            Ok(copy)
        }
        Err(source) => {
            let _ = std::fs::remove_file(&copy);
            Err(StoreError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
    }
}
