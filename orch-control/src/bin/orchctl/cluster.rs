//! The control plane's replicas themselves, over their replication ports
//! (mutual TLS with the client config's certificate): snapshots, members,
//! cluster status; and restoring a snapshot into a new data directory.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::objects;

/// Where the replication ports are, and the credentials for them: the
/// client certificate of the client config (a token does not open them).
#[derive(clap::Args)]
pub struct PeerArgs {
    /// Control-plane replicas' replication ports (`host:port`, their
    /// --listen), tried in order.
    #[arg(long = "server", required = true, value_delimiter = ',')]
    pub servers: Vec<String>,
    /// Client config file with the cluster CA and a client certificate
    /// (default: ORCH_CONFIG, then ~/.orch/config).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl PeerArgs {
    fn tls(&self) -> Result<orch_control::store::raft::peer_tls::PeerTls> {
        let path = orch_core::api::config::ClientConfig::locate(self.config.as_deref())?;
        let config = orch_core::api::config::ClientConfig::load(&path)?;
        orch_control::store::raft::peer_tls::PeerTls::from_client_config(&config)
            .with_context(|| path.display().to_string())
    }
}

/// Why one server's attempt failed: worth asking the next one, or final.
enum Failure {
    TryNext(String),
    Final(anyhow::Error),
}

impl From<tonic::Status> for Failure {
    /// Down or without a leader: the next replica may do better.
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable => Failure::TryNext(status.message().to_string()),
            _ => Failure::Final(anyhow::anyhow!("{}", status.message())),
        }
    }
}

/// Runs `attempt` against each server in turn until one succeeds.
fn each_server<T>(
    servers: &[String],
    attempt: impl AsyncFn(&str) -> Result<T, Failure>,
) -> Result<T> {
    let runtime = objects::runtime()?;
    let mut failures = Vec::new();
    for server in servers {
        match runtime.block_on(attempt(server)) {
            Ok(value) => return Ok(value),
            Err(Failure::TryNext(reason)) => failures.push(format!("{server}: {reason}")),
            Err(Failure::Final(error)) => return Err(error.context(server.clone())),
        }
    }
    anyhow::bail!("no replica answered: {}", failures.join("; "))
}

pub fn save_snapshot(file: &std::path::Path, peers: &PeerArgs) -> Result<()> {
    use orch_control::store::raft::transport::proto::SnapshotRequest;
    use orch_control::store::raft::transport::proto::store_client::StoreClient;
    use tokio::io::AsyncWriteExt as _;

    let partial = file.with_extension("partial");
    let tls = peers.tls()?;
    let (bytes, server) = each_server(&peers.servers, async |server| {
        let download = async {
            let mut client = StoreClient::connect(tls.endpoint(server)?).await?;
            let mut stream = client.snapshot(SnapshotRequest {}).await?.into_inner();
            let mut out = tokio::fs::File::create(&partial).await?;
            let mut bytes = 0u64;
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data).await?;
                bytes += chunk.data.len() as u64;
            }
            out.sync_all().await?;
            anyhow::Ok(bytes)
        };
        match download.await {
            Ok(bytes) => Ok((bytes, server.to_string())),
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                Err(Failure::TryNext(format!("{error:#}")))
            }
        }
    })
    .context("no replica gave a snapshot")?;
    orch_control::store::snapshot::verify_file(&partial)?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "snapshot saved to {} ({bytes} bytes, from {server})",
        file.display()
    );
    Ok(())
}

pub fn member(command: crate::MemberCommand) -> Result<()> {
    use orch_control::store::raft::transport::proto::LeaveRequest;
    match command {
        crate::MemberCommand::List { peers } => {
            let tls = peers.tls()?;
            let status = each_server(&peers.servers, async |server| {
                Ok(orch_control::store::raft::client::replica_status(server, &tls).await?)
            })?;
            println!("CLUSTER ID: {}", status.cluster_id);
            println!("{:<6} {:<24} {:<8} LEADER", "ID", "ADDRESS", "ROLE");
            for member in &status.members {
                let (id, addr) = member.split_once('=').unwrap_or((member, ""));
                let id: u64 = id.parse().unwrap_or(0);
                let role = if status.voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                let leader = if id == status.leader_id { "yes" } else { "" };
                println!("{id:<6} {addr:<24} {role:<8} {leader}");
            }
        }
        crate::MemberCommand::Remove { id, peers } => {
            let tls = peers.tls()?;
            let reply = each_server(&peers.servers, async |server| {
                let mut client =
                    orch_control::store::raft::client::membership(server, &tls).await?;
                Ok(client
                    .leave(LeaveRequest { node_id: id })
                    .await?
                    .into_inner())
            })?;
            println!(
                "removed member {id}; members now: {}",
                reply.members.join(", ")
            );
        }
    }
    Ok(())
}

/// Restores FILE into a new data directory, as `orch-control restore`.
pub fn restore_snapshot(file: &std::path::Path, data_dir: &std::path::Path) -> Result<()> {
    // Its errors name the snapshot file or the data directory.
    let revision = orch_control::store::restore_data_dir(file, data_dir)?;
    println!(
        "{}",
        orch_control::store::restored_message(revision, data_dir)
    );
    Ok(())
}

/// Asks one replica for the membership, then every member for its own
/// view; a member that does not answer is listed as such. Returns whether
/// every member answered and agreed on a leader.
pub fn status(peers: &PeerArgs) -> Result<bool> {
    use orch_control::store::raft::client::replica_status;
    let tls = peers.tls()?;
    let first = each_server(&peers.servers, async |server| {
        Ok(replica_status(server, &tls).await?)
    })?;
    let runtime = objects::runtime()?;
    println!("CLUSTER ID: {}", first.cluster_id);
    println!(
        "{:<4} {:<22} {:<9} {:<7} {:<6} {:<9} {:<9} HEALTH",
        "ID", "ADDRESS", "ROLE", "LEADER", "TERM", "APPLIED", "REVISION"
    );
    let mut healthy = true;
    let mut leaders = std::collections::BTreeSet::new();
    for member in &first.members {
        let (id, addr) = member.split_once('=').unwrap_or((member, ""));
        let id: u64 = id.parse().unwrap_or(0);
        let answer = runtime.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(3),
                replica_status(addr, &tls),
            )
            .await
        });
        match answer {
            Ok(Ok(status)) => {
                let role = if status.leader_id == id {
                    "leader"
                } else if status.voters.contains(&id) {
                    "follower"
                } else {
                    "learner"
                };
                leaders.insert(status.leader_id);
                let health = if status.leader_id == 0 {
                    healthy = false;
                    "no leader"
                } else {
                    "ok"
                };
                println!(
                    "{id:<4} {addr:<22} {role:<9} {:<7} {:<6} {:<9} {:<9} {health}",
                    status.leader_id, status.term, status.last_applied_index, status.revision
                );
            }
            Ok(Err(error)) => {
                healthy = false;
                println!(
                    "{id:<4} {addr:<22} {:<9} {:<7} {:<6} {:<9} {:<9} unreachable: {}",
                    "-",
                    "-",
                    "-",
                    "-",
                    "-",
                    error.message()
                );
            }
            Err(_) => {
                healthy = false;
                println!(
                    "{id:<4} {addr:<22} {:<9} {:<7} {:<6} {:<9} {:<9} unreachable: no answer within 3s",
                    "-", "-", "-", "-", "-"
                );
            }
        }
    }
    if leaders.len() > 1 {
        healthy = false;
        eprintln!("warning: replicas name different leaders: {leaders:?}");
    }
    Ok(healthy)
}
