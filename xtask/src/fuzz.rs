//! `cargo xtask fuzz`: runs each fuzz target (fuzz/fuzz_targets) for a fixed
//! time with cargo fuzz (libFuzzer, nightly), seeded with the manifest
//! corpus. A crash fails the command and leaves the input under
//! target/fuzz/artifacts/.

use std::process::Command;

use anyhow::Result;

use crate::ebpf::NIGHTLY;
use crate::{cargo, output, run_command, workspace_root};

/// cargo-fuzz, pinned so runs don't move.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const TARGETS: &[&str] = &["manifest", "api_request"];

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = output(Command::new("cargo").args(["fuzz", "--version"]));
    if installed
        .as_deref()
        .is_some_and(|v| v.contains(CARGO_FUZZ_VERSION))
    {
        eprintln!("cargo-fuzz {CARGO_FUZZ_VERSION}: installed");
        return Ok(());
    }
    run_command(cargo().args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

pub fn run(seconds: u64) -> Result<()> {
    crate::setup::run()?;
    ensure_cargo_fuzz()?;
    let root = workspace_root();
    let seeds = root.join("tests/manifests/valid");
    for target in TARGETS {
        let corpus = root.join("target/fuzz/corpus").join(target);
        let artifacts = root.join("target/fuzz/artifacts").join(target);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        run_command(
            cargo()
                .arg(format!("+{NIGHTLY}"))
                .args(["fuzz", "run", "--fuzz-dir"])
                .arg(root.join("fuzz"))
                .arg("--target-dir")
                .arg(root.join("target/fuzz/build"))
                .arg(target)
                .arg(&corpus)
                .arg(&seeds)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display())),
        )?;
    }
    eprintln!(
        "fuzz: {} targets ran {seconds} s each without a crash",
        TARGETS.len()
    );
    Ok(())
}
