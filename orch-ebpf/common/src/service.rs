//! Socket-level service load balancing (the kube-proxy replacement for
//! ClusterIP): the cgroup `connect4`/`sendmsg4` programs look the
//! destination up in [`SERVICES_MAP`], pick a backend slot from
//! [`BACKENDS_MAP`] and rewrite the socket's destination; `recvmsg4` and
//! `getpeername4` translate the backend back to the service address through
//! [`SOCK_REVNAT_MAP`], so applications see the address they dialled.
//!
//! Addresses and ports are kept in network byte order, as the kernel hands
//! them to the programs (`user_ip4`, and `user_port`'s low 16 bits).

/// Frontends: {service address, port, protocol} -> {id, backend count}.
pub const SERVICES_MAP: &str = "SERVICES";
/// Backends: {service id, slot} -> {address, port}.
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Reverse translation: {socket cookie, backend} -> the service dialled.
pub const SOCK_REVNAT_MAP: &str = "SOCK_REVNAT";
/// sessionAffinity: {client, service id} -> the backend it was given (LRU).
pub const AFFINITY_MAP: &str = "AFFINITY";
/// Per service id, per CPU: connections balanced, packets and bytes
/// translated.
pub const SERVICE_COUNTERS_MAP: &str = "SERVICE_COUNTERS";

pub const SOCK_CONNECT4_PROG: &str = "sock4_connect";
pub const SOCK_SENDMSG4_PROG: &str = "sock4_sendmsg";
pub const SOCK_RECVMSG4_PROG: &str = "sock4_recvmsg";
pub const SOCK_GETPEERNAME4_PROG: &str = "sock4_getpeername";

pub const SERVICES_MAX_ENTRIES: usize = 65_536;
pub const BACKENDS_MAX_ENTRIES: usize = 262_144;
pub const SOCK_REVNAT_MAX_ENTRIES: usize = 262_144;
pub const AFFINITY_MAX_ENTRIES: usize = 65_536;

/// IP protocol numbers, as in `ServiceKey::protocol`.
pub const PROTOCOL_TCP: u8 = 6;
pub const PROTOCOL_UDP: u8 = 17;

/// A service frontend: what a client dials.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    /// [`PROTOCOL_TCP`] or [`PROTOCOL_UDP`].
    pub protocol: u8,
    pub pad: u8,
}

/// A frontend's backends: slots `0..backends` of service `id` in
/// [`BACKENDS_MAP`]. Writers fill slots before raising `backends` and lower
/// it before removing slots; a reader that read the count just before a
/// shrink and finds its slot gone reads the count again, so a live
/// service is never refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceEntry {
    pub id: u32,
    /// Number of backend slots in use; 0 refuses new connections
    /// (ECONNREFUSED at connect, as a service without ready endpoints must).
    pub backends: u32,
    /// sessionAffinity ClientIP: a client keeps its backend while it
    /// connects again within this many seconds of its last connection
    /// (0: no affinity).
    pub affinity_seconds: u32,
    pub pad: u32,
}

/// What the balancers did for one service id (on one CPU; readers sum).
/// Connections: sockets connected (ClusterIP) and flows begun (NodePort);
/// packets and bytes: datagrams sent through the socket programs and
/// packets translated in tc (bytes only where tc sees them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounters {
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Whom an affinity belongs to: a pod's network namespace (socket
/// programs: all of a pod's sockets share its address, and an unbound
/// socket has none yet) or a client address (packets from outside).
pub const AFFINITY_SCOPE_NETNS: u32 = 0;
pub const AFFINITY_SCOPE_ADDRESS: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// A network namespace cookie, or an IPv4 address (network byte order).
    pub client: u64,
    pub service: u32,
    /// [`AFFINITY_SCOPE_NETNS`] or [`AFFINITY_SCOPE_ADDRESS`].
    pub scope: u32,
}

/// The backend a client was given, and when it last connected. The
/// backend is kept only while its slot still holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AffinityEntry {
    /// Monotonic nanoseconds (bpf_ktime_get_ns).
    pub last_used: u64,
    pub slot: u32,
    /// Backend address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub pad: [u8; 6],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service: u32,
    pub slot: u32,
}

/// A backend (a ready endpoint's address and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub address: u32,
    /// Port, network byte order.
    pub port: u16,
    pub pad: u16,
}

/// A translated socket and the backend it was sent to (a UDP socket may
/// talk to several services at once).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub cookie: u64,
    /// Backend address, network byte order.
    pub address: u32,
    /// Backend port, network byte order.
    pub port: u16,
    pub pad: u16,
}

/// The service address a translated socket dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevNatEntry {
    /// Service address, network byte order.
    pub address: u32,
    /// Service port, network byte order.
    pub port: u16,
    pub pad: u16,
}

// SAFETY: all are repr(C), hold only integers and have explicit padding
// fields, so every bit pattern is a valid value and none has hidden
// padding.
#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatEntry {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for AffinityEntry {}
}
