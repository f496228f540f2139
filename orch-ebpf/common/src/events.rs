//! Drop and trace events: what the programs did with a packet or a
//! connection that tcpdump cannot see (redirected between namespaces, or
//! dropped before any interface), sent to user space through a ring
//! buffer, rate-limited per CPU. Drops are always sent; traces only while
//! someone monitors ([`MONITOR_CONFIG_MAP`]).

/// The ring buffer of [`DataplaneEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Its size in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: usize = 1 << 20;
/// One [`MonitorConfig`] (index 0), written by the agent.
pub const MONITOR_CONFIG_MAP: &str = "MONITOR_CONFIG";
/// Per CPU: the event rate limiter's state.
pub const EVENT_RATE_MAP: &str = "EVENT_RATE";
/// Events per second per CPU at most (and the burst allowed).
pub const EVENTS_PER_SECOND: u64 = 1_000;

pub const EVENT_DROP: u8 = 1;
pub const EVENT_TRACE: u8 = 2;

/// Why a packet or connection was dropped.
pub const DROP_NO_BACKEND: u8 = 1;
pub const DROP_CONNTRACK_FULL: u8 = 2;
pub const DROP_REWRITE: u8 = 3;
pub const DROP_FIB_MISS: u8 = 4;
pub const DROP_TTL: u8 = 5;
pub const DROP_SPOOFED: u8 = 6;

/// What was done with a packet.
pub const TRACE_TO_POD: u8 = 1;
pub const TRACE_FORWARD: u8 = 2;
pub const TRACE_NODE_PORT: u8 = 3;
pub const TRACE_TO_STACK: u8 = 4;

/// The name of a drop or trace reason.
pub fn reason_name(kind: u8, reason: u8) -> &'static str {
    match (kind, reason) {
        (EVENT_DROP, DROP_NO_BACKEND) => "no backend",
        (EVENT_DROP, DROP_CONNTRACK_FULL) => "conntrack full",
        (EVENT_DROP, DROP_REWRITE) => "rewrite failed",
        (EVENT_DROP, DROP_FIB_MISS) => "FIB miss",
        (EVENT_DROP, DROP_TTL) => "TTL exceeded",
        (EVENT_DROP, DROP_SPOOFED) => "source not the pod's",
        (EVENT_TRACE, TRACE_TO_POD) => "to local pod",
        (EVENT_TRACE, TRACE_FORWARD) => "forwarded",
        (EVENT_TRACE, TRACE_NODE_PORT) => "NodePort flow",
        (EVENT_TRACE, TRACE_TO_STACK) => "to the stack",
        _ => "unknown",
    }
}

/// One event (network byte order for addresses and ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneEvent {
    /// Monotonic nanoseconds (bpf_ktime_get_ns).
    pub timestamp: u64,
    /// [`EVENT_DROP`] or [`EVENT_TRACE`].
    pub kind: u8,
    pub reason: u8,
    /// IP protocol number (0: not known, as for a socket not yet sent).
    pub protocol: u8,
    pub pad: u8,
    /// Where it happened (0 for the socket programs).
    pub ifindex: u32,
    pub src_address: u32,
    pub dst_address: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Where a translated packet goes (0: not translated).
    pub to_address: u32,
    pub to_port: u16,
    pub pad2: u16,
    pub pad3: u32,
}

/// What the agent asks of the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorConfig {
    /// Non-zero: send trace events too.
    pub traces: u32,
}

/// The rate limiter of one CPU: a token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRate {
    pub tokens: u64,
    /// bpf_ktime_get_ns of the last refill.
    pub refilled: u64,
}

// SAFETY: repr(C), integers only, explicit padding.
#[cfg(feature = "user")]
mod plain_data {
    use super::*;
    unsafe impl aya::Pod for DataplaneEvent {}
    unsafe impl aya::Pod for MonitorConfig {}
    unsafe impl aya::Pod for EventRate {}
}
