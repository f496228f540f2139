//! Building the kernel programs.

use anyhow::{Context, Result};

use crate::{cargo, run_command};

/// The nightly toolchain the eBPF build uses (build-std needs nightly).
pub const NIGHTLY: &str = "nightly";
pub const BPF_TARGET: &str = "bpfel-unknown-none";

/// `cargo +nightly build -p orch-ebpf --release --target bpfel-unknown-none
/// -Z build-std=core`. BTF flags come from `.cargo/config.toml`.
pub fn build() -> Result<()> {
    run_command(
        cargo()
            .arg(format!("+{NIGHTLY}"))
            .args([
                "build",
                "--package",
                "orch-ebpf",
                "--release",
                "--target",
                BPF_TARGET,
            ])
            .args(["-Z", "build-std=core"]),
    )
    .context("building orch-ebpf (run `cargo xtask setup` if bpf-linker or rust-src is missing)")?;
    let object = crate::workspace_root().join(format!("target/{BPF_TARGET}/release/orch-ebpf"));
    eprintln!("eBPF object: {}", object.display());
    Ok(())
}
