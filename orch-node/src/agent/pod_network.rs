//! What the agent does for a pod's network (the kubelet's CNI calls, done
//! in process): the pod's interface and address from the node's podCIDR,
//! the address in the pod's status, and the pod's processes placed in the
//! cgroup2 subtree where ClusterIP balancing is attached.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PodIP, PodStatus};

use orch_core::api::ApiClient;

use crate::dataplane::pod_network::PodNetwork;
use crate::dataplane::{DataplaneError, PinLayout};
use crate::net::ipam::PodCidr;

/// How pods are connected (both parts optional: an agent without
/// `--pod-network-interface` leaves pods with loopback only, one without
/// `--service-cgroup` gives no ClusterIP balancing).
#[derive(Clone, Default)]
pub struct PodPlumbing {
    pub network: Option<Arc<PodNetworking>>,
    /// The cgroup2 directory the socket balancer is attached to; pod
    /// shims (and so their containers) are moved into it.
    pub service_cgroup: Option<PathBuf>,
}

/// The node's pod network and the podCIDR it allocates from.
pub struct PodNetworking {
    pub pods: PodNetwork,
    pub pod_cidr: tokio::sync::watch::Receiver<Option<PodCidr>>,
}

impl PodNetworking {
    /// The pod network on `interface`: programs attached, addresses of pods
    /// this node no longer holds released, routes and the podCIDR followed
    /// from the Node objects.
    pub async fn start(
        layout: &PinLayout,
        config: &super::AgentConfig,
        interface: &str,
        client: ApiClient,
    ) -> Result<Arc<Self>, DataplaneError> {
        use crate::net::{netlink, node_routes::NodeRouteSync};
        let address = config
            .node
            .internal_ip
            .parse()
            .map_err(|_| DataplaneError::InvalidName {
                what: "node address",
                value: config.node.internal_ip.clone(),
                reason: "not an IPv4 address",
            })?;
        let pods = PodNetwork::start(layout, &config.state_dir, interface, address)?;
        release_vanished(&pods, &config.state_dir.join("pods")).await?;
        let routes = NodeRouteSync::new(&config.node.name, netlink::connect()?);
        let pod_cidr = routes.own_pod_cidr();
        tokio::spawn(routes.run(client));
        Ok(Arc::new(PodNetworking { pods, pod_cidr }))
    }
}

/// Releases the network of every pod holding an address whose directory
/// is gone (it vanished while no agent ran, or its teardown failed).
async fn release_vanished(pods: &PodNetwork, pods_dir: &Path) -> Result<(), DataplaneError> {
    for uid in pods.holders() {
        if !pods_dir.join(&uid).exists() {
            pods.remove(&uid).await?;
            tracing::info!(pod_uid = %uid, "released the network of a pod no longer here");
        }
    }
    Ok(())
}

impl PodPlumbing {
    /// [`release_vanished`], logged rather than returned (housekeeping
    /// tries again).
    pub async fn release_vanished(&self, pods_dir: &Path) {
        if let Some(network) = &self.network
            && let Err(error) = release_vanished(&network.pods, pods_dir).await
        {
            tracing::warn!(%error, "releasing the network of vanished pods");
        }
    }

    /// Gives pod `uid` (network namespace at `netns`) its interface;
    /// Err is the waiting reason and message.
    pub async fn connect(&self, uid: &str, netns: &Path) -> Result<(), (String, String)> {
        let Some(network) = &self.network else {
            return Ok(());
        };
        let Some(cidr) = *network.pod_cidr.borrow() else {
            return Err((
                "ContainerCreating".into(),
                "network is not ready: the node has no podCIDR yet".into(),
            ));
        };
        network
            .pods
            .add(cidr, uid, netns)
            .await
            .map(|_| ())
            .map_err(|e| ("ContainerCreating".into(), format!("pod network: {e}")))
    }

    /// The address pod `uid` holds.
    pub fn address_of(&self, uid: &str) -> Option<Ipv4Addr> {
        self.network.as_ref()?.pods.address_of(uid)
    }

    /// Sets status.podIP and podIPs when the pod has an address.
    pub fn report(&self, uid: &str, status: &mut PodStatus) {
        if let Some(address) = self.address_of(uid) {
            status.pod_ip = Some(address.to_string());
            status.pod_ips = Some(vec![PodIP {
                ip: address.to_string(),
            }]);
        }
    }

    /// Takes pod `uid`'s interface and address away.
    pub async fn disconnect(&self, uid: &str) -> Result<(), String> {
        match &self.network {
            Some(network) => network.pods.remove(uid).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    /// Moves a new shim into the service cgroup before it starts any
    /// container, so everything the pod runs inherits it (libcontainer
    /// places containers in cgroup v1 only).
    pub fn place_shim(&self, pid: u32) -> Result<(), String> {
        let Some(cgroup) = &self.service_cgroup else {
            return Ok(());
        };
        let procs = cgroup.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(|e| format!("{}: {e}", procs.display()))
    }
}
