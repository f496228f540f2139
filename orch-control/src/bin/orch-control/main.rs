//! `orch-control`: a control-plane replica: the replicated store (Raft over
//! gRPC with mutual TLS, redb on disk) on `--listen`, and the API server (TLS) on
//! `--api-listen`; and the controller manager, whose controllers run on the
//! replica holding their Lease. The scheduler joins it in later work.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use openraft::{BasicNode, Config};
use orch_control::api::access::StoreAccess;
use orch_control::api::auth::{Authenticator, load_token_file};
use orch_control::api::ensure_system_namespaces;
use orch_control::api::registry::Registry;
use orch_control::api::service::api_server;
use orch_control::pki::{ADMIN_CONFIG, Pki, PkiError};
use orch_control::store::identity::{ClusterId, Identity};
use orch_control::store::raft::client::{membership, replica_status};
use orch_control::store::raft::node::{NodeOptions, RaftNode};
use orch_control::store::raft::peer_tls::PeerTls;
use orch_control::store::raft::service::{membership_server, store_server};
use orch_control::store::raft::transport::TransportService;
use orch_control::store::raft::transport::proto::JoinRequest;
use orch_core::runtime::election::ElectionTimings;
use tonic::service::interceptor::InterceptedService;

mod data_dir;
mod token;

