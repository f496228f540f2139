//! The client config file (orch's kubeconfig): where the API servers are,
//! the cluster CA to trust, and the caller's credentials (a client
//! certificate and key, or a bearer token). `orch-control --init` writes one
//! for the admin (`<data-dir>/pki/admin.conf`); orchctl reads `--config`,
//! then ORCH_CONFIG, then ~/.orch/config.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// API servers, `host:port`, any replica.
    pub servers: Vec<String>,
    /// The cluster CA certificate, PEM.
    pub certificate_authority: String,
    /// The caller's certificate and key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// A bearer token (from the API server's token file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a client config: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no client config: give --config FILE, set ORCH_CONFIG, or create ~/.orch/config (orch-control --init writes DATA_DIR/pki/admin.conf)"
    )]
    Missing,
}

impl ClientConfig {
    pub fn to_yaml(&self) -> String {
        // A struct of strings always serializes.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let config: ClientConfig =
            serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if config.servers.is_empty() {
            return Err(invalid("servers: at least one server is required".into()));
        }
        if !config.certificate_authority.contains("BEGIN CERTIFICATE") {
            return Err(invalid(
                "certificate-authority: not a PEM certificate".into(),
            ));
        }
        if config.client_certificate.is_some() != config.client_key.is_some() {
            return Err(invalid(
                "client-certificate and client-key go together".into(),
            ));
        }
        Ok(config)
    }

    /// `explicit`, else ORCH_CONFIG, else ~/.orch/config.
    pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
        if let Some(path) = explicit {
            return Ok(path.to_path_buf());
        }
        if let Some(path) = std::env::var_os("ORCH_CONFIG").filter(|p| !p.is_empty()) {
            return Ok(PathBuf::from(path));
        }
        let home = std::env::var_os("HOME").ok_or(ConfigError::Missing)?;
        let path = PathBuf::from(home).join(".orch").join("config");
        if path.exists() {
            Ok(path)
        } else {
            Err(ConfigError::Missing)
        }
    }

    /// TLS for a channel to the API: trust the cluster CA, present the
    /// client certificate when there is one.
    pub fn tls(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(&self.certificate_authority),
        );
        if let (Some(cert), Some(key)) = (&self.client_certificate, &self.client_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        tls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_what_it_saves_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        let config = ClientConfig {
            servers: vec!["127.0.0.1:6443".into()],
            certificate_authority: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"
                .into(),
            client_certificate: None,
            client_key: None,
            token: Some("secret".into()),
        };
        std::fs::write(&path, config.to_yaml()).expect("write");
        assert_eq!(ClientConfig::load(&path).expect("load"), config);

        std::fs::write(&path, "servers: []\ncertificate-authority: x\n").expect("write");
        let error = ClientConfig::load(&path).expect_err("no servers");
        assert!(
            error.to_string().contains("servers: at least one"),
            "{error}"
        );
        std::fs::write(
            &path,
            "servers: [a]\ncertificate-authority: x\nclusters: 1\n",
        )
        .expect("write");
        let error = ClientConfig::load(&path).expect_err("unknown field");
        assert!(
            error.to_string().contains("unknown field `clusters`"),
            "{error}"
        );
    }
}
