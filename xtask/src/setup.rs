//! `cargo xtask setup`: everything the project needs on a fresh machine,
//! installed from the project's own files. Each step checks before it acts,
//! so rerunning it is cheap and safe.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::ebpf::NIGHTLY;
use crate::{cargo, output, run_command};

/// Debian packages: bpftool to inspect maps, iproute2 for test namespaces,
/// pkg-config + libseccomp-dev for libcontainer's seccomp support,
/// busybox-static for test images and test traffic (ping), procps (sysctl),
/// protobuf-compiler (protoc, for the gRPC definitions) with libprotobuf-dev
/// (the well-known types protoc imports, e.g. google/protobuf/descriptor.proto,
/// which the etcd client the store bench uses compiles against), etcd-server and
/// etcd-client (etcd and etcdctl: the anchor `cargo xtask bench store`
/// measures orch's store against), docker-registry (the OCI registry the
/// image tests pull from, started on loopback by the tests), runc and crun
/// (the anchors `cargo xtask bench pods` measures orch-node's runtime
/// against), iptables (kube-proxy's mode, the anchor of `cargo xtask bench
/// dataplane`), curl (what `cargo xtask up` tells people to try).
const DEBIAN_PACKAGES: &[&str] = &[
    "bpftool",
    "busybox-static",
    "crun",
    "curl",
    "docker-registry",
    "etcd-client",
    "etcd-server",
    "iproute2",
    "iptables",
    "libprotobuf-dev",
    "libseccomp-dev",
    "pkg-config",
    "procps",
    "protobuf-compiler",
    "runc",
];

/// bpf-linker links the kernel programs; pinned so builds don't move.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    let started = Instant::now();
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("setup done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|package| !debian_package_installed(package))
        .collect();
    if missing.is_empty() {
        eprintln!("debian packages: all installed");
        return Ok(());
    }
    if !nix_is_root() {
        bail!(
            "Debian packages missing: {} — rerun `cargo xtask setup` as root, or install them",
            missing.join(" ")
        );
    }
    run_command(Command::new("apt-get").args(["update", "-qq"]))?;
    run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    // Debian's package enables a registry on :5000 for every interface;
    // the tests start their own on loopback, so the system one is stopped.
    if missing.contains(&"docker-registry")
        && output(Command::new("systemctl").args(["is-enabled", "docker-registry"])).is_some()
    {
        let _ = Command::new("systemctl")
            .args(["disable", "--now", "docker-registry"])
            .status();
    }
    Ok(())
}

fn debian_package_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))
            .context(
                "the nightly toolchain is missing: it is part of this machine's Rust install \
             (`rustup toolchain list` should show nightly)",
            )?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn nightly_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("rust-src (nightly): installed");
        return Ok(());
    }
    run_command(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
}

fn bpf_linker() -> Result<()> {
    let installed = output(Command::new("bpf-linker").arg("--version"));
    if installed
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        eprintln!("bpf-linker {BPF_LINKER_VERSION}: installed");
        return Ok(());
    }
    // bpf-linker must use the same LLVM as the rustc that emits the bitcode:
    // nightly's own libLLVM. Point an LLVM prefix at it.
    let sysroot = nightly_sysroot()?;
    let (library, major) = nightly_libllvm(&sysroot.join("lib"))?;
    let prefix = llvm_prefix_dir()?;
    let lib_dir = prefix.join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let file_name = library
        .file_name()
        .context("libLLVM path has no file name")?
        .to_owned();
    for link in [lib_dir.join("libLLVM.so"), lib_dir.join(&file_name)] {
        replace_symlink(&library, &link)?;
    }
    run_command(
        cargo()
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )
}

/// Finds `libLLVM.so.<major>.<minor>-rust-<version>` in nightly's lib dir.
fn nightly_libllvm(lib_dir: &Path) -> Result<(PathBuf, u32)> {
    let entries =
        std::fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && let Some(major) = rest.split('.').next().and_then(|m| m.parse().ok())
        {
            return Ok((path, major));
        }
    }
    bail!("no libLLVM.so.<version> in {}", lib_dir.display())
}

/// A per-user directory outside the checkout, so fresh clones reuse it.
fn llvm_prefix_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/orch/llvm-prefix"))
}

fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    if std::fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} -> {}", link.display(), target.display()))
}
