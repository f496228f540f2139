//! Pod routing: the tc programs on each pod's host-side veth
//! ([`POD_FROM_POD_PROG`]) and on the node's network interface
//! ([`POD_FROM_NET_PROG`]) deliver packets for a pod of this node straight
//! into its namespace with `bpf_redirect_peer`, using [`POD_ENDPOINTS_MAP`];
//! packets from a pod to anything else are forwarded by a FIB lookup and
//! `bpf_redirect_neigh`, so neither direction walks the host's IP stack.

/// The node's local pods: {pod address} -> {host veth, MACs}.
pub const POD_ENDPOINTS_MAP: &str = "POD_ENDPOINTS";

/// Ingress of a pod's host-side veth: what the pod sends.
pub const POD_FROM_POD_PROG: &str = "pod_from_pod";
/// Ingress of the node's network interface: what other nodes send.
pub const POD_FROM_NET_PROG: &str = "pod_from_net";

/// A node's pods at most (a /16 podCIDR's worth).
pub const POD_ENDPOINTS_MAX_ENTRIES: usize = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointKey {
    /// The pod's IPv4 address, network byte order.
    pub address: u32,
}

/// Where a local pod's packets go: into the peer of the host veth
/// `ifindex`, addressed from `host_mac` (the host veth) to `pod_mac` (the
/// pod's `eth0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The host-side veth, in the node's network namespace.
    pub ifindex: u32,
    pub pod_mac: [u8; 6],
    pub host_mac: [u8; 6],
}

// SAFETY: repr(C), integers and byte arrays only (4 + 6 + 6 bytes, no
// padding), so every bit pattern is a valid value.
#[cfg(feature = "user")]
mod plain_data {
    use super::*;
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for PodEndpoint {}
}
