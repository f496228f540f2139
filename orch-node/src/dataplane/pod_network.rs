//! Pod networking on one node (what a CNI plugin does for the kubelet, done
//! by the agent itself): every pod sandbox gets a veth pair, `eth0` inside
//! with a /32 from the node's podCIDR and a default route to a link-local
//! gateway whose neighbour entry is the host veth's MAC, so the pod never
//! ARPs for it; the host side carries orch-ebpf's `pod_from_pod` (tc
//! ingress) and a /32 route for the host's own traffic to the pod. The
//! node's interface carries `pod_from_net`, which hands other nodes'
//! packets for local pods straight to them. Local pods are listed in the
//! pinned `POD_ENDPOINTS` map; addresses are kept by [`PodAddresses`].

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use aya::Ebpf;
use aya::maps::{HashMap, MapData};
use aya::programs::SchedClassifier;
use aya::programs::TcAttachType;
use orch_ebpf_common::nat::{NODE_CONFIG_MAP, NodeConfig};
use orch_ebpf_common::pod::{
    EndpointKey, POD_ENDPOINTS_MAP, POD_FROM_NET_PROG, POD_FROM_POD_PROG, PodEndpoint,
};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::{RouteProtocol, RouteScope};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use sha2::Digest as _;

use super::{DataplaneError, PinLayout, remove_pin};
use crate::net::NetError;
use crate::net::ipam::{PodAddresses, PodCidr};
use crate::net::netlink::{self, Interface, failed, is_gone};

/// The pod's gateway: link-local, so it takes no address of the podCIDR
/// and means the same in every pod.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's side of its veth pair.
pub const POD_INTERFACE: &str = "eth0";
/// Routes orch writes carry this protocol number, so they are told apart
/// from everyone else's (`ip route show proto 193`).
pub const ROUTE_PROTOCOL: u8 = 193;

/// The host-side veth of pod `uid`: `orch` and 11 hex digits of the uid's
/// SHA-256 (interface names hold 15 bytes).
pub fn host_interface_name(uid: &str) -> String {
    let digest = sha2::Sha256::digest(uid.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("orch{}", &hex[..11])
}

/// A pod's network, as set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub address: Ipv4Addr,
    pub host_interface: String,
}

