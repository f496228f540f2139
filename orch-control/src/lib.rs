//! orch-control: the control plane. `store` is the replicated store (Raft
//! over redb), `api` the API server in front of it; the scheduler and
//! controllers follow; `controllers` runs the garbage collector and the
//! namespace controller on the leader.

pub mod api;
pub mod controllers;
pub mod health;
pub mod metrics;
pub mod pki;
pub mod scheduler;
pub mod store;
