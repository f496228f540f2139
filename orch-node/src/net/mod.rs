//! The node's network plumbing through rtnetlink: pod addresses (IPAM),
//! netlink connections in the node's and pods' namespaces, and the routes
//! to other nodes' podCIDRs. The eBPF side of pod networking is in
//! `dataplane::pod_network`.

pub mod ipam;
pub mod netlink;
pub mod node_routes;

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening a netlink socket: {0}")]
    NetlinkSocket(#[source] std::io::Error),
    #[error("netlink, {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(transparent)]
    Addresses(#[from] ipam::IpamError),
}
