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
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

/// The current year (for validity bounds: January 1st, some years on).
fn this_year() -> i32 {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    1970 + (seconds / 31_556_952) as i32
}

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

    /// Makes this replica's API serving certificate, for `hosts` (its
    /// addresses and names), when it has none yet.
    pub fn ensure_server_certificate(&self, hosts: &[String]) -> Result<(), PkiError> {
        if self.path(SERVER_CERT).exists() && self.path(SERVER_KEY).exists() {
            return Ok(());
        }
        let (cert, key) = self.sign(
            "orch-apiserver",
            None,
            hosts,
            &[ExtendedKeyUsagePurpose::ServerAuth],
        )?;
        write_private(&self.path(SERVER_KEY), &key)?;
        std::fs::write(self.path(SERVER_CERT), cert).map_err(io(&self.path(SERVER_CERT)))
    }

    /// Makes this replica's peer certificate for the replication port, for
    /// `hosts`, when it has none yet. It serves that port and is presented
    /// when this replica calls another, so it carries both usages.
    pub fn ensure_peer_certificate(&self, hosts: &[String]) -> Result<(), PkiError> {
        if self.path(PEER_CERT).exists() && self.path(PEER_KEY).exists() {
            return Ok(());
        }
        let (cert, key) = self.sign(
            "orch-control-peer",
            Some("system:orch-control"),
            hosts,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write_private(&self.path(PEER_KEY), &key)?;
        std::fs::write(self.path(PEER_CERT), cert).map_err(io(&self.path(PEER_CERT)))
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
            Some("system:orch-control"),
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
        let config = self.component_config("admin", Some("system:masters"), servers)?;
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

    /// The serving identity and the CA, for the API server's TLS.
    pub fn server_tls(&self) -> Result<tonic::transport::ServerTlsConfig, PkiError> {
        let identity = tonic::transport::Identity::from_pem(
            read(&self.path(SERVER_CERT))?,
            read(&self.path(SERVER_KEY))?,
        );
        let ca = tonic::transport::Certificate::from_pem(read(&self.path(CA_CERT))?);
        // Client certificates are checked against the CA when presented;
        // callers without one must bring a bearer token (checked per call).
        Ok(tonic::transport::ServerTlsConfig::new()
            .identity(identity)
            .client_ca_root(ca)
            .client_auth_optional(true))
    }
}
