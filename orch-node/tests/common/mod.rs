//! Helpers shared by orch-node's integration tests (those of every
//! crate's tests live in orch-tests).
#![allow(unused_imports)]

pub use orch_tests::netns::{in_netns, run};
#[allow(dead_code)] // each test binary uses a part
pub mod shim;
