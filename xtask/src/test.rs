//! `cargo xtask test`: the one command CI runs.

use std::io::{BufRead as _, BufReader};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{Context, Result, bail};

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
    let mut totals = cargo_test(cargo_test_args)?;
    // The README's first command, end to end, when the whole suite runs
    // (a name filter asks for particular tests only).
    if cargo_test_args.is_empty() {
        eprintln!("+ cargo xtask up --debug, then cargo xtask down");
        match crate::up::check_up_and_down() {
            Ok(()) => {
                println!("test xtask::up_and_down ... ok");
                totals.passed += 1;
            }
            Err(error) => {
                println!("test xtask::up_and_down ... FAILED: {error:#}");
                totals.failed += 1;
            }
        }
    }
    eprintln!(
        "xtask test: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    // One closing line for the whole run (cargo's last line is usually an
    // empty doc-test binary's).
    println!(
        "xtask test: {} passed, {} failed",
        totals.passed, totals.failed
    );
    if totals.failed > 0 || !totals.success {
        bail!("tests failed");
    }
    if totals.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
    success: bool,
}

/// Runs `cargo test`, echoing its output and adding up its result lines.
fn cargo_test(args: &[String]) -> Result<Totals> {
    let mut command = cargo();
    command
        .args(["test", "--no-fail-fast", "--"])
        .args(args)
        .stdout(Stdio::piped());
    eprintln!("+ cargo test --no-fail-fast -- {}", args.join(" "));
    let mut child = command.spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut totals = Totals::default();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            totals.passed += count_before(rest, " passed");
            totals.failed += count_before(rest, " failed");
        }
    }
    totals.success = child.wait().context("waiting for cargo test")?.success();
    Ok(totals)
}

/// The number just before `label` in `ok. 3 passed; 0 failed; ...`.
fn count_before(text: &str, label: &str) -> u64 {
    text.split(';')
        .find_map(|part| part.trim().strip_suffix(label))
        .and_then(|n| n.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::count_before;

    #[test]
    fn reads_cargo_result_lines() {
        let line =
            "ok. 89 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.34s";
        assert_eq!(count_before(line, " passed"), 89);
        assert_eq!(count_before(line, " failed"), 2);
        assert_eq!(count_before("FAILED. 1 passed; 3 failed;", " failed"), 3);
    }
}
