//! TLS on the replication port. Replicas talk Raft, forward writes and read
//! indexes, and join through it; operators reach it for snapshots and
//! membership. Every connection is mutual TLS against the cluster CA: a
//! replica presents its peer certificate (server and client use), and
//! accepts only callers whose certificate the same CA signed. A bearer
//! token is not enough here: the port carries the store itself.

use orch_core::api::config::ClientConfig;
use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, Error)]
pub enum PeerTlsError {
    #[error(
        "the replication port takes client certificates only: the client config has no client-certificate and client-key (use the admin config the replica wrote, pki/admin.conf)"
    )]
    NoClientCertificate,
    #[error("bad replica address {addr:?}: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The client side of the replication port's TLS: the cluster CA to check
/// replicas against, and the certificate this caller presents.
#[derive(Clone, Debug)]
pub struct PeerTls {
    client: ClientTlsConfig,
}

impl PeerTls {
    /// From PEM texts: the cluster CA, and this caller's certificate and key.
    pub fn new(ca: &str, certificate: &str, key: &str) -> Self {
        Self {
            client: ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca))
                .identity(Identity::from_pem(certificate, key)),
        }
    }

    /// From a client config (orchctl's): its CA and client certificate.
    pub fn from_client_config(config: &ClientConfig) -> Result<Self, PeerTlsError> {
        match (&config.client_certificate, &config.client_key) {
            (Some(certificate), Some(key)) => {
                Ok(Self::new(&config.certificate_authority, certificate, key))
            }
            _ => Err(PeerTlsError::NoClientCertificate),
        }
    }

    /// An endpoint for the replica at `addr` (`host:port`), over TLS.
    /// Connections are long-lived and shared (one per peer), so a dead
    /// one must be noticed in seconds, not when TCP gives up: HTTP/2 pings
    /// every 5 s, even when idle, answered within 3 s.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, PeerTlsError> {
        self.endpoint_with(addr, self.client.clone())
    }

    /// An endpoint for `addr` whose certificate must name `server_name`
    /// (a node agent's names its node), whatever address it is reached at.
    pub fn endpoint_for(&self, addr: &str, server_name: &str) -> Result<Endpoint, PeerTlsError> {
        self.endpoint_with(addr, self.client.clone().domain_name(server_name))
    }

    fn endpoint_with(&self, addr: &str, tls: ClientTlsConfig) -> Result<Endpoint, PeerTlsError> {
        let address = |source| PeerTlsError::Address {
            addr: addr.to_string(),
            source,
        };
        Ok(Endpoint::from_shared(format!("https://{addr}"))
            .map_err(address)?
            .tls_config(tls)
            .map_err(address)?
            .connect_timeout(std::time::Duration::from_secs(2))
            .tcp_keepalive(Some(std::time::Duration::from_secs(30)))
            .http2_keep_alive_interval(std::time::Duration::from_secs(5))
            .keep_alive_timeout(std::time::Duration::from_secs(3))
            .keep_alive_while_idle(true))
    }
}

/// Whether a connection error's text (with its causes) says the peer's
/// certificate is not one the cluster CA signed (another cluster, or the
/// wrong CA copied), or that the peer refused ours: retrying cannot help.
/// A certificate of the right CA for another address is not that: see
/// [`wrong_name`].
pub fn untrusted_certificate(error_text: &str) -> bool {
    !wrong_name(error_text)
        && [
            "invalid peer certificate",
            "UnknownIssuer",
            "UnknownCA",
            "BadCertificate",
        ]
        .iter()
        .any(|sign| error_text.contains(sign))
}

/// Whether a connection error's text says the peer's certificate does not
/// name the address it was called at.
pub fn wrong_name(error_text: &str) -> bool {
    error_text.contains("NotValidForName") || error_text.contains("not valid for name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_name_is_not_a_foreign_ca() {
        let foreign = "transport error: invalid peer certificate: UnknownIssuer";
        let misnamed = "transport error: invalid peer certificate: certificate not valid for name \"10.0.0.9\"; certificate is only valid for DnsName(\"localhost\")";
        assert!(untrusted_certificate(foreign) && !wrong_name(foreign));
        assert!(wrong_name(misnamed) && !untrusted_certificate(misnamed));
        assert!(wrong_name("invalid peer certificate: NotValidForName"));
        assert!(!untrusted_certificate("connection refused") && !wrong_name("connection refused"));
    }
}
