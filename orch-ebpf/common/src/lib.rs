//! Map key and value types shared by orch's kernel programs (`orch-ebpf`) and
//! the node agent (`orch-node`). Everything here is `#[repr(C)]` plain data so
//! both sides agree on the layout byte for byte; BTF carries the field names so
//! `bpftool map dump` prints them.
#![no_std]

pub mod events;
pub mod nat;
pub mod pod;
pub mod service;

/// Name of the per-interface traffic counter map (also its pin name).
/// Kernel object names are at most 15 bytes and pin names may not contain '.'.
pub const IFACE_COUNTERS_MAP: &str = "IFACE_COUNTERS";
/// Program counting traffic entering an interface (tc ingress).
pub const IFACE_INGRESS_PROG: &str = "iface_count_ingress";
/// Program counting traffic leaving an interface (tc egress).
pub const IFACE_EGRESS_PROG: &str = "iface_count_egress";
/// Capacity of [`IFACE_COUNTERS_MAP`]: two directions for this many interfaces.
pub const IFACE_COUNTERS_MAX_ENTRIES: usize = 4096;

/// Every map the agent pins under the node's directory (by these names).
pub const PINNED_MAPS: [&str; 12] = [
    IFACE_COUNTERS_MAP,
    service::SERVICES_MAP,
    service::BACKENDS_MAP,
    service::SOCK_REVNAT_MAP,
    service::AFFINITY_MAP,
    service::SERVICE_COUNTERS_MAP,
    pod::POD_ENDPOINTS_MAP,
    nat::CONNTRACK_MAP,
    nat::NODE_CONFIG_MAP,
    events::EVENTS_MAP,
    events::MONITOR_CONFIG_MAP,
    events::EVENT_RATE_MAP,
];

/// Traffic direction, seen from the interface the program is attached to.
pub const DIRECTION_INGRESS: u32 = 0;
pub const DIRECTION_EGRESS: u32 = 1;

/// Key of the interface counter map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IfaceKey {
    /// Interface index in the network namespace the program runs in.
    pub ifindex: u32,
    /// [`DIRECTION_INGRESS`] or [`DIRECTION_EGRESS`].
    pub direction: u32,
}

/// Value of the interface counter map (per CPU; readers sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfaceCounters {
    /// Adds another CPU's share (user space sums the per-CPU values).
    pub fn add(&mut self, other: &IfaceCounters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

// SAFETY: both types are repr(C), contain only integers and have no padding
// (u32+u32 and u64+u64), so any bit pattern is a valid value.
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceKey {}
#[cfg(feature = "user")]
unsafe impl aya::Pod for IfaceCounters {}
