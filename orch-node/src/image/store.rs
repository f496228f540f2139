//! The node's image store: an OCI image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/<hex>`) whose index names each image by
//! its full reference, beside the unpacked layers (`layers/<diff id>/`),
//! each unpacked once and shared by every container using it.
//!
//! Every blob is verified against its digest as it is written and again
//! as it is read; every file is written to a temporary name and renamed,
//! so a crash leaves either the old state or the new one.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

use super::digest::{Digest, DigestError, Hashing};
use super::oci::{self, Descriptor, ImageConfig, Index, Manifest};
use super::reference::Reference;

/// The annotation recording the digest a registry served for a reference
/// (an index's, for multi-platform images): the image's repo digest.
pub const REPO_DIGEST: &str = "io.orch.image.repo-digest";

/// Manifests, indexes and configs are small; anything bigger is refused
/// rather than read into memory.
pub const DOCUMENT_LIMIT: u64 = 4 << 20;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob {expected}: the content hashes to {actual} ({size} bytes)")]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {digest}: {size} bytes where the descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        size: u64,
        expected: u64,
    },
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("{what} {digest}: {size} bytes, more than the {limit} a document may have")]
    TooLarge {
        what: &'static str,
        digest: Digest,
        size: u64,
        limit: u64,
    },
    #[error("{what} {digest}: not valid JSON of that kind: {source}")]
    Document {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Index {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error("image {0} is not on this node")]
    NotPresent(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("image garbage collection postponed: {0}")]
    Busy(String),
    #[error(
        "layer {layer}: its uncompressed content hashes to {actual}, the image config says {diff_id}"
    )]
    LayerMismatch {
        layer: Digest,
        diff_id: Digest,
        actual: Digest,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An image as the store holds it.
#[derive(Clone, Debug)]
pub struct Image {
    /// The manifest's digest: the image id on this node.
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
}

/// One image for the Node's status: its names and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredImage {
    pub names: Vec<String>,
    pub size: u64,
}

pub struct ImageStore {
    root: PathBuf,
    layers: PathBuf,
    /// Serializes index.json's read-modify-write.
    index_lock: Mutex<()>,
    /// Operations that may leave blobs or layers no name points at yet
    /// (pulls, imports, builds, unpacks) running now: `collect` waits
    /// for none, and holds this while it runs so none starts.
    active: Arc<Mutex<usize>>,
    /// `store.lock`, held shared while this store is open (another
    /// process's store on the same directory holds it too): temporary
    /// files are removed and garbage collected only when it can be
    /// taken exclusively, so no other process's write is cut short.
    lock_file: std::fs::File,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// An operation in progress (see [`ImageStore::operation`]).
pub struct Operation {
    active: Arc<Mutex<usize>>,
}

impl Drop for Operation {
    fn drop(&mut self) {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        *active = active.saturating_sub(1);
    }
}

/// flock(2) on the store's lock file.
fn flock(file: &std::fs::File, arg: nix::fcntl::FlockArg) -> nix::Result<()> {
    use std::os::fd::AsRawFd as _;
    #[allow(deprecated)]
    nix::fcntl::flock(file.as_raw_fd(), arg)
}

impl ImageStore {
    /// Opens (creating) the store under `dir`: `dir/images` (the OCI
    /// layout) and `dir/layers`. Leftovers of interrupted writes go.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let root = dir.join("images");
        let layers = dir.join("layers");
        let blobs = root.join("blobs").join("sha256");
        for path in [&blobs, &layers] {
            std::fs::create_dir_all(path).map_err(io(path))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomically(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        let lock_path = dir.join("store.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        if flock(&lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            // Nobody else has the store open: leftovers of interrupted
            // writes (blobs, unpacks, imports, index updates) go.
            for parent in [&blobs, &layers, &root] {
                remove_temporaries(parent)?;
            }
        }
        flock(&lock_file, nix::fcntl::FlockArg::LockShared).map_err(|errno| StoreError::Io {
            path: lock_path.clone(),
            source: errno.into(),
        })?;
        Ok(Self {
            root,
            layers,
            index_lock: Mutex::new(()),
            active: Arc::default(),
            lock_file,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Marks an operation that writes blobs or layers before a name
    /// points at them; garbage collection does not run while one is.
    pub fn operation(&self) -> Operation {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        Operation {
            active: self.active.clone(),
        }
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).exists()
    }

    /// Starts writing a blob that must hash to `expected`.
    pub fn blob_writer(&self, expected: &Digest) -> Result<BlobWriter, StoreError> {
        let final_path = self.blob_path(expected);
        let temporary =
            final_path.with_file_name(format!(".tmp-{}-{}", expected.hex(), unique_suffix()));
        let file = std::fs::File::create(&temporary).map_err(io(&temporary))?;
        Ok(BlobWriter {
            hashing: Hashing::new(std::io::BufWriter::new(file)),
            expected: expected.clone(),
            temporary,
            final_path,
        })
    }

    /// Stores `bytes`; returns their digest (checked against `expected`
    /// when given).
    pub fn put_bytes(&self, bytes: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        let digest = Digest::of(bytes);
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual: digest,
                size: bytes.len() as u64,
            });
        }
        if !self.has_blob(&digest) {
            let mut writer = self.blob_writer(&digest)?;
            writer.write_all(bytes).map_err(io(&writer.temporary))?;
            writer.commit(Some(bytes.len() as u64))?;
        }
        Ok(digest)
    }

