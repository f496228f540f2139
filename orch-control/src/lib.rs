//! orch-control
