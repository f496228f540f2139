//! Pod address management for one node: /32s from the podCIDR the control
//! plane assigned (`Node.spec.podCIDR`), one per pod sandbox, persisted in
//! the agent's state directory so a restarted agent hands out no address
//! twice. Addresses are given round-robin from after the last one handed
//! out (as CNI's host-local plugin does), so a released address is not
//! reused at once by the next pod while peers may still hold it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum IpamError {
    #[error("podCIDR `{0}`: not an IPv4 CIDR like 10.244.1.0/24 with a prefix of /8 to /30")]
    BadCidr(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a pod address file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("podCIDR {0} has no free address")]
    Exhausted(PodCidr),
}

/// An IPv4 podCIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl PodCidr {
    pub fn parse(text: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadCidr(text.to_string());
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(address) & !mask != 0 {
            return Err(bad());
        }
        Ok(Self {
            network: address,
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & self.mask() == u32::from(self.network)
    }

    /// The addresses a pod may get: all but the network and broadcast
    /// addresses (the gateway is link-local, so it takes none).
    fn first_and_last_host(&self) -> (u32, u32) {
        let network = u32::from(self.network);
        (network + 1, (network | !self.mask()) - 1)
    }
}

impl std::fmt::Display for PodCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// What is on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Allocations {
    /// Address -> the pod (uid) holding it.
    allocated: BTreeMap<Ipv4Addr, String>,
    /// The address handed out last (where the next search starts).
    last: Option<Ipv4Addr>,
}

/// The file under the agent's state dir that records the pods' addresses.
pub const ADDRESSES_FILE: &str = "pod-addresses.json";

/// The node's pod addresses, backed by `<state dir>/pod-addresses.json`.
#[derive(Debug)]
pub struct PodAddresses {
    path: PathBuf,
    state: Allocations,
}

impl PodAddresses {
    /// Opens (or starts) the allocation file in `state_dir`. A file that is
    /// not one is an error: silently starting afresh would hand out
    /// addresses that running pods hold.
    pub fn open(state_dir: &Path) -> Result<Self, IpamError> {
        let path = state_dir.join(ADDRESSES_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| IpamError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::default(),
            Err(source) => return Err(IpamError::Io { path, source }),
        };
        Ok(Self { path, state })
    }

    /// The address of pod `uid`, if it holds one.
    pub fn address_of(&self, uid: &str) -> Option<Ipv4Addr> {
        self.state
            .allocated
            .iter()
            .find_map(|(address, holder)| (holder == uid).then_some(*address))
    }

    /// Every allocation: address -> pod uid.
    pub fn allocated(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.state.allocated
    }

    /// The address of pod `uid` from `cidr`: the one it holds there, else a
    /// free one (written to disk before it is returned).
    pub fn allocate(&mut self, cidr: PodCidr, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(address) = self.address_of(uid).filter(|a| cidr.contains(*a)) {
            return Ok(address);
        }
        let (first, last) = cidr.first_and_last_host();
        let start = self
            .state
            .last
            .map(u32::from)
            .filter(|a| (first..=last).contains(a))
            .map_or(first, |a| if a == last { first } else { a + 1 });
        let candidates = (start..=last).chain(first..start).map(Ipv4Addr::from);
        let free = candidates
            .into_iter()
            .find(|a| !self.state.allocated.contains_key(a))
            .ok_or(IpamError::Exhausted(cidr))?;
        // A pod holds one address: one from an older podCIDR goes.
        self.state.allocated.retain(|_, holder| holder != uid);
        self.state.allocated.insert(free, uid.to_string());
        self.state.last = Some(free);
        self.save()?;
        Ok(free)
    }

    /// Releases what pod `uid` holds; returns the address it held.
    pub fn release(&mut self, uid: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let held = self.address_of(uid);
        if held.is_some() {
            self.state.allocated.retain(|_, holder| holder != uid);
            self.save()?;
        }
        Ok(held)
    }

    fn save(&self) -> Result<(), IpamError> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| IpamError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        crate::files::write_atomically(&self.path, &bytes)
            .map_err(|(path, source)| IpamError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> PodCidr {
        PodCidr::parse(text).expect("cidr")
    }

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(cidr("10.244.1.0/24").to_string(), "10.244.1.0/24");
        for bad in [
            "10.244.1.0",
            "10.244.1.1/24",
            "10.244.1.0/31",
            "fd00::/64",
            "x/24",
        ] {
            let error = PodCidr::parse(bad).unwrap_err().to_string();
            assert!(error.contains(bad), "{error}");
        }
    }

    #[test]
    fn addresses_are_unique_round_robin_and_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = cidr("10.1.0.0/29"); // hosts .1 to .6
        let mut ipam = PodAddresses::open(dir.path()).expect("open");
        let a = ipam.allocate(range, "a").expect("a");
        let b = ipam.allocate(range, "b").expect("b");
        assert_eq!(
            (a, b),
            ("10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap())
        );
        // The same pod asks again (a restarted agent): the same address.
        assert_eq!(ipam.allocate(range, "a").expect("again"), a);
        assert_eq!(ipam.release("a").expect("release"), Some(a));
        // Not reused at once: the next pod gets the next address.
        assert_eq!(
            ipam.allocate(range, "c").expect("c"),
            "10.1.0.3".parse::<Ipv4Addr>().unwrap()
        );
        drop(ipam);
        let mut reopened = PodAddresses::open(dir.path()).expect("reopen");
        assert_eq!(reopened.address_of("b"), Some(b));
        assert_eq!(reopened.address_of("a"), None);
        for uid in ["d", "e", "f"] {
            reopened.allocate(range, uid).expect(uid);
        }
        // Past the end, the search wraps around to the released .1; then
        // none is left.
        assert_eq!(reopened.allocate(range, "g").expect("g"), a);
        let error = reopened.allocate(range, "h").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("10.1.0.0/29 has no free address"),
            "{error}"
        );
        for address in reopened.allocated().keys() {
            assert!(
                range.contains(*address) && *address != "10.1.0.7".parse::<Ipv4Addr>().unwrap()
            );
        }
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pod-addresses.json");
        std::fs::write(&path, b"{\"allocated\": 7}").expect("write");
        let error = PodAddresses::open(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("pod-addresses.json") && error.contains("not a pod address file"),
            "{error}"
        );
        // Nothing was overwritten.
        assert_eq!(std::fs::read(&path).expect("read"), b"{\"allocated\": 7}");
    }
}
