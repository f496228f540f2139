//! orch's node agent library: the eBPF dataplane now; pod runtime and
//! networking come next.

pub mod dataplane;
