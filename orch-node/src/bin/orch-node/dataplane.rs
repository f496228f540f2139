//! `orch-node dataplane ...`: the node's kernel programs, inspected and
//! managed from the command line.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use orch_node::dataplane::PinLayout;
use orch_node::dataplane::iface_counters::{self, AttachMode};
use orch_node::dataplane::services::{self, ServiceTable};

#[derive(Subcommand)]
pub enum DataplaneCommand {
    /// Attach the per-interface traffic counter to an interface (ingress and egress).
    AttachCounters {
        #[command(flatten)]
        target: InterfaceArgs,
        /// Stay in the foreground and forward the kernel programs' logs until interrupted.
        #[arg(long)]
        follow: bool,
    },
    /// Detach the traffic counter from an interface.
    DetachCounters {
        #[command(flatten)]
        target: InterfaceArgs,
    },
    /// Print the traffic counters of every counted interface.
    Counters {
        /// Output format.
        #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Print the service table (ClusterIP balancing at the socket), decoded.
    Dump,
    /// Unpin everything this node pinned (detaches its tcx links).
    Remove,
}

#[derive(Args)]
pub struct InterfaceArgs {
    /// Interface name, in this process's network namespace.
    #[arg(long, short)]
    interface: String,
    /// `tcx` (pinned links, Linux >= 6.6) or `clsact` (qdisc + tc filter).
    #[arg(long, default_value = "tcx", value_parser = clap::value_parser!(String))]
    mode: String,
}

impl InterfaceArgs {
    fn mode(&self) -> Result<AttachMode> {
        self.mode
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--mode: {e}"))
    }
}

pub fn run_dataplane(layout: &PinLayout, command: DataplaneCommand) -> Result<()> {
    match command {
        DataplaneCommand::AttachCounters { target, follow } => {
            let ebpf = iface_counters::attach(layout, &target.interface, target.mode()?)
                .with_context(|| format!("attaching counters to {}", target.interface))?;
            println!(
                "attached to {} (pinned under {})",
                target.interface,
                layout.node_dir().display()
            );
            if follow {
                forward_kernel_logs(ebpf)?;
            }
            Ok(())
        }
        DataplaneCommand::DetachCounters { target } => {
            let detached = iface_counters::detach(layout, &target.interface, target.mode()?)
                .with_context(|| format!("detaching counters from {}", target.interface))?;
            if detached {
                println!("detached from {}", target.interface);
            } else {
                println!("nothing attached to {}", target.interface);
            }
            Ok(())
        }
        DataplaneCommand::Counters { output } => {
            let traffic = iface_counters::read(layout).context("reading interface counters")?;
            print_traffic(&traffic, &output)
        }
        DataplaneCommand::Dump => {
            let table = ServiceTable::open(layout).context("opening the service table")?;
            print!("{}", services::render(&table.list()?));
            Ok(())
        }
        DataplaneCommand::Remove => {
            if layout.remove_all()? {
                println!("removed {}", layout.node_dir().display());
            } else {
                println!("nothing pinned under {}", layout.node_dir().display());
            }
            Ok(())
        }
    }
}

fn print_traffic(traffic: &[iface_counters::IfaceTraffic], output: &str) -> Result<()> {
    if output == "json" {
        let rows: Vec<_> = traffic
            .iter()
            .map(|t| {
                serde_json::json!({
                    "ifindex": t.ifindex,
                    "interface": t.interface,
                    "direction": t.direction,
                    "packets": t.packets,
                    "bytes": t.bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<8} {:<16} {:<9} {:>12} {:>14}",
        "IFINDEX", "INTERFACE", "DIRECTION", "PACKETS", "BYTES"
    );
    for t in traffic {
        println!(
            "{:<8} {:<16} {:<9} {:>12} {:>14}",
            t.ifindex,
            t.interface.as_deref().unwrap_or("<gone>"),
            t.direction,
            t.packets,
            t.bytes
        );
    }
    Ok(())
}

/// Forwards aya-log records from the kernel to this process's log until
/// SIGINT/SIGTERM.
fn forward_kernel_logs(mut ebpf: aya::Ebpf) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let _forwarding = orch_node::dataplane::kernel_logs::forward(&mut ebpf, "counters");
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        Ok(())
    })
}