/// The node's pod networking. Netlink and tc calls act in the network
/// namespace of the thread that made it (the node's).
pub struct PodNetwork {
    layout: PinLayout,
    netlink: Handle,
    ebpf: Mutex<Ebpf>,
    endpoints: Mutex<HashMap<MapData, EndpointKey, PodEndpoint>>,
    addresses: Mutex<PodAddresses>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl PodNetwork {
    /// Loads the routing programs (maps reused from their pins), attaches
    /// `pod_from_net` to `node_interface`, tells the programs the node's
    /// address (SNAT's source) and opens the address file in `state_dir`.
    /// Pods set up by an earlier agent keep their pinned links and map
    /// entries: their traffic never stopped.
    pub fn start(
        layout: &PinLayout,
        state_dir: &Path,
        node_interface: &str,
        node_address: Ipv4Addr,
    ) -> Result<Self, DataplaneError> {
        let addresses = PodAddresses::open(state_dir).map_err(NetError::from)?;
        let mut ebpf = super::load(layout)?;
        super::kernel_logs::forward(&mut ebpf, "pod network");
        for name in [POD_FROM_POD_PROG, POD_FROM_NET_PROG] {
            let program = classifier(&mut ebpf, name)?;
            program
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
            super::tc::pin_program(layout, name, program)?;
        }
        // The node forwards: NodePort flows to other nodes' pods, pods'
        // traffic (bpf_fib_lookup answers only where forwarding is on).
        netlink::set_interface_sysctl(node_interface, "forwarding", "1")?;
        let from_net = classifier(&mut ebpf, POD_FROM_NET_PROG)?;
        super::tc::attach_tcx(
            layout,
            POD_FROM_NET_PROG,
            from_net,
            node_interface,
            TcAttachType::Ingress,
        )?;
        adopt_pod_links(layout, &mut ebpf)?;
        let config_path = layout.map(NODE_CONFIG_MAP);
        let config = ebpf
            .map_mut(NODE_CONFIG_MAP)
            .ok_or(DataplaneError::MissingMap(NODE_CONFIG_MAP))?;
        aya::maps::Array::<_, NodeConfig>::try_from(config)
            .and_then(|mut config| {
                let address = u32::from(node_address).to_be();
                config.set(0, NodeConfig { address }, 0)
            })
            .map_err(|source| DataplaneError::Map {
                path: config_path,
                source,
            })?;
        let map = ebpf
            .take_map(POD_ENDPOINTS_MAP)
            .ok_or(DataplaneError::MissingMap(POD_ENDPOINTS_MAP))?;
        let endpoints = HashMap::try_from(map).map_err(|source| DataplaneError::Map {
            path: layout.map(POD_ENDPOINTS_MAP),
            source,
        })?;
        Ok(Self {
            layout: layout.clone(),
            netlink: netlink::connect()?,
            ebpf: Mutex::new(ebpf),
            endpoints: Mutex::new(endpoints),
            addresses: Mutex::new(addresses),
        })
    }

    /// The address pod `uid` holds, if any.
    pub fn address_of(&self, uid: &str) -> Option<Ipv4Addr> {
        lock(&self.addresses).address_of(uid)
    }

    /// The pods holding an address.
    pub fn holders(&self) -> Vec<String> {
        lock(&self.addresses)
            .allocated()
            .values()
            .cloned()
            .collect()
    }

    /// Gives pod `uid` (network namespace bound at `netns`) its interface
    /// and an address from `cidr`. A half-made veth of an earlier try is
    /// made again; the address stays the pod's.
    pub async fn add(
        &self,
        cidr: PodCidr,
        uid: &str,
        netns: &Path,
    ) -> Result<PodInterface, DataplaneError> {
        let address = lock(&self.addresses)
            .allocate(cidr, uid)
            .map_err(NetError::from)?;
        let host_name = host_interface_name(uid);
        let made = self.plumb(address, &host_name, netns).await;
        if let Err(error) = made {
            let _ = self.delete_interface(&host_name).await;
            return Err(error);
        }
        tracing::info!(pod_uid = %uid, %address, interface = %host_name, "pod network up");
        Ok(PodInterface {
            address,
            host_interface: host_name,
        })
    }

    async fn plumb(
        &self,
        address: Ipv4Addr,
        host_name: &str,
        netns: &Path,
    ) -> Result<(), DataplaneError> {
        self.delete_interface(host_name).await?;
        let namespace = std::fs::File::open(netns).map_err(|source| DataplaneError::Io {
            path: netns.to_path_buf(),
            source,
        })?;
        // The peer is made inside the pod's namespace under its final name.
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(POD_INTERFACE)
            .setns_by_fd(namespace.as_raw_fd())
            .build();
        let pair = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host_name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        self.netlink
            .link()
            .add(pair)
            .execute()
            .await
            .map_err(|e| failed(format!("creating veth {host_name}"), e))?;
        let host = netlink::interface(&self.netlink, host_name)
            .await?
            .ok_or_else(|| gone(host_name))?;
        let pod = configure_pod_side(netns, address, host.mac).await?;
        self.netlink
            .link()
            .set(LinkUnspec::new_with_index(host.index).up().build())
            .execute()
            .await
            .map_err(|e| failed(format!("setting {host_name} up"), e))?;
        // bpf_fib_lookup forwards only from interfaces with forwarding on.
        netlink::set_interface_sysctl(host_name, "forwarding", "1")?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(address, 32)
            .output_interface(host.index)
            .scope(RouteScope::Link)
            .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
            .build();
        self.netlink
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| failed(format!("route {address}/32 dev {host_name}"), e))?;
        let endpoint = PodEndpoint {
            ifindex: host.index,
            pod_mac: pod.mac,
            host_mac: host.mac,
        };
        let key = EndpointKey {
            address: u32::from(address).to_be(),
        };
        lock(&self.endpoints)
            .insert(key, endpoint, 0)
            .map_err(|source| DataplaneError::Map {
                path: self.layout.map(POD_ENDPOINTS_MAP),
                source,
            })?;
        let mut ebpf = lock(&self.ebpf);
        let program = classifier(&mut ebpf, POD_FROM_POD_PROG)?;
        super::tc::attach_tcx(
            &self.layout,
            POD_FROM_POD_PROG,
            program,
            host_name,
            TcAttachType::Ingress,
        )
    }

