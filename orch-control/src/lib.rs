//! orch-control: API server, store, scheduler and controllers (being built).
