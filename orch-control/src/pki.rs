//! The cluster's certificates, in `<data-dir>/pki/` (like kubeadm's
//! /etc/kubernetes/pki): a CA made by `--init`, each replica's API serving
//! certificate signed by it, and an admin client certificate with the
//! client config file (`admin.conf`) that orchctl reads, and each
//! replica's peer certificate for the replication port (mutual TLS between
//! replicas; see `store::raft::peer_tls`).
//!
//! A replica joining the cluster needs the CA first: copy `pki/ca.crt` and
//! `pki/ca.key` from an existing replica into its data directory, as with
//! kubeadm's manual certificate distribution; it then signs its own serving
//! certificate.

use std::path::{Path, PathBuf};

use orch_core::api::config::ClientConfig;

use crate::store::raft::peer_tls::PeerTls;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const SERVER_CERT: &str = "apiserver.crt";
pub const SERVER_KEY: &str = "apiserver.key";
pub const PEER_CERT: &str = "peer.crt";
pub const PEER_KEY: &str = "peer.key";
pub const ADMIN_CONFIG: &str = "admin.conf";

#[derive(Debug, Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error(
        "{dir}: no cluster CA ({CA_CERT} and {CA_KEY}); copy them from an existing replica's pki directory before joining"
    )]
    NoCa { dir: PathBuf },
    #[error("{path}: {reason}; remove it (and its key) to have a new one signed")]
    Unreadable { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_path_buf();
    move |source| PkiError::Io { path, source }
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Writes a file readable by its owner only (keys, configs with keys).
fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write_atomic(path, text, 0o600)
}

/// Writes `path` whole or not at all: a temporary file beside it, synced,
/// then renamed over it.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io(path))
}

/// Writes a serving certificate and its key. The key goes first: a crash
/// between the two leaves the old certificate, which does not name the
/// new hosts (or is missing), so the next start signs the pair again.
fn write_pair(cert_path: &Path, cert: &str, key_path: &Path, key: &str) -> Result<(), PkiError> {
    write_private(key_path, key)?;
    write_atomic(cert_path, cert, 0o644)
}

/// The current year (for validity bounds: January 1st, some years on).
fn this_year() -> i32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (seconds / 31_556_952) as i32
}

/// What `current` needs to know of a PEM certificate.
struct CertificateFacts {
    /// The DNS names and IP addresses it is valid for.
    names: Vec<String>,
    /// Its subject public key (raw bits).
    public_key: Vec<u8>,
    /// When it expires, seconds since the epoch.
    not_after: i64,
}

fn certificate_facts(pem: &str) -> Result<CertificateFacts, String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not PEM: {e}"))?;
    let certificate = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let alternative = certificate
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative names: {e}"))?;
    let mut names = Vec::new();
    for name in alternative.iter().flat_map(|ext| &ext.value.general_names) {
        match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                    16 => <[u8; 16]>::try_from(*bytes)
                        .map(std::net::IpAddr::from)
                        .ok(),
                    _ => None,
                };
                names.extend(ip.map(|ip| ip.to_string()));
            }
            _ => {}
        }
    }
    Ok(CertificateFacts {
        names,
        public_key: certificate.public_key().subject_public_key.data.to_vec(),
        not_after: certificate.validity().not_after.timestamp(),
    })
}

/// The DNS names and IP addresses a PEM certificate is valid for.
#[cfg(test)]
fn names_of(pem: &str) -> Result<Vec<String>, String> {
    certificate_facts(pem).map(|facts| facts.names)
}

/// A serving certificate this close to expiry is signed anew at start.
const RENEW_BEFORE_SECONDS: i64 = 30 * 24 * 3600;

fn named(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    if let Some(organization) = organization {
        name.push(DnType::OrganizationName, organization);
    }
    name
}

