//! The image store against a real registry (Debian's docker-registry on
//! loopback): a busybox image built here is pushed, pulled by tag and by
//! digest into another store, verified, unpacked for overlayfs (whiteouts
//! checked through a real overlay mount), imported from archives, and
//! garbage-collected. Needs root (mknod, trusted xattrs, mount).

use std::path::Path;

use orch_node::image::build::{self, ExtraFile};
use orch_node::image::local_registry::LocalRegistry;
use orch_node::image::registry::{RegistryClient, RegistryError};
use orch_node::image::{ImageStore, Reference, StoreError, import, unpack};

fn start_registry(dir: &Path) -> LocalRegistry {
    LocalRegistry::start(dir).unwrap_or_else(|e| panic!("{e}"))
}

fn busybox_into(store: &ImageStore, name: &str) -> Reference {
    let reference = Reference::parse(name).expect("reference");
    build::busybox_image(
        store,
        &reference,
        Path::new(build::BUSYBOX),
        &[ExtraFile {
            path: "/var/www/index.html",
            contents: b"hello from orch\n",
            mode: 0o644,
        }],
        &["httpd", "-f", "-p", "8080", "-h", "/var/www"],
    )
    .expect("build busybox image");
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_round_trip_through_a_registry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = start_registry(dir.path());
    let client = RegistryClient::new(Vec::new()).expect("client");

    let builder = ImageStore::open(&dir.path().join("builder")).expect("builder store");
    let local = busybox_into(&builder, "orch.test/busybox:1");
    let remote = Reference::parse(&format!("{}/busybox:1", registry.addr)).expect("reference");
    let pushed = client
        .push(&builder, &local, &remote, None)
        .await
        .expect("push");

    // Pulled by tag into a node's store: the same manifest, verified.
    let node = ImageStore::open(&dir.path().join("node")).expect("node store");
    let descriptor = client.pull(&node, &remote, None).await.expect("pull");
    assert_eq!(descriptor.digest, pushed.to_string());
    let image = node.image(&descriptor).expect("image");
    assert_eq!(
        image.config.config.cmd.as_deref(),
        Some(
            &[
                "httpd".to_string(),
                "-f".into(),
                "-p".into(),
                "8080".into(),
                "-h".into(),
                "/var/www".into()
            ][..]
        )
    );
    let layers = unpack::unpacked_layers(&node, &image).expect("unpack");
    assert_eq!(layers.len(), 1);
    let busybox = layers[0].join("bin/busybox");
    assert!(std::fs::metadata(&busybox).expect("busybox").len() > 100_000);
    assert_eq!(
        std::fs::read_link(layers[0].join("bin/sh")).expect("sh link"),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_to_string(layers[0].join("var/www/index.html")).expect("index"),
        "hello from orch\n"
    );
    // Unpacked once: a second call finds the same directory, untouched.
    use std::os::unix::fs::MetadataExt as _;
    let inode = std::fs::metadata(&busybox).expect("busybox").ino();
    let again = unpack::unpacked_layers(&node, &image).expect("unpack again");
    assert_eq!(again, layers);
    assert_eq!(std::fs::metadata(&busybox).expect("busybox").ino(), inode);

    // By digest: resolved in the store, and pullable as such.
    let pinned =
        Reference::parse(&format!("{}/busybox@{}", registry.addr, pushed)).expect("reference");
    assert_eq!(
        node.resolve(&pinned).expect("resolve").map(|d| d.digest),
        Some(pushed.to_string())
    );
    let fresh = ImageStore::open(&dir.path().join("fresh")).expect("store");
    client
        .pull(&fresh, &pinned, None)
        .await
        .expect("pull by digest");
    let images = node.images().expect("images");
    assert_eq!(images.len(), 1);
    assert!(
        images[0]
            .names
            .contains(&format!("{}/busybox@{pushed}", registry.addr))
            && images[0].names.contains(&remote.to_string()),
        "{:?}",
        images[0].names
    );

    // A tag the registry does not have.
    let missing = Reference::parse(&format!("{}/busybox:nope", registry.addr)).expect("ref");
    match client.pull(&fresh, &missing, None).await {
        Err(RegistryError::NotFound { reference, .. }) => {
            assert_eq!(reference, missing.to_string())
        }
        other => panic!("pull of a missing tag: {other:?}"),
    }

    // A blob that does not match its digest is refused and not kept.
    let layer_digest = image.manifest.layers[0].digest.clone();
    let hex = layer_digest.trim_start_matches("sha256:");
    let stored = registry
        .storage
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&stored).expect("registry blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).expect("corrupt it");
    let victim = ImageStore::open(&dir.path().join("victim")).expect("store");
    match client.pull(&victim, &remote, None).await {
        Err(RegistryError::Store {
            source: StoreError::DigestMismatch { expected, .. },
            ..
        }) => assert_eq!(expected.to_string(), layer_digest),
        other => panic!("pull of a corrupt layer: {other:?}"),
    }
    let layer = orch_node::image::Digest::parse(&layer_digest).expect("digest");
    assert!(!victim.has_blob(&layer), "a corrupt blob was kept");
    assert!(victim.resolve(&remote).expect("resolve").is_none());
    let leftovers: Vec<_> = std::fs::read_dir(victim.root().join("blobs/sha256"))
        .expect("blobs")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Garbage collection: unnamed images' blobs and layers go.
    assert!(node.untag(&remote).expect("untag"));
    let freed = node.collect(&Default::default()).expect("collect");
    assert!(freed > 100_000, "freed {freed}");
    assert!(!layers[0].exists());
    assert!(node.images().expect("images").is_empty());
}

