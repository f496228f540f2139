//! orch-tests
