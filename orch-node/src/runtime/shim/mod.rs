//! Pod shims: the per-pod process that runs the pod's containers through
//! libcontainer (`server`), the agent's client of it, and their protocol.

pub mod client;
pub mod logs;
pub mod protocol;
pub mod server;