    /// Takes pod `uid`'s interface, map entry and address away
    /// (idempotent).
    pub async fn remove(&self, uid: &str) -> Result<(), DataplaneError> {
        let host_name = host_interface_name(uid);
        if let Some(address) = self.address_of(uid) {
            let key = EndpointKey {
                address: u32::from(address).to_be(),
            };
            match lock(&self.endpoints).remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DataplaneError::Map {
                        path: self.layout.map(POD_ENDPOINTS_MAP),
                        source,
                    });
                }
            }
        }
        self.delete_interface(&host_name).await?;
        lock(&self.addresses).release(uid).map_err(NetError::from)?;
        Ok(())
    }

    /// Deletes a host veth (its peer goes with it) and its link pin; the
    /// /32 route goes with the interface.
    async fn delete_interface(&self, host_name: &str) -> Result<(), DataplaneError> {
        if let Some(host) = netlink::interface(&self.netlink, host_name).await? {
            match self.netlink.link().del(host.index).execute().await {
                Ok(()) => {}
                Err(error) if is_gone(&error) => {}
                Err(error) => return Err(failed(format!("deleting {host_name}"), error).into()),
            }
        }
        remove_pin(&self.layout.link(POD_FROM_POD_PROG, host_name))?;
        Ok(())
    }

    /// Every local pod in the map: address -> endpoint.
    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, PodEndpoint)>, DataplaneError> {
        let map = lock(&self.endpoints);
        map.iter()
            .map(|entry| {
                entry
                    .map(|(key, value)| (Ipv4Addr::from(u32::from_be(key.address)), value))
                    .map_err(|source| DataplaneError::Map {
                        path: self.layout.map(POD_ENDPOINTS_MAP),
                        source,
                    })
            })
            .collect()
    }
}

/// The pods an earlier agent set up keep their links, which get this
/// agent's `pod_from_pod` swapped in (atomically, inside each tcx link):
/// an upgraded agent upgrades every pod's program, with no packet
/// between the old and the new. The pin of a veth that is gone goes.
fn adopt_pod_links(layout: &PinLayout, ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    let prefix = format!("link_{POD_FROM_POD_PROG}_");
    let entries = std::fs::read_dir(layout.node_dir()).map_err(|source| DataplaneError::Io {
        path: layout.node_dir().to_path_buf(),
        source,
    })?;
    let program = classifier(ebpf, POD_FROM_POD_PROG)?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(interface) = name.strip_prefix(&prefix) else {
            continue;
        };
        if nix::net::if_::if_nametoindex(interface).is_err() {
            tracing::info!(%interface, "a pod's link without its veth: unpinned");
            remove_pin(&entry.path())?;
            continue;
        }
        super::tc::attach_tcx(
            layout,
            POD_FROM_POD_PROG,
            program,
            interface,
            TcAttachType::Ingress,
        )?;
    }
    Ok(())
}

fn gone(name: &str) -> DataplaneError {
    DataplaneError::Io {
        path: PathBuf::from(format!("/sys/class/net/{name}")),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DataplaneError::Program { name, source })
}

/// Inside the pod: `eth0` up with `address`/32, the gateway's neighbour
/// entry pinned to the host veth's MAC, and the default route through it.
async fn configure_pod_side(
    netns: &Path,
    address: Ipv4Addr,
    host_mac: [u8; 6],
) -> Result<Interface, DataplaneError> {
    let inside = netlink::connect_in(netns)?;
    let eth0 = netlink::interface(&inside, POD_INTERFACE)
        .await?
        .ok_or_else(|| gone(POD_INTERFACE))?;
    inside
        .link()
        .set(LinkUnspec::new_with_index(eth0.index).up().build())
        .execute()
        .await
        .map_err(|e| failed("setting the pod's eth0 up", e))?;
    inside
        .address()
        .add(eth0.index, IpAddr::V4(address), 32)
        .replace()
        .execute()
        .await
        .map_err(|e| failed(format!("address {address}/32 on the pod's eth0"), e))?;
    inside
        .neighbours()
        .add(eth0.index, IpAddr::V4(GATEWAY))
        .link_layer_address(&host_mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(|e| failed("the gateway's neighbour entry in the pod", e))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(eth0.index)
        .gateway(GATEWAY)
        .onlink()
        .build();
    inside
        .route()
        .add(default)
        .replace()
        .execute()
        .await
        .map_err(|e| failed("the pod's default route", e))?;
    Ok(eth0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_and_differ() {
        let a = host_interface_name("6f1c0a0e-0000-4000-8000-000000000001");
        let b = host_interface_name("6f1c0a0e-0000-4000-8000-000000000002");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("orch"));
        assert_ne!(a, b);
    }
}
