//! The controller manager inside every orch-control replica: it competes
//! for the `orch-controller-manager` Lease in kube-system, and only the
//! holder runs the controllers. They are API clients like any other (the
//! store is reached only through the API server) and share one runtime:
//! one reflector per kind feeds one cache and every controller's handler.

pub mod deployment;
pub mod endpoint_slice;
pub mod garbage_collector;
pub mod load_balancer_ipam;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod ownership;
pub mod pod_state;
pub mod replica_set;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use orch_core::api::ApiClient;
use orch_core::object::Kind;
use orch_core::runtime::election::{self, Candidate, ElectionTimings};
use orch_core::runtime::reflector::{self, Cache, Change};
use orch_core::runtime::run_workers;
use tokio::task::JoinSet;

use crate::scheduler::{self, Scheduler};
use deployment::DeploymentController;
use endpoint_slice::EndpointSliceController;
use garbage_collector::GarbageCollector;
use load_balancer_ipam::LoadBalancerIpam;
use namespace::NamespaceController;
use node_ipam::NodeIpamController;
use node_lifecycle::NodeLifecycleController;
use orch_core::runtime::events::EventRecorder;
use replica_set::ReplicaSetController;

pub const LEASE_NAME: &str = "orch-controller-manager";
pub const LEASE_NAMESPACE: &str = "kube-system";

/// Workers per controller.
const WORKERS: usize = 4;

/// The controllers orch-control can run, by kube-controller-manager's
/// names, and the scheduler.
pub const GARBAGE_COLLECTOR: &str = "garbage-collector-controller";
pub const NAMESPACE: &str = "namespace-controller";
pub const REPLICA_SET: &str = "replicaset-controller";
pub const DEPLOYMENT: &str = "deployment-controller";
pub const ENDPOINT_SLICE: &str = "endpointslice-controller";
pub const NODE_IPAM: &str = "node-ipam-controller";
pub const NODE_LIFECYCLE: &str = "node-lifecycle-controller";
pub const LOAD_BALANCER_IPAM: &str = "service-lb-ipam-controller";
pub const SCHEDULER: &str = "scheduler";
pub const ALL: [&str; 9] = [
    GARBAGE_COLLECTOR,
    NAMESPACE,
    REPLICA_SET,
    DEPLOYMENT,
    ENDPOINT_SLICE,
    NODE_IPAM,
    NODE_LIFECYCLE,
    LOAD_BALANCER_IPAM,
    SCHEDULER,
];

/// How the controllers behave, from orch-control's flags.
#[derive(Clone, Debug)]
pub struct Settings {
    pub enabled: Enabled,
    /// How long a node's Lease may go unrenewed before it is Unknown
    /// (--node-monitor-grace-period).
    pub node_monitor_grace: Duration,
    /// Where nodes' pod CIDRs come from.
    pub cluster_cidr: node_ipam::ClusterCidr,
    /// Where LoadBalancer Services' addresses come from (none: they stay
    /// pending).
    pub load_balancer_range: Option<load_balancer_ipam::AddressRange>,
}

/// Which controllers run (kube-controller-manager's `--controllers`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enabled {
    names: std::collections::BTreeSet<&'static str>,
}

impl Enabled {
    /// Reads `--controllers` items: `*` (all), `name`, `-name`; an empty
    /// item enables nothing by itself. Unknown names are refused.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut enabled = Self::default();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            let (on, name) = match item.strip_prefix('-') {
                Some(name) => (false, name),
                None => (true, item),
            };
            let names: Vec<&'static str> = if name == "*" {
                ALL.to_vec()
            } else {
                match ALL.iter().find(|known| **known == name) {
                    Some(known) => vec![*known],
                    None => {
                        return Err(format!(
                            "--controllers: unknown controller {name:?} (known: *, {})",
                            ALL.join(", ")
                        ));
                    }
                }
            };
            for name in names {
                if on {
                    enabled.names.insert(name);
                } else {
                    enabled.names.remove(name);
                }
            }
        }
        Ok(enabled)
    }

    pub fn any(&self) -> bool {
        !self.names.is_empty()
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// Competes for leadership forever; runs the controllers while leading and
/// stops them (every task aborted) the moment leadership is lost.
pub async fn run(
    client: ApiClient,
    identity: String,
    timings: ElectionTimings,
    settings: Settings,
) -> Result<(), orch_core::api::ApiError> {
    if !settings.enabled.any() {
        tracing::info!("no controllers enabled; not competing for the lease");
        return Ok(());
    }
    let (leading, mut leader) = tokio::sync::watch::channel(false);
    tokio::spawn(election::run(
        client.clone(),
        Candidate {
            namespace: LEASE_NAMESPACE.into(),
            lease: LEASE_NAME.into(),
            identity,
        },
        timings,
        leading,
    ));
    loop {
        while !*leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return Ok(());
            }
        }
        let mut controllers = start(&client, &settings);
        while *leader.borrow_and_update() {
            if leader.changed().await.is_err() {
                return Ok(());
            }
        }
        tracing::warn!("leadership lost; stopping the controllers");
        controllers.abort_all();
        while controllers.join_next().await.is_some() {}
    }
}

/// Scheduler workers: each holds the table's lock only to decide, then
/// waits on its binding's write, so many bindings are in flight at once
/// (kube-scheduler binds asynchronously for the same reason). A binding
/// waits for a Raft commit, tens of milliseconds on a loaded control
/// plane: the backlog benchmark bound 2,000 pods/s with 32 workers, 2,900
/// with 128 and 3,060 with 256, where the CPU ran out. (Tasks, not
/// threads: an idle worker costs a parked future.)
const SCHEDULER_WORKERS: usize = 256;

