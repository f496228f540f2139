//! `cargo xtask`: the project's developer commands.
//!
//! - `setup`: install what the project needs on a fresh machine (idempotent)
//! - `build-ebpf`: build the kernel programs for bpfel-unknown-none
//! - `test`: setup, build-ebpf, fmt check, clippy and the whole test suite
//! - `bench store|api|scheduler|pods`: benchmarks beside their anchors or targets
//! - `fuzz`: the fuzz targets, each for a fixed time
//! - `up` / `down`: a single-node cluster on this machine with a demo app

mod bench;
mod ebpf;
mod fuzz;
mod setup;
mod test;
mod up;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "orch developer commands")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Set up, build and start a single-node cluster on this machine
    /// (orch-control and orch-node as daemons, the node in a network
    /// namespace) with a demo Deployment and Services; safe to rerun.
    Up(up::UpArgs),
    /// Stop the cluster `up` started and remove everything it made.
    Down(up::DownArgs),
    /// Install the toolchain pieces and Debian packages the project needs (safe to rerun).
    Setup,
    /// Build orch-ebpf's kernel programs (target/bpfel-unknown-none/release/orch-ebpf).
    BuildEbpf,
    /// Setup, build-ebpf, `cargo fmt --check`, clippy -D warnings and every test.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        cargo_test_args: Vec<String>,
    },
    /// Run every fuzz target (manifest parser, API request decoding) for a
    /// fixed time; a crash fails it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Run a benchmark against its anchor in the same run (optimized build).
    Bench {
        bench: bench::Bench,
        /// Arguments for the benchmark (after `--`), e.g. `--quick` or `--rounds 5`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Up(args) => up::up(&args),
        Task::Down(args) => up::down(&args),
        Task::Setup => setup::run(),
        Task::BuildEbpf => ebpf::build(),
        Task::Test { cargo_test_args } => test::run(&cargo_test_args),
        Task::Bench { bench, args } => bench::run(bench, &args),
        Task::Fuzz { seconds } => fuzz::run(seconds),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `cargo` command run from the workspace root, free of the variables the
/// outer `cargo xtask` (a stable cargo) set for itself, so that `+nightly` and
/// target selection work as on a command line.
fn cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace_root());
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "CARGO_MANIFEST_DIR",
    ] {
        command.env_remove(var);
    }
    command
}

/// Runs a command to completion, echoing it first; fails on a non-zero exit.
fn run_command(command: &mut Command) -> Result<()> {
    eprintln!("+ {}", describe(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(command));
    }
    Ok(())
}

/// Runs a command and returns its stdout, or None when it cannot run or fails.
fn output(command: &mut Command) -> Option<String> {
    let out = command.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}
