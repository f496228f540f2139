//! ClusterIPs and NodePorts of Services, allocated by the API server as
//! the Service is written (as kube-apiserver does), so the reply already
//! carries them. Each allocation is a store key (`/registry/ipaddresses/
//! <ip>`, `/registry/nodeports/<port>`) created in the same transaction as
//! the Service, guarded by "key absent": two Services can never get the
//! same address however many API servers allocate at once, allocations
//! survive restarts with the store, and deleting the Service deletes its
//! keys in the same transaction.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};

use orch_core::api::ApiError;
use orch_core::object::Object;
use serde_json::Value;

use crate::store::types::{Compare, CompareOp, Op};

const IP_PREFIX: &str = "/registry/ipaddresses/";
const PORT_PREFIX: &str = "/registry/nodeports/";

/// Where Services' addresses come from (kube-apiserver's
/// `--service-cluster-ip-range` and `--service-node-port-range`).
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    network: u32,
    prefix_len: u8,
    pub node_ports: RangeInclusive<i32>,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        Self::parse("10.96.0.0/12", "30000-32767").unwrap_or(Self {
            network: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            prefix_len: 12,
            node_ports: 30000..=32767,
        })
    }
}

impl ServiceRanges {
    /// `cidr` like `10.96.0.0/12` (IPv4, /8 to /28); `ports` like
    /// `30000-32767`.
    pub fn parse(cidr: &str, ports: &str) -> Result<Self, String> {
        let bad_cidr =
            || format!("--service-cluster-ip-range {cidr:?}: an IPv4 CIDR like 10.96.0.0/12");
        let (address, length) = cidr.split_once('/').ok_or_else(bad_cidr)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad_cidr())?;
        let prefix_len: u8 = length.parse().map_err(|_| bad_cidr())?;
        if !(8..=28).contains(&prefix_len) {
            return Err(format!(
                "--service-cluster-ip-range {cidr:?}: the prefix must be /8 to /28"
            ));
        }
        let mask = u32::MAX << (32 - prefix_len);
        let bad_ports = || format!("--service-node-port-range {ports:?}: like 30000-32767");
        let (low, high) = ports.split_once('-').ok_or_else(bad_ports)?;
        let low: i32 = low.trim().parse().map_err(|_| bad_ports())?;
        let high: i32 = high.trim().parse().map_err(|_| bad_ports())?;
        if !(1..=65535).contains(&low) || !(low..=65535).contains(&high) {
            return Err(bad_ports());
        }
        Ok(Self {
            network: u32::from(address) & mask,
            prefix_len,
            node_ports: low..=high,
        })
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix_len)
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == self.network
    }

    /// The addresses Services may get: not the network address, not the
    /// broadcast address.
    fn usable(&self, ip: Ipv4Addr) -> bool {
        let offset = u32::from(ip).wrapping_sub(self.network);
        self.contains(ip) && offset != 0 && offset != self.size() - 1
    }
}

/// A cheap source of spread-out starting points (collisions are settled
/// by the store, not by the randomness).
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = orch_core::time::now().as_nanosecond() as u64;
    let mut x = STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed) ^ seed;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

fn absent(key: &str) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        op: CompareOp::Equal,
        mod_revision: 0,
    }
}

/// What a Service write adds to its transaction.
#[derive(Default)]
pub struct Allocation {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
    /// Addresses the user asked for (a conflict on these is their error,
    /// not a reason to pick again).
    pub requested: Vec<String>,
}

fn needs_cluster_ip(spec: &Value) -> bool {
    let headless = spec["clusterIP"].as_str() == Some("None")
        || spec["clusterIPs"][0].as_str() == Some("None");
    spec["type"].as_str().unwrap_or("ClusterIP") != "ExternalName" && !headless
}

fn needs_node_ports(spec: &Value) -> bool {
    matches!(spec["type"].as_str(), Some("NodePort" | "LoadBalancer"))
}