/// The certificates of one replica's data directory.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("pki"),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn has_ca(&self) -> bool {
        self.path(CA_CERT).exists() && self.path(CA_KEY).exists()
    }

    /// Makes a new cluster CA (10 years) and an admin client certificate.
    pub fn create_ca(&self) -> Result<(), PkiError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = named("orch-ca", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(this_year() + 10, 1, 1);
        let certificate = params.self_signed(&key)?;
        std::fs::write(self.path(CA_CERT), certificate.pem()).map_err(io(&self.path(CA_CERT)))?;
        write_private(&self.path(CA_KEY), &key.serialize_pem())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        if !self.has_ca() {
            return Err(PkiError::NoCa {
                dir: self.dir.clone(),
            });
        }
        let key = KeyPair::from_pem(&read(&self.path(CA_KEY))?)?;
        Ok(Issuer::from_ca_cert_pem(&read(&self.path(CA_CERT))?, key)?)
    }

    /// Signs a certificate (1 year) for `common_name`; returns (cert, key)
    /// PEM. `hosts` become subject alternative names of a serving cert.
    fn sign(
        &self,
        common_name: &str,
        organization: Option<&str>,
        hosts: &[String],
        usages: &[ExtendedKeyUsagePurpose],
    ) -> Result<(String, String), PkiError> {
        let issuer = self.issuer()?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = named(common_name, organization);
        params.subject_alt_names = hosts
            .iter()
            .map(|host| match host.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(host.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages.to_vec();
        params.not_after = rcgen::date_time_ymd(this_year() + 2, 1, 1);
        let certificate = params.signed_by(&key, &issuer)?;
        Ok((certificate.pem(), key.serialize_pem()))
    }

    /// Whether the serving certificate `cert` (with its `key`) exists and
    /// names every one of `hosts`. One that does not (the replica now
    /// listens on another address) is signed anew, as a new one would be.
    fn current(&self, cert: &str, key: &str, hosts: &[String]) -> Result<bool, PkiError> {
        let (cert_path, key_path) = (self.path(cert), self.path(key));
        if !cert_path.exists() || !key_path.exists() {
            return Ok(false);
        }
        let pem = read(&cert_path)?;
        let facts = certificate_facts(&pem).map_err(|reason| PkiError::Unreadable {
            path: cert_path.clone(),
            reason,
        })?;
        let missing: Vec<&String> = hosts.iter().filter(|h| !facts.names.contains(h)).collect();
        if !missing.is_empty() {
            tracing::info!(certificate = %cert_path.display(), ?missing, "the certificate does not name this replica's address; signing a new one");
            return Ok(false);
        }
        // A key that is not the certificate's (a crash between writing
        // the two) or an expiring certificate: signed anew too.
        let key_matches = KeyPair::from_pem(&read(&key_path)?)
            .is_ok_and(|key| key.public_key_raw() == facts.public_key.as_slice());
        if !key_matches {
            tracing::info!(certificate = %cert_path.display(), "the key on disk is not the certificate's; signing a new pair");
            return Ok(false);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if facts.not_after - now < RENEW_BEFORE_SECONDS {
            tracing::info!(certificate = %cert_path.display(), "the certificate expires within 30 days; signing a new one");
            return Ok(false);
        }
        Ok(true)
    }

    /// Makes this replica's API serving certificate, for `hosts` (its
    /// addresses and names), when it has none naming them all yet.
    pub fn ensure_server_certificate(&self, hosts: &[String]) -> Result<(), PkiError> {
        if self.current(SERVER_CERT, SERVER_KEY, hosts)? {
            return Ok(());
        }
        let (cert, key) = self.sign(
            "orch-apiserver",
            None,
            hosts,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        write_pair(&self.path(SERVER_CERT), &cert, &self.path(SERVER_KEY), &key)
    }

    /// Makes this replica's peer certificate for the replication port, for
    /// `hosts`, when it has none naming them all yet. It serves that port and is presented
    /// when this replica calls another, so it carries both usages.
    pub fn ensure_peer_certificate(&self, hosts: &[String]) -> Result<(), PkiError> {
        if self.current(PEER_CERT, PEER_KEY, hosts)? {
            return Ok(());
        }
        let (cert, key) = self.sign(
            "orch-control-peer",
            Some(crate::store::raft::peer_auth::REPLICAS),
            hosts,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write_pair(&self.path(PEER_CERT), &cert, &self.path(PEER_KEY), &key)
    }

    /// A peer identity for calls made before this replica may write to its
    /// data directory (asking a seed which cluster it serves): the stored
    /// peer certificate, or else one signed in memory and never written.
    pub fn caller_tls(&self) -> Result<PeerTls, PkiError> {
        if self.path(PEER_CERT).exists() && self.path(PEER_KEY).exists() {
            return self.peer_tls();
        }
        let (cert, key) = self.sign(
            "orch-control-peer",
            Some(crate::store::raft::peer_auth::REPLICAS),
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        Ok(PeerTls::new(&read(&self.path(CA_CERT))?, &cert, &key))
    }

    /// This replica's side of the replication port as a caller.
    pub fn peer_tls(&self) -> Result<PeerTls, PkiError> {
        Ok(PeerTls::new(
            &read(&self.path(CA_CERT))?,
            &read(&self.path(PEER_CERT))?,
            &read(&self.path(PEER_KEY))?,
        ))
    }

    /// The replication port's TLS: the peer certificate, and a client
    /// certificate signed by the cluster CA required of every caller.
    pub fn peer_server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        let identity = tonic::transport::Identity::from_pem(
            read(&self.path(PEER_CERT))?,
            read(&self.path(PEER_KEY))?,
        );
        let ca = tonic::transport::Certificate::from_pem(read(&self.path(CA_CERT))?);
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(false))
    }

    /// Writes `admin.conf`: the API servers, the CA and an admin client
    /// certificate, for orchctl (`--config`, ORCH_CONFIG, ~/.orch/config).
    pub fn write_admin_config(&self, servers: &[String]) -> Result<PathBuf, PkiError> {
        let config = self.component_config(
            "admin",
            Some(crate::store::raft::peer_auth::ADMINS),
            servers,
        )?;
        let path = self.path(ADMIN_CONFIG);
        write_private(&path, &config.to_yaml())?;
        Ok(path)
    }

    /// A client config for the API servers at `servers`, with a new client
    /// certificate for `common_name` (in memory: nothing is written).
    pub fn component_config(
        &self,
        common_name: &str,
        organization: Option<&str>,
        servers: &[String],
    ) -> Result<ClientConfig, PkiError> {
        let (cert, key) = self.sign(
            common_name,
            organization,
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )?;
        Ok(ClientConfig {
            servers: servers.to_vec(),
            certificate_authority: read(&self.path(CA_CERT))?,
            client_certificate: Some(cert),
            client_key: Some(key),
            token: None,
        })
    }

    /// A node agent's client config: a certificate for
    /// `system:node:<name>` (organization `system:nodes`) that also serves
    /// the agent's port and names the node, which is what the API server
    /// checks when it calls the node for logs and exec.
    pub fn node_config(
        &self,
        node_name: &str,
        servers: &[String],
    ) -> Result<ClientConfig, PkiError> {
        let (cert, key) = self.sign(
            &format!("system:node:{node_name}"),
            Some(orch_core::api::identity::NODES),
            &[orch_core::api::identity::node_serving_name(node_name)],
            &[
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
        )?;
        Ok(ClientConfig {
            servers: servers.to_vec(),
            certificate_authority: read(&self.path(CA_CERT))?,
            client_certificate: Some(cert),
            client_key: Some(key),
            token: None,
        })
    }

    /// The serving identity and the CA, for the API server's TLS.
    pub fn server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        // The chain names the CA too: a node joining with a bootstrap
        // token learns it from the handshake and pins it by hash.
        let ca_pem = read(&self.path(CA_CERT))?;
        let identity = tonic::transport::Identity::from_pem(
            format!("{}\n{ca_pem}", read(&self.path(SERVER_CERT))?.trim_end()),
            read(&self.path(SERVER_KEY))?,
        );
        let ca = tonic::transport::Certificate::from_pem(ca_pem);
        // Client certificates are checked against the CA when presented;
        // callers without one must bring a bearer token (checked per call).
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_serving_certificate_follows_the_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path());
        pki.create_ca().expect("ca");
        pki.ensure_peer_certificate(&hosts(&["localhost", "10.1.0.1"]))
            .expect("first");
        let first = read(&pki.path(PEER_CERT)).expect("cert");
        let named = names_of(&first).expect("names");
        assert!(named.contains(&"10.1.0.1".to_string()), "{named:?}");
        assert!(named.contains(&"localhost".to_string()), "{named:?}");

        // Same address: kept as is.
        pki.ensure_peer_certificate(&hosts(&["localhost", "10.1.0.1"]))
            .expect("again");
        assert_eq!(read(&pki.path(PEER_CERT)).expect("cert"), first);

        // A key that is not the certificate's: the pair is signed anew.
        std::fs::copy(pki.path(PEER_KEY), dir.path().join("first.key")).expect("keep key");
        pki.ensure_server_certificate(&hosts(&["localhost"]))
            .expect("server");
        std::fs::copy(pki.path(SERVER_KEY), pki.path(PEER_KEY)).expect("wrong key");
        pki.ensure_peer_certificate(&hosts(&["localhost", "10.1.0.1"]))
            .expect("repaired");
        let repaired = read(&pki.path(PEER_CERT)).expect("cert");
        assert_ne!(repaired, first, "a mismatched pair was kept");

        // Another address: signed anew, with a key that matches it.
        pki.ensure_peer_certificate(&hosts(&["localhost", "10.1.0.2"]))
            .expect("moved");
        let second = read(&pki.path(PEER_CERT)).expect("cert");
        assert_ne!(second, first);
        assert!(
            names_of(&second)
                .expect("names")
                .contains(&"10.1.0.2".to_string())
        );
        let key = KeyPair::from_pem(&read(&pki.path(PEER_KEY)).expect("key")).expect("key pem");
        let (_, pem) = x509_parser::pem::parse_x509_pem(second.as_bytes()).expect("pem");
        let certificate = pem.parse_x509().expect("x509");
        assert_eq!(
            certificate.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the key on disk is the certificate's"
        );
        assert!(!pki.path("peer.crt.tmp").exists());
    }

    #[test]
    fn an_unreadable_certificate_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pki = Pki::new(dir.path());
        pki.create_ca().expect("ca");
        std::fs::write(pki.path(SERVER_CERT), "garbage").expect("write");
        std::fs::write(pki.path(SERVER_KEY), "garbage").expect("write");
        let error = pki
            .ensure_server_certificate(&hosts(&["localhost"]))
            .expect_err("garbage is refused");
        let text = error.to_string();
        assert!(
            text.contains(SERVER_CERT) && text.contains("not PEM"),
            "{text}"
        );
        assert_eq!(
            std::fs::read_to_string(pki.path(SERVER_CERT)).expect("read"),
            "garbage",
            "nothing was overwritten"
        );
    }
}
