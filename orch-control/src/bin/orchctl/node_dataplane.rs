//! `orchctl node dataplane NODE` (the node's service table and map usage,
//! decoded) and `orchctl node monitor NODE` (what its programs do with
//! packets and connections, as it happens: what tcpdump cannot see).

use anyhow::{Context, Result, bail};
use orch_core::api::ApiClient;
use orch_core::api::proto::{MonitorEvent, NodeMonitorRequest};
use orch_core::object::{Kind, Object};

use super::objects::Connection;

#[derive(clap::Subcommand)]
pub enum NodeCommand {
    /// The node's service table and how full its eBPF maps are.
    Dataplane {
        node: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Stream the node's drop and trace events until interrupted.
    Monitor(MonitorArgs),
}

#[derive(clap::Args)]
pub struct MonitorArgs {
    pub node: String,
    /// Drops only (no traces).
    #[arg(long)]
    pub drops: bool,
    /// Only events of this pod (its address).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only events of this Service (its ClusterIP).
    #[arg(long)]
    pub service: Option<String>,
    /// The namespace of --pod and --service.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub connection: Connection,
}

pub fn run(command: NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Dataplane { node, connection } => dataplane(&node, connection),
        NodeCommand::Monitor(args) => monitor(args),
    }
}

fn dataplane(node: &str, connection: Connection) -> Result<()> {
    let (runtime, mut client) = connection.session()?;
    let reply = runtime.block_on(client.node_dataplane(node))?;
    print!("{}", reply.services);
    println!();
    println!(
        "{:<18} {:>10} {:>12} {:>6}",
        "MAP", "ENTRIES", "MAX", "FULL"
    );
    for map in &reply.maps {
        let full = map.entries as f64 / f64::from(map.max_entries.max(1)) * 100.0;
        let note = if map.evicts { " (LRU)" } else { "" };
        println!(
            "{:<18} {:>10} {:>12} {:>5.1}%{note}",
            map.name, map.entries, map.max_entries, full
        );
    }
    Ok(())
}

/// The address the Object holds: a Pod's podIP, a Service's clusterIP.
async fn address_of(
    client: &mut ApiClient,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<String> {
    let object = client
        .get(kind, Some(namespace), name)
        .await
        .with_context(|| format!("{} {namespace}/{name}", kind.name()))?;
    let address = match &object {
        Object::Pod(pod) => pod.status.as_ref().and_then(|s| s.pod_ip.clone()),
        Object::Service(service) => service.spec.as_ref().and_then(|s| s.cluster_ip.clone()),
        _ => None,
    };
    match address.filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok()) {
        Some(address) => Ok(address),
        None => bail!("{} {namespace}/{name} has no IPv4 address yet", kind.name()),
    }
}

fn monitor(args: MonitorArgs) -> Result<()> {
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async move {
        let mut addresses = Vec::new();
        if let Some(pod) = &args.pod {
            addresses.push(address_of(&mut client, Kind::Pod, &args.namespace, pod).await?);
        }
        if let Some(service) = &args.service {
            addresses.push(address_of(&mut client, Kind::Service, &args.namespace, service).await?);
        }
        let request = NodeMonitorRequest {
            node: args.node.clone(),
            drops_only: args.drops,
            addresses,
        };
        let mut events = client.node_monitor(request).await?;
        println!(
            "{:<30} {:<5} {:<14} {:<5} {:<21} {:<21} {:<21} INTERFACE",
            "TIME", "KIND", "REASON", "PROTO", "SOURCE", "DESTINATION", "TRANSLATED TO"
        );
        while let Some(event) = events.message().await.context("the node's event stream")? {
            println!("{}", line(&event));
        }
        Ok(())
    })
}

fn line(event: &MonitorEvent) -> String {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    format!(
        "{:<30} {:<5} {:<14} {:<5} {:<21} {:<21} {:<21} {}",
        event.time,
        event.kind,
        event.reason,
        or_dash(&event.protocol),
        event.source,
        event.destination,
        or_dash(&event.translated_to),
        or_dash(&event.interface)
    )
}
