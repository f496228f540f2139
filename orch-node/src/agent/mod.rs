//! The node agent (the kubelet of orch): registers this node, keeps its
//! Lease and status current, and (next) runs the pods bound to it.

pub mod container_config;
pub mod container_logs;
pub mod exec_session;
pub mod image_gc;
mod lifecycle;
pub mod machine;
pub mod metrics_port;
pub mod node_status;
mod pod_containers;
pub mod pod_files;
pub mod pod_images;
pub mod pod_network;
mod pod_shim;
pub mod pod_status;
pub mod pods;
pub mod probes;
pub mod server;
pub mod volume_writer;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use thiserror::Error;

use node_status::{NodeSpecifics, Readings};

/// The namespace of node heartbeat Leases (as in Kubernetes).
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Machine(#[from] machine::MachineError),
    #[error("API: {0}")]
    Api(#[from] ApiError),
    #[error("the API server returned a {0} where a Node was expected")]
    NotANode(Kind),
}

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node: NodeSpecifics,
    /// Where the agent keeps its state (its filesystem is the node's
    /// ephemeral storage).
    pub state_dir: PathBuf,
    /// How long the node's Lease is valid (`--node-lease-duration-seconds`);
    /// it is renewed every quarter of that, as the kubelet does.
    pub lease_duration: Duration,
    /// How often the status is computed (`--node-status-update-frequency`).
    pub status_update: Duration,
    /// How often an unchanged status is written anyway
    /// (`--node-status-report-frequency`).
    pub status_report: Duration,
    /// The node's images, reported in its status.
    pub images: Option<std::sync::Arc<crate::image::ImageStore>>,
}

/// The images the node holds, as Node.status.images lists them (largest
/// first, as the kubelet reports them).
fn node_images(config: &AgentConfig) -> Vec<k8s_openapi::api::core::v1::ContainerImage> {
    let Some(store) = &config.images else {
        return Vec::new();
    };
    let mut images: Vec<_> = store
        .images()
        .unwrap_or_default()
        .into_iter()
        .map(|image| k8s_openapi::api::core::v1::ContainerImage {
            names: Some(image.names),
            size_bytes: Some(image.size as i64),
        })
        .collect();
    images.sort_by_key(|image| std::cmp::Reverse(image.size_bytes));
    images
}

fn now() -> (Time, MicroTime) {
    let now = orch_core::time::now_micro();
    (Time(now.0), now)
}

/// The machine now.
pub fn readings(config: &AgentConfig) -> Result<Readings, AgentError> {
    Ok(Readings {
        cpus: machine::cpus(),
        memory: machine::memory()?,
        disk: machine::disk(&config.state_dir)?,
        pids: machine::pids()?,
    })
}

/// Creates the Node, or takes over the one of this name (a restart), and
/// writes its status. Returns the Node as stored.
pub async fn register(client: &mut ApiClient, config: &AgentConfig) -> Result<Node, AgentError> {
    let wanted = node_status::node_object(&config.node);
    let name = &config.node.name;
    let existing = match client
        .create(&Object::Node(Box::new(wanted.clone())), false)
        .await
    {
        Ok(Object::Node(node)) => {
            tracing::info!(node = %name, "registered");
            *node
        }
        Ok(other) => return Err(AgentError::NotANode(other.kind())),
        Err(ApiError::AlreadyExists(_)) => {
            let Object::Node(current) = client.get(Kind::Node, None, name).await? else {
                return Err(AgentError::NotANode(Kind::Node));
            };
            // Keep what others set (taints, unschedulable, their labels);
            // make the agent's own labels true again.
            let mut node = *current;
            let labels = node.metadata.labels.get_or_insert_with(Default::default);
            for (key, value) in wanted.metadata.labels.iter().flatten() {
                labels.insert(key.clone(), value.clone());
            }
            let Object::Node(updated) = client.update(&Object::Node(Box::new(node)), false).await?
            else {
                return Err(AgentError::NotANode(Kind::Node));
            };
            tracing::info!(node = %name, "registered again (the Node existed)");
            *updated
        }
        Err(error) => return Err(error.into()),
    };
    write_status(client, config, existing).await
}

async fn write_status(
    client: &mut ApiClient,
    config: &AgentConfig,
    mut node: Node,
) -> Result<Node, AgentError> {
    let readings = readings(config)?;
    let (now, _) = now();
    node.status = Some(node_status::status(
        &config.node,
        &readings,
        node.status.as_ref(),
        node_images(config),
        now,
    ));
    match client.update_status(&Object::Node(Box::new(node))).await? {
        Object::Node(node) => Ok(*node),
        other => Err(AgentError::NotANode(other.kind())),
    }
}

