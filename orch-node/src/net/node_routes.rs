//! Routes to the other nodes' pods: for every Node with a podCIDR and an
//! InternalIP, `podCIDR via InternalIP` in the node's main table (protocol
//! [`ROUTE_PROTOCOL`], so orch's routes are told apart from everyone
//! else's), kept in step with the Node objects; pods' packets for other
//! nodes take these routes through `pod_from_pod`'s FIB lookup, with no
//! overlay (the nodes share a network). The node's own podCIDR is
//! published for the pod network to allocate from.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

use futures_util::TryStreamExt as _;
use k8s_openapi::api::core::v1::Node;
use orch_core::api::ApiClient;
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Handler, Next, ObjectRef, WorkQueue, reflector};
use rtnetlink::Handle;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};

use super::NetError;
use super::ipam::PodCidr;
use super::netlink::{failed, is_gone};
use crate::dataplane::pod_network::ROUTE_PROTOCOL;

/// One route to another node's pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeRoute {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub via: Ipv4Addr,
}

/// The podCIDR of a Node, when it has a valid IPv4 one.
pub fn pod_cidr(node: &Node) -> Option<PodCidr> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|cidr| PodCidr::parse(cidr).ok())
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

/// The routes node `own` wants: one per other Node.
pub fn desired<'a>(nodes: impl IntoIterator<Item = &'a Node>, own: &str) -> BTreeSet<NodeRoute> {
    nodes
        .into_iter()
        .filter(|node| node.metadata.name.as_deref() != Some(own))
        .filter_map(|node| {
            let cidr = pod_cidr(node)?;
            Some(NodeRoute {
                network: cidr.network(),
                prefix: cidr.prefix(),
                via: internal_ip(node)?,
            })
        })
        .collect()
}

/// orch's routes in the main table now.
pub async fn installed(handle: &Handle) -> Result<BTreeSet<NodeRoute>, NetError> {
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut found = BTreeSet::new();
    while let Some(message) = routes
        .try_next()
        .await
        .map_err(|e| failed("listing routes", e))?
    {
        if u8::from(message.header.protocol) != ROUTE_PROTOCOL {
            continue;
        }
        if let Some(route) = node_route(&message) {
            found.insert(route);
        }
    }
    Ok(found)
}

fn node_route(message: &RouteMessage) -> Option<NodeRoute> {
    let mut network = None;
    let mut via = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(address)) => network = Some(*address),
            RouteAttribute::Gateway(RouteAddress::Inet(address)) => via = Some(*address),
            _ => {}
        }
    }
    Some(NodeRoute {
        network: network?,
        prefix: message.header.destination_prefix_length,
        via: via?,
    })
}

fn message(route: &NodeRoute) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.network, route.prefix)
        .gateway(route.via)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .kind(RouteType::Unicast)
        .build()
}

/// Makes orch's routes exactly `wanted`: stale ones deleted, the rest
/// added or replaced (a node that changed address).
pub async fn apply(handle: &Handle, wanted: &BTreeSet<NodeRoute>) -> Result<(), NetError> {
    let wanted_networks: BTreeSet<(Ipv4Addr, u8)> =
        wanted.iter().map(|r| (r.network, r.prefix)).collect();
    for stale in installed(handle).await? {
        if wanted_networks.contains(&(stale.network, stale.prefix)) {
            continue;
        }
        match handle.route().del(message(&stale)).execute().await {
            Ok(()) => {}
            Err(error) if is_gone(&error) => {}
            Err(error) => {
                return Err(failed(
                    format!("deleting route {}/{}", stale.network, stale.prefix),
                    error,
                ));
            }
        }
    }
    for route in wanted {
        handle
            .route()
            .add(message(route))
            .replace()
            .execute()
            .await
            .map_err(|e| {
                failed(
                    format!("route {}/{} via {}", route.network, route.prefix, route.via),
                    e,
                )
            })?;
    }
    Ok(())
}

