//! Unpacking layers for overlayfs: each layer into a directory of its own,
//! named by its uncompressed digest (diff id, verified while unpacking),
//! with the OCI whiteouts turned into overlayfs's: `.wh.NAME` becomes a
//! 0:0 character device NAME, `.wh..wh..opq` the directory's
//! `trusted.overlay.opaque=y`. The container's root is then an overlay of
//! these directories, bottom layer last.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::digest::Digest;
use super::oci::{self, Compression};
use super::store::{Image, ImageStore, StoreError, unique_suffix};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A reader that hashes what is read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The layer directories of `image`, bottom first, unpacking the ones
/// not unpacked yet.
pub fn unpacked_layers(store: &ImageStore, image: &Image) -> Result<Vec<PathBuf>, StoreError> {
    let _operation = store.operation();
    let mut dirs = Vec::with_capacity(image.manifest.layers.len());
    for (layer, diff_id) in image
        .manifest
        .layers
        .iter()
        .zip(&image.config.rootfs.diff_ids)
    {
        let diff_id = Digest::parse(diff_id)?;
        let dir = store.layer_dir(&diff_id);
        if !dir.exists() {
            let compression = oci::layer_compression(&layer.media_type).ok_or_else(|| {
                StoreError::Unsupported(format!(
                    "layer {}: media type {:?} is not supported (tar, tar+gzip)",
                    layer.digest, layer.media_type
                ))
            })?;
            unpack_layer(store, &Digest::parse(&layer.digest)?, compression, &diff_id)?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

fn unpack_layer(
    store: &ImageStore,
    blob: &Digest,
    compression: Compression,
    diff_id: &Digest,
) -> Result<(), StoreError> {
    let blob_path = store.blob_path(blob);
    let file = std::fs::File::open(&blob_path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            StoreError::MissingBlob(blob.clone())
        } else {
            StoreError::Io {
                path: blob_path.clone(),
                source,
            }
        }
    })?;
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(std::io::BufReader::new(file)),
        // Every gzip member, as Go's reader does (eStargz layers have many).
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        ))),
    };
    let mut hashing = HashingReader {
        inner: reader,
        hasher: Sha256::new(),
    };
    let temporary = store
        .layers_root()
        .join(format!(".tmp-{}-{}", diff_id.hex(), unique_suffix()));
    std::fs::create_dir(&temporary).map_err(io(&temporary))?;
    let unpacked = unpack_tar(&mut hashing, &temporary).and_then(|()| {
        // Whatever follows the archive's end still counts for the digest.
        std::io::copy(&mut hashing, &mut std::io::sink()).map_err(io(&blob_path))?;
        let actual = Digest::parse(&format!(
            "sha256:{}",
            hashing
                .hasher
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))?;
        if actual != *diff_id {
            return Err(StoreError::LayerMismatch {
                layer: blob.clone(),
                diff_id: diff_id.clone(),
                actual,
            });
        }
        // On disk before it is named: a layer directory that exists is
        // taken as whole from then on.
        let dir = std::fs::File::open(&temporary).map_err(io(&temporary))?;
        nix::unistd::syncfs(&dir).map_err(|errno| StoreError::Io {
            path: temporary.clone(),
            source: errno.into(),
        })?;
        Ok(())
    });
    let finished = unpacked.and_then(|()| {
        match std::fs::rename(&temporary, store.layer_dir(diff_id)) {
            Ok(()) => Ok(()),
            // Unpacked meanwhile by another pod's worker: theirs stays.
            Err(_) if store.layer_dir(diff_id).exists() => {
                std::fs::remove_dir_all(&temporary).map_err(io(&temporary))
            }
            Err(source) => Err(StoreError::Io {
                path: store.layer_dir(diff_id),
                source,
            }),
        }
    });
    if finished.is_err() {
        let _ = std::fs::remove_dir_all(&temporary);
    }
    finished
}

/// Unpacks a layer's tar stream into `dst`, converting whiteouts.
fn unpack_tar(reader: &mut impl Read, dst: &Path) -> Result<(), StoreError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    // xattrs are set below, without overlayfs's own (trusted.overlay.*:
    // a layer must not steer the overlay it becomes part of).
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io(dst))?;
    for entry in entries {
        let mut entry = entry.map_err(io(dst))?;
        let path = entry.path().map_err(io(dst))?.into_owned();
        let Some(relative) = contained(&path) else {
            if path.components().any(|c| c == Component::ParentDir) {
                tracing::warn!(path = %path.display(), "layer entry outside the layer; skipped");
            }
            // Otherwise the layer's root itself ("./").
            continue;
        };
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dst.join(relative.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            ensure_dir_inside(dst, &parent)?;
            xattr::set(&parent, "trusted.overlay.opaque", b"y").map_err(io(&parent))?;
            continue;
        }
        if name.starts_with(".wh..wh.") {
            // Reserved for other markers; the OCI spec says to ignore them.
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            ensure_dir_inside(dst, &parent)?;
            let target = parent.join(hidden);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|errno| StoreError::Io {
                path: target.clone(),
                source: errno.into(),
            })?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            // Containers get /dev from a tmpfs; device files in images are
            // not created.
            tracing::debug!(path = %relative.display(), "device or fifo in a layer; skipped");
            continue;
        }
        let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(extensions)) => extensions
                .flatten()
                .filter_map(|extension| {
                    let name = extension.key().ok()?.strip_prefix("SCHILY.xattr.")?;
                    (!name.starts_with("trusted.overlay."))
                        .then(|| (name.to_string(), extension.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let target = dst.join(&relative);
        entry.unpack_in(dst).map_err(io(&target))?;
        for (name, value) in xattrs {
            xattr::set(&target, &name, &value).map_err(io(&target))?;
        }
    }
    Ok(())
}

/// `path` as a relative path with no `..`, or None when it would leave
/// the layer.
fn contained(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// Creates `dir` (under `root`), refusing one reached through a symlink
/// that leads out of `root` (checked on what exists before creating).
fn ensure_dir_inside(root: &Path, dir: &Path) -> Result<(), StoreError> {
    let real_root = root.canonicalize().map_err(io(root))?;
    let mut existing = dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(root);
    }
    let real = existing.canonicalize().map_err(io(existing))?;
    if !real.starts_with(&real_root) {
        return Err(StoreError::Unsupported(format!(
            "layer entry {} leads outside the layer through a symlink",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))
}
