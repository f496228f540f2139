//! Importing image archives: an OCI image layout as a tarball (what
//! `skopeo copy ... oci-archive:` writes) or `docker save`'s format, either
//! plain or gzip-compressed. Every blob is verified on the way in; the
//! images are named as the archive names them.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use super::reference::Reference;
use super::store::{ImageStore, StoreError, unique_suffix};

/// The annotation containerd and docker write with an image's full name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(archive: &Path, reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unsupported(format!("{}: {reason}", archive.display()))
}

/// Removes the unpacked archive however the import ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Imports every named image of the archive at `archive`; returns the
/// names.
pub fn import_archive(store: &ImageStore, archive: &Path) -> Result<Vec<Reference>, StoreError> {
    let _operation = store.operation();
    let mut file = std::fs::File::open(archive).map_err(io(archive))?;
    let mut magic = [0u8; 2];
    let gzip = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    let file = std::fs::File::open(archive).map_err(io(archive))?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let scratch = Scratch(
        store
            .root()
            .join(format!(".tmp-import-{}", unique_suffix())),
    );
    std::fs::create_dir(&scratch.0).map_err(io(&scratch.0))?;
    let mut tar = tar::Archive::new(reader);
    let unreadable =
        |e: std::io::Error| invalid(archive, format!("not a readable tar archive: {e}"));
    for entry in tar.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let kind = entry.header().entry_type();
        // Links too: docker's legacy format links a repeated layer.tar to
        // its first copy (members are resolved inside the archive only).
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            continue;
        }
        entry.unpack_in(&scratch.0).map_err(io(archive))?;
    }
    let dir = &scratch.0;
    if dir.join("manifest.json").exists() && !dir.join("index.json").exists() {
        import_docker_save(store, archive, dir)
    } else if dir.join("index.json").exists() {
        import_oci_layout(store, archive, dir)
    } else {
        Err(invalid(
            archive,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

fn copy_blob(
    store: &ImageStore,
    archive: &Path,
    dir: &Path,
    descriptor: &Descriptor,
) -> Result<Digest, StoreError> {
    let digest = Digest::parse(&descriptor.digest)?;
    if !store.has_blob(&digest) {
        let path = dir.join("blobs").join("sha256").join(digest.hex());
        let mut file = std::fs::File::open(&path)
            .map_err(|_| invalid(archive, format!("blob {digest} is missing")))?;
        store
            .put_reader(&mut file, &digest, Some(descriptor.size))
            .map_err(|e| invalid(archive, format!("blobs/sha256/{}: {e}", digest.hex())))?;
    }
    Ok(digest)
}

fn import_oci_layout(
    store: &ImageStore,
    archive: &Path,
    dir: &Path,
) -> Result<Vec<Reference>, StoreError> {
    let index: Index =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).map_err(io(archive))?)
            .map_err(|e| invalid(archive, format!("index.json: {e}")))?;
    let mut names = Vec::new();
    for entry in &index.manifests {
        let annotations = entry.annotations.clone().unwrap_or_default();
        let Some(name) = annotations
            .get(CONTAINERD_NAME)
            .or_else(|| annotations.get(oci::REF_NAME))
        else {
            tracing::warn!(archive = %archive.display(), digest = %entry.digest, "an image without a name; skipped");
            continue;
        };
        let reference = Reference::parse(name).map_err(|e| invalid(archive, e))?;
        let repo_digest = copy_blob(store, archive, dir, entry)?;
        let manifest_descriptor = if oci::is_index(&entry.media_type) {
            let nested: Index =
                serde_json::from_slice(&store.read_document("image index", &repo_digest)?)
                    .map_err(|e| invalid(archive, format!("image index {repo_digest}: {e}")))?;
            let platform = oci::host_platform();
            nested
                .manifests
                .into_iter()
                .find(|d| {
                    d.platform.as_ref().is_some_and(|p| {
                        p.os == platform.os && p.architecture == platform.architecture
                    })
                })
                .ok_or_else(|| invalid(archive, format!("{name}: no manifest for this platform")))?
        } else {
            entry.clone()
        };
        let manifest_digest = copy_blob(store, archive, dir, &manifest_descriptor)?;
        let manifest: Manifest =
            serde_json::from_slice(&store.read_document("manifest", &manifest_digest)?)
                .map_err(|e| invalid(archive, format!("manifest {manifest_digest}: {e}")))?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            copy_blob(store, archive, dir, blob)?;
        }
        let descriptor = Descriptor {
            annotations: None,
            platform: None,
            ..manifest_descriptor
        };
        store.image(&descriptor)?;
        store.tag(&reference, &descriptor, &repo_digest)?;
        names.push(reference);
    }
    Ok(names)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SavedImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file of the archive by its relative name, never outside it.
fn member(archive: &Path, dir: &Path, name: &str) -> Result<PathBuf, StoreError> {
    if Path::new(name)
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(
            archive,
            format!("{name:?}: not a plain relative path"),
        ));
    }
    Ok(dir.join(name))
}

fn import_docker_save(
    store: &ImageStore,
    archive: &Path,
    dir: &Path,
) -> Result<Vec<Reference>, StoreError> {
    let saved: Vec<SavedImage> =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).map_err(io(archive))?)
            .map_err(|e| invalid(archive, format!("manifest.json: {e}")))?;
    let mut names = Vec::new();
    for image in saved {
        let config_path = member(archive, dir, &image.config)?;
        let config_bytes = std::fs::read(&config_path).map_err(io(&config_path))?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| invalid(archive, format!("{}: {e}", image.config)))?;
        if config.rootfs.diff_ids.len() != image.layers.len() {
            return Err(invalid(
                archive,
                format!(
                    "{}: {} layers, {} diff ids",
                    image.config,
                    image.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (layer, diff_id) in image.layers.iter().zip(&config.rootfs.diff_ids) {
            // docker save's layers are the uncompressed tars: their digest
            // is the diff id, checked as they are stored.
            let path = member(archive, dir, layer)?;
            let size = std::fs::metadata(&path).map_err(io(&path))?.len();
            let digest = Digest::parse(diff_id)?;
            if !store.has_blob(&digest) {
                let mut file = std::fs::File::open(&path).map_err(io(&path))?;
                store
                    .put_reader(&mut file, &digest, Some(size))
                    .map_err(|e| match e {
                        // The layer is not what the config says it is.
                        StoreError::DigestMismatch { expected, actual, .. } => {
                            invalid(archive, format!("{layer}: its content hashes to {actual}, the image config says {expected}"))
                        }
                        other => invalid(archive, format!("{layer}: {other}")),
                    })?;
            }
            layers.push(Descriptor::new(oci::OCI_LAYER_TAR, &digest, size));
        }
        let descriptor = store.put_manifest(&config_bytes, layers)?;
        let manifest_digest = Digest::parse(&descriptor.digest)?;
        for tag in image.repo_tags.iter().flatten() {
            let reference = Reference::parse(tag).map_err(|e| invalid(archive, e))?;
            store.tag(&reference, &descriptor, &manifest_digest)?;
            names.push(reference);
        }
    }
    Ok(names)
}
