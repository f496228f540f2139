//! `cargo xtask bench store|api|scheduler|pods|dataplane`: benchmarks, run as optimized builds against
//! their anchors (installed by setup) in the same run. Not tests: they
//! print figures and ratios, they don't pass or fail on them.

use anyhow::Result;

use crate::{cargo, run_command, setup};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Bench {
    /// orch's replicated store against etcd (Debian's etcd-server).
    Store,
    /// The API of a 3-replica control plane holding 10,000 pods.
    Api,
    /// The scheduler: 30,000 pods onto 5,000 simulated nodes through a
    /// 3-replica control plane.
    Scheduler,
    /// orch-node's container runtime next to runc and crun, then pod
    /// start latency and memory through a real control plane and agent.
    Pods,
    /// Connections through a ClusterIP: orch's socket balancer against the
    /// pod dialled directly and kube-proxy's iptables rules, with 1 to
    /// 10,000 services; and one backend change, map update against
    /// iptables-restore.
    Dataplane,
}

pub fn run(bench: Bench, args: &[String]) -> Result<()> {
    setup::run()?;
    let (package, name) = match bench {
        Bench::Store => ("orch-control", "store"),
        Bench::Api => ("orch-control", "api"),
        Bench::Scheduler => ("orch-control", "scheduler"),
        Bench::Pods => ("orch-node", "pods"),
        Bench::Dataplane => {
            // The kernel programs the bench loads are embedded in orch-node.
            crate::ebpf::build()?;
            ("orch-node", "dataplane")
        }
    };
    if let Bench::Pods = bench {
        // The shims and the agent the benchmarks run are the release
        // orch-node.
        run_command(cargo().args(["build", "--release", "-p", "orch-node"]))?;
    }
    run_command(
        cargo()
            .args(["bench", "-p", package, "--bench", name, "--"])
            .args(args),
    )?;
    if let Bench::Pods = bench {
        run_command(
            cargo()
                .args(["bench", "-p", "orch-control", "--bench", "pod_start", "--"])
                .args(args),
        )?;
    }
    Ok(())
}
