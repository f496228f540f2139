//! orch's cross-crate test support: the manifest corpus lives beside this
//! crate (`tests/manifests/`), and `linearizability` checks histories
//! recorded against the replicated store.

pub mod linearizability;
