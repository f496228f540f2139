//! Where the tc programs read an Ethernet frame carrying IPv4: offsets
//! from the frame's start, and the checks every program makes first.

use aya_ebpf::programs::TcContext;

pub const ETH_HEADER: usize = 14;
pub const ETH_TYPE: usize = 12;
pub const ETH_P_IP: u16 = 0x0800;
/// Offsets in the IPv4 header, after the Ethernet header.
pub const IP_VERSION_IHL: usize = ETH_HEADER;
pub const IP_TOS: usize = ETH_HEADER + 1;
pub const IP_TOT_LEN: usize = ETH_HEADER + 2;
pub const IP_FRAGMENT: usize = ETH_HEADER + 6;
pub const IP_TTL: usize = ETH_HEADER + 8;
pub const IP_PROTOCOL: usize = ETH_HEADER + 9;
pub const IP_CHECKSUM: usize = ETH_HEADER + 10;
pub const IP_SOURCE: usize = ETH_HEADER + 12;
pub const IP_DESTINATION: usize = ETH_HEADER + 16;
/// The L4 header of an IPv4 header without options (20 bytes).
pub const L4: usize = ETH_HEADER + 20;

/// Whether the frame carries IPv4.
#[inline(always)]
pub fn is_ipv4(ctx: &TcContext) -> bool {
    ctx.load::<u16>(ETH_TYPE)
        .is_ok_and(|ether_type| u16::from_be(ether_type) == ETH_P_IP)
}

/// The destination address (network byte order) of an IPv4 packet.
#[inline(always)]
pub fn ipv4_destination(ctx: &TcContext) -> Option<u32> {
    if !is_ipv4(ctx) {
        return None;
    }
    ctx.load(IP_DESTINATION).ok()
}
