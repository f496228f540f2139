//! orch's cross-crate test support: the manifest corpus lives beside this
//! crate (`tests/manifests/`), `linearizability` checks histories
//! recorded against the replicated store, `netns` builds test hosts as
//! network namespaces, and `cluster` runs a whole cluster of real
//! processes on them.

pub mod cluster;
pub mod linearizability;
pub mod netns;
