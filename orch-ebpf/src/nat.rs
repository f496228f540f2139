//! NodePort (and LoadBalancer addresses) in tc: a packet for a node
//! address and NodePort, or for a LoadBalancer address, is sent to a
//! backend picked from the service table, through a connection table
//! (LRU) holding both directions of every translated flow: the client's
//! packets are rewritten to the backend (and, for a backend on another
//! node, from this node's address, so the replies come back here), the
//! backend's replies back to the address the client dialled. Types and map
//! names: `orch_ebpf_common::nat`.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_NO_COMMON_LRU, BPF_F_PSEUDO_HDR},
    btf_maps::{Array, LruHashMap},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::btf_map,
    programs::TcContext,
};
use orch_ebpf_common::events::{
    DROP_CONNTRACK_FULL, DROP_NO_BACKEND, DROP_REWRITE, TRACE_NODE_PORT,
};
use orch_ebpf_common::nat::{
    CLOSING_LIFETIME_NS, CONNTRACK_MAX_ENTRIES, FlowKey, NatEntry, NodeConfig, REFRESH_NS,
    SNAT_PORT_COUNT, SNAT_PORT_FIRST, TCP_LIFETIME_NS, UDP_LIFETIME_NS,
};
use orch_ebpf_common::service::Backend;
use orch_ebpf_common::service::{AFFINITY_SCOPE_ADDRESS, PROTOCOL_TCP, PROTOCOL_UDP, ServiceKey};

use aya_log_ebpf::debug;

use crate::events::{self, Subject};
use crate::lb::{Client, Pick, count, pick_backend};
use crate::packet::{
    IP_CHECKSUM, IP_DESTINATION, IP_FRAGMENT, IP_PROTOCOL, IP_SOURCE, IP_VERSION_IHL, L4, is_ipv4,
};

#[btf_map]
static CONNTRACK: LruHashMap<
    FlowKey,
    NatEntry,
    CONNTRACK_MAX_ENTRIES,
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// The node's own address (index 0), written by the agent.
#[btf_map]
static NODE_CONFIG: Array<NodeConfig, 1> = Array::new();

// Only headers without options are translated (the L4 header at `L4`).
const TCP_CHECKSUM: usize = L4 + 16;
const UDP_CHECKSUM: usize = L4 + 6;
/// Fragment offset and "more fragments": a fragment has no ports to read.
const FRAGMENTED: u16 = 0x3fff;
const TCP_FLAGS: usize = L4 + 13;
const TCP_FIN_OR_RST: u8 = 0x01 | 0x04;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// bpf_map_update_elem's BPF_NOEXIST: insert only if absent.
const NOEXIST: u64 = 1;

/// What the translation did with a packet.
pub enum Translated {
    /// Not a translated flow nor a NodePort: route it as it is.
    No,
    /// Rewritten: route it to its new destination (network byte order).
    To(u32),
    /// A packet that could not be translated: drop it.
    Drop,
    /// A new flow to a NodePort with no ready endpoint: the node's own
    /// stack gets it and refuses it at once (TCP RST, ICMP port
    /// unreachable for UDP), as kube-proxy's REJECT rules do, rather than
    /// letting the client wait for a timeout.
    Refuse,
}

/// What an event says of this packet: protocol, addresses, and ports when
/// it is TCP or UDP without options.
#[inline(always)]
pub fn subject(ctx: &TcContext) -> Subject {
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(flow) = flow_of(ctx) {
        return subject_of_flow(ifindex, &flow);
    }
    Subject {
        protocol: ctx.load(IP_PROTOCOL).unwrap_or(0),
        ifindex,
        src_address: ctx.load(IP_SOURCE).unwrap_or(0),
        dst_address: ctx.load(IP_DESTINATION).unwrap_or(0),
        ..Subject::default()
    }
}

#[inline(always)]
fn subject_of_flow(ifindex: u32, flow: &FlowKey) -> Subject {
    Subject {
        protocol: flow.protocol,
        ifindex,
        src_address: flow.src_address,
        dst_address: flow.dst_address,
        src_port: flow.src_port,
        dst_port: flow.dst_port,
        ..Subject::default()
    }
}

/// Whether a conntrack entry still holds: idle less than its protocol's
/// lifetime, or than the closing one after a FIN or RST.
#[inline(always)]
fn alive(flow: &FlowKey, entry: &NatEntry, now: u64) -> bool {
    let lifetime = if entry.closing != 0 {
        CLOSING_LIFETIME_NS
    } else if flow.protocol == PROTOCOL_TCP {
        TCP_LIFETIME_NS
    } else {
        UDP_LIFETIME_NS
    };
    now.saturating_sub(entry.last_seen) <= lifetime
}

