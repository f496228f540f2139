//! What the dataplane tells Prometheus (orch-node's /metrics): per-service
//! counters from the balancers, and map pressure, entries in use against
//! the maximum of every pinned map, with a warning in the agent's log
//! before a map that cannot evict fills.

use std::collections::HashMap as StdHashMap;
use std::fmt::Write as _;

use aya::Pod;
use aya::maps::{HashMap, Map, MapData, MapError, MapInfo, PerCpuHashMap};
use orch_ebpf_common::nat::{CONNTRACK_MAP, FlowKey, NatEntry};
use orch_ebpf_common::pod::{EndpointKey, POD_ENDPOINTS_MAP, PodEndpoint};
use orch_ebpf_common::service::{
    AFFINITY_MAP, AffinityEntry, AffinityKey, BACKENDS_MAP, Backend, BackendKey, RevNatEntry,
    RevNatKey, SERVICE_COUNTERS_MAP, SERVICES_MAP, SOCK_REVNAT_MAP, ServiceCounters, ServiceEntry,
    ServiceKey,
};
use orch_ebpf_common::{IFACE_COUNTERS_MAP, IfaceCounters, IfaceKey, PINNED_MAPS};

use super::services::Frontend;
use super::{DataplaneError, PinLayout};

/// A map's fill above which the log warns (maps that evict excepted).
pub const WARN_FILL: f64 = 0.9;

/// How full one pinned map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUse {
    pub name: &'static str,
    pub entries: u64,
    pub max_entries: u32,
    /// LRU maps make room by evicting the oldest entry: full is normal.
    pub evicts: bool,
}

impl MapUse {
    pub fn fill(&self) -> f64 {
        self.entries as f64 / f64::from(self.max_entries.max(1))
    }
}

fn keys<K: Pod, V: Pod>(map: Map) -> Result<u64, MapError> {
    let map: HashMap<MapData, K, V> = HashMap::try_from(map)?;
    Ok(map.keys().filter(Result::is_ok).count() as u64)
}

fn per_cpu_keys<K: Pod, V: Pod>(map: Map) -> Result<u64, MapError> {
    let map: PerCpuHashMap<MapData, K, V> = PerCpuHashMap::try_from(map)?;
    Ok(map.keys().filter(Result::is_ok).count() as u64)
}

/// Entries in use in every map pinned for the node (maps not pinned yet
/// are left out).
pub fn map_use(layout: &PinLayout) -> Result<Vec<MapUse>, DataplaneError> {
    let mut maps = Vec::new();
    for name in PINNED_MAPS {
        let path = layout.map(name);
        if !path.exists() {
            continue;
        }
        let failed = |source| DataplaneError::Map {
            path: path.clone(),
            source,
        };
        let info = MapInfo::from_pin(&path).map_err(failed)?;
        let data = MapData::from_pin(&path).map_err(failed)?;
        let (entries, evicts) = match name {
            IFACE_COUNTERS_MAP => (
                per_cpu_keys::<IfaceKey, IfaceCounters>(Map::PerCpuHashMap(data)),
                false,
            ),
            SERVICES_MAP => (keys::<ServiceKey, ServiceEntry>(Map::HashMap(data)), false),
            BACKENDS_MAP => (keys::<BackendKey, Backend>(Map::HashMap(data)), false),
            SOCK_REVNAT_MAP => (keys::<RevNatKey, RevNatEntry>(Map::LruHashMap(data)), true),
            AFFINITY_MAP => (
                keys::<AffinityKey, AffinityEntry>(Map::LruHashMap(data)),
                true,
            ),
            SERVICE_COUNTERS_MAP => (
                per_cpu_keys::<u32, ServiceCounters>(Map::PerCpuHashMap(data)),
                false,
            ),
            POD_ENDPOINTS_MAP => (keys::<EndpointKey, PodEndpoint>(Map::HashMap(data)), false),
            CONNTRACK_MAP => (keys::<FlowKey, NatEntry>(Map::LruHashMap(data)), true),
            _ => continue,
        };
        maps.push(MapUse {
            name,
            entries: entries.map_err(failed)?,
            max_entries: info.max_entries(),
            evicts,
        });
    }
    Ok(maps)
}

/// Logs a warning for every map that cannot evict and is nearly full
/// (writes to it will soon fail: services or pods would go missing).
pub fn warn_pressure(maps: &[MapUse]) {
    for map in maps.iter().filter(|m| !m.evicts && m.fill() >= WARN_FILL) {
        tracing::warn!(
            map = map.name,
            entries = map.entries,
            max_entries = map.max_entries,
            "eBPF map nearly full"
        );
    }
}

/// A metric: name, help text, and its value in one reading.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The dataplane's metrics in Prometheus' text format. `owners` names the
/// Service (`namespace/name`) of each frontend the agent wrote.
pub fn render(
    counters: &[(Frontend, ServiceCounters)],
    owners: &StdHashMap<Frontend, String>,
    maps: &[MapUse],
) -> String {
    let mut out = String::new();
    let series: [Series<ServiceCounters>; 3] = [
        (
            "orch_service_connections_total",
            "Connections balanced to a backend (ClusterIP at connect, NodePort per new flow).",
            |c| c.connections,
        ),
        (
            "orch_service_packets_total",
            "Datagrams balanced at the socket and packets translated for NodePorts.",
            |c| c.packets,
        ),
        (
            "orch_service_bytes_total",
            "Bytes of the packets translated for NodePorts.",
            |c| c.bytes,
        ),
    ];
    for (name, help, value) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (frontend, counted) in counters {
            let service = owners.get(frontend).map_or("", String::as_str);
            let _ = writeln!(
                out,
                "{name}{{service=\"{service}\",frontend=\"{}:{}\",protocol=\"{:?}\"}} {}",
                frontend.address,
                frontend.port,
                frontend.protocol,
                value(counted)
            );
        }
    }
    let gauges: [Series<MapUse>; 2] = [
        (
            "orch_bpf_map_entries",
            "Entries in use in a pinned eBPF map.",
            |m| m.entries,
        ),
        (
            "orch_bpf_map_max_entries",
            "The most entries a pinned eBPF map holds.",
            |m| u64::from(m.max_entries),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for map in maps {
            let _ = writeln!(out, "{name}{{map=\"{}\"}} {}", map.name, value(map));
        }
    }
    out
}