/// Keeps the node's status current: computed every `status_update`,
/// written when it changed or `status_report` has passed.
/// A re-registration (the Node was deleted) sends the new Node's uid on
/// `node_uid`, for the Lease's owner reference.
pub async fn report_status(
    mut client: ApiClient,
    config: AgentConfig,
    mut last: NodeStatus,
    node_uid: tokio::sync::watch::Sender<String>,
) {
    let mut written_at = std::time::Instant::now();
    loop {
        tokio::time::sleep(config.status_update).await;
        let attempt = async {
            let Object::Node(current) = client.get(Kind::Node, None, &config.node.name).await?
            else {
                return Err(AgentError::NotANode(Kind::Node));
            };
            let readings = readings(&config)?;
            let (now, _) = now();
            let fresh = node_status::status(
                &config.node,
                &readings,
                current.status.as_ref(),
                node_images(&config),
                now,
            );
            let stale = current
                .status
                .as_ref()
                .is_none_or(|s| node_status::differs(s, &fresh));
            if !stale
                && !node_status::differs(&last, &fresh)
                && written_at.elapsed() < config.status_report
            {
                return Ok(None);
            }
            let mut node = *current;
            node.status = Some(fresh);
            match client.update_status(&Object::Node(Box::new(node))).await? {
                Object::Node(node) => Ok(node.status),
                other => Err(AgentError::NotANode(other.kind())),
            }
        };
        match attempt.await {
            Ok(Some(status)) => {
                last = status;
                written_at = std::time::Instant::now();
            }
            Ok(None) => {}
            Err(AgentError::Api(ApiError::NotFound(_))) => {
                // Deleted by someone: register again, as the kubelet does.
                tracing::warn!(node = %config.node.name, "the Node was deleted; registering again");
                if let Ok(node) = register(&mut client, &config).await {
                    node_uid.send_replace(node.metadata.uid.clone().unwrap_or_default());
                    last = node.status.unwrap_or_default();
                    written_at = std::time::Instant::now();
                }
            }
            Err(error) => tracing::warn!(%error, "updating the node status"),
        }
    }
}

/// Renews the node's Lease (kube-node-lease/<node>) every quarter of its
/// duration; creates it (owned by the Node, so it goes with it) if needed,
/// and points its owner reference at the current Node (`node_uid`).
pub async fn heartbeat(
    mut client: ApiClient,
    config: AgentConfig,
    node_uid: tokio::sync::watch::Receiver<String>,
) {
    let renew_every = config.lease_duration / 4;
    loop {
        let owner_uid = node_uid.borrow().clone();
        if let Err(error) = renew(&mut client, &config, &owner_uid).await {
            tracing::warn!(%error, "renewing the node lease");
        }
        tokio::time::sleep(renew_every).await;
    }
}

async fn renew(
    client: &mut ApiClient,
    config: &AgentConfig,
    owner_uid: &str,
) -> Result<(), AgentError> {
    let name = &config.node.name;
    let (_, now) = now();
    let seconds = config.lease_duration.as_secs().max(1) as i32;
    match client.get(Kind::Lease, Some(LEASE_NAMESPACE), name).await {
        Ok(Object::Lease(mut lease)) => {
            // A Node registered anew has a new uid: a reference to the old
            // one would have the garbage collector delete this Lease.
            let owned = lease
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.kind == "Node" && r.uid == owner_uid);
            if !owned {
                lease.metadata.owner_references = Some(vec![node_owner(name, owner_uid)]);
            }
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            spec.holder_identity = Some(name.clone());
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(now);
            client.update(&Object::Lease(lease), false).await?;
            Ok(())
        }
        Ok(other) => Err(AgentError::NotANode(other.kind())),
        Err(ApiError::NotFound(_)) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(LEASE_NAMESPACE.into()),
                    owner_references: Some(vec![node_owner(name, owner_uid)]),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(name.clone()),
                    lease_duration_seconds: Some(seconds),
                    renew_time: Some(now),
                    ..LeaseSpec::default()
                }),
            };
            client
                .create(&Object::Lease(Box::new(lease)), false)
                .await?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

fn node_owner(name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.to_string(),
        uid: uid.to_string(),
        ..OwnerReference::default()
    }
}

/// Starts the pods side of the agent: a reflector over the pods bound to
/// this node feeding the pod manager's queue, its workers, and the
/// housekeeping that releases pods the API no longer has.
pub async fn run_pods(client: ApiClient, manager: std::sync::Arc<pods::PodManager>) {
    use orch_core::runtime::{Change, ObjectRef, Selection, reflector, run_workers};
    let handler: reflector::Handler = {
        let queue = manager.queue.clone();
        std::sync::Arc::new(move |change: Change| {
            let object = match &change {
                Change::Applied { new, .. } => new,
                Change::Deleted(old) => old,
            };
            queue.add(ObjectRef::of(object));
        })
    };
    let (synced, mut is_synced) = tokio::sync::watch::channel(false);
    let selection = Selection {
        field_selector: format!("spec.nodeName={}", manager.node),
        ..Selection::default()
    };
    tokio::spawn(reflector::reflect_selected(
        client.clone(),
        Kind::Pod,
        selection,
        manager.cache.clone(),
        handler,
        synced,
    ));
    // Pods on disk are judged against a complete list, not a partial one.
    let _ = is_synced.wait_for(|synced| *synced).await;
    tokio::spawn(manager.clone().housekeeping());
    run_workers("pods", manager.queue.clone(), POD_WORKERS, move |key| {
        let manager = manager.clone();
        let mut client = client.clone();
        async move { manager.reconcile(&mut client, key).await }
    })
    .await;
}

/// Pods worked on at once (each pod by one worker at a time). Generous:
/// a pod being stopped holds its worker for its grace period, and an image
/// pull for its download.
const POD_WORKERS: usize = 16;
