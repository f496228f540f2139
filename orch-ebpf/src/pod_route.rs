//! Pod routing in tc: a packet for a pod of this node is handed straight to
//! the pod's `eth0` with `bpf_redirect_peer` (from the pod's own host veth
//! or from the node's interface), and a pod's packet for anything else is
//! forwarded by a FIB lookup in the node's tables and `bpf_redirect_neigh`,
//! so the host's IP stack and its netfilter hooks are never walked. What the
//! programs cannot route (the node's own addresses, no route, TTL out) goes
//! on to the stack, which answers as a router would. Types and map names:
//! `orch_ebpf_common::pod`.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_BLACKHOLE, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_PROHIBIT,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNREACHABLE, TC_ACT_OK, TC_ACT_REDIRECT,
        TC_ACT_SHOT, bpf_fib_lookup as FibParams, bpf_redir_neigh,
    },
    btf_maps::HashMap,
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_redirect_peer},
    macros::{btf_map, classifier},
    programs::TcContext,
};
use orch_ebpf_common::pod::{EndpointKey, POD_ENDPOINTS_MAX_ENTRIES, PodEndpoint};

use crate::events;
use crate::nat::{Translated, subject, translate};
use crate::packet::{
    IP_CHECKSUM, IP_PROTOCOL, IP_SOURCE, IP_TOS, IP_TOT_LEN, IP_TTL, ipv4_destination, is_ipv4,
};
use orch_ebpf_common::events::{
    DROP_FIB_MISS, DROP_SPOOFED, DROP_TTL, TRACE_FORWARD, TRACE_TO_POD, TRACE_TO_STACK,
};

#[btf_map]
static POD_ENDPOINTS: HashMap<EndpointKey, PodEndpoint, POD_ENDPOINTS_MAX_ENTRIES> = HashMap::new();

const AF_INET: u8 = 2;

/// Ingress of a pod's host veth: the pod's packets (a NodePort backend's
/// replies are translated back first).
#[classifier]
pub fn pod_from_pod(ctx: TcContext) -> i32 {
    if !from_its_pod(&ctx) {
        events::drop(DROP_SPOOFED, &subject(&ctx));
        return TC_ACT_SHOT;
    }
    match translate(&ctx, false) {
        Translated::Drop => return TC_ACT_SHOT,
        Translated::Refuse => return TC_ACT_OK,
        Translated::To(destination) => return route(&ctx, destination),
        Translated::No => {}
    }
    match ipv4_destination(&ctx) {
        Some(destination) => route(&ctx, destination),
        None => TC_ACT_OK,
    }
}

/// Ingress of the node's interface: NodePort flows, and packets from other
/// nodes for local pods.
#[classifier]
pub fn pod_from_net(ctx: TcContext) -> i32 {
    match translate(&ctx, true) {
        Translated::Drop => return TC_ACT_SHOT,
        Translated::Refuse => return TC_ACT_OK,
        Translated::To(destination) => return route(&ctx, destination),
        Translated::No => {}
    }
    let Some(destination) = ipv4_destination(&ctx) else {
        return TC_ACT_OK;
    };
    match local_endpoint(destination) {
        Some(endpoint) => deliver_local(&ctx, &endpoint),
        None => TC_ACT_OK,
    }
}

/// Whether an IPv4 packet entering from a pod's veth comes from that
/// pod's own address (so no pod sends as another, or matches another
/// flow's conntrack entries). Not IPv4 (ARP, IPv6): nothing to check.
#[inline(always)]
fn from_its_pod(ctx: &TcContext) -> bool {
    if !is_ipv4(ctx) {
        return true;
    }
    let Ok(source) = ctx.load::<u32>(IP_SOURCE) else {
        return false;
    };
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    local_endpoint(source).is_some_and(|endpoint| endpoint.ifindex == ifindex)
}

/// To a local pod, or on by the node's routes.
#[inline(always)]
fn route(ctx: &TcContext, destination: u32) -> i32 {
    match local_endpoint(destination) {
        Some(endpoint) => deliver_local(ctx, &endpoint),
        None => forward(ctx, destination),
    }
}

/// Whether `address` (network byte order) is a pod of this node.
#[inline(always)]
pub fn is_local(address: u32) -> bool {
    local_endpoint(address).is_some()
}

#[inline(always)]
fn local_endpoint(address: u32) -> Option<PodEndpoint> {
    // SAFETY: the value is copied out at once; user space replaces whole
    // entries, so no torn value is seen.
    unsafe { POD_ENDPOINTS.get(EndpointKey { address }).copied() }
}