/// The key of the other direction's entry: this entry's translated tuple,
/// reversed.
#[inline(always)]
fn reverse_of(entry: &NatEntry, protocol: u8) -> FlowKey {
    FlowKey {
        src_address: entry.dst_address,
        dst_address: entry.src_address,
        src_port: entry.dst_port,
        dst_port: entry.src_port,
        protocol,
        pad: [0; 3],
    }
}

/// The TCP or UDP flow of an IPv4 packet without options or fragments.
#[inline(always)]
fn flow_of(ctx: &TcContext) -> Option<FlowKey> {
    if !is_ipv4(ctx) {
        return None;
    }
    let version_ihl: u8 = ctx.load(IP_VERSION_IHL).ok()?;
    let fragment: u16 = ctx.load(IP_FRAGMENT).ok()?;
    let protocol: u8 = ctx.load(IP_PROTOCOL).ok()?;
    if version_ihl != 0x45
        || u16::from_be(fragment) & FRAGMENTED != 0
        || (protocol != PROTOCOL_TCP && protocol != PROTOCOL_UDP)
    {
        return None;
    }
    Some(FlowKey {
        src_address: ctx.load(IP_SOURCE).ok()?,
        dst_address: ctx.load(IP_DESTINATION).ok()?,
        src_port: ctx.load(L4).ok()?,
        dst_port: ctx.load(L4 + 2).ok()?,
        protocol,
        pad: [0; 3],
    })
}