/// Runs `$controller`'s workers on its queue: each key reconciled with a
/// client of its own (the controllers differ only in their types).
macro_rules! workers {
    ($name:expr, $controller:expr, $client:expr) => {
        workers!($name, $controller, $client, WORKERS)
    };
    ($name:expr, $controller:expr, $client:expr, $count:expr) => {{
        let controller = $controller.clone();
        let client = $client.clone();
        run_workers($name, controller.queue.clone(), $count, move |key| {
            let controller = controller.clone();
            let mut client = client.clone();
            async move { controller.reconcile(&mut client, key).await }
        })
    }};
}

/// An event recorder for `component`, its writer spawned into `tasks`.
fn recorder(tasks: &mut JoinSet<()>, client: &ApiClient, component: &'static str) -> EventRecorder {
    let (recorder, writer) = EventRecorder::new(client.clone(), component);
    tasks.spawn(writer);
    recorder
}

/// Reflectors for every kind into one cache, and the controllers' workers.
fn start(client: &ApiClient, settings: &Settings) -> JoinSet<()> {
    let enabled = &settings.enabled;
    let mut tasks = JoinSet::new();
    let cache = Cache::new();
    let gc = GarbageCollector::new(cache.clone());
    let namespaces = NamespaceController::new(cache.clone());
    let scheduler = Scheduler::new(
        cache.clone(),
        recorder(&mut tasks, client, scheduler::COMPONENT),
    );
    let replica_sets = ReplicaSetController::new(
        cache.clone(),
        recorder(&mut tasks, client, replica_set::COMPONENT),
    );
    let deployments = DeploymentController::new(
        cache.clone(),
        recorder(&mut tasks, client, deployment::COMPONENT),
    );
    let endpoint_slices = EndpointSliceController::new(cache.clone());
    let node_ipam = NodeIpamController::new(cache.clone(), settings.cluster_cidr);
    let load_balancers = LoadBalancerIpam::new(cache.clone(), settings.load_balancer_range);
    let node_lifecycle = NodeLifecycleController::new(
        cache.clone(),
        recorder(&mut tasks, client, node_lifecycle::COMPONENT),
        settings.node_monitor_grace,
    );
    let handler: reflector::Handler = {
        let (gc, namespaces, scheduler, replica_sets, deployments, endpoint_slices) = (
            gc.clone(),
            namespaces.clone(),
            scheduler.clone(),
            replica_sets.clone(),
            deployments.clone(),
            endpoint_slices.clone(),
        );
        let (node_ipam, node_lifecycle, load_balancers) = (
            node_ipam.clone(),
            node_lifecycle.clone(),
            load_balancers.clone(),
        );
        let enabled = enabled.clone();
        Arc::new(move |change: Change| {
            if enabled.has(GARBAGE_COLLECTOR) {
                gc.on_change(&change);
            }
            if enabled.has(NAMESPACE) {
                namespaces.on_change(&change);
            }
            if enabled.has(SCHEDULER) {
                scheduler.on_change(&change);
            }
            if enabled.has(REPLICA_SET) {
                replica_sets.on_change(&change);
            }
            if enabled.has(DEPLOYMENT) {
                deployments.on_change(&change);
            }
            if enabled.has(ENDPOINT_SLICE) {
                endpoint_slices.on_change(&change);
            }
            if enabled.has(NODE_IPAM) {
                node_ipam.on_change(&change);
            }
            if enabled.has(NODE_LIFECYCLE) {
                node_lifecycle.on_change(&change);
            }
            if enabled.has(LOAD_BALANCER_IPAM) {
                load_balancers.on_change(&change);
            }
        })
    };
    let mut synced = Vec::new();
    for kind in Kind::ALL.iter().copied() {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        synced.push(receiver);
        tasks.spawn(reflector::reflect(
            client.clone(),
            kind,
            cache.clone(),
            handler.clone(),
            sender,
        ));
    }
    let client = client.clone();
    tasks.spawn(async move {
        // Work starts once every kind is cached: the garbage collector
        // must not take an owner it has not listed yet for a gone one.
        for mut receiver in synced {
            if receiver.wait_for(|synced| *synced).await.is_err() {
                return;
            }
        }
        tracing::info!("caches synced; controllers running");
        // A disabled controller's queue stays empty: its workers just wait.
        tokio::join!(
            workers!("garbage-collector", gc, client),
            workers!("namespace", namespaces, client),
            workers!("scheduler", scheduler, client, SCHEDULER_WORKERS),
            workers!("replicaset", replica_sets, client),
            workers!("deployment", deployments, client),
            workers!("endpointslice", endpoint_slices, client),
            workers!("node-ipam", node_ipam, client),
            workers!("node-lifecycle", node_lifecycle, client),
            workers!("service-lb-ipam", load_balancers, client),
        );
    });
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(items: &[&str]) -> Result<Enabled, String> {
        Enabled::parse(&items.iter().map(|i| i.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn controllers_flag_reads_like_kube_controller_managers() {
        let all = parse(&["*"]).expect("all");
        assert!(ALL.iter().all(|name| all.has(name)));
        let without = parse(&["*", "-namespace-controller"]).expect("without");
        assert!(
            !without.has(NAMESPACE) && without.has(GARBAGE_COLLECTOR) && without.has(SCHEDULER)
        );
        assert!(!parse(&[""]).expect("empty").any());
        let only = parse(&["namespace-controller"]).expect("one");
        assert!(only.has(NAMESPACE) && !only.has(GARBAGE_COLLECTOR));
        let error = parse(&["widgets"]).expect_err("unknown");
        assert!(error.contains("unknown controller \"widgets\""), "{error}");
    }
}
