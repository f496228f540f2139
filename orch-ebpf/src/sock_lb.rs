//! Socket-level load balancing for ClusterIP services: the destination of
//! a `connect()` or an unconnected `sendmsg()` to a service address is
//! rewritten to one of its backends before the socket leaves the process,
//! so a flow goes straight to the pod with no per-packet NAT. `recvmsg()`
//! and `getpeername()` translate back: the application sees the address it
//! dialled. Types and map names: `orch_ebpf_common::service`.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps::LruHashMap,
    helpers::{bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval},
    macros::{btf_map, cgroup_sock_addr},
    programs::SockAddrContext,
};
use orch_ebpf_common::service::{
    AFFINITY_SCOPE_NETNS, RevNatEntry, RevNatKey, SOCK_REVNAT_MAX_ENTRIES, ServiceKey,
};

use crate::events::{self, Subject};
use crate::lb::{Client, Pick, count, pick_backend};
use orch_ebpf_common::events::DROP_NO_BACKEND;

/// LRU: entries of closed sockets age out as new ones need room.
#[btf_map]
static SOCK_REVNAT: LruHashMap<
    RevNatKey,
    RevNatEntry,
    SOCK_REVNAT_MAX_ENTRIES,
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// What sock_addr programs return: let the call go on, or fail it.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
    reverse(&ctx);
    ALLOW
}

/// A service address becomes one of its backends, picked at random; a
/// service without backends refuses at once (ECONNREFUSED, not a timeout).
/// A connect counts as a connection, an unconnected send as a packet.
#[inline(always)]
fn forward(ctx: &SockAddrContext, datagram: bool) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: the kernel hands sock_addr programs a valid bpf_sock_addr.
    // `protocol` is read whole: the verifier takes only 4-byte loads of it,
    // and a narrowing cast could let the compiler load one byte.
    let (address, user_port, protocol) = unsafe {
        (
            (*addr).user_ip4,
            (*addr).user_port,
            core::ptr::read_volatile(&(*addr).protocol),
        )
    };
    let key = ServiceKey {
        address,
        port: user_port as u16,
        protocol: protocol as u8,
        pad: 0,
    };
    // SAFETY: a helper without arguments.
    let pick = unsafe { bpf_get_prandom_u32() };
    let client = || Client {
        // SAFETY: the context pointer is valid for this helper.
        id: unsafe { bpf_get_netns_cookie(addr.cast()) },
        scope: AFFINITY_SCOPE_NETNS,
    };
    let backend = match pick_backend(key, pick, client) {
        Pick::NotService => return ALLOW,
        Pick::NoBackend => {
            events::drop(
                DROP_NO_BACKEND,
                &Subject {
                    protocol: key.protocol,
                    dst_address: key.address,
                    dst_port: key.port,
                    ..Subject::default()
                },
            );
            return refuse();
        }
        Pick::Backend(backend, id) => {
            let datagram = u64::from(datagram);
            count(id, 1 - datagram, datagram, 0);
            backend
        }
    };
    let (backend_address, backend_port) = (backend.address, backend.port);
    // SAFETY: the context pointer is valid for this helper.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    let reverse_key = RevNatKey {
        cookie,
        address: backend_address,
        port: backend_port,
        pad: 0,
    };
    let dialled = RevNatEntry {
        address,
        port: key.port,
        pad: 0,
    };
    // A full LRU map evicts; an insert only fails on memory pressure, and
    // then the application sees the backend's address: still connected.
    let _ = SOCK_REVNAT.insert(reverse_key, dialled, 0);
    // SAFETY: as above; user_port takes 4-byte stores only (verifier).
    unsafe {
        (*addr).user_ip4 = backend_address;
        (*addr).user_port = u32::from(backend_port);
    }
    ALLOW
}

#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: connect4 and sendmsg4 may set the syscall's error.
    unsafe { bpf_set_retval(-ECONNREFUSED) };
    REJECT
}

/// A backend address this socket was translated to reads as the service.
#[inline(always)]
fn reverse(ctx: &SockAddrContext) {
    let addr = ctx.sock_addr;
    // SAFETY: as in `forward`.
    let (address, user_port) = unsafe { ((*addr).user_ip4, (*addr).user_port) };
    // SAFETY: as in `forward`.
    let cookie = unsafe { bpf_get_socket_cookie(addr.cast()) };
    let key = RevNatKey {
        cookie,
        address,
        port: user_port as u16,
        pad: 0,
    };
    // SAFETY: as in `forward`.
    if let Some(dialled) = unsafe { SOCK_REVNAT.get(key) } {
        let (service_address, service_port) = (dialled.address, dialled.port);
        // SAFETY: as in `forward`.
        unsafe {
            (*addr).user_ip4 = service_address;
            (*addr).user_port = u32::from(service_port);
        }
    }
}