/// A packet of a translated flow is rewritten; with `frontends`, a new
/// flow to a NodePort gets a backend (only on the node's interface: pods
/// reach services through the socket programs).
#[inline(always)]
pub fn translate(ctx: &TcContext, frontends: bool) -> Translated {
    let Some(flow) = flow_of(ctx) else {
        return Translated::No;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: entries are plain data written whole.
    if let Some(entry) = unsafe { CONNTRACK.get(flow) } {
        let mut entry = *entry;
        let flags = if flow.protocol == PROTOCOL_TCP {
            ctx.load::<u8>(TCP_FLAGS).unwrap_or(0)
        } else {
            0
        };
        // A client reuses a source port soon after its last connection on
        // it closed: a SYN on a flow either side closed (FIN or RST seen
        // in either direction, or the other direction's entry gone) opens
        // a new connection, which gets a backend of its own (the old one
        // may be gone), as a SYN reopens a closed flow in the kernel's
        // conntrack. A SYN on an open flow is a retransmission and keeps
        // its backend.
        let reopened = flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && (entry.closing != 0 || {
                // SAFETY: entries are plain data written whole.
                unsafe { CONNTRACK.get(reverse_of(&entry, flow.protocol)) }
                    .is_none_or(|reverse| reverse.closing != 0)
            });
        if alive(&flow, &entry, now) && !reopened {
            let closing = flags & TCP_FIN_OR_RST != 0;
            if (closing && entry.closing == 0) || now.saturating_sub(entry.last_seen) > REFRESH_NS {
                entry.closing |= u32::from(closing);
                entry.last_seen = now;
                let _ = CONNTRACK.insert(flow, entry, 0);
            }
            count(entry.service, 0, 1, u64::from(ctx.len()));
            return rewrite(ctx, &flow, &entry);
        }
        // Expired or reopened: both directions go; this packet starts a
        // new flow.
        let _ = CONNTRACK.remove(flow);
        let _ = CONNTRACK.remove(reverse_of(&entry, flow.protocol));
    }
    if !frontends {
        return Translated::No;
    }
    let key = ServiceKey {
        address: flow.dst_address,
        port: flow.dst_port,
        protocol: flow.protocol,
        pad: 0,
    };
    // SAFETY: a helper without arguments.
    let pick = unsafe { bpf_get_prandom_u32() };
    let client = || Client {
        id: u64::from(flow.src_address),
        scope: AFFINITY_SCOPE_ADDRESS,
    };
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let (backend, service) = match pick_backend(key, pick, client) {
        Pick::NotService => return Translated::No,
        Pick::NoBackend => {
            events::drop(DROP_NO_BACKEND, &subject_of_flow(ifindex, &flow));
            return Translated::Refuse;
        }
        Pick::Backend(backend, id) => (backend, id),
    };
    let local = crate::pod_route::is_local(backend.address);
    // The reply's entry maps the reply back to what the client dialled.
    let reply_to = NatEntry {
        src_address: flow.dst_address,
        dst_address: flow.src_address,
        src_port: flow.dst_port,
        dst_port: flow.src_port,
        service,
        closing: 0,
        pad: 0,
        last_seen: now,
    };
    // A local backend replies through this node anyway (its gateway): the
    // client's address is kept. A remote one is sent the flow from this
    // node's address, on a port of the SNAT range reserved for it by
    // inserting the reply's entry (atomically: two CPUs never get one).
    let (src_address, src_port) = if local {
        let reply = FlowKey {
            src_address: backend.address,
            dst_address: flow.src_address,
            src_port: backend.port,
            dst_port: flow.src_port,
            protocol: flow.protocol,
            pad: [0; 3],
        };
        if CONNTRACK.insert(reply, reply_to, 0).is_err() {
            events::drop(DROP_CONNTRACK_FULL, &subject_of_flow(ifindex, &flow));
            return Translated::Drop;
        }
        (flow.src_address, flow.src_port)
    } else {
        // The node's own address: a LoadBalancer address is not the
        // node's, and the backend's node would not route replies to it.
        let node = NODE_CONFIG
            .get(0)
            .map(|c| c.address)
            .filter(|a| *a != 0)
            .unwrap_or(flow.dst_address);
        match reserve_snat_port(&flow, node, &backend, &reply_to, pick) {
            Some(port) => (node, port),
            None => {
                events::drop(DROP_CONNTRACK_FULL, &subject_of_flow(ifindex, &flow));
                return Translated::Drop;
            }
        }
    };
    let outbound = NatEntry {
        src_address,
        dst_address: backend.address,
        src_port,
        dst_port: backend.port,
        service,
        closing: 0,
        pad: 0,
        last_seen: now,
    };
    if CONNTRACK.insert(flow, outbound, 0).is_err() {
        let _ = CONNTRACK.remove(reverse_of(&outbound, flow.protocol));
        events::drop(DROP_CONNTRACK_FULL, &subject_of_flow(ifindex, &flow));
        return Translated::Drop;
    }
    count(service, 1, 1, u64::from(ctx.len()));
    // One record per new flow, never per packet.
    debug!(
        ctx,
        "orch: NodePort flow to {:i}:{}",
        u32::from_be(backend.address),
        u16::from_be(backend.port)
    );
    events::trace(TRACE_NODE_PORT, || Subject {
        to_address: backend.address,
        to_port: backend.port,
        ..subject_of_flow(ifindex, &flow)
    });
    rewrite(ctx, &flow, &outbound)
}

/// A source port of the SNAT range on `node` for a flow to `backend`,
/// reserved by inserting the reply's entry where none is (BPF_NOEXIST):
/// three random candidates, so a crowded backend drops a new flow rather
/// than looping.
#[inline(always)]
fn reserve_snat_port(
    flow: &FlowKey,
    node: u32,
    backend: &Backend,
    reply_to: &NatEntry,
    pick: u32,
) -> Option<u16> {
    for salt in [0u32, 11, 23] {
        let offset = pick.rotate_left(salt) % u32::from(SNAT_PORT_COUNT);
        let port = (SNAT_PORT_FIRST + offset as u16).to_be();
        let reply = FlowKey {
            src_address: backend.address,
            dst_address: node,
            src_port: backend.port,
            dst_port: port,
            protocol: flow.protocol,
            pad: [0; 3],
        };
        if CONNTRACK.insert(reply, *reply_to, NOEXIST).is_ok() {
            return Some(port);
        }
    }
    None
}

/// Rewrites the packet's addresses and ports to `to`, checksums with them.
#[inline(always)]
fn rewrite(ctx: &TcContext, flow: &FlowKey, to: &NatEntry) -> Translated {
    let (checksum, mangled) = if flow.protocol == PROTOCOL_TCP {
        (TCP_CHECKSUM, 0)
    } else {
        // UDP's checksum 0 means "none": it stays 0.
        (UDP_CHECKSUM, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled;
    let addresses = [
        (IP_SOURCE, flow.src_address, to.src_address),
        (IP_DESTINATION, flow.dst_address, to.dst_address),
    ];
    for (offset, old, new) in addresses {
        if old == new {
            continue;
        }
        let (old, new) = (u64::from(old), u64::from(new));
        let stored = ctx.store(offset, &(new as u32), 0).is_ok()
            && ctx.l3_csum_replace(IP_CHECKSUM, old, new, 4).is_ok()
            && ctx.l4_csum_replace(checksum, old, new, pseudo | 4).is_ok();
        if !stored {
            return rewrite_failed(ctx, flow);
        }
    }
    let ports = [
        (L4, flow.src_port, to.src_port),
        (L4 + 2, flow.dst_port, to.dst_port),
    ];
    for (offset, old, new) in ports {
        if old == new {
            continue;
        }
        let stored = ctx.store(offset, &new, 0).is_ok()
            && ctx
                .l4_csum_replace(checksum, u64::from(old), u64::from(new), mangled | 2)
                .is_ok();
        if !stored {
            return rewrite_failed(ctx, flow);
        }
    }
    Translated::To(to.dst_address)
}

#[inline(always)]
fn rewrite_failed(ctx: &TcContext, flow: &FlowKey) -> Translated {
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    events::drop(DROP_REWRITE, &subject_of_flow(ifindex, flow));
    Translated::Drop
}
