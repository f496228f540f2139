//! orch-runtime: one libcontainer call for a pod's shim, like `runc` for
//! containerd's shim (not for people). The shim starts it from a sealed
//! copy with a unix socket as its stdin, sends the call there and reads
//! the answers (`orch_node::runtime::shim::calls`). A program of its own,
//! apart from orch-node: it runs for every container, and a third of
//! orch-node's size loads in half the time.

use std::process::ExitCode;

fn main() -> ExitCode {
    if let Err(error) = orch_node::runtime::shim::begin_sealed_with_log() {
        eprintln!("orch-runtime: {error}");
        return ExitCode::FAILURE;
    }
    match orch_node::runtime::shim::calls::serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("orch-runtime: {error}");
            ExitCode::FAILURE
        }
    }
}