/// The allocation keys a stored Service holds.
pub fn held_keys(service: &Value) -> Vec<String> {
    let spec = &service["spec"];
    let mut keys = Vec::new();
    for ip in spec["clusterIPs"].as_array().into_iter().flatten() {
        if let Some(ip) = ip.as_str().filter(|ip| *ip != "None" && !ip.is_empty()) {
            keys.push(format!("{IP_PREFIX}{ip}"));
        }
    }
    for port in spec["ports"].as_array().into_iter().flatten() {
        if let Some(node_port) = port["nodePort"].as_i64().filter(|p| *p != 0) {
            keys.push(format!("{PORT_PREFIX}{node_port}"));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Deletes of the keys `service` holds (it is being removed).
pub fn release(service: &Value) -> Vec<Op> {
    held_keys(service)
        .into_iter()
        .map(|key| Op::Delete {
            key: key.into_bytes(),
        })
        .collect()
}

fn owner_value(service: &Object) -> Vec<u8> {
    let meta = service.metadata();
    serde_json::to_vec(&serde_json::json!({
        "namespace": meta.namespace,
        "name": meta.name,
        "uid": meta.uid,
    }))
    .unwrap_or_default()
}

/// Fills in the Service's missing ClusterIP and NodePorts and says which
/// keys to create (and, against `previous`, which to delete). `taken`
/// reports whether a key exists now, to avoid picking it.
pub async fn allocate<F, Fut>(
    ranges: &ServiceRanges,
    service: &mut Object,
    previous: Option<&Value>,
    taken: F,
) -> Result<Allocation, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ApiError>>,
{
    let Object::Service(inner) = service else {
        return Ok(Allocation::default());
    };
    let mut value = serde_json::to_value(&inner.spec)
        .map_err(|e| ApiError::Internal(format!("encoding: {e}")))?;
    let held: Vec<String> = previous.map(held_keys).unwrap_or_default();
    if let Some(previous) = previous {
        keep_allocated(&mut value, &previous["spec"]);
        // As in Kubernetes, a Service keeps its ClusterIP for life (short
        // of becoming ExternalName or headless).
        let before = previous["spec"]["clusterIP"].as_str().unwrap_or_default();
        let after = value["clusterIP"].as_str().unwrap_or_default();
        if needs_cluster_ip(&value) && !before.is_empty() && before != "None" && after != before {
            return Err(ApiError::Invalid(format!(
                "spec.clusterIPs[0]: Invalid value: [\"{after}\"]: may not change once set (it is {before})"
            )));
        }
    }
    let mut allocation = Allocation::default();
    let mut wanted_keys = Vec::new();
    if needs_cluster_ip(&value) {
        let given = value["clusterIP"].as_str().unwrap_or_default().to_string();
        let ip = if given.is_empty() {
            pick_ip(ranges, &taken).await?
        } else {
            let ip: Ipv4Addr = given.parse().map_err(|_| {
                ApiError::Invalid(format!(
                    "spec.clusterIP: Invalid value: {given:?}: must be a valid IP address"
                ))
            })?;
            if !ranges.usable(ip) {
                return Err(ApiError::Invalid(format!(
                    "spec.clusterIPs: Invalid value: [\"{ip}\"]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is {}/{}",
                    Ipv4Addr::from(ranges.network),
                    ranges.prefix_len
                )));
            }
            let key = format!("{IP_PREFIX}{ip}");
            if !held.contains(&key) {
                allocation.requested.push(key);
            }
            ip
        };
        value["clusterIP"] = Value::from(ip.to_string());
        value["clusterIPs"] = serde_json::json!([ip.to_string()]);
        wanted_keys.push(format!("{IP_PREFIX}{ip}"));
    }
    if needs_node_ports(&value) {
        // Ports given (or kept) are spoken for before any is picked.
        let mut chosen: Vec<i64> = value["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["nodePort"].as_i64().filter(|n| *n != 0))
            .collect();
        if let Some(ports) = value["ports"].as_array_mut() {
            for port in ports.iter_mut() {
                let node_port = port["nodePort"].as_i64().unwrap_or(0);
                let node_port = if node_port == 0 {
                    pick_port(ranges, &taken, &chosen).await?
                } else {
                    if !ranges.node_ports.contains(&(node_port as i32)) {
                        return Err(ApiError::Invalid(format!(
                            "spec.ports.nodePort: Invalid value: {node_port}: provided port is not in the valid range. The range of valid ports is {}-{}",
                            ranges.node_ports.start(),
                            ranges.node_ports.end()
                        )));
                    }
                    let key = format!("{PORT_PREFIX}{node_port}");
                    if !held.contains(&key) {
                        allocation.requested.push(key);
                    }
                    node_port
                };
                port["nodePort"] = Value::from(node_port);
                chosen.push(node_port);
                wanted_keys.push(format!("{PORT_PREFIX}{node_port}"));
            }
        }
    }
    wanted_keys.sort();
    wanted_keys.dedup();
    for key in &wanted_keys {
        if !held.contains(key) {
            allocation.compares.push(absent(key));
            allocation.ops.push(Op::Put {
                key: key.clone().into_bytes(),
                value: owner_value(service),
                lease: None,
            });
        }
    }
    for key in held.iter().filter(|k| !wanted_keys.contains(k)) {
        allocation.ops.push(Op::Delete {
            key: key.clone().into_bytes(),
        });
    }
    if let Object::Service(inner) = service {
        inner.spec = serde_json::from_value(value)
            .map_err(|e| ApiError::Internal(format!("decoding: {e}")))?;
    }
    Ok(allocation)
}

/// An update that leaves the ClusterIP or a port's NodePort empty keeps
/// the one already allocated (kube-apiserver's patchAllocatedValues), so
/// re-applying a manifest never moves a Service's addresses.
fn keep_allocated(spec: &mut Value, previous: &Value) {
    let empty = |v: &Value| v.as_str().is_none_or(str::is_empty);
    if needs_cluster_ip(spec) && empty(&spec["clusterIP"]) && !empty(&previous["clusterIP"]) {
        spec["clusterIP"] = previous["clusterIP"].clone();
        spec["clusterIPs"] = previous["clusterIPs"].clone();
    }
    if !needs_node_ports(spec) {
        return;
    }
    let old_ports = previous["ports"].as_array().cloned().unwrap_or_default();
    for port in spec["ports"].as_array_mut().into_iter().flatten() {
        if port["nodePort"].as_i64().unwrap_or(0) != 0 {
            continue;
        }
        let same = old_ports.iter().find(|old| {
            old["port"] == port["port"]
                && old["protocol"].as_str().unwrap_or("TCP")
                    == port["protocol"].as_str().unwrap_or("TCP")
        });
        if let Some(node_port) = same
            .and_then(|old| old["nodePort"].as_i64())
            .filter(|p| *p != 0)
        {
            port["nodePort"] = Value::from(node_port);
        }
    }
}

async fn pick_ip<F, Fut>(ranges: &ServiceRanges, taken: &F) -> Result<Ipv4Addr, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ApiError>>,
{
    let size = u64::from(ranges.size());
    // A few random tries (a big, sparse range is found free at once), then
    // a scan from a random point, so a nearly full range still finds its
    // last free addresses.
    const RANDOM_TRIES: u64 = 8;
    let start = next_random() % size;
    for step in 0..RANDOM_TRIES + size.min(1 << 16) {
        let offset = if step < RANDOM_TRIES {
            next_random() % size
        } else {
            (start + step - RANDOM_TRIES) % size
        };
        let ip = Ipv4Addr::from(ranges.network.wrapping_add(offset as u32));
        if ranges.usable(ip) && !taken(format!("{IP_PREFIX}{ip}")).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::Internal(format!(
        "failed to allocate a service IP: range {}/{} is full",
        Ipv4Addr::from(ranges.network),
        ranges.prefix_len
    )))
}

async fn pick_port<F, Fut>(
    ranges: &ServiceRanges,
    taken: &F,
    chosen: &[i64],
) -> Result<i64, ApiError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ApiError>>,
{
    let low = i64::from(*ranges.node_ports.start());
    let span = i64::from(*ranges.node_ports.end()) - low + 1;
    let start = (next_random() % span as u64) as i64;
    for step in 0..span {
        let port = low + (start + step) % span;
        if !chosen.contains(&port) && !taken(format!("{PORT_PREFIX}{port}")).await? {
            return Ok(port);
        }
    }
    Err(ApiError::Internal(
        "failed to allocate a node port: the range is full".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_like_kube_apiservers_flags() {
        let ranges = ServiceRanges::parse("10.96.0.0/12", "30000-32767").expect("default");
        assert!(ranges.usable("10.96.0.1".parse().expect("ip")));
        assert!(ranges.usable("10.111.255.254".parse().expect("ip")));
        assert!(
            !ranges.usable("10.96.0.0".parse().expect("ip")),
            "network address"
        );
        assert!(
            !ranges.usable("10.111.255.255".parse().expect("ip")),
            "broadcast"
        );
        assert!(!ranges.usable("10.112.0.1".parse().expect("ip")));
        assert!(ServiceRanges::parse("10.96.0.0", "30000-32767").is_err());
        assert!(ServiceRanges::parse("10.96.0.0/30", "30000-32767").is_err());
        assert!(ServiceRanges::parse("10.96.0.0/12", "3-2").is_err());
    }
}
