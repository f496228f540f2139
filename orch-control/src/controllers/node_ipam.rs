//! Node IPAM (kube-controller-manager's range allocator): every node gets
//! a pod CIDR (`spec.podCIDR`, `spec.podCIDRs`) from the cluster CIDR
//! (default 10.244.0.0/16, /24 per node), the lowest free one. Its agent
//! gives its pods addresses from it and the dataplane routes it.
//!
//! Decisions are taken under one lock against every CIDR already given
//! (read from the cached nodes, plus those being written), so two nodes
//! registering at once never get the same range.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};

/// The cluster's pod network and the share each node gets
/// (`--cluster-cidr`, `--node-cidr-mask-size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterCidr {
    network: u32,
    prefix_len: u8,
    node_prefix_len: u8,
}

impl Default for ClusterCidr {
    fn default() -> Self {
        Self {
            network: u32::from(Ipv4Addr::new(10, 244, 0, 0)),
            prefix_len: 16,
            node_prefix_len: 24,
        }
    }
}

impl ClusterCidr {
    pub fn parse(cidr: &str, node_mask: u8) -> Result<Self, String> {
        let bad = || format!("--cluster-cidr {cidr:?}: an IPv4 CIDR like 10.244.0.0/16");
        let (address, length) = cidr.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix_len: u8 = length.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix_len) {
            return Err(bad());
        }
        if !(prefix_len..=30).contains(&node_mask) || node_mask - prefix_len > 16 {
            return Err(format!(
                "--node-cidr-mask-size {node_mask}: must be between /{prefix_len} and /30, at most 16 bits longer than the cluster CIDR"
            ));
        }
        Ok(Self {
            network: u32::from(address) & (u32::MAX << (32 - prefix_len)),
            prefix_len,
            node_prefix_len: node_mask,
        })
    }

    /// The `index`th node range, if the cluster CIDR holds that many.
    fn range(&self, index: u32) -> Option<String> {
        let count = 1u32 << (self.node_prefix_len - self.prefix_len);
        (index < count).then(|| {
            let base = self.network + (index << (32 - self.node_prefix_len));
            format!("{}/{}", Ipv4Addr::from(base), self.node_prefix_len)
        })
    }
}

pub struct NodeIpamController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    cidr: ClusterCidr,
    /// Ranges handed out but perhaps not yet in the cache: node -> range.
    given: Mutex<BTreeMap<String, String>>,
}

fn pod_cidr(object: &Object) -> Option<String> {
    match object {
        Object::Node(node) => node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .filter(|c| !c.is_empty()),
        _ => None,
    }
}

impl NodeIpamController {
    pub fn new(cache: Arc<Cache>, cidr: ClusterCidr) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            cidr,
            given: Mutex::new(BTreeMap::new()),
        })
    }

    fn given(&self) -> MutexGuard<'_, BTreeMap<String, String>> {
        self.given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { new, .. } if new.kind() == Kind::Node && pod_cidr(new).is_none() => {
                self.queue.add(ObjectRef::of(new));
            }
            Change::Deleted(old) if old.kind() == Kind::Node => {
                if let Some(name) = &old.metadata().name {
                    self.given().remove(name);
                }
            }
            _ => {}
        }
    }

    /// The lowest range no node holds, reserved for `node`.
    fn reserve(&self, node: &str) -> Option<String> {
        let mut given = self.given();
        if let Some(range) = given.get(node) {
            return Some(range.clone());
        }
        let mut taken: HashSet<String> = self
            .cache
            .select_in(Kind::Node, None, |_| true)
            .iter()
            .filter_map(|n| pod_cidr(n))
            .collect();
        taken.extend(given.values().cloned());
        let range = (0..)
            .map_while(|i| self.cidr.range(i))
            .find(|r| !taken.contains(r))?;
        given.insert(node.to_owned(), range.clone());
        Some(range)
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(node) = self.cache.get(&key) else {
            self.given().remove(&key.name);
            return Ok(Next::Done);
        };
        if pod_cidr(&node).is_some() {
            return Ok(Next::Done);
        }
        let Some(range) = self.reserve(&key.name) else {
            tracing::warn!(node = %key.name, "no pod CIDR left in the cluster CIDR");
            return Err(ApiError::Unavailable(format!(
                "node {}: the cluster CIDR has no free pod CIDR left",
                key.name
            )));
        };
        // Guarded by the version read: set only if still unset.
        let Object::Node(current) = node.as_ref() else {
            return Ok(Next::Done);
        };
        let mut assigned = current.as_ref().clone();
        let spec = assigned.spec.get_or_insert_with(Default::default);
        spec.pod_cidr = Some(range.clone());
        spec.pod_cidrs = Some(vec![range]);
        match client.update(&Object::from(assigned), false).await {
            Ok(_) => Ok(Next::Done),
            Err(ApiError::NotFound(_)) => {
                self.given().remove(&key.name);
                Ok(Next::Done)
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_node_sized_slices_of_the_cluster_cidr() {
        let cidr = ClusterCidr::default();
        assert_eq!(cidr.range(0).as_deref(), Some("10.244.0.0/24"));
        assert_eq!(cidr.range(255).as_deref(), Some("10.244.255.0/24"));
        assert_eq!(cidr.range(256), None);
        let small = ClusterCidr::parse("10.0.0.0/22", 24).expect("parse");
        assert_eq!(small.range(3).as_deref(), Some("10.0.3.0/24"));
        assert_eq!(small.range(4), None);
        assert!(ClusterCidr::parse("10.0.0.0/24", 16).is_err());
        assert!(ClusterCidr::parse("nonsense", 24).is_err());
    }
}
