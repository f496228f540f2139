//! `cargo xtask test`: the one command CI runs.

use std::time::Instant;

use anyhow::Result;

use crate::{cargo, ebpf, run_command, setup};

pub fn run(cargo_test_args: &[String]) -> Result<()> {
    let started = Instant::now();
    setup::run()?;
    ebpf::build()?;
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Default members: everything but orch-ebpf, whose only real target is
    // the kernel (clippy above already checked it).
    run_command(
        cargo()
            .args(["test", "--no-fail-fast", "--"])
            .args(cargo_test_args),
    )?;
    eprintln!(
        "xtask test: all passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
