//! `orch-control token`: bootstrap tokens for nodes to join with
//! (`orch-node --join`), as `kubeadm token` makes them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use orch_control::pki::{ADMIN_CONFIG, Pki};

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make a bootstrap token (kubeadm token create) and print it.
    Create {
        /// A replica's data directory: its pki/ holds the admin config the
        /// token is written with and the CA whose hash a node pins.
        #[arg(long)]
        data_dir: PathBuf,
        /// How long the token is valid (`24h`, `30m`; 0: for ever).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// What the token is for, kept with it.
        #[arg(long)]
        description: Option<String>,
        /// Print the whole `orch-node --join ...` command, not only the token.
        #[arg(long)]
        print_join_command: bool,
    },
}

pub async fn run(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            data_dir,
            ttl,
            description,
            print_join_command,
        } => create(&data_dir, &ttl, description, print_join_command).await,
    }
}

/// Writes a new bootstrap token's Secret through the API (with the admin
/// config in `data_dir`) and prints the token, or the join command.
async fn create(
    data_dir: &Path,
    ttl: &str,
    description: Option<String>,
    print_join_command: bool,
) -> Result<()> {
    use orch_core::api::bootstrap::{self, BootstrapToken};
    use rustls_pki_types::pem::PemObject as _;
    let ttl = orch_core::time::parse_duration("--ttl", ttl).map_err(anyhow::Error::msg)?;
    let admin = Pki::new(data_dir).dir.join(ADMIN_CONFIG);
    let config = orch_core::api::config::ClientConfig::load(&admin)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let ca =
        rustls_pki_types::CertificateDer::from_pem_slice(config.certificate_authority.as_bytes())
            .with_context(|| format!("{}: the cluster CA", admin.display()))?;
    let token = BootstrapToken::generate()?;
    let mut data = BTreeMap::from([
        (bootstrap::TOKEN_ID.to_string(), token.id.clone()),
        (bootstrap::TOKEN_SECRET.to_string(), token.secret.clone()),
        (
            bootstrap::USAGE_AUTHENTICATION.to_string(),
            "true".to_string(),
        ),
    ]);
    if !ttl.is_zero() {
        let expires = orch_core::time::now()
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
                i64::try_from(ttl.as_secs()).context("--ttl: too long")?,
            ))
            .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
        data.insert(bootstrap::EXPIRATION.to_string(), expires.to_string());
    }
    if let Some(description) = description {
        data.insert(bootstrap::DESCRIPTION.to_string(), description);
    }
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(token.secret_name()),
            namespace: Some(bootstrap::SECRET_NAMESPACE.to_string()),
            ..Default::default()
        },
        type_: Some(bootstrap::SECRET_TYPE.to_string()),
        data: Some(
            data.into_iter()
                .map(|(key, value)| (key, k8s_openapi::ByteString(value.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    };
    let mut client = orch_core::api::ApiClient::new(&config, Duration::from_secs(20))?;
    client
        .create(&orch_core::object::Object::Secret(Box::new(secret)), false)
        .await
        .context("writing the token's Secret")?;
    if print_join_command {
        println!(
            "orch-node --join {} --token {token} --ca-cert-hash {}",
            config.servers.join(","),
            bootstrap::ca_cert_hash(&ca)
        );
    } else {
        println!("{token}");
    }
    Ok(())
}