/// A layer tar from (path, contents) pairs; `None` contents: a directory.
fn layer_tar(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, contents) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1);
        match contents {
            Some(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, path, *bytes).expect("file");
            }
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                header.set_mode(0o755);
                tar.append_data(&mut header, path, std::io::empty())
                    .expect("dir");
            }
        }
    }
    tar.into_inner().expect("tar")
}

#[test]
fn docker_save_archives_import_and_whiteouts_work_in_overlayfs() {
    use orch_node::image::Digest;
    let dir = tempfile::tempdir().expect("temp dir");
    let lower = layer_tar(&[
        ("a/", None),
        ("a/gone", Some(b"1")),
        ("a/kept", Some(b"2")),
        ("d/", None),
        ("d/old", Some(b"3")),
    ]);
    let upper = layer_tar(&[
        ("a/", None),
        ("a/.wh.gone", Some(b"")),
        ("d/", None),
        ("d/.wh..wh..opq", Some(b"")),
        ("d/new", Some(b"4")),
    ]);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&lower).to_string(), Digest::of(&upper).to_string()]},
    });
    let config_bytes = serde_json::to_vec(&config).expect("config");
    // docker save's layout: manifest.json, <config>.json, <id>/layer.tar.
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, path, bytes)
            .expect("member");
    };
    add("cfg.json", &config_bytes);
    add("l1/layer.tar", &lower);
    add("l2/layer.tar", &upper);
    add(
        "manifest.json",
        br#"[{"Config":"cfg.json","RepoTags":["example/whiteouts:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#,
    );
    let archive_path = dir.path().join("saved.tar");
    std::fs::write(&archive_path, archive.into_inner().expect("archive")).expect("write");

    let store = ImageStore::open(&dir.path().join("store")).expect("store");
    let names = import::import_archive(&store, &archive_path).expect("import");
    assert_eq!(
        names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        ["docker.io/example/whiteouts:1"]
    );
    let descriptor = store.resolve(&names[0]).expect("resolve").expect("named");
    let image = store.image(&descriptor).expect("image");
    let layers = unpack::unpacked_layers(&store, &image).expect("unpack");

    // overlayfs's own whiteouts in the upper layer's directory.
    use std::os::unix::fs::FileTypeExt as _;
    let whiteout = std::fs::symlink_metadata(layers[1].join("a/gone")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(
        xattr::get(layers[1].join("d"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
    // And through a real overlay mount: gone is gone, d holds only new.
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).expect("mountpoint");
    let options = format!("lowerdir={}:{}", layers[1].display(), layers[0].display());
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(options.as_str()),
    )
    .expect("mount overlay (root needed)");
    let seen = (
        merged.join("a/gone").exists(),
        std::fs::read_to_string(merged.join("a/kept")).ok(),
        merged.join("d/old").exists(),
        std::fs::read_to_string(merged.join("d/new")).ok(),
    );
    nix::mount::umount(&merged).expect("umount");
    assert_eq!(seen, (false, Some("2".into()), false, Some("4".into())));

    // A layer whose content is not its diff id is refused, nothing kept.
    let bad_store = ImageStore::open(&dir.path().join("bad")).expect("store");
    let mut bad_archive = tar::Builder::new(Vec::new());
    let mut wrong = config.clone();
    wrong["rootfs"]["diff_ids"][1] = serde_json::Value::from(Digest::of(b"other").to_string());
    let wrong_bytes = serde_json::to_vec(&wrong).expect("config");
    for (path, bytes) in [
        ("cfg.json", wrong_bytes.as_slice()),
        ("l1/layer.tar", lower.as_slice()),
        ("l2/layer.tar", upper.as_slice()),
        (
            "manifest.json",
            br#"[{"Config":"cfg.json","RepoTags":["example/bad:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#.as_slice(),
        ),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        bad_archive.append_data(&mut header, path, bytes).expect("member");
    }
    let bad_path = dir.path().join("bad.tar");
    std::fs::write(&bad_path, bad_archive.into_inner().expect("archive")).expect("write");
    match import::import_archive(&bad_store, &bad_path) {
        Err(error) => assert!(
            error.to_string().contains(&format!(
                "l2/layer.tar: its content hashes to {}, the image config says {}",
                Digest::of(&upper),
                Digest::of(b"other")
            )),
            "{error}"
        ),
        Ok(names) => panic!("a mislabelled layer was imported as {names:?}"),
    }
    assert!(bad_store.images().expect("images").is_empty());
}

#[test]
fn oci_archives_import() {
    let dir = tempfile::tempdir().expect("temp dir");
    let builder = ImageStore::open(&dir.path().join("builder")).expect("store");
    let reference = busybox_into(&builder, "orch.test/web:2");
    // An OCI layout as a tarball, gzip-compressed.
    let archive_path = dir.path().join("web.oci.tar.gz");
    let file = std::fs::File::create(&archive_path).expect("archive");
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        file,
        flate2::Compression::fast(),
    ));
    tar.append_dir_all(".", builder.root()).expect("layout");
    tar.into_inner().expect("tar").finish().expect("gzip");

    let store = ImageStore::open(&dir.path().join("node")).expect("store");
    let names = import::import_archive(&store, &archive_path).expect("import");
    assert_eq!(names, std::slice::from_ref(&reference));
    let image = store
        .image(&store.resolve(&reference).expect("resolve").expect("named"))
        .expect("image");
    let layers = unpack::unpacked_layers(&store, &image).expect("unpack");
    assert!(layers[0].join("bin/busybox").exists());

    let garbage = dir.path().join("garbage.tar");
    std::fs::write(&garbage, b"not an archive at all").expect("write");
    let error = import::import_archive(&store, &garbage).expect_err("garbage");
    assert!(error.to_string().contains("garbage.tar"), "{error}");
}

