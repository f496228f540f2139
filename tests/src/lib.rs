//! orch's cross-crate test support: the manifest corpus lives beside this
//! crate (`tests/manifests/`), `linearizability` checks histories
//! recorded against the replicated store, and `netns` builds test hosts
//! as network namespaces.

pub mod linearizability;
pub mod netns;
