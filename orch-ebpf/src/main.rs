//! orch's kernel programs. Built for `bpfel-unknown-none` by
//! `cargo xtask build-ebpf`; loaded, attached and pinned by `orch-node`.
//! On the host target it only type-checks (so `cargo clippy --workspace`
//! lints the kernel code too); the host binary does nothing useful.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod events;
mod lb;
mod nat;
mod packet;
mod pod_route;
mod sock_lb;

use aya_ebpf::{
    bindings::TC_ACT_OK,
    btf_maps::PerCpuHashMap,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use aya_log_ebpf::info;
use orch_ebpf_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, IFACE_COUNTERS_MAX_ENTRIES, IfaceCounters, IfaceKey,
};

/// Packets and bytes per (interface, direction). Per-CPU so the hot path never
/// contends on a shared cache line. A BTF map (`.maps`), so the kernel knows
/// its key and value types and `bpftool map dump` prints field names; the
/// agent pins it under the node's directory.
#[btf_map]
static IFACE_COUNTERS: PerCpuHashMap<IfaceKey, IfaceCounters, IFACE_COUNTERS_MAX_ENTRIES> =
    PerCpuHashMap::new();

#[classifier]
pub fn iface_count_ingress(ctx: TcContext) -> i32 {
    count(&ctx, DIRECTION_INGRESS);
    TC_ACT_OK
}

#[classifier]
pub fn iface_count_egress(ctx: TcContext) -> i32 {
    count(&ctx, DIRECTION_EGRESS);
    TC_ACT_OK
}

#[inline(always)]
fn count(ctx: &TcContext, direction: u32) {
    // SAFETY: the kernel hands tc programs a valid __sk_buff.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let key = IfaceKey { ifindex, direction };
    let len = u64::from(ctx.len());
    if let Some(counters) = IFACE_COUNTERS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, and tc programs are not preempted on a CPU,
        // so nothing else writes this slot while we do.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len;
        }
        return;
    }
    // First packet on this interface and direction: create the entry. Logged
    // once per entry, not per packet, so aya-log stays off the hot path.
    let first = IfaceCounters {
        packets: 1,
        bytes: len,
    };
    if IFACE_COUNTERS.insert(key, first, 0).is_ok() {
        info!(
            ctx,
            "orch: counting ifindex {} direction {}", ifindex, direction
        );
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach a panic; this is
    // never executed.
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("orch-ebpf holds kernel programs: build them with `cargo xtask build-ebpf`");
    std::process::exit(2);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
