//! What several components read of a Service's addresses the same way.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

/// The IPv4 addresses of a Service's `status.loadBalancer.ingress`
/// (hostnames and IPv6 left out).
pub fn load_balancer_addresses(service: &Service) -> Vec<Ipv4Addr> {
    service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect()
}
