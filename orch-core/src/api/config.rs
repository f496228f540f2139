//! The client config file (orch's kubeconfig): where the API servers are,
//! the cluster CA to trust, and the caller's credentials (a client
//! certificate and key, or a bearer token). `orch-control --init` writes one
//! for the admin (`<data-dir>/pki/admin.conf`); orchctl reads `--config`,
//! then ORCH_CONFIG, then ~/.orch/config.
//!
//! A file holds either one config (the fields at the top level) or several
//! named ones (kubectl's contexts):
//!
//! ```yaml
//! current-context: prod
//! contexts:
//!   - name: prod
//!     servers: [10.0.0.1:6443]
//!     certificate-authority: ...
//!     client-certificate: ...
//!     client-key: ...
//!   - name: lab
//!     ...
//! ```
//!
//! and [`ClientConfig::load`] gives the current context's.

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

    /// Writes the config to `path`, readable by its owner only (it holds
    /// a key), whole or not at all.
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        write_private_atomically(path, &self.to_yaml()).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The config in `path`: the file's own, or its current context's.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = ConfigFile::load(path)?;
        match file.contexts {
            None => file.single.ok_or_else(|| ConfigError::Invalid {
                path: path.to_path_buf(),
                reason: "empty".into(),
            }),
            Some(contexts) => {
                let current = file.current_context.ok_or_else(|| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    reason: "current-context: required with contexts".into(),
                })?;
                contexts
                    .into_iter()
                    .find(|c| c.name == current)
                    .map(|c| c.config)
                    .ok_or_else(|| ConfigError::Invalid {
                        path: path.to_path_buf(),
                        reason: format!("current-context: no context named {current:?}"),
                    })
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("servers: at least one server is required".into());
        }
        if !self.certificate_authority.contains("BEGIN CERTIFICATE") {
            return Err("certificate-authority: not a PEM certificate".into());
        }
        if self.client_certificate.is_some() != self.client_key.is_some() {
            return Err("client-certificate and client-key go together".into());
        }
        Ok(())
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

/// One named config of a file with several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct NamedContext {
    pub name: String,
    #[serde(flatten)]
    pub config: ClientConfig,
}

/// A client config file as written: one config, or named contexts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigFile {
    pub current_context: Option<String>,
    pub contexts: Option<Vec<NamedContext>>,
    /// The file's config when it has no contexts.
    pub single: Option<ClientConfig>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ContextsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    current_context: Option<String>,
    contexts: Vec<NamedContext>,
}

impl ConfigFile {
    /// Reads and checks every config in `path` (errors name the context).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if value.get("contexts").is_some() {
            let file: ContextsFile =
                serde_yaml_ng::from_value(value).map_err(|e| invalid(e.to_string()))?;
            let mut names = std::collections::BTreeSet::new();
            for context in &file.contexts {
                if !names.insert(context.name.as_str()) {
                    return Err(invalid(format!("contexts: {:?} twice", context.name)));
                }
                context
                    .config
                    .check()
                    .map_err(|reason| invalid(format!("contexts[{}]: {reason}", context.name)))?;
            }
            return Ok(Self {
                current_context: file.current_context,
                contexts: Some(file.contexts),
                single: None,
            });
        }
        let config: ClientConfig =
            serde_yaml_ng::from_value(value).map_err(|e| invalid(e.to_string()))?;
        config.check().map_err(invalid)?;
        Ok(Self {
            single: Some(config),
            ..Self::default()
        })
    }

    /// Makes `name` the current context and rewrites `path` (a temporary
    /// file renamed over it: a crash leaves the old file or the new one).
    pub fn use_context(&mut self, path: &Path, name: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let Some(contexts) = &self.contexts else {
            return Err(invalid(format!(
                "no contexts in this file, so no context {name:?} (it holds one config)"
            )));
        };
        if !contexts.iter().any(|c| c.name == name) {
            let known: Vec<&str> = contexts.iter().map(|c| c.name.as_str()).collect();
            return Err(invalid(format!(
                "no context named {name:?} (contexts: {})",
                known.join(", ")
            )));
        }
        self.current_context = Some(name.to_string());
        let text = serde_yaml_ng::to_string(&ContextsFile {
            current_context: self.current_context.clone(),
            contexts: contexts.clone(),
        })
        .map_err(|e| invalid(e.to_string()))?;
        write_private_atomically(path, &text).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Writes `text` to a temporary file beside `path` (owner-only), syncs it
/// and renames it over `path`.
fn write_private_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("orch-tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
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
        // Saved: owner-only, and loads back the same.
        let saved = dir.path().join("saved");
        config.save(&saved).expect("save");
        assert_eq!(ClientConfig::load(&saved).expect("load"), config);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&saved)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

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

    #[test]
    fn contexts_switch_and_name_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        let ca = "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n";
        let context = |name: &str, server: &str| {
            format!(
                "  - name: {name}\n    servers: [{server}]\n    certificate-authority: {ca:?}\n    token: t\n"
            )
        };
        std::fs::write(
            &path,
            format!(
                "current-context: prod\ncontexts:\n{}{}",
                context("prod", "10.0.0.1:6443"),
                context("lab", "127.0.0.1:6443")
            ),
        )
        .expect("write");
        assert_eq!(
            ClientConfig::load(&path).expect("load").servers,
            ["10.0.0.1:6443"]
        );
        let mut file = ConfigFile::load(&path).expect("file");
        let error = file.use_context(&path, "staging").expect_err("unknown");
        assert!(
            error
                .to_string()
                .contains("no context named \"staging\" (contexts: prod, lab)"),
            "{error}"
        );
        file.use_context(&path, "lab").expect("switch");
        assert_eq!(
            ClientConfig::load(&path).expect("load").servers,
            ["127.0.0.1:6443"]
        );
        // The rewritten file keeps every context.
        assert_eq!(
            ConfigFile::load(&path)
                .expect("file")
                .contexts
                .map(|c| c.len()),
            Some(2)
        );
        std::fs::write(
            &path,
            format!(
                "current-context: gone\ncontexts:\n{}",
                context("prod", "a:1")
            ),
        )
        .expect("write");
        let error = ClientConfig::load(&path).expect_err("dangling current");
        assert!(
            error.to_string().contains("no context named \"gone\""),
            "{error}"
        );
        std::fs::write(
            &path,
            "contexts:\n  - name: bad\n    servers: []\n    certificate-authority: x\n",
        )
        .expect("write");
        let error = ConfigFile::load(&path).expect_err("bad context");
        assert!(
            error.to_string().contains("contexts[bad]: servers"),
            "{error}"
        );
    }
}
