//! Subcommands that work on a replica's data directory, with no cluster
//! running: a node's client config, a restore from a snapshot.

use std::path::Path;

use anyhow::{Context, Result, bail};
use orch_control::pki::Pki;

pub fn node_config(
    data_dir: &Path,
    node_name: &str,
    servers: &[String],
    output: Option<&Path>,
) -> Result<()> {
    let problems = orch_core::names::is_dns1123_subdomain(node_name);
    if !problems.is_empty() {
        bail!("--node-name {node_name:?}: {}", problems.join("; "));
    }
    let config = Pki::new(data_dir)
        .node_config(node_name, servers)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    match output {
        None => print!("{}", config.to_yaml()),
        Some(path) => {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("--output {}", path.display()))?;
            file.write_all(config.to_yaml().as_bytes())
                .with_context(|| format!("--output {}", path.display()))?;
        }
    }
    Ok(())
}

/// Like `etcdutl snapshot restore`: the data, without the old cluster's
/// membership; nothing is written unless the snapshot verifies.
pub fn restore(file: &std::path::Path, data_dir: &std::path::Path) -> Result<()> {
    // Its errors name the snapshot file or the data directory.
    let revision = orch_control::store::restore_data_dir(file, data_dir)?;
    println!(
        "{}",
        orch_control::store::restored_message(revision, data_dir)
    );
    Ok(())
}
