//! The whole cluster on several hosts (issue 8's scenarios): control-plane
//! replicas and node agents as real processes, each host a network
//! namespace on one LAN (`orch_tests::cluster`), real containers from
//! images built on the nodes, traffic from a client host that is not a
//! node. One cluster runs at a time; each scenario bounds its waits.

mod backup_restore;
mod bad_input;
mod leftovers;
mod node_loss;
mod rolling_update;
mod scaling;
mod spread;
mod support;
