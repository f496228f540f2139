//! Who may use the replication port: Raft traffic only from replicas
//! (`system:orch-control`), the store and membership services also from
//! cluster administrators (`system:masters`, what `orchctl member`,
//! `snapshot save` and `cluster status` present). etcd keeps a CA of its
//! own for the same reason; orch checks the organization of certificates
//! of its one cluster CA.

use orch_core::api::identity::OrganizationAuthorizer;
pub use orch_core::api::identity::{ADMINS, REPLICAS, organizations};

const PORT: &str = "the replication port";

/// Raft's own RPCs: replicas only.
pub fn replicas(service: &'static str) -> OrganizationAuthorizer {
    OrganizationAuthorizer::new(&[REPLICAS], PORT, service)
}

/// The store and membership: replicas and administrators.
pub fn replicas_and_admins(service: &'static str) -> OrganizationAuthorizer {
    OrganizationAuthorizer::new(&[REPLICAS, ADMINS], PORT, service)
}
