//! `orch-node`: the node agent. Without a subcommand it runs as the agent
//! of `--node-name`: registers the Node, renews its Lease, reports its
//! status (pods come next). `orch-node dataplane ...` manages the eBPF
//! dataplane's interface counters.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use orch_core::api::ApiClient;
use orch_core::api::config::ClientConfig;
use orch_node::agent::node_status::{NodeSpecifics, Reserved};
use orch_node::agent::pod_network::PodNetworking;
use orch_node::agent::server::NodeDataplane;
use orch_node::agent::{self, AgentConfig, machine};
use orch_node::dataplane::monitor::Monitor;

use orch_node::dataplane::service_sync;

use orch_node::dataplane::{PinLayout, bpffs, cgroup2};

#[derive(Parser)]
#[command(name = "orch-node", version, about = "orch's node agent")]
struct Cli {
    /// This node's name (pins live under <bpffs>/orch/<node-name>/).
    #[arg(long, env = "ORCH_NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Where bpffs is (mounted there when it is missing).
    #[arg(long, env = "ORCH_BPFFS", default_value = bpffs::BPFFS_ROOT, global = true)]
    bpffs: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

/// Running as the node's agent.
#[derive(Args)]
struct AgentArgs {
    /// Client config for the API servers (servers, CA, this node's
    /// credentials), like the kubelet's --kubeconfig.
    #[arg(long, env = "ORCH_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    join: join::JoinArgs,
    /// The agent's state (its filesystem is the node's ephemeral storage).
    #[arg(long, default_value = "/var/lib/orch-node")]
    state_dir: PathBuf,
    /// The node's address for the cluster (default: the first non-loopback
    /// IPv4 address of this network namespace).
    #[arg(long)]
    node_ip: Option<std::net::Ipv4Addr>,
    /// Pods this node takes at most.
    #[arg(long, default_value_t = 110)]
    max_pods: u64,
    /// What to keep for the system, e.g. `cpu=100m,memory=256Mi,ephemeral-storage=1Gi`.
    #[arg(long, default_value = "")]
    system_reserved: String,
    /// How long the node's Lease is valid; renewed every quarter of it.
    #[arg(long, default_value_t = 40)]
    node_lease_duration_seconds: u64,
    /// How often the node's status is computed.
    #[arg(long, default_value_t = 10_000)]
    node_status_update_frequency_ms: u64,
    /// How often an unchanged status is written anyway.
    #[arg(long, default_value_t = 300)]
    node_status_report_frequency_seconds: u64,
    /// The cgroup2 directory whose processes get ClusterIP balancing at
    /// the socket: absolute, or relative to the cgroup2 mount ("" for the
    /// whole machine, as a real node wants). Not given: none on this node.
    #[arg(long)]
    service_cgroup: Option<PathBuf>,
    /// The node's interface to the other nodes. Given, the agent runs the
    /// pod network: a veth and an address from the node's podCIDR per pod,
    /// routes to the other nodes' podCIDRs, and orch's tc programs on the
    /// pods' veths and on this interface. Not given, pods have loopback only.
    #[arg(long)]
    pod_network_interface: Option<String>,
    /// Where plain-HTTP /metrics (service counters, eBPF map pressure) and
    /// /healthz are served, like kube-proxy's; port 0 picks a free one
    /// (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:10249")]
    metrics_bind_address: std::net::SocketAddr,
    /// Registries (host[:port]) to pull from over plain HTTP; loopback
    /// ones always are.
    #[arg(long)]
    insecure_registry: Vec<String>,
    /// Address the agent's port (logs and exec for the API servers, TLS)
    /// listens on.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// The agent's port, like the kubelet's; 0 picks a free one. The node
    /// reports it in status.daemonEndpoints.
    #[arg(long, default_value_t = 10250)]
    port: u16,
    /// A container's log file is rotated when it reaches this size (the
    /// kubelet's containerLogMaxSize).
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// Log files kept per container, the live one included (at least 2;
    /// the kubelet's containerLogMaxFiles).
    #[arg(long, default_value_t = 5)]
    container_log_max_files: u32,
    /// Percent of the state dir's filesystem in use above which unused
    /// images are deleted (100: never), like the kubelet's.
    #[arg(long, default_value_t = 85)]
    image_gc_high_threshold: u8,
    /// Percent in use that image garbage collection brings it down to.
    #[arg(long, default_value_t = 80)]
    image_gc_low_threshold: u8,
    /// How long an image goes unused before it may be collected (`2m`,
    /// `30s`, `0`), like the kubelet's.
    #[arg(long, default_value = "2m")]
    minimum_image_ttl_duration: String,
}

#[derive(Subcommand)]
enum Command {
    /// The node's image store (under --state-dir).
    Image {
        #[command(subcommand)]
        command: ImageCommand,
        #[arg(long, default_value = "/var/lib/orch-node")]
        state_dir: PathBuf,
    },
    /// Inspect and manage the node's kernel programs.
    Dataplane {
        #[command(subcommand)]
        command: DataplaneCommand,
    },
    /// Undo what this node's agent made, like `kubeadm reset`: stop every
    /// pod now (no grace), release their mounts, cgroups and network, and
    /// remove the node's pinned kernel programs and maps. Stop the agent
    /// first: a running one would start the pods again.
    Reset {
        #[arg(long, default_value = "/var/lib/orch-node")]
        state_dir: PathBuf,
    },
}

mod dataplane;
mod image;
mod join;

use dataplane::{DataplaneCommand, run_dataplane};
use image::{ImageCommand, run_image};

fn main() -> Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let node_name = match cli.node_name {
        Some(name) => name,
        None => nix::unistd::gethostname()
            .context("--node-name not given and the hostname is unreadable")?
            .to_string_lossy()
            .into_owned(),
    };
    let layout = PinLayout::new(&cli.bpffs, &node_name).context("--node-name")?;
    match cli.command {
        Some(Command::Dataplane { command }) => run_dataplane(&layout, command),
        Some(Command::Image { command, state_dir }) => run_image(&state_dir, command),
        Some(Command::Reset { state_dir }) => reset(&node_name, &layout, &state_dir),
        None => run_agent(node_name, &layout, cli.agent),
    }
}

