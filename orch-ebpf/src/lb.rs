//! The service table both balancers read: the socket programs (ClusterIP,
//! at connect) and the tc programs (NodePort, per packet). Types and map
//! names: `orch_ebpf_common::service`.

use aya_ebpf::{btf_maps::HashMap, macros::btf_map};
use orch_ebpf_common::service::{
    BACKENDS_MAX_ENTRIES, Backend, BackendKey, SERVICES_MAX_ENTRIES, ServiceEntry, ServiceKey,
};

#[btf_map]
static SERVICES: HashMap<ServiceKey, ServiceEntry, SERVICES_MAX_ENTRIES> = HashMap::new();

#[btf_map]
static BACKENDS: HashMap<BackendKey, Backend, BACKENDS_MAX_ENTRIES> = HashMap::new();

/// What a destination is to the balancer.
pub enum Pick {
    /// Not a service frontend.
    NotService,
    /// A frontend with no backend: refuse.
    NoBackend,
    Backend(Backend),
}

/// Picks backend `pick % count` of frontend `key`.
#[inline(always)]
pub fn pick_backend(key: ServiceKey, pick: u32) -> Pick {
    // SAFETY: values are plain data the agent replaces whole; a read racing
    // an update sees the old or the new value, both valid.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return Pick::NotService;
    };
    let (id, count) = (service.id, service.backends);
    if count == 0 {
        return Pick::NoBackend;
    }
    // SAFETY: as above.
    if let Some(backend) = unsafe {
        BACKENDS.get(BackendKey {
            service: id,
            slot: pick % count,
        })
    } {
        return Pick::Backend(*backend);
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
        Some(backend) => Pick::Backend(*backend),
        None => Pick::NoBackend,
    }
}
