//! The service table both balancers read: the socket programs (ClusterIP,
//! at connect) and the tc programs (NodePort, per packet). Types and map
//! names: `orch_ebpf_common::service`.

use aya_ebpf::{
    bindings::{BPF_F_NO_COMMON_LRU, BPF_F_NO_PREALLOC},
    btf_maps::{HashMap, LruHashMap, PerCpuHashMap},
    helpers::bpf_ktime_get_ns,
    macros::btf_map,
};
use orch_ebpf_common::service::{
    AFFINITY_MAX_ENTRIES, AffinityEntry, AffinityKey, BACKENDS_MAX_ENTRIES, Backend, BackendKey,
    SERVICES_MAX_ENTRIES, ServiceCounters, ServiceEntry, ServiceKey,
};

#[btf_map]
static SERVICES: HashMap<ServiceKey, ServiceEntry, SERVICES_MAX_ENTRIES> = HashMap::new();

#[btf_map]
static BACKENDS: HashMap<BackendKey, Backend, BACKENDS_MAX_ENTRIES> = HashMap::new();

/// LRU: clients that stopped connecting age out.
#[btf_map]
static AFFINITY: LruHashMap<
    AffinityKey,
    AffinityEntry,
    AFFINITY_MAX_ENTRIES,
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

/// Per-CPU, so counting never contends; allocated as services are
/// counted (preallocating every service on every CPU would cost megabytes
/// on large machines).
#[btf_map]
static SERVICE_COUNTERS: PerCpuHashMap<
    u32,
    ServiceCounters,
    SERVICES_MAX_ENTRIES,
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// Adds to service `id`'s counters on this CPU.
#[inline(always)]
pub fn count(id: u32, connections: u64, packets: u64, bytes: u64) {
    if let Some(counters) = SERVICE_COUNTERS.get_ptr_mut(id) {
        // SAFETY: a per-CPU value; tc and sock_addr programs are not
        // preempted on their CPU, so nothing else writes it meanwhile.
        unsafe {
            (*counters).connections += connections;
            (*counters).packets += packets;
            (*counters).bytes += bytes;
        }
        return;
    }
    let first = ServiceCounters {
        connections,
        packets,
        bytes,
    };
    // Full (more ids than services can be): the count is lost, not the
    // packet.
    let _ = SERVICE_COUNTERS.insert(id, first, 0);
}

/// Who is connecting, for sessionAffinity: `AffinityKey` without the
/// service.
#[derive(Clone, Copy)]
pub struct Client {
    pub id: u64,
    pub scope: u32,
}

/// What a destination is to the balancer.
pub enum Pick {
    /// Not a service frontend.
    NotService,
    /// A frontend with no backend: refuse.
    NoBackend,
    /// A backend of service `id`.
    Backend(Backend, u32),
}

/// A backend of frontend `key` for `client`: the one it had, under
/// sessionAffinity, else backend `pick % count`.
#[inline(always)]
pub fn pick_backend(key: ServiceKey, pick: u32, client: impl FnOnce() -> Client) -> Pick {
    // SAFETY: values are plain data the agent replaces whole; a read racing
    // an update sees the old or the new value, both valid.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return Pick::NotService;
    };
    let (id, count, affinity) = (service.id, service.backends, service.affinity_seconds);
    if count == 0 {
        return Pick::NoBackend;
    }
    if affinity == 0 {
        return pick_slot(key, id, count, pick);
    }
    // Who the client is, read only for a service with affinity.
    let client = client();
    let affinity_key = AffinityKey {
        client: client.id,
        service: id,
        scope: client.scope,
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: as above.
    if let Some(kept) = unsafe { AFFINITY.get(affinity_key) } {
        let kept = *kept;
        let fresh = now.saturating_sub(kept.last_used) < u64::from(affinity) * 1_000_000_000;
        if fresh && kept.slot < count {
            // SAFETY: as above.
            let current = unsafe {
                BACKENDS.get(BackendKey {
                    service: id,
                    slot: kept.slot,
                })
            };
            // Kept only while its slot still holds it (backends move
            // between slots when the set changes).
            if let Some(backend) = current
                && backend.address == kept.address
                && backend.port == kept.port
            {
                let _ = AFFINITY.insert(
                    affinity_key,
                    AffinityEntry {
                        last_used: now,
                        ..kept
                    },
                    0,
                );
                return Pick::Backend(*backend, id);
            }
        }
    }
    let chosen = pick_slot(key, id, count, pick);
    if let Pick::Backend(backend, _) = &chosen {
        let entry = AffinityEntry {
            last_used: now,
            slot: pick % count,
            address: backend.address,
            port: backend.port,
            pad: [0; 6],
        };
        // A full LRU map evicts; a failed insert only loses the affinity.
        let _ = AFFINITY.insert(affinity_key, entry, 0);
    }
    chosen
}

/// Backend `pick % count` of service `id` (frontend `key`).
#[inline(always)]
fn pick_slot(key: ServiceKey, id: u32, count: u32, pick: u32) -> Pick {
    // SAFETY: as above.
    if let Some(backend) = unsafe {
        BACKENDS.get(BackendKey {
            service: id,
            slot: pick % count,
        })
    } {
        return Pick::Backend(*backend, id);
    }
    // The agent shrank the service between our two reads (count first,
    // then the slots): look at the new count once more, so a live service
    // is never refused.
    // SAFETY: as above.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return Pick::NotService;
    };
    let count = service.backends;
    if count == 0 {
        return Pick::NoBackend;
    }
    // SAFETY: as above.
    match unsafe {
        BACKENDS.get(BackendKey {
            service: id,
            slot: pick % count,
        })
    } {
        Some(backend) => Pick::Backend(*backend, id),
        None => Pick::NoBackend,
    }
}
