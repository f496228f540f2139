//! Packet-level service translation (NodePort): what the socket programs
//! cannot cover, because the client is outside the node. The tc programs
//! keep an LRU connection table: every translated flow has two entries,
//! one for each direction, each mapping the tuple a packet arrives with to
//! the tuple it leaves with, so both directions are one lookup and one
//! rewrite.

/// {tuple as it arrives} -> {tuple as it leaves}.
pub const CONNTRACK_MAP: &str = "CONNTRACK";
pub const CONNTRACK_MAX_ENTRIES: usize = 262_144;

/// The node's own address ([`NodeConfig`] at index 0), the source of
/// flows sent to a backend on another node.
pub const NODE_CONFIG_MAP: &str = "NODE_CONFIG";

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeConfig {
    /// IPv4, network byte order (0: not set; the address dialled is used).
    pub address: u32,
}

/// A flow's addresses and ports, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_address: u32,
    pub dst_address: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    pub pad: [u8; 3],
}

/// What a flow's packets are rewritten to (network byte order), and how
/// long the entry lives. The entry of the other direction is keyed by this
/// one's translated tuple reversed, so both are found from either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEntry {
    pub src_address: u32,
    pub dst_address: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// The service (id in the service table) the flow belongs to, for its
    /// counters.
    pub service: u32,
    /// Non-zero once this direction sent a FIN or RST: the entry then
    /// lives [`CLOSING_LIFETIME_NS`] more.
    pub closing: u32,
    pub pad: u32,
    /// bpf_ktime_get_ns of the last packet (refreshed at most every
    /// [`REFRESH_NS`]).
    pub last_seen: u64,
}

/// How long an idle entry lives: TCP (as Cilium's default), other
/// protocols, and TCP after a FIN or RST. An expired entry is gone: a
/// packet with its tuple starts a new flow (a new backend pick).
pub const TCP_LIFETIME_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const UDP_LIFETIME_NS: u64 = 60 * 1_000_000_000;
pub const CLOSING_LIFETIME_NS: u64 = 10 * 1_000_000_000;
/// `last_seen` is rewritten at most this often (a map update per packet
/// would cost more than the lookup).
pub const REFRESH_NS: u64 = 1_000_000_000;

/// Source ports SNAT uses on the node's address: above Linux's default
/// `ip_local_port_range` (32768-60999), so they never collide with the
/// node's own sockets. Keep the node's local port range below 61000.
pub const SNAT_PORT_FIRST: u16 = 61_000;
pub const SNAT_PORT_COUNT: u16 = 4_536;

// SAFETY: repr(C), integers only, explicit padding: every bit pattern is
// a valid value.
#[cfg(feature = "user")]
mod plain_data {
    use super::*;
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for NodeConfig {}
}
