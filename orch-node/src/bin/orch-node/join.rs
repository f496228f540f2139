//! `orch-node --join SERVERS --token T --ca-cert-hash H`: the node's client
//! config made from a bootstrap token the first time the agent starts
//! (kubeadm join's TLS bootstrap), kept for every start after.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use orch_core::api::bootstrap::{BootstrapToken, parse_ca_cert_hash};

#[derive(Args)]
pub struct JoinArgs {
    /// Join the cluster whose API servers these are (host:port,
    /// comma-separated): the agent gets its client config with the
    /// bootstrap token and keeps it at --config (default:
    /// <state-dir>/node.conf); once there, it is used as it is.
    #[arg(long, value_delimiter = ',', requires_all = ["token", "ca_cert_hash"])]
    pub join: Vec<String>,
    /// A bootstrap token (`orch-control token create`).
    #[arg(
        long,
        requires = "join",
        env = "ORCH_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// `sha256:<hex>` of the cluster CA certificate (printed by `orch-control
    /// token create --print-join-command`): the only CA the node trusts.
    #[arg(long, requires = "join")]
    pub ca_cert_hash: Option<String>,
}

/// Where the agent's client config is: --config, else <state-dir>/node.conf
/// when joining, else where orchctl would look.
pub fn config_path(config: Option<&Path>, join: &JoinArgs, state_dir: &Path) -> Result<PathBuf> {
    match config {
        Some(path) => Ok(path.to_path_buf()),
        None if !join.join.is_empty() => Ok(state_dir.join("node.conf")),
        None => orch_core::api::config::ClientConfig::locate(None)
            .context("--config: the client config for the API servers (or --join)"),
    }
}

/// Joins (when asked and not done before): writes the config at `path`.
pub fn join_if_new(join: &JoinArgs, node_name: &str, path: &Path) -> Result<()> {
    if join.join.is_empty() || path.exists() {
        return Ok(());
    }
    let token =
        BootstrapToken::parse(join.token.as_deref().unwrap_or_default()).context("--token")?;
    let pinned = parse_ca_cert_hash(join.ca_cert_hash.as_deref().unwrap_or_default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime for joining")?;
    let config = runtime
        .block_on(orch_core::api::join::join_node(
            &join.join, &token, &pinned, node_name,
        ))
        .context("--join")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    }
    config.save(path).context("--config")?;
    tracing::info!(config = %path.display(), "joined the cluster");
    Ok(())
}
