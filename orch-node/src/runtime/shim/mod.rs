//! Pod shims: the per-pod process that runs the pod's containers through
//! libcontainer (`server`, `exec`), the agent's client of it, and their
//! protocol (`protocol`, framed by `wire`).

pub mod client;
pub mod exec;
pub mod logs;
pub mod protocol;
pub mod server;
pub mod wire;
