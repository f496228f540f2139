//! Packet-level service translation (NodePort): what the socket programs
//! cannot cover, because the client is outside the node. The tc programs
//! keep an LRU connection table: every translated flow has two entries,
//! one for each direction, each mapping the tuple a packet arrives with to
//! the tuple it leaves with, so both directions are one lookup and one
//! rewrite.

/// {tuple as it arrives} -> {tuple as it leaves}.
pub const CONNTRACK_MAP: &str = "CONNTRACK";
pub const CONNTRACK_MAX_ENTRIES: usize = 262_144;

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

/// What a flow's packets are rewritten to (network byte order).
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
}

// SAFETY: repr(C), integers only, explicit padding: every bit pattern is
// a valid value.
#[cfg(feature = "user")]
mod plain_data {
    use super::*;
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for NatEntry {}
}