/// Into the pod's namespace, as its gateway would send it.
#[inline(always)]
fn deliver_local(ctx: &TcContext, endpoint: &PodEndpoint) -> i32 {
    if !decrement_ttl(ctx) || !set_macs(ctx, &endpoint.host_mac, &endpoint.pod_mac) {
        return TC_ACT_OK;
    }
    events::trace(TRACE_TO_POD, || subject(ctx));
    // SAFETY: a helper call; the kernel checks the ifindex.
    unsafe { bpf_redirect_peer(endpoint.ifindex, 0) as i32 }
}

/// Anywhere else: the node's routes decide (other nodes' podCIDRs, the
/// node network); addresses of the node itself go up its stack.
#[inline(always)]
fn forward(ctx: &TcContext, destination: u32) -> i32 {
    let (Ok(source), Ok(protocol), Ok(tos), Ok(total_length)) = (
        ctx.load::<u32>(IP_SOURCE),
        ctx.load::<u8>(IP_PROTOCOL),
        ctx.load::<u8>(IP_TOS),
        ctx.load::<u16>(IP_TOT_LEN),
    ) else {
        return TC_ACT_OK;
    };
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions
    // of integers).
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = protocol;
    params.__bindgen_anon_1.tot_len = u16::from_be(total_length);
    params.__bindgen_anon_2.tos = tos;
    params.__bindgen_anon_3.ipv4_src = source;
    params.__bindgen_anon_4.ipv4_dst = destination;
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: `params` is a live bpf_fib_lookup of the size passed.
    let found = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if found == i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        if !decrement_ttl(ctx) || !set_macs(ctx, &params.smac, &params.dmac) {
            return TC_ACT_OK;
        }
        events::trace(TRACE_FORWARD, || subject(ctx));
        // SAFETY: a helper call; the kernel checks the ifindex.
        return unsafe { bpf_redirect(params.ifindex, 0) as i32 };
    }
    if found == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        if !decrement_ttl(ctx) {
            return TC_ACT_OK;
        }
        // The neighbour is not resolved yet: the kernel resolves it and
        // sends the packet on (the next one finds the neighbour).
        let mut next_hop = bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: aya_ebpf::bindings::bpf_redir_neigh__bindgen_ty_1 {
                // SAFETY: the lookup filled the IPv4 next hop in.
                ipv4_nh: unsafe { params.__bindgen_anon_4.ipv4_dst },
            },
        };
        // SAFETY: `next_hop` is a live bpf_redir_neigh of the size passed.
        let redirected = unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut next_hop,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        return if redirected == i64::from(TC_ACT_REDIRECT) {
            events::trace(TRACE_FORWARD, || subject(ctx));
            TC_ACT_REDIRECT
        } else {
            TC_ACT_OK
        };
    }
    let unroutable = [
        BPF_FIB_LKUP_RET_BLACKHOLE,
        BPF_FIB_LKUP_RET_UNREACHABLE,
        BPF_FIB_LKUP_RET_PROHIBIT,
    ];
    if unroutable.iter().any(|r| found == i64::from(*r)) {
        // The stack drops it too, answering ICMP unreachable.
        events::drop(DROP_FIB_MISS, &subject(ctx));
    } else {
        events::trace(TRACE_TO_STACK, || subject(ctx));
    }
    // Local to the node, unreachable, forwarding off: the stack answers.
    TC_ACT_OK
}

/// Routers decrement TTL; false (the packet goes to the stack, which sends
/// ICMP time exceeded) when it would reach 0.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> bool {
    // TTL and protocol form one 16-bit word of the header checksum.
    let Ok(old) = ctx.load::<[u8; 2]>(IP_TTL) else {
        return false;
    };
    if old[0] <= 1 {
        events::drop(DROP_TTL, &subject(ctx));
        return false;
    }
    let new = [old[0] - 1, old[1]];
    if ctx.store(IP_TTL, &new, 0).is_err() {
        return false;
    }
    ctx.l3_csum_replace(
        IP_CHECKSUM,
        u64::from(u16::from_ne_bytes(old)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .is_ok()
}

#[inline(always)]
fn set_macs(ctx: &TcContext, source: &[u8; 6], destination: &[u8; 6]) -> bool {
    ctx.store(0, destination, 0).is_ok() && ctx.store(6, source, 0).is_ok()
}