/// Follows the Nodes and keeps the routes (and the own podCIDR) current.
pub struct NodeRouteSync {
    own: String,
    netlink: Handle,
    cache: Arc<Cache>,
    queue: Arc<WorkQueue<ObjectRef>>,
    own_cidr: tokio::sync::watch::Sender<Option<PodCidr>>,
}

/// Every Node change leads to one recomputation of the whole table.
fn all_nodes() -> ObjectRef {
    ObjectRef {
        kind: Kind::Node,
        namespace: None,
        name: String::new(),
    }
}

impl NodeRouteSync {
    /// A sync for node `own`, writing routes through `netlink` (a handle
    /// in the node's network namespace).
    pub fn new(own: &str, netlink: Handle) -> Arc<Self> {
        Arc::new(Self {
            own: own.to_string(),
            netlink,
            cache: Cache::new(),
            queue: WorkQueue::new(),
            own_cidr: tokio::sync::watch::channel(None).0,
        })
    }

    /// The node's own podCIDR as it becomes known (the control plane
    /// assigns it after the Node registers).
    pub fn own_pod_cidr(&self) -> tokio::sync::watch::Receiver<Option<PodCidr>> {
        self.own_cidr.subscribe()
    }

    /// Follows Nodes through `client` until dropped.
    pub async fn run(self: Arc<Self>, client: ApiClient) {
        let queue = self.queue.clone();
        let handler: Handler = Arc::new(move |change: Change| {
            if let Change::Applied { new, .. } | Change::Deleted(new) = &change
                && new.kind() == Kind::Node
            {
                queue.add(all_nodes());
            }
        });
        let (synced, mut listed) = tokio::sync::watch::channel(false);
        tokio::spawn(reflector::reflect(
            client,
            Kind::Node,
            self.cache.clone(),
            handler,
            synced,
        ));
        // Not before every Node is listed: a table computed from half a
        // list would delete routes to the nodes not seen yet.
        if listed.wait_for(|listed| *listed).await.is_err() {
            return;
        }
        let sync = self.clone();
        orch_core::runtime::run_workers("node-routes", self.queue.clone(), 1, move |_| {
            let sync = sync.clone();
            async move { sync.reconcile().await }
        })
        .await;
    }

    async fn reconcile(&self) -> Result<Next, NetError> {
        let nodes = self.cache.select_kind(Kind::Node, |_| true);
        let nodes: Vec<&Node> = nodes
            .iter()
            .filter_map(|object| match object.as_ref() {
                Object::Node(node) => Some(node.as_ref()),
                _ => None,
            })
            .collect();
        let own = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(self.own.as_str()))
            .and_then(|n| pod_cidr(n));
        self.own_cidr.send_if_modified(|current| {
            let changed = *current != own;
            *current = own;
            changed
        });
        apply(&self.netlink, &desired(nodes.iter().copied(), &self.own)).await?;
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": ip.map(|ip| vec![
                serde_json::json!({"type": "Hostname", "address": name}),
                serde_json::json!({"type": "InternalIP", "address": ip}),
            ])},
        }))
        .expect("node")
    }

    #[test]
    fn every_other_node_with_a_cidr_and_an_address_gets_a_route() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), Some("10.0.0.1")),
            node("b", Some("10.244.1.0/24"), Some("10.0.0.2")),
            node("c", None, Some("10.0.0.3")),
            node("d", Some("10.244.3.0/24"), None),
            node("e", Some("fd00::/64"), Some("10.0.0.5")),
        ];
        let routes = desired(&nodes, "a");
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            vec![NodeRoute {
                network: "10.244.1.0".parse().unwrap(),
                prefix: 24,
                via: "10.0.0.2".parse().unwrap(),
            }]
        );
        assert_eq!(
            pod_cidr(&nodes[0]).map(|c| c.to_string()).as_deref(),
            Some("10.244.0.0/24")
        );
    }
}
