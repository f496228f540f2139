//! Who may use the replication port. TLS has already checked that the
//! caller's certificate was signed by the cluster CA; that CA also signs
//! node agents', controllers' and people's certificates, so the port
//! checks the certificate's organization too (etcd keeps a CA of its own
//! for the same reason): Raft traffic only from replicas
//! (`system:orch-control`), the store and membership services also from
//! cluster administrators (`system:masters`, what `orchctl member`,
//! `snapshot save` and `cluster status` present).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The organization of a replica's peer certificate.
pub const REPLICAS: &str = "system:orch-control";
/// The organization of a cluster administrator's certificate.
pub const ADMINS: &str = "system:masters";

/// Distinct certificates remembered, so the hot path (every append and
/// forwarded write) does not parse X.509 each time.
const REMEMBERED: usize = 64;

/// An interceptor admitting certificates of the given organizations.
#[derive(Clone)]
pub struct PeerAuthorizer {
    allowed: &'static [&'static str],
    service: &'static str,
    /// Certificate DER -> its organizations.
    seen: Arc<Mutex<HashMap<Vec<u8>, Vec<String>>>>,
}

impl PeerAuthorizer {
    /// Raft's own RPCs: replicas only.
    pub fn replicas(service: &'static str) -> Self {
        Self::new(&[REPLICAS], service)
    }

    /// The store and membership: replicas and administrators.
    pub fn replicas_and_admins(service: &'static str) -> Self {
        Self::new(&[REPLICAS, ADMINS], service)
    }

    fn new(allowed: &'static [&'static str], service: &'static str) -> Self {
        Self {
            allowed,
            service,
            seen: Arc::default(),
        }
    }

    fn organizations(&self, der: &[u8]) -> Result<Vec<String>, Status> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = seen.get(der) {
            return Ok(found.clone());
        }
        let found = organizations(der)?;
        if seen.len() >= REMEMBERED {
            seen.clear();
        }
        seen.insert(der.to_vec(), found.clone());
        Ok(found)
    }
}

/// The subject's organization (O) values of a DER certificate.
pub fn organizations(der: &[u8]) -> Result<Vec<String>, Status> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    Ok(certificate
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect())
}

impl Interceptor for PeerAuthorizer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certificates = request.peer_certs().unwrap_or_default();
        let Some(leaf) = certificates.first() else {
            return Err(Status::unauthenticated(
                "the replication port takes client certificates of the cluster only",
            ));
        };
        let organizations = self.organizations(leaf.as_ref())?;
        if organizations
            .iter()
            .any(|o| self.allowed.contains(&o.as_str()))
        {
            return Ok(request);
        }
        Err(Status::permission_denied(format!(
            "a certificate of organization {} may not use the replication port's {} service (allowed: {})",
            if organizations.is_empty() {
                "(none)".to_string()
            } else {
                organizations.join(", ")
            },
            self.service,
            self.allowed.join(", ")
        )))
    }
}