/// A docker-save archive of one image with `layers`, imported into a new
/// store under `dir`; returns the store and the image.
fn imported(dir: &Path, layers: &[Vec<u8>]) -> (ImageStore, orch_node::image::Image) {
    use orch_node::image::Digest;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| Digest::of(l).to_string()).collect::<Vec<_>>()},
    });
    let mut archive = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        archive
            .append_data(&mut header, path, bytes)
            .expect("member");
    };
    add("cfg.json", &serde_json::to_vec(&config).expect("config"));
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    for (name, layer) in names.iter().zip(layers) {
        add(name, layer);
    }
    let manifest = serde_json::json!([{"Config": "cfg.json", "RepoTags": ["example/hostile:1"], "Layers": names}]);
    add(
        "manifest.json",
        &serde_json::to_vec(&manifest).expect("manifest"),
    );
    let path = dir.join("hostile.tar");
    std::fs::write(&path, archive.into_inner().expect("archive")).expect("write");
    let store = ImageStore::open(&dir.join("store")).expect("store");
    let names = import::import_archive(&store, &path).expect("import");
    let image = store
        .image(&store.resolve(&names[0]).expect("resolve").expect("named"))
        .expect("image");
    (store, image)
}

/// A tar entry with a raw name (the tar crate refuses `..` when building).
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    }
    header.set_entry_type(kind);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1);
    header.set_cksum();
    tar.append(&header, data).expect("entry");
}

/// Appends entries to a layer being built.
type LayerStep<'a> = dyn Fn(&mut tar::Builder<Vec<u8>>) + 'a;

#[test]
fn hostile_layers_stay_inside_their_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    let outside_link = outside.to_str().expect("utf-8").to_string();
    // One hostile step per layer, each after a harmless entry.
    let hostile: [&LayerStep<'_>; 3] = [
        &|tar| raw_entry(tar, "../../escaped", tar::EntryType::Regular, None, b"x"),
        &|tar| {
            raw_entry(
                tar,
                "link",
                tar::EntryType::Symlink,
                Some(&outside_link),
                b"",
            );
            raw_entry(tar, "link/pwned", tar::EntryType::Regular, None, b"x");
        },
        &|tar| {
            raw_entry(
                tar,
                "link",
                tar::EntryType::Symlink,
                Some(&outside_link),
                b"",
            );
            raw_entry(tar, "link/.wh.victim", tar::EntryType::Regular, None, b"");
        },
    ];
    for (i, step) in hostile.iter().enumerate() {
        let mut tar = tar::Builder::new(Vec::new());
        raw_entry(&mut tar, "ok", tar::EntryType::Regular, None, b"fine");
        step(&mut tar);
        let layer = tar.into_inner().expect("layer");
        let case = dir.path().join(format!("case-{i}"));
        std::fs::create_dir(&case).expect("case dir");
        let (store, image) = imported(&case, &[layer]);
        let result = unpack::unpacked_layers(&store, &image);
        if i == 0 {
            // `..` is skipped; the rest of the layer is there.
            let layers = result.as_ref().expect("a layer with .. unpacks without it");
            assert_eq!(
                std::fs::read_to_string(layers[0].join("ok")).expect("ok"),
                "fine"
            );
        } else {
            assert!(
                result.is_err(),
                "case {i}: a symlink escape was unpacked: {result:?}"
            );
        }
    }
    // Nothing lands outside a layer.
    assert!(
        !outside.join("pwned").exists(),
        "a file was written through a symlink"
    );
    assert!(
        !outside.join("victim").exists(),
        "a whiteout was made through a symlink"
    );
    assert!(!dir.path().join("escaped").exists() && !dir.path().join("case-0/escaped").exists());
}
