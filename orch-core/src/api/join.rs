//! A node joining with a bootstrap token, its side (kubeadm's discovery
//! and TLS bootstrap): learn the cluster CA from an API server's TLS
//! handshake, trust it only if it hashes to the pinned `--ca-cert-hash`,
//! then, over TLS verified with that CA, trade the token for a client
//! certificate. Whoever answers without the cluster's CA key cannot pass
//! the second step, so the first needs no trust.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;
use tonic::transport::Endpoint;

use super::bootstrap::{BootstrapToken, ca_cert_hash};
use super::config::ClientConfig;
use super::proto::JoinNodeRequest;
use super::proto::bootstrap_client::BootstrapClient;

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("--join: no API server given")]
    NoServer,
    #[error("{server}: {reason}")]
    Unreachable { server: String, reason: String },
    #[error(
        "{server}: the cluster CA it presented does not match --ca-cert-hash {pinned} (it presented {presented:?}): refusing to trust it"
    )]
    CaMismatch {
        server: String,
        pinned: String,
        presented: Vec<String>,
    },
    #[error("{server} refused to join node {node:?}: {message}")]
    Refused {
        server: String,
        node: String,
        message: String,
    },
}

/// Accepts any server certificate: used only to read the chain the server
/// presents, which is then pinned by hash (signatures are still checked,
/// so the handshake is with the holder of the leaf's key).
#[derive(Debug)]
struct ReadChainOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for ReadChainOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate of `server`'s presented chain that hashes to `pinned`.
async fn pinned_ca(server: &str, pinned: &str) -> Result<Vec<u8>, JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        server: server.to_string(),
        reason,
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(server),
    )
    .await
    .map_err(|_| unreachable("no answer within 5 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let host = server
        .rsplit_once(':')
        .map_or(server, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| unreachable(format!("{host:?}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| unreachable(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReadChainOnly(provider)))
        .with_no_client_auth();
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable("no TLS handshake within 5 s".into()))?
    .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    let presented: Vec<String> = chain.iter().map(|c| ca_cert_hash(c)).collect();
    match chain
        .iter()
        .zip(&presented)
        .find(|(_, hash)| *hash == pinned)
    {
        Some((certificate, _)) => Ok(certificate.to_vec()),
        None => Err(JoinError::CaMismatch {
            server: server.to_string(),
            pinned: pinned.to_string(),
            presented,
        }),
    }
}

/// PEM text of a DER certificate.
fn pem(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str("-----END CERTIFICATE-----\n");
    text
}

/// Joins `node` to the cluster whose API servers are `servers`: the
/// client config the agent then runs with (those servers, the CA, the
/// node's new certificate and key). The servers are tried in order until
/// one answers; a CA that does not match `pinned` or a refused token ends
/// the attempt at once.
pub async fn join_node(
    servers: &[String],
    token: &BootstrapToken,
    pinned: &str,
    node: &str,
) -> Result<ClientConfig, JoinError> {
    let mut last = JoinError::NoServer;
    for server in servers {
        let ca = match pinned_ca(server, pinned).await {
            Ok(ca) => pem(&ca),
            Err(error @ JoinError::Unreachable { .. }) => {
                last = error;
                continue;
            }
            Err(error) => return Err(error),
        };
        let trusted = ClientConfig {
            servers: vec![server.clone()],
            certificate_authority: ca.clone(),
            client_certificate: None,
            client_key: None,
            token: None,
        };
        let unreachable = |reason: String| JoinError::Unreachable {
            server: server.clone(),
            reason,
        };
        let channel = Endpoint::from_shared(format!("https://{server}"))
            .and_then(|endpoint| endpoint.tls_config(trusted.tls()))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => {
                last = unreachable(super::error_chain(&error));
                continue;
            }
        };
        let reply = BootstrapClient::new(channel)
            .join_node(JoinNodeRequest {
                token: token.to_string(),
                node_name: node.to_string(),
            })
            .await;
        return match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                Ok(ClientConfig {
                    servers: servers.to_vec(),
                    certificate_authority: ca,
                    client_certificate: Some(
                        String::from_utf8_lossy(&reply.client_certificate).into_owned(),
                    ),
                    client_key: Some(String::from_utf8_lossy(&reply.client_key).into_owned()),
                    token: None,
                })
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                last = unreachable(status.message().to_string());
                continue;
            }
            Err(status) => Err(JoinError::Refused {
                server: server.clone(),
                node: node.to_string(),
                message: status.message().to_string(),
            }),
        };
    }
    Err(last)
}
