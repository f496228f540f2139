//! orch's node agent library: node registration and heartbeats, pods
//! (runtime, images), their network (`net`) and the eBPF dataplane.

pub mod agent;
pub mod dataplane;
pub mod files;
pub mod image;
pub mod net;
pub mod runtime;
