//! orch-control: the control plane. Today: the store's state machine; the
//! API server, Raft replication, scheduler and controllers follow.

pub mod store;
