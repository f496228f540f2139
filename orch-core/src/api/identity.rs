//! Who a client certificate says its holder is, Kubernetes' way: the
//! common name is the user, each organization a group. TLS has already
//! checked the certificate was signed by the cluster CA; that CA signs
//! replicas', node agents', controllers' and people's certificates alike,
//! so a port that only some of them may use checks the organization too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The organization of a control-plane replica's peer certificate.
pub const REPLICAS: &str = "system:orch-control";
/// The organization of a cluster administrator's certificate.
pub const ADMINS: &str = "system:masters";
/// The organization of a node agent's certificate.
pub const NODES: &str = "system:nodes";

/// Where node agents' serving names live: a node's certificate names
/// `<node>.nodes.orch.internal`, never the node's bare name, so no node
/// (whatever it is called: an IP address, a replica's host name) holds a
/// certificate valid for an API server's or a replica's address.
pub const NODE_SERVING_DOMAIN: &str = "nodes.orch.internal";

/// The name a node agent's serving certificate holds, and the API servers
/// check when they call it.
pub fn node_serving_name(node: &str) -> String {
    format!("{node}.{NODE_SERVING_DOMAIN}")
}

/// Distinct certificates remembered, so a hot path (every Raft append)
/// does not parse X.509 each time.
const REMEMBERED: usize = 64;

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

/// An interceptor admitting client certificates of the given organizations.
#[derive(Clone)]
pub struct OrganizationAuthorizer {
    allowed: &'static [&'static str],
    /// The port, for messages: "the replication port".
    port: &'static str,
    service: &'static str,
    /// Certificate DER -> its organizations.
    seen: Arc<Mutex<HashMap<Vec<u8>, Vec<String>>>>,
}

impl OrganizationAuthorizer {
    pub fn new(
        allowed: &'static [&'static str],
        port: &'static str,
        service: &'static str,
    ) -> Self {
        Self {
            allowed,
            port,
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

impl Interceptor for OrganizationAuthorizer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let certificates = request.peer_certs().unwrap_or_default();
        let Some(leaf) = certificates.first() else {
            return Err(Status::unauthenticated(format!(
                "{} takes client certificates of the cluster only",
                self.port
            )));
        };
        let organizations = self.organizations(leaf.as_ref())?;
        if organizations
            .iter()
            .any(|o| self.allowed.contains(&o.as_str()))
        {
            return Ok(request);
        }
        Err(Status::permission_denied(format!(
            "a certificate of organization {} may not use {}'s {} service (allowed: {})",
            if organizations.is_empty() {
                "(none)".to_string()
            } else {
                organizations.join(", ")
            },
            self.port,
            self.service,
            self.allowed.join(", ")
        )))
    }
}
