//! Builds small images from files on this machine, for tests and the
//! demo cluster: busybox-static (Debian's) as `/bin/busybox` with a link
//! per applet, so `sh`, `httpd`, `sleep`, `wget`... are all there.

use std::path::Path;
use std::process::Command;

use flate2::Compression as Level;
use flate2::write::GzEncoder;

use super::digest::Digest;
use super::oci::{self, Descriptor, ImageConfig, RootFs, RunConfig};
use super::reference::Reference;
use super::store::{ImageStore, StoreError};

/// Where Debian's busybox-static installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// A file to add to the image.
pub struct ExtraFile<'a> {
    pub path: &'a str,
    pub contents: &'a [u8],
    pub mode: u32,
}

fn invalid(reason: String) -> StoreError {
    StoreError::Unsupported(reason)
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    // A fixed time: the same inputs give the same layer digest.
    header.set_mtime(1);
    header
}

/// Builds the busybox image and names it `reference` in `store`.
pub fn busybox_image(
    store: &ImageStore,
    reference: &Reference,
    busybox: &Path,
    extra: &[ExtraFile<'_>],
    cmd: &[&str],
) -> Result<Descriptor, StoreError> {
    let _operation = store.operation();
    let binary = std::fs::read(busybox).map_err(|source| StoreError::Io {
        path: busybox.to_path_buf(),
        source,
    })?;
    let listed = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| StoreError::Io {
            path: busybox.to_path_buf(),
            source,
        })?;
    if !listed.status.success() {
        return Err(invalid(format!("{} --list failed", busybox.display())));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox")
        .map(str::to_string)
        .collect();

    let mut tar = tar::Builder::new(Vec::new());
    let add_error = |e: std::io::Error| invalid(format!("building the layer: {e}"));
    for dir in [
        "bin", "etc", "tmp", "var", "var/www", "root", "proc", "sys", "dev",
    ] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        let mut h = header(tar::EntryType::Directory, 0, mode);
        tar.append_data(&mut h, format!("{dir}/"), std::io::empty())
            .map_err(add_error)?;
    }
    let mut h = header(tar::EntryType::Regular, binary.len() as u64, 0o755);
    tar.append_data(&mut h, "bin/busybox", binary.as_slice())
        .map_err(add_error)?;
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(add_error)?;
    }
    let mut files = vec![
        ExtraFile {
            path: "etc/passwd",
            contents: b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            mode: 0o644,
        },
        ExtraFile {
            path: "etc/group",
            contents: b"root:x:0:\nnogroup:x:65534:\n",
            mode: 0o644,
        },
    ];
    files.extend(extra.iter().map(|f| ExtraFile {
        path: f.path.trim_start_matches('/'),
        contents: f.contents,
        mode: f.mode,
    }));
    for file in &files {
        let mut h = header(
            tar::EntryType::Regular,
            file.contents.len() as u64,
            file.mode,
        );
        tar.append_data(&mut h, file.path, file.contents)
            .map_err(add_error)?;
    }
    let layer = tar.into_inner().map_err(add_error)?;
    let diff_id = Digest::of(&layer);
    let mut gzip = GzEncoder::new(Vec::new(), Level::default());
    std::io::Write::write_all(&mut gzip, &layer).map_err(add_error)?;
    let compressed = gzip.finish().map_err(add_error)?;
    let layer_digest = store.put_bytes(&compressed, None)?;

    let config = ImageConfig {
        architecture: oci::host_platform().architecture,
        os: "linux".into(),
        config: RunConfig {
            env: Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ]),
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            ..RunConfig::default()
        },
        rootfs: RootFs {
            type_: "layers".into(),
            diff_ids: vec![diff_id.to_string()],
        },
    };
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| invalid(format!("image config: {e}")))?;
    let descriptor = store.put_manifest(
        &config_bytes,
        vec![Descriptor::new(
            oci::OCI_LAYER_GZIP,
            &layer_digest,
            compressed.len() as u64,
        )],
    )?;
    let manifest_digest = Digest::parse(&descriptor.digest)?;
    store.tag(reference, &descriptor, &manifest_digest)?;
    Ok(descriptor)
}
