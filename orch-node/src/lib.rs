//! orch's node agent library: node registration and heartbeats, the eBPF
//! dataplane; pod runtime and networking come next.

pub mod agent;
pub mod dataplane;
pub mod files;
pub mod image;
pub mod runtime;