#[derive(Parser)]
#[command(
    name = "orch-control",
    version,
    about = "orch's control plane replica",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommand>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Subcommand {
    /// Write a node agent's client config (`orch-node --config`): the API
    /// servers, the cluster CA, and a certificate for `system:node:NAME`
    /// signed by the CA in this replica's data directory.
    NodeConfig {
        /// A replica's data directory (its pki/ holds the cluster CA).
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's name, as the agent's --node-name.
        #[arg(long)]
        node_name: String,
        /// The API servers' addresses (host:port), comma-separated.
        #[arg(long = "server", required = true, value_delimiter = ',')]
        servers: Vec<String>,
        /// Where to write it (mode 0600); stdout when not given.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Bootstrap tokens for nodes to join with (`orch-node --join`).
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Build a data directory for a new cluster from a snapshot file
    /// (`orchctl snapshot save`); then start it with --init.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        /// The new replica's data directory; must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Where this replica keeps its log, state and snapshots.
    #[arg(long, env = "ORCH_DATA_DIR", required = true)]
    data_dir: Option<PathBuf>,
    /// This replica's id, unique in the cluster and stable across restarts.
    #[arg(long, required = true)]
    node_id: Option<u64>,
    /// Address to serve replication and the store on (also advertised to
    /// peers); port 0 picks a free port, printed on stdout.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Address to serve the API on (TLS), for orchctl, agents, controllers;
    /// port 0 picks a free port, printed on stdout after the listen address.
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_listen: SocketAddr,
    /// Address of the health port: plain HTTP GET /healthz, /readyz and
    /// /metrics (Prometheus); port 0 picks one, printed on stdout after the
    /// API address.
    #[arg(long, default_value = "127.0.0.1:6444")]
    health_listen: SocketAddr,
    /// Bearer tokens the API accepts, Kubernetes' static token file format
    /// (`token,user[,uid[,groups]]` a line).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Bootstrap a new cluster of this one replica.
    #[arg(long, conflicts_with = "join")]
    init: bool,
    /// Join the cluster that the replica at this address belongs to.
    #[arg(long)]
    join: Option<String>,
    /// With --join: the id of the cluster to join (`orchctl member list`
    /// shows it); a seed that belongs to another cluster is refused.
    #[arg(long, requires = "join")]
    cluster_id: Option<ClusterId>,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Lower bound of the election timeout (the upper bound is twice this).
    #[arg(long, default_value_t = 500)]
    election_timeout_ms: u64,
    /// How long a write waits for a quorum before failing with "no quorum".
    #[arg(long, default_value_t = 5000)]
    write_timeout_ms: u64,
    /// Where Services' ClusterIPs come from (IPv4 CIDR).
    #[arg(long, default_value = "10.96.0.0/12")]
    service_cluster_ip_range: String,
    /// Where NodePorts come from.
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Revisions of history kept for watches to replay (like etcd's
    /// --auto-compaction-retention in revision mode); the leader compacts
    /// older history away. 0 keeps everything.
    #[arg(long, default_value_t = 10_000)]
    compaction_retention: u64,
    /// The controllers' Lease: how long a holder that stopped renewing is
    /// honoured before another replica takes over.
    #[arg(long, default_value_t = 15_000)]
    leader_elect_lease_duration_ms: u64,
    /// How long the leader keeps running controllers without a renewal.
    #[arg(long, default_value_t = 10_000)]
    leader_elect_renew_deadline_ms: u64,
    /// How often replicas try for the Lease and the leader renews it.
    #[arg(long, default_value_t = 2_000)]
    leader_elect_retry_period_ms: u64,
    /// Controllers to run on the leader, as kube-controller-manager's
    /// `--controllers`: `*` for all, `NAME` to enable, `-NAME` to disable
    /// (garbage-collector-controller, namespace-controller,
    /// replicaset-controller, deployment-controller, endpointslice-controller,
    /// node-ipam-controller, node-lifecycle-controller,
    /// service-lb-ipam-controller, scheduler); an empty
    /// value runs none (a replica serving only the store and the API).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// Seconds a node's Lease may go unrenewed before the node is marked
    /// Unknown and tainted unreachable.
    #[arg(long, default_value_t = 40)]
    node_monitor_grace_period: u64,
    /// The pod network; each node gets a slice of it as its podCIDR.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Prefix length of each node's podCIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Addresses for LoadBalancer Services' status.loadBalancer (an IPv4
    /// CIDR or FIRST-LAST); nodes balance traffic sent to them as they do
    /// a NodePort's. Not given: LoadBalancer Services stay pending.
    #[arg(long)]
    load_balancer_ip_range: Option<String>,
    /// tolerationSeconds of the not-ready:NoExecute toleration every pod
    /// gets unless it has one (how long it stays on a not-ready node).
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// The same for the unreachable:NoExecute taint.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
    /// How long Events are kept (`1h`, `30m`, `90s`).
    #[arg(long, default_value = "1h")]
    event_ttl: String,
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
    match cli.command {
        Some(Subcommand::Restore { file, data_dir }) => data_dir::restore(&file, &data_dir),
        Some(Subcommand::Token { command }) => token::run(command).await,
        Some(Subcommand::NodeConfig {
            data_dir,
            node_name,
            servers,
            output,
        }) => data_dir::node_config(&data_dir, &node_name, &servers, output.as_deref()),
        None => run(cli.run).await,
    }
}

async fn run(cli: RunArgs) -> Result<()> {
    let (Some(data_dir), Some(node_id)) = (cli.data_dir.clone(), cli.node_id) else {
        bail!("--data-dir and --node-id are required");
    };
    if cli.election_timeout_ms <= cli.heartbeat_ms {
        bail!("--election-timeout-ms must be greater than --heartbeat-ms");
    }
    let enabled =
        orch_control::controllers::Enabled::parse(&cli.controllers).map_err(anyhow::Error::msg)?;
    let event_ttl = orch_core::time::parse_duration("--event-ttl", &cli.event_ttl)
        .map_err(anyhow::Error::msg)?;
    let cluster_cidr = orch_control::controllers::node_ipam::ClusterCidr::parse(
        &cli.cluster_cidr,
        cli.node_cidr_mask_size,
    )
    .map_err(anyhow::Error::msg)?;
    let load_balancer_range = cli
        .load_balancer_ip_range
        .as_deref()
        .map(orch_control::controllers::load_balancer_ipam::AddressRange::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let service_ranges = orch_control::api::registry::service_alloc::ServiceRanges::parse(
        &cli.service_cluster_ip_range,
        &cli.service_node_port_range,
    )
    .map_err(anyhow::Error::msg)?;
    // The holder must have stepped down (renew deadline, plus at most one
    // retry period) before another may take over (lease duration).
    if !(cli.leader_elect_retry_period_ms < cli.leader_elect_renew_deadline_ms
        && cli.leader_elect_renew_deadline_ms + cli.leader_elect_retry_period_ms
            <= cli.leader_elect_lease_duration_ms)
    {
        bail!(
            "--leader-elect-retry-period-ms < --leader-elect-renew-deadline-ms, and renew deadline + retry period <= --leader-elect-lease-duration-ms, are required"
        );
    }
    let config = Config {
        cluster_name: "orch".into(),
        heartbeat_interval: cli.heartbeat_ms,
        election_timeout_min: cli.election_timeout_ms,
        election_timeout_max: cli.election_timeout_ms * 2,
        ..Config::default()
    };
    let pki = Pki::new(&data_dir);
    // A joining replica brings the cluster CA (copied from a member) before
    // anything is written; `--init` makes one.
    if !pki.has_ca() && !cli.init {
        return Err(PkiError::NoCa {
            dir: pki.dir.clone(),
        }
        .into());
    }
    let tokens = match &cli.token_file {
        Some(path) => load_token_file(path)?,
        None => Default::default(),
    };
    let identity = resolve_identity(&cli, &data_dir, &pki, node_id).await?;
    if !pki.has_ca() {
        pki.create_ca().context("creating the cluster CA")?;
    }
    // The replication port's certificate names the --listen address (not
    // its port, so a port the kernel picks does not matter).
    pki.ensure_peer_certificate(&serving_names(cli.listen))
        .context("the peer certificate")?;
    let peer_tls = pki.peer_tls()?;
    tracing::info!(cluster = %identity.cluster, node = node_id, "starting replica");
    let node = Arc::new(
        RaftNode::open(
            identity,
            &data_dir,
            config,
            NodeOptions {
                write_timeout: Duration::from_millis(cli.write_timeout_ms),
                compaction_retention: cli.compaction_retention,
            },
            peer_tls.clone(),
        )
        .await
        .with_context(|| format!("opening the store in {}", data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("--listen {}", cli.listen))?;
    // With port 0 the kernel picks the port: peers and clients need the real
    // address, and whoever started this replica learns it from this line.
    let listen = listener
        .local_addr()
        .context("reading the listen address")?;
    println!("orch-control listening on {listen}");
    let api_listener = tokio::net::TcpListener::bind(cli.api_listen)
        .await
        .with_context(|| format!("--api-listen {}", cli.api_listen))?;
    let api_addr = api_listener
        .local_addr()
        .context("reading the API address")?;
    pki.ensure_server_certificate(&serving_names(api_addr))
        .context("the API serving certificate")?;
    if !pki.path(ADMIN_CONFIG).exists() {
        let path = pki.write_admin_config(&[api_addr.to_string()])?;
        tracing::info!(config = %path.display(), "wrote the admin client config");
    }
    // After the certificates: whoever reads this line may use admin.conf.
    println!("orch-control API on {api_addr}");
    let health_listener = tokio::net::TcpListener::bind(cli.health_listen)
        .await
        .with_context(|| format!("--health-listen {}", cli.health_listen))?;
    let health_addr = health_listener
        .local_addr()
        .context("reading the health address")?;
    println!("orch-control health on {health_addr}");
    let namespaces_ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(orch_control::health::serve(
        health_listener,
        node.clone(),
        namespaces_ready.clone(),
    ));
    let registry = Arc::new(
        Registry::new(StoreAccess::new(
            node.clone(),
            Duration::from_millis(cli.write_timeout_ms.max(1000) * 2),
        ))
        .with_service_ranges(service_ranges)
        .with_default_toleration_seconds(
            cli.default_not_ready_toleration_seconds,
            cli.default_unreachable_toleration_seconds,
        )
        .with_event_ttl(event_ttl),
    );
    let server = tonic::transport::Server::builder()
        .tls_config(pki.peer_server_tls()?)
        .context("the replication port's TLS")?
        .add_service(TransportService::server(
            node.raft.clone(),
            identity.cluster,
        ))
        .add_service(membership_server(node.clone()))
        .add_service(store_server(node.clone()))
        .serve_with_incoming_shutdown(
            orch_control::store::raft::transport::incoming(listener),
            shutdown_signal(),
        );
    let server = tokio::spawn(server);
    let api_service = api_server(
        registry.clone(),
        Arc::new(orch_control::api::node_proxy::NodeProxy::new(
            peer_tls.clone(),
        )),
    );
    let api = tonic::transport::Server::builder()
        .tls_config(pki.server_tls()?)
        .context("the API's TLS")?
        .add_service(InterceptedService::new(
            api_service.clone(),
            Authenticator::new(tokens),
        ))
        .add_service(orch_control::api::bootstrap::bootstrap_server(
            registry.clone(),
            Pki::new(&data_dir),
        ))
        .serve_with_incoming_shutdown(
            orch_control::store::raft::transport::incoming(api_listener),
            shutdown_signal(),
        );
    let api = tokio::spawn(api);
    let initialized = node.raft.is_initialized().await?;
    if cli.init && !initialized {
        let members = BTreeMap::from([(
            node_id,
            BasicNode {
                addr: listen.to_string(),
            },
        )]);
        node.raft
            .initialize(members)
            .await
            .context("bootstrapping the cluster")?;
        tracing::info!(node = node_id, "bootstrapped a new cluster");
    } else if let Some(seed) = &cli.join
        && !initialized
    {
        join(seed, &peer_tls, identity, &listen.to_string()).await?;
    } else if !initialized {
        bail!(
            "{} holds no cluster: start with --init (new cluster) or --join ADDR",
            data_dir.display()
        );
    }
    tokio::spawn(async move {
        ensure_system_namespaces(registry).await;
        namespaces_ready.store(true, std::sync::atomic::Ordering::Release);
    });
    // The controllers are API clients of this replica's API server, called
    // in memory: the same admission and store path as every client,
    // without TLS and HTTP/2 between two parts of one process.
    let controller_client =
        orch_core::api::ApiClient::in_process(api_service, Duration::from_secs(10));
    let timings = ElectionTimings {
        lease_duration: Duration::from_millis(cli.leader_elect_lease_duration_ms),
        renew_deadline: Duration::from_millis(cli.leader_elect_renew_deadline_ms),
        retry_period: Duration::from_millis(cli.leader_elect_retry_period_ms),
    };
    let identity_name = format!("orch-control-{node_id}_{}", identity.cluster);
    let settings = orch_control::controllers::Settings {
        enabled,
        node_monitor_grace: Duration::from_secs(cli.node_monitor_grace_period),
        cluster_cidr,
        load_balancer_range,
    };
    tokio::spawn(async move {
        if let Err(error) =
            orch_control::controllers::run(controller_client, identity_name, timings, settings)
                .await
        {
            tracing::error!(%error, "the controller manager stopped");
        }
    });
    tracing::info!(node = node_id, %listen, "serving");
    server.await.context("server task")??;
    api.await.context("API server task")??;
    node.raft.shutdown().await.ok();
    Ok(())
}

/// Which cluster this replica belongs to, decided before anything is
/// written: the data directory's record, else a new cluster (--init), else
/// the seed's cluster (--join). Refuses another node id, a seed of another
/// cluster, and a data directory without a cluster and without either flag.
async fn resolve_identity(
    cli: &RunArgs,
    data_dir: &Path,
    pki: &Pki,
    node_id: u64,
) -> Result<Identity> {
    if let Some(identity) = Identity::load(data_dir)? {
        identity.check_node(data_dir, node_id)?;
        if let Some(expected) = cli.cluster_id
            && expected != identity.cluster
        {
            bail!(
                "--cluster-id {expected}: {} belongs to cluster {}",
                data_dir.display(),
                identity.cluster
            );
        }
        if let Some(seed) = &cli.join {
            // A restart may keep --join in its command line while the seed
            // is down: check when it answers, don't wait for it.
            match seed_cluster(seed, &pki.caller_tls()?, Duration::from_secs(5)).await {
                Ok(found) => identity.check_cluster(data_dir, seed, found)?,
                Err(error @ SeedError::Foreign { .. }) => return Err(error.into()),
                Err(error @ SeedError::Unreachable { .. }) => {
                    tracing::warn!(%error, seed, "could not ask the seed for its cluster id")
                }
            }
        }
        return Ok(identity);
    }
    let cluster = if cli.init {
        ClusterId::random().context("drawing a cluster id")?
    } else if let Some(seed) = &cli.join {
        let found = seed_cluster(seed, &pki.caller_tls()?, Duration::from_secs(60)).await?;
        if let Some(expected) = cli.cluster_id
            && expected != found
        {
            bail!(
                "--cluster-id {expected}: the replica at {seed} belongs to cluster {found}; refusing to join it"
            );
        }
        found
    } else {
        bail!(
            "{} holds no cluster: start with --init (new cluster) or --join ADDR",
            data_dir.display()
        );
    };
    let identity = Identity {
        cluster,
        node: node_id,
    };
    identity.store(data_dir)?;
    Ok(identity)
}

/// Why the seed's cluster id is unknown.
#[derive(Debug, thiserror::Error)]
enum SeedError {
    /// Refused at TLS (another cluster's CA, or a certificate that does
    /// not name the seed's address): no retry can change that.
    #[error("refusing to join {seed}: {reason}")]
    Foreign { seed: String, reason: String },
    #[error("asking {seed} for its cluster id: {error:#}")]
    Unreachable { seed: String, error: anyhow::Error },
}

/// The cluster id of the replica at `seed`, retrying until `patience` runs out.
async fn seed_cluster(
    seed: &str,
    tls: &PeerTls,
    patience: Duration,
) -> Result<ClusterId, SeedError> {
    let deadline = Instant::now() + patience;
    loop {
        let attempt = match replica_status(seed, tls).await {
            // Another cluster's CA: no retry can change that.
            Err(status) if status.code() == tonic::Code::Unauthenticated => {
                return Err(SeedError::Foreign {
                    seed: seed.to_string(),
                    reason: status.message().to_string(),
                });
            }
            Err(status) => Err(anyhow::Error::from(status)),
            Ok(status) => status
                .cluster_id
                .parse::<ClusterId>()
                .map_err(|e| anyhow::anyhow!("the replica at {seed} sent a bad cluster id: {e}")),
        };
        match attempt {
            Ok(cluster) => return Ok(cluster),
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, seed, "asking the seed for its cluster id; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => {
                return Err(SeedError::Unreachable {
                    seed: seed.to_string(),
                    error,
                });
            }
        }
    }
}

/// Asks the cluster at `seed` to add this replica, retrying while it elects
/// a leader or while this replica's server comes up.
async fn join(seed: &str, tls: &PeerTls, identity: Identity, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let mut client = membership(seed, tls).await?;
            let reply = client
                .join(JoinRequest {
                    node_id: identity.node,
                    addr: addr.to_string(),
                    cluster_id: identity.cluster.to_string(),
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

/// The names a serving certificate is valid for: loopback, the address it
/// listens on, and this host's name.
fn serving_names(addr: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !addr.ip().is_unspecified() {
        names.push(addr.ip().to_string());
    }
    if let Ok(host) = nix::unistd::gethostname()
        && let Some(host) = host.to_str()
    {
        names.push(host.to_string());
    }
    // A host name in the nodes' domain would share a name with a node's
    // certificate.
    names.retain(|name| {
        !name.ends_with(&format!(
            ".{}",
            orch_core::api::identity::NODE_SERVING_DOMAIN
        ))
    });
    names.sort();
    names.dedup();
    names
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
