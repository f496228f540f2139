//! `cargo xtask bench store`: benchmarks, run as optimized builds against
//! their anchors (installed by setup) in the same run. Not tests: they
//! print figures and ratios, they don't pass or fail on them.

use anyhow::Result;

use crate::{cargo, run_command, setup};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Bench {
    /// orch's replicated store against etcd (Debian's etcd-server).
    Store,
    /// The API of a 3-replica control plane holding 10,000 pods.
    Api,
}

pub fn run(bench: Bench, args: &[String]) -> Result<()> {
    setup::run()?;
    let name = match bench {
        Bench::Store => "store",
        Bench::Api => "api",
    };
    run_command(
        cargo()
            .args(["bench", "-p", "orch-control", "--bench", name, "--"])
            .args(args),
    )
}
