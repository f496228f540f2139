//! LoadBalancer addresses from configuration (what a cloud's service
//! controller or MetalLB does): every Service of type LoadBalancer gets an
//! address from `--load-balancer-ip-range` in `status.loadBalancer.ingress`
//! (its `spec.loadBalancerIP` when that is free in the range, else the
//! lowest free one); a Service that stops being a LoadBalancer gives it
//! back. Node agents balance traffic to it as they do a NodePort's. With no
//! range configured, LoadBalancer Services stay pending, as in a cluster
//! without a cloud.
//!
//! Decisions are taken under one lock against every address in use (the
//! cached Services' statuses plus those being written), so two Services
//! never get the same one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, Service};
use orch_core::api::{ApiClient, ApiError};
use orch_core::networking::load_balancer_addresses;
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};

/// `--load-balancer-ip-range`: the addresses LoadBalancer Services get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressRange {
    first: u32,
    last: u32,
}

impl AddressRange {
    /// An IPv4 CIDR (its host addresses) or `FIRST-LAST`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "--load-balancer-ip-range {text:?}: an IPv4 CIDR like 192.0.2.0/28 or a range like 192.0.2.10-192.0.2.20"
            )
        };
        let address = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map(u32::from)
                .map_err(|_| bad())
        };
        let (first, last) = if let Some((network, length)) = text.split_once('/') {
            let length: u32 = length.parse().map_err(|_| bad())?;
            if !(8..=30).contains(&length) {
                return Err(bad());
            }
            let mask = u32::MAX << (32 - length);
            let network = address(network)? & mask;
            (network + 1, (network | !mask) - 1)
        } else if let Some((first, last)) = text.split_once('-') {
            (address(first)?, address(last)?)
        } else {
            return Err(bad());
        };
        if first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&u32::from(address))
    }
}

pub struct LoadBalancerIpam {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    range: Option<AddressRange>,
    /// Addresses handed out but perhaps not yet in the cache.
    given: Mutex<BTreeMap<ObjectRef, Ipv4Addr>>,
}

fn is_load_balancer(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

impl LoadBalancerIpam {
    pub fn new(cache: Arc<Cache>, range: Option<AddressRange>) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            range,
            given: Mutex::new(BTreeMap::new()),
        })
    }

    fn given(&self) -> MutexGuard<'_, BTreeMap<ObjectRef, Ipv4Addr>> {
        self.given
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { new, .. } if new.kind() == Kind::Service => {
                self.queue.add(ObjectRef::of(new));
            }
            Change::Deleted(old) if old.kind() == Kind::Service => {
                self.given().remove(&ObjectRef::of(old));
            }
            _ => {}
        }
    }

    /// The address for `key`: the one it holds or asks for when free in
    /// the range, else the lowest free one; reserved under the lock.
    fn reserve(&self, key: &ObjectRef, service: &Service, range: AddressRange) -> Option<Ipv4Addr> {
        let mut given = self.given();
        let mut taken: BTreeSet<Ipv4Addr> = self
            .cache
            .select_kind(Kind::Service, |_| true)
            .iter()
            .filter(|object| ObjectRef::of(object) != *key)
            .filter_map(|object| match object.as_ref() {
                Object::Service(other) => Some(load_balancer_addresses(other)),
                _ => None,
            })
            .flatten()
            .collect();
        taken.extend(given.iter().filter(|(k, _)| *k != key).map(|(_, a)| *a));
        let asked = service
            .spec
            .as_ref()
            .and_then(|s| s.load_balancer_ip.as_deref())
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        let held = load_balancer_addresses(service).into_iter().next();
        let free = |a: &Ipv4Addr| range.contains(*a) && !taken.contains(a);
        let chosen = asked
            .filter(free)
            .or_else(|| held.filter(|h| free(h) && asked.is_none()))
            .or_else(|| {
                (range.first..=range.last)
                    .map(Ipv4Addr::from)
                    .find(|a| !taken.contains(a))
            })?;
        given.insert(key.clone(), chosen);
        Some(chosen)
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let service = match self.cache.get(&key).as_deref() {
            Some(Object::Service(service)) => (**service).clone(),
            _ => {
                self.given().remove(&key);
                return Ok(Next::Done);
            }
        };
        let current = load_balancer_addresses(&service);
        let wanted = match (is_load_balancer(&service), self.range) {
            (true, Some(range)) => match self.reserve(&key, &service, range) {
                Some(address) => vec![address],
                None => {
                    tracing::warn!(service = %key.name, "no load balancer address left in --load-balancer-ip-range");
                    return Err(ApiError::Unavailable(format!(
                        "service {}: --load-balancer-ip-range has no free address",
                        key.name
                    )));
                }
            },
            // Not (or no longer) a LoadBalancer: nothing of ours to hold.
            (false, _) => {
                self.given().remove(&key);
                Vec::new()
            }
            // Pending, as without a cloud.
            (true, None) => return Ok(Next::Done),
        };
        if current == wanted {
            return Ok(Next::Done);
        }
        let mut updated = service;
        let status = updated.status.get_or_insert_with(Default::default);
        status.load_balancer = Some(LoadBalancerStatus {
            ingress: Some(
                wanted
                    .iter()
                    .map(|address| LoadBalancerIngress {
                        ip: Some(address.to_string()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect(),
            )
            .filter(|ingress: &Vec<_>| !ingress.is_empty()),
        });
        match client
            .update_status(&Object::Service(Box::new(updated)))
            .await
        {
            Ok(_) | Err(ApiError::NotFound(_)) => Ok(Next::Done),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_cidrs_or_first_last() {
        let cidr = AddressRange::parse("192.0.2.0/30").expect("cidr");
        assert!(cidr.contains("192.0.2.1".parse().unwrap()));
        assert!(cidr.contains("192.0.2.2".parse().unwrap()));
        assert!(!cidr.contains("192.0.2.3".parse().unwrap()), "broadcast");
        let span = AddressRange::parse("192.0.2.10-192.0.2.12").expect("range");
        assert!(span.contains("192.0.2.12".parse().unwrap()));
        for bad in ["192.0.2.0", "192.0.2.9-192.0.2.1", "x/24", "192.0.2.0/31"] {
            let error = AddressRange::parse(bad).unwrap_err();
            assert!(error.contains("--load-balancer-ip-range"), "{error}");
        }
    }
}