    /// Stores `config` (an image config's JSON) and an OCI manifest naming
    /// it and `layers` (blobs already stored); returns the manifest's
    /// descriptor. Images built or converted here are made this way.
    pub fn put_manifest(
        &self,
        config: &[u8],
        layers: Vec<Descriptor>,
    ) -> Result<Descriptor, StoreError> {
        let config_digest = self.put_bytes(config, None)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            config: Descriptor::new(oci::OCI_CONFIG, &config_digest, config.len() as u64),
            layers,
        };
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| StoreError::Unsupported(format!("encoding a manifest: {e}")))?;
        let digest = self.put_bytes(&bytes, None)?;
        Ok(Descriptor::new(
            oci::OCI_MANIFEST,
            &digest,
            bytes.len() as u64,
        ))
    }

    /// Stores what `reader` yields, which must hash to `expected`.
    pub fn put_reader(
        &self,
        reader: &mut impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut writer = self.blob_writer(expected)?;
        let temporary = writer.temporary.clone();
        std::io::copy(reader, &mut writer).map_err(io(&temporary))?;
        writer.commit(size)
    }

    /// A small blob (manifest, index, config), verified.
    pub fn read_document(
        &self,
        what: &'static str,
        digest: &Digest,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let file = std::fs::File::open(&path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                StoreError::MissingBlob(digest.clone())
            } else {
                StoreError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        let size = file.metadata().map_err(io(&path))?.len();
        if size > DOCUMENT_LIMIT {
            return Err(StoreError::TooLarge {
                what,
                digest: digest.clone(),
                size,
                limit: DOCUMENT_LIMIT,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(DOCUMENT_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(io(&path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        digest: &Digest,
    ) -> Result<T, StoreError> {
        let bytes = self.read_document(what, digest)?;
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Document {
            what,
            digest: digest.clone(),
            source,
        })
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// The layout's index (empty when there is none yet).
    pub fn index(&self) -> Result<Index, StoreError> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Index {
                path: path.clone(),
                source,
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Index {
                schema_version: 2,
                media_type: Some(oci::OCI_INDEX.into()),
                manifests: Vec::new(),
            }),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    fn change_index(&self, change: impl FnOnce(&mut Vec<Descriptor>)) -> Result<(), StoreError> {
        let _guard = self.index_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = self.index()?;
        change(&mut index.manifests);
        let bytes = serde_json::to_vec_pretty(&index).map_err(|source| StoreError::Index {
            path: self.index_path(),
            source,
        })?;
        write_atomically(&self.index_path(), &bytes)
    }

    /// Names `manifest` (already stored) `reference`, replacing what the
    /// name pointed at before. `repo_digest` is what the registry served.
    pub fn tag(
        &self,
        reference: &Reference,
        manifest: &Descriptor,
        repo_digest: &Digest,
    ) -> Result<(), StoreError> {
        let name = reference.to_string();
        let mut entry = manifest.clone();
        let mut annotations = entry.annotations.take().unwrap_or_default();
        annotations.insert(oci::REF_NAME.into(), name.clone());
        annotations.insert(REPO_DIGEST.into(), repo_digest.to_string());
        entry.annotations = Some(annotations);
        self.change_index(|manifests| {
            manifests.retain(|d| ref_name(d) != Some(name.as_str()));
            manifests.push(entry);
        })
    }

    /// The stored manifest `reference` names: by name, or (a reference
    /// with a digest) by manifest or repo digest under the same repository.
    pub fn resolve(&self, reference: &Reference) -> Result<Option<Descriptor>, StoreError> {
        let index = self.index()?;
        let name = reference.to_string();
        if let Some(found) = index
            .manifests
            .iter()
            .find(|d| ref_name(d) == Some(name.as_str()))
        {
            return Ok(Some(found.clone()));
        }
        let Some(digest) = &reference.digest else {
            return Ok(None);
        };
        let wanted = digest.to_string();
        let repository = reference.name();
        Ok(index
            .manifests
            .iter()
            .find(|d| {
                let same_repository = ref_name(d)
                    .and_then(|n| Reference::parse(n).ok())
                    .is_some_and(|r| r.name() == repository);
                same_repository
                    && (d.digest == wanted
                        || d.annotations
                            .as_ref()
                            .and_then(|a| a.get(REPO_DIGEST))
                            .is_some_and(|r| *r == wanted))
            })
            .cloned())
    }

    /// The manifest and config of a stored manifest, verified.
    pub fn image(&self, manifest: &Descriptor) -> Result<Image, StoreError> {
        let manifest_digest = Digest::parse(&manifest.digest)?;
        let document: Manifest = self.read_json("manifest", &manifest_digest)?;
        let config_digest = Digest::parse(&document.config.digest)?;
        let config: ImageConfig = self.read_json("image config", &config_digest)?;
        if config.rootfs.diff_ids.len() != document.layers.len() {
            return Err(StoreError::Unsupported(format!(
                "image {manifest_digest}: {} layers but {} diff ids in its config",
                document.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        Ok(Image {
            manifest_digest,
            manifest: document,
            config_digest,
            config,
        })
    }

    /// Where the layer with uncompressed digest `diff_id` is unpacked.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.layers.join(diff_id.hex())
    }

    /// Where unpacked layers live (`<dir>/layers/<diff id hex>`).
    pub fn layers_root(&self) -> &Path {
        &self.layers
    }

    /// The images held, for the Node's status (names: tags and repo
    /// digests; size: config and layers as stored).
    pub fn images(&self) -> Result<Vec<StoredImage>, StoreError> {
        let index = self.index()?;
        let mut by_manifest: BTreeMap<String, (BTreeSet<String>, u64)> = BTreeMap::new();
        for descriptor in &index.manifests {
            let Some(name) = ref_name(descriptor).and_then(|n| Reference::parse(n).ok()) else {
                continue;
            };
            let entry = by_manifest
                .entry(descriptor.digest.clone())
                .or_insert_with(|| (BTreeSet::new(), 0));
            entry.0.insert(name.to_string());
            if let Some(repo) = descriptor
                .annotations
                .as_ref()
                .and_then(|a| a.get(REPO_DIGEST))
            {
                entry.0.insert(format!("{}@{repo}", name.name()));
            }
            if entry.1 == 0
                && let Ok(image) = self.image(descriptor)
            {
                entry.1 = image.manifest.config.size
                    + image.manifest.layers.iter().map(|l| l.size).sum::<u64>();
            }
        }
        Ok(by_manifest
            .into_values()
            .map(|(names, size)| StoredImage {
                names: names.into_iter().collect(),
                size,
            })
            .collect())
    }

    /// Every image name held and the manifest it names.
    pub fn names(&self) -> Result<Vec<(Reference, Descriptor)>, StoreError> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .filter_map(|descriptor| {
                let name = Reference::parse(ref_name(&descriptor)?).ok()?;
                Some((name, descriptor))
            })
            .collect())
    }

    /// Forgets the name `reference` (the blobs stay until `collect`).
    pub fn untag(&self, reference: &Reference) -> Result<bool, StoreError> {
        let name = reference.to_string();
        let mut removed = false;
        self.change_index(|manifests| {
            let before = manifests.len();
            manifests.retain(|d| ref_name(d) != Some(name.as_str()));
            removed = manifests.len() != before;
        })?;
        Ok(removed)
    }

    /// Deletes blobs and unpacked layers no named image uses, except the
    /// layers in `in_use` (diff ids of running containers). Returns the
    /// bytes freed.
    pub fn collect(&self, in_use: &BTreeSet<Digest>) -> Result<u64, StoreError> {
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if *active > 0 {
            return Err(StoreError::Busy(format!(
                "{} pull(s), import(s) or unpack(s) in progress",
                *active
            )));
        }
        if flock(&self.lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock).is_err() {
            return Err(StoreError::Busy(
                "another process has the image store open (the node agent?)".into(),
            ));
        }
        let collected = self.collect_unused(in_use);
        let relocked = flock(&self.lock_file, nix::fcntl::FlockArg::LockShared);
        drop(active);
        let freed = collected?;
        relocked.map_err(|errno| StoreError::Io {
            path: self.root.join("store.lock"),
            source: errno.into(),
        })?;
        Ok(freed)
    }

    fn collect_unused(&self, in_use: &BTreeSet<Digest>) -> Result<u64, StoreError> {
        let _guard = self.index_lock.lock().unwrap_or_else(|p| p.into_inner());
        let index = self.index()?;
        let mut blobs = BTreeSet::new();
        let mut layers = in_use.clone();
        for descriptor in &index.manifests {
            if let Ok(digest) = Digest::parse(&descriptor.digest) {
                blobs.insert(digest);
            }
            if let Some(repo) = descriptor
                .annotations
                .as_ref()
                .and_then(|a| a.get(REPO_DIGEST))
                && let Ok(digest) = Digest::parse(repo)
            {
                blobs.insert(digest);
            }
            // A named entry that does not read as an image keeps what it
            // names that can be told; it is not a reason to collect nothing.
            let image = match self.image(descriptor) {
                Ok(image) => image,
                Err(error) => {
                    tracing::warn!(digest = %descriptor.digest, %error, "an unreadable image in the index; its blobs are kept");
                    continue;
                }
            };
            blobs.insert(image.config_digest.clone());
            for layer in &image.manifest.layers {
                blobs.insert(Digest::parse(&layer.digest)?);
            }
            for diff_id in &image.config.rootfs.diff_ids {
                layers.insert(Digest::parse(diff_id)?);
            }
        }
        let mut freed = 0;
        let blob_dir = self.root.join("blobs").join("sha256");
        for entry in std::fs::read_dir(&blob_dir)
            .map_err(io(&blob_dir))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name.starts_with(".tmp-")
                || Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| blobs.contains(&d));
            if !keep {
                freed += entry.metadata().map_or(0, |m| m.len());
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        for entry in std::fs::read_dir(&self.layers)
            .map_err(io(&self.layers))?
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let keep = name.starts_with(".tmp-")
                || Digest::parse(&format!("sha256:{name}")).is_ok_and(|d| layers.contains(&d));
            if !keep {
                freed += dir_size(&entry.path());
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            }
        }
        Ok(freed)
    }
}

/// Removes the `.tmp-*` entries of `dir`.
fn remove_temporaries(dir: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let path = entry.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io(&path))?;
        }
    }
    Ok(())
}

fn ref_name(descriptor: &Descriptor) -> Option<&str> {
    descriptor
        .annotations
        .as_ref()
        .and_then(|a| a.get(oci::REF_NAME))
        .map(String::as_str)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(metadata) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !metadata.is_dir() {
        return metadata.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

pub(super) use crate::files::unique_suffix;

/// Writes `path` whole or not at all.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    crate::files::write_atomically(path, bytes)
        .map_err(|(path, source)| StoreError::Io { path, source })
}

/// A blob being written: hashed on the way, renamed into place by
/// `commit` only when the digest (and size) match.
pub struct BlobWriter {
    hashing: Hashing<std::io::BufWriter<std::fs::File>>,
    expected: Digest,
    temporary: PathBuf,
    final_path: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hashing.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.hashing.flush()
    }
}

impl BlobWriter {
    pub fn commit(self, expected_size: Option<u64>) -> Result<(), StoreError> {
        let BlobWriter {
            hashing,
            expected,
            temporary,
            final_path,
        } = self;
        let (actual, size, writer) = hashing.finish();
        let check = || {
            if actual != expected {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                    actual: actual.clone(),
                    size,
                });
            }
            if let Some(wanted) = expected_size
                && wanted != size
            {
                return Err(StoreError::SizeMismatch {
                    digest: expected.clone(),
                    size,
                    expected: wanted,
                });
            }
            let file = writer.into_inner().map_err(|e| StoreError::Io {
                path: temporary.clone(),
                source: e.into_error(),
            })?;
            file.sync_all().map_err(io(&temporary))?;
            std::fs::rename(&temporary, &final_path).map_err(io(&final_path))
        };
        let result = check();
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        result
    }

    /// Drops what was written.
    pub fn abort(self) {
        let _ = std::fs::remove_file(&self.temporary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_waits_for_writers_and_other_users() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ImageStore::open(dir.path()).expect("store");
        let orphan = store.put_bytes(b"an unnamed blob", None).expect("blob");
        {
            let _pulling = store.operation();
            assert!(matches!(
                store.collect(&BTreeSet::new()),
                Err(StoreError::Busy(_))
            ));
            assert!(store.has_blob(&orphan));
        }
        // Another user of the directory (another process, here another
        // open store): neither collection nor temp-file cleanup runs.
        let mut writing = store.blob_writer(&Digest::of(b"partial")).expect("writer");
        let other = ImageStore::open(dir.path()).expect("second store");
        assert!(matches!(
            other.collect(&BTreeSet::new()),
            Err(StoreError::Busy(_))
        ));
        // The write in progress survived the other store's opening.
        writing.write_all(b"partial").expect("write");
        writing.commit(Some(7)).expect("the blob completes");
        drop(other);
        assert_eq!(store.collect(&BTreeSet::new()).expect("collect"), 15 + 7);
        assert!(!store.has_blob(&orphan));
    }
}