fn reset(node_name: &str, layout: &PinLayout, state_dir: &std::path::Path) -> Result<()> {
    orch_node::runtime::release::release_all(state_dir, node_name)
        .map_err(|e| anyhow::anyhow!("releasing the pods under {}: {e}", state_dir.display()))?;
    // Every pod is gone, so are the addresses they held.
    let addresses = state_dir.join(orch_node::net::ipam::ADDRESSES_FILE);
    match std::fs::remove_file(&addresses) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", addresses.display()));
        }
        _ => {}
    }
    if layout.remove_all()? {
        println!("removed {}", layout.node_dir().display());
    }
    println!("node {node_name} reset: no pods, no pinned programs");
    Ok(())
}

fn run_agent(node_name: String, layout: &PinLayout, args: AgentArgs) -> Result<()> {
    let config_path = join::config_path(args.config.as_deref(), &args.join, &args.state_dir)?;
    join::join_if_new(&args.join, &node_name, &config_path)?;
    let client_config = ClientConfig::load(&config_path)
        .with_context(|| format!("--config {}", config_path.display()))?;
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("--state-dir {}", args.state_dir.display()))?;
    let internal_ip = match args.node_ip {
        Some(ip) => ip.to_string(),
        None => {
            first_ipv4().context("--node-ip not given and no non-loopback IPv4 address found")?
        }
    };
    let insecure_registry = args.insecure_registry.clone();
    let log_rotation = log_rotation(&args)?;
    let image_gc = orch_node::agent::image_gc::ImageGcPolicy::new(
        args.image_gc_high_threshold,
        args.image_gc_low_threshold,
        orch_core::time::parse_duration(
            "--minimum-image-ttl-duration",
            &args.minimum_image_ttl_duration,
        )
        .map_err(anyhow::Error::msg)?,
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let agent_tls = orch_node::agent::server::tls(&client_config)
        .map_err(|e| anyhow::anyhow!("--config {}: {e}", config_path.display()))?;
    let agent_listener = std::net::TcpListener::bind((args.address, args.port))
        .with_context(|| format!("--address {} --port {}", args.address, args.port))?;
    agent_listener.set_nonblocking(true)?;
    let agent_port = agent_listener.local_addr()?.port();
    let metrics_listener = std::net::TcpListener::bind(args.metrics_bind_address)
        .with_context(|| format!("--metrics-bind-address {}", args.metrics_bind_address))?;
    metrics_listener.set_nonblocking(true)?;
    println!("orch-node metrics on {}", metrics_listener.local_addr()?);
    let config = AgentConfig {
        node: NodeSpecifics {
            name: node_name,
            internal_ip,
            max_pods: args.max_pods,
            reserved: parse_reserved(&args.system_reserved).context("--system-reserved")?,
            system: machine::system_info(),
            agent_port: i32::from(agent_port),
        },
        state_dir: args.state_dir.clone(),
        lease_duration: Duration::from_secs(args.node_lease_duration_seconds.max(1)),
        status_update: Duration::from_millis(args.node_status_update_frequency_ms.max(100)),
        status_report: Duration::from_secs(args.node_status_report_frequency_seconds.max(1)),
        images: Some(std::sync::Arc::new(
            orch_node::image::ImageStore::open(&args.state_dir)
                .with_context(|| format!("the image store in {}", args.state_dir.display()))?,
        )),
    };
    // Held for the agent's life: the shims it starts run from them.
    let orch_node = std::env::current_exe().context("where orch-node is")?;
    let shim_programs = std::sync::Arc::new(
        orch_node::runtime::shim::ShimPrograms::beside(&orch_node)
            .map_err(|e| anyhow::anyhow!("sealed copies of the pod shims' programs: {e}"))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Filled once the dataplane runs (the port serves before that).
    let dataplane_view = std::sync::Arc::new(std::sync::OnceLock::new());
    runtime.block_on(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(
            tokio::net::TcpListener::from_std(agent_listener)?,
        );
        let agent_server = tonic::transport::Server::builder()
            // A caller that vanished (half-open connection) is noticed,
            // and its followed logs and exec sessions end.
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(5)))
            .tls_config(agent_tls)
            .context("the agent port's TLS")?
            .add_service(orch_node::agent::server::service(
                &config.state_dir,
                config.images.clone().context("the image store")?,
                dataplane_view.clone(),
            ))
            .serve_with_incoming(incoming);
        tokio::spawn(async move {
            if let Err(error) = agent_server.await {
                tracing::error!(%error, "the agent's port stopped");
            }
        });
        tracing::info!(port = agent_port, "serving logs and exec");
        let client = ApiClient::new(&client_config, Duration::from_secs(20))
            .context("connecting to the API servers")?;
        let node = loop {
            match agent::register(&mut client.clone(), &config).await {
                Ok(node) => break node,
                Err(error) => {
                    tracing::warn!(%error, "registering the node; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        println!("orch-node {} registered", config.node.name);
        let (node_uid, uid_updates) =
            tokio::sync::watch::channel(node.metadata.uid.clone().unwrap_or_default());
        tokio::spawn(agent::heartbeat(
            client.clone(),
            config.clone(),
            uid_updates,
        ));
        tokio::spawn(agent::report_status(
            client.clone(),
            config.clone(),
            node.status.unwrap_or_default(),
            node_uid,
        ));
        let images = config.images.clone().context("the image store")?;
        let registry = std::sync::Arc::new(
            orch_node::image::registry::RegistryClient::new(insecure_registry)
                .context("the registry client")?,
        );
        let cgroup = match &args.service_cgroup {
            Some(cgroup) => Some(cgroup2::resolve(cgroup).context("--service-cgroup")?),
            None => None,
        };
        let network = match &args.pod_network_interface {
            Some(interface) => Some(
                PodNetworking::start(layout, &config, interface, client.clone())
                    .await
                    .with_context(|| format!("--pod-network-interface {interface}"))?,
            ),
            None => None,
        };
        let pod_network_runs = network.is_some();
        let plumbing = orch_node::agent::pod_network::PodPlumbing {
            network,
            service_cgroup: cgroup.clone(),
        };
        let manager = orch_node::agent::pods::PodManager::new(
            config.node.name.clone(),
            config.node.internal_ip.clone(),
            &config.state_dir,
            images,
            registry,
            orch_core::runtime::Cache::new(),
            shim_programs.clone(),
            log_rotation,
            image_gc,
            plumbing,
        );
        tokio::spawn(agent::run_pods(client.clone(), manager));
        let local_node = match &args.pod_network_interface {
            Some(_) => Some(service_sync::LocalNode {
                name: config.node.name.clone(),
                address: config
                    .node
                    .internal_ip
                    .parse()
                    .context("the node's InternalIP, for NodePorts")?,
            }),
            None => None,
        };
        let services = service_sync::start(layout, cgroup.as_deref(), local_node, client.clone())
            .context("--service-cgroup: service balancing")?;
        tokio::spawn(agent::metrics_port::serve(
            metrics_listener,
            layout.clone(),
            services.sync.clone(),
        ));
        tokio::spawn(agent::metrics_port::watch_map_pressure(layout.clone()));
        let has_programs = pod_network_runs || services.programs.is_some();
        let monitor = match has_programs {
            true => Some(Monitor::start(layout).context("the dataplane monitor")?),
            false => None,
        };
        let _ = dataplane_view.set(NodeDataplane {
            layout: layout.clone(),
            monitor,
        });
        shutdown_signal().await;
        tracing::info!("stopping (containers keep running; a restarted agent adopts them)");
        anyhow::Ok(())
    })
}

/// `--container-log-max-size` and `--container-log-max-files`.
fn log_rotation(args: &AgentArgs) -> Result<orch_node::runtime::shim::protocol::LogRotation> {
    let size =
        orch_core::quantity::parse_k8s(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            args.container_log_max_size.clone(),
        ))
        .map_err(|e| anyhow::anyhow!("--container-log-max-size: {e}"))?;
    if size.value() < 1024 {
        anyhow::bail!("--container-log-max-size: at least 1Ki");
    }
    if args.container_log_max_files < 2 {
        anyhow::bail!("--container-log-max-files: at least 2 (the live file and one rotated)");
    }
    Ok(orch_node::runtime::shim::protocol::LogRotation {
        max_bytes: size.value() as u64,
        max_files: args.container_log_max_files,
    })
}

/// `cpu=100m,memory=256Mi,ephemeral-storage=1Gi`.
fn parse_reserved(text: &str) -> Result<Reserved> {
    let mut reserved = Reserved::default();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .with_context(|| format!("{item:?}: expected NAME=QUANTITY"))?;
        let quantity = orch_core::quantity::parse_k8s(
            &k8s_openapi::apimachinery::pkg::api::resource::Quantity(value.to_string()),
        )
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if quantity.milli_value() < 0 {
            anyhow::bail!("{name}: must not be negative");
        }
        match name {
            "cpu" => reserved.millicpu = quantity.milli_value() as u64,
            "memory" => reserved.memory = quantity.value() as u64,
            "ephemeral-storage" => reserved.ephemeral_storage = quantity.value() as u64,
            other => {
                anyhow::bail!("{other:?}: unknown resource (known: cpu, memory, ephemeral-storage)")
            }
        }
    }
    Ok(reserved)
}

/// The first IPv4 address of a non-loopback interface that is up.
fn first_ipv4() -> Option<String> {
    let addresses = nix::ifaddrs::getifaddrs().ok()?;
    addresses
        .filter(|a| {
            !a.flags
                .contains(nix::net::if_::InterfaceFlags::IFF_LOOPBACK)
        })
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .find_map(|a| {
            a.address
                .and_then(|addr| addr.as_sockaddr_in().map(|sin| sin.ip().to_string()))
        })
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the agent");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
