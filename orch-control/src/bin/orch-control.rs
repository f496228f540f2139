//! `orch-control`: a control-plane replica. Today it runs the replicated
//! store (Raft over gRPC, redb on disk); the API server, scheduler and
//! controllers join it in later work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use openraft::{BasicNode, Config};
use orch_control::store::raft::node::RaftNode;
use orch_control::store::raft::service::{membership_server, store_server};
use orch_control::store::raft::transport::TransportService;
use orch_control::store::raft::transport::proto::JoinRequest;
use orch_control::store::raft::transport::proto::membership_client::MembershipClient;

#[derive(Parser)]
#[command(name = "orch-control", version, about = "orch's control plane replica")]
struct Cli {
    /// Where this replica keeps its log, state and snapshots.
    #[arg(long, env = "ORCH_DATA_DIR")]
    data_dir: PathBuf,
    /// This replica's id, unique in the cluster and stable across restarts.
    #[arg(long)]
    node_id: u64,
    /// Address to serve replication and the store on (also advertised to peers).
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Bootstrap a new cluster of this one replica.
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster that the replica at this address belongs to.
    #[arg(long)]
    join: Option<String>,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Lower bound of the election timeout (the upper bound is twice this).
    #[arg(long, default_value_t = 500)]
    election_timeout_ms: u64,
    /// How long a write waits for a quorum before failing with "no quorum".
    #[arg(long, default_value_t = 5000)]
    write_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.election_timeout_ms <= cli.heartbeat_ms {
        bail!("--election-timeout-ms must be greater than --heartbeat-ms");
    }
    let config = Config {
        cluster_name: "orch".into(),
        heartbeat_interval: cli.heartbeat_ms,
        election_timeout_min: cli.election_timeout_ms,
        election_timeout_max: cli.election_timeout_ms * 2,
        ..Config::default()
    };
    let node = Arc::new(
        RaftNode::open(
            cli.node_id,
            &cli.data_dir,
            config,
            Duration::from_millis(cli.write_timeout_ms),
        )
        .await
        .with_context(|| format!("opening the store in {}", cli.data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("--listen {}", cli.listen))?;
    let server = tonic::transport::Server::builder()
        .add_service(TransportService::server(node.raft.clone()))
        .add_service(membership_server(node.clone()))
        .add_service(store_server(node.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown_signal(),
        );
    let server = tokio::spawn(server);
    let initialized = node.raft.is_initialized().await?;
    if cli.init && !initialized {
        let members = BTreeMap::from([(
            cli.node_id,
            BasicNode {
                addr: cli.listen.to_string(),
            },
        )]);
        node.raft
            .initialize(members)
            .await
            .context("bootstrapping the cluster")?;
        tracing::info!(node = cli.node_id, "bootstrapped a new cluster");
    } else if let Some(seed) = &cli.join
        && !initialized
    {
        join(seed, cli.node_id, &cli.listen.to_string()).await?;
    } else if !initialized {
        bail!(
            "{} holds no cluster: start with --init (new cluster) or --join ADDR",
            cli.data_dir.display()
        );
    }
    tracing::info!(node = cli.node_id, listen = %cli.listen, "serving");
    server.await.context("server task")??;
    node.raft.shutdown().await.ok();
    Ok(())
}

/// Asks the cluster at `seed` to add this replica, retrying while it elects
/// a leader or while this replica's server comes up.
async fn join(seed: &str, node_id: u64, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut client = MembershipClient::connect(format!("http://{seed}")).await?;
            let reply = client
                .join(JoinRequest {
                    node_id,
                    addr: addr.to_string(),
                })
                .await?;
            anyhow::Ok(reply.into_inner().members)
        };
        match attempt.await {
            Ok(members) => {
                tracing::info!(?members, "joined the cluster");
                return Ok(());
            }
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, seed, "join failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error).context(format!("joining the cluster at {seed}")),
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
