//! `orch-control`: the control plane (API server, Raft store, scheduler and
//! controllers). The store and API server are the next pieces of work; until
//! they land this binary only reports that, rather than pretending to serve.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(name = "orch-control", version, about = "orch's control plane")]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "orch-control {}: the API server and store are not built yet; \
         see README.md for what works today",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
