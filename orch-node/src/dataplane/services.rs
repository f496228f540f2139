//! ClusterIP load balancing at the socket: the cgroup `connect4`,
//! `sendmsg4`, `recvmsg4` and `getpeername4` programs (orch-ebpf's
//! `sock_lb`) attached to the cgroup2 directory holding the node's pods,
//! and the writer of their service table. Programs, links and maps are
//! pinned under the node's directory, so balancing goes on while the agent
//! is stopped and a restarted agent adopts what it finds.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap, Map, MapData, MapError, PerCpuHashMap};
use aya::programs::CgroupSockAddr;
use aya::programs::links::{CgroupAttachMode, FdLink};
use orch_ebpf_common::service::{
    BACKENDS_MAP, Backend, BackendKey, PROTOCOL_TCP, PROTOCOL_UDP, SERVICE_COUNTERS_MAP,
    SERVICES_MAP, SOCK_CONNECT4_PROG, SOCK_GETPEERNAME4_PROG, SOCK_RECVMSG4_PROG,
    SOCK_SENDMSG4_PROG, ServiceCounters, ServiceEntry, ServiceKey,
};

use super::{DataplaneError, PinLayout, remove_pin};

const PROGRAMS: [&str; 4] = [
    SOCK_CONNECT4_PROG,
    SOCK_SENDMSG4_PROG,
    SOCK_RECVMSG4_PROG,
    SOCK_GETPEERNAME4_PROG,
];

/// The links are named after what they attach to: one cgroup per node.
const CGROUP_LINK: &str = "cgroup";

/// Loads the socket programs with the node's pinned maps and attaches them
/// to the cgroup2 directory `cgroup` (its whole subtree). A link already
/// pinned on that cgroup gets the new program swapped in (atomically: an
/// upgraded agent upgrades the programs with no unbalanced connect in
/// between); one pinned on another cgroup (the agent was given another
/// `--service-cgroup`) is detached first and made anew on this one.
pub fn attach(layout: &PinLayout, cgroup: &Path) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = super::load(layout)?;
    let directory = File::open(cgroup).map_err(|source| DataplaneError::Io {
        path: cgroup.to_path_buf(),
        source,
    })?;
    let cgroup_id = std::fs::metadata(cgroup)
        .map_err(|source| DataplaneError::Io {
            path: cgroup.to_path_buf(),
            source,
        })?
        .ino();
    for name in PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        let failed = |source| DataplaneError::Program { name, source };
        program.load().map_err(failed)?;
        let program_path = layout.program(name);
        remove_pin(&program_path)?;
        program
            .pin(&program_path)
            .map_err(|source| DataplaneError::Pin {
                path: program_path,
                source,
            })?;
        let link_path = layout.link(name, CGROUP_LINK);
        let link_error = |source| DataplaneError::Io {
            path: link_path.clone(),
            source,
        };
        if link_path.exists() {
            let link = super::bpf_link::open_pinned(&link_path).map_err(link_error)?;
            let attached_to = super::bpf_link::cgroup_of(link.as_fd()).map_err(link_error)?;
            if attached_to == cgroup_id {
                let program_fd = program.fd().map_err(failed)?;
                super::bpf_link::update(link.as_fd(), program_fd).map_err(link_error)?;
                tracing::info!(program = name, cgroup = %cgroup.display(), "program replaced in its link");
                continue;
            }
            // Another cgroup: a program attached (mode Single) to an
            // ancestor would refuse ours, so the old link goes first.
            drop(link);
            remove_pin(&link_path)?;
            tracing::info!(program = name, "moved off its earlier cgroup");
        }
        // Single: the multi modes fail on this kernel with EINVAL, and one
        // program per hook is all a node needs.
        let link_id = program
            .attach(&directory, CgroupAttachMode::Single)
            .map_err(failed)?;
        let link = program.take_link(link_id).map_err(failed)?;
        let link = FdLink::try_from(link).map_err(|source| DataplaneError::Link {
            path: link_path.clone(),
            source,
        })?;
        link.pin(&link_path).map_err(|source| DataplaneError::Pin {
            path: link_path.clone(),
            source,
        })?;
        tracing::info!(program = name, cgroup = %cgroup.display(), "attached");
    }
    Ok(ebpf)
}

/// Detaches the socket programs (unpinning a link drops its last
/// reference). Returns whether anything was attached.
pub fn detach(layout: &PinLayout) -> Result<bool, DataplaneError> {
    let mut detached = false;
    for name in PROGRAMS {
        for path in [layout.link(name, CGROUP_LINK), layout.program(name)] {
            detached |= remove_pin(&path)?;
        }
    }
    Ok(detached)
}

/// How a frontend balances: over its backends, and with sessionAffinity
/// ClientIP for `affinity_seconds` (0: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Balancing {
    pub backends: Vec<SocketAddrV4>,
    pub affinity_seconds: u32,
}

impl Balancing {
    /// Over `backends`, with no sessionAffinity.
    pub fn without_affinity(backends: Vec<SocketAddrV4>) -> Self {
        Self {
            backends,
            affinity_seconds: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => PROTOCOL_TCP,
            Protocol::Udp => PROTOCOL_UDP,
        }
    }

    fn from_number(number: u8) -> Option<Self> {
        match number {
            PROTOCOL_TCP => Some(Protocol::Tcp),
            PROTOCOL_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// What clients dial: a service address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    fn key(self) -> ServiceKey {
        ServiceKey {
            address: u32::from(self.address).to_be(),
            port: self.port.to_be(),
            protocol: self.protocol.number(),
            pad: 0,
        }
    }

    fn from_key(key: &ServiceKey) -> Option<Self> {
        Some(Self {
            address: Ipv4Addr::from(u32::from_be(key.address)),
            port: u16::from_be(key.port),
            protocol: Protocol::from_number(key.protocol)?,
        })
    }
}

fn backend_value(address: SocketAddrV4) -> Backend {
    Backend {
        address: u32::from(*address.ip()).to_be(),
        port: address.port().to_be(),
        pad: 0,
    }
}

fn backend_address(backend: &Backend) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(backend.address)),
        u16::from_be(backend.port),
    )
}

/// The node's pinned service table.
pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceEntry>,
    backends: HashMap<MapData, BackendKey, Backend>,
    counters: PerCpuHashMap<MapData, u32, ServiceCounters>,
    counters_path: PathBuf,
    services_path: PathBuf,
    backends_path: PathBuf,
    /// The next unused service id.
    next_id: u32,
}

fn open_map<K: aya::Pod, V: aya::Pod>(
    path: &Path,
) -> Result<HashMap<MapData, K, V>, DataplaneError> {
    let error = |source| DataplaneError::Map {
        path: path.to_path_buf(),
        source,
    };
    let data = MapData::from_pin(path).map_err(error)?;
    HashMap::try_from(Map::HashMap(data)).map_err(error)
}

impl ServiceTable {
    /// Opens the maps [`attach`] pinned for the node.
    pub fn open(layout: &PinLayout) -> Result<Self, DataplaneError> {
        let services_path = layout.map(SERVICES_MAP);
        let backends_path = layout.map(BACKENDS_MAP);
        let services = open_map(&services_path)?;
        let backends = open_map(&backends_path)?;
        let counters_path = layout.map(SERVICE_COUNTERS_MAP);
        let counters = MapData::from_pin(&counters_path)
            .and_then(|data| PerCpuHashMap::try_from(Map::PerCpuHashMap(data)))
            .map_err(|source| DataplaneError::Map {
                path: counters_path.clone(),
                source,
            })?;
        let mut table = Self {
            services,
            backends,
            counters,
            counters_path,
            services_path,
            backends_path,
            next_id: 1,
        };
        let highest = table
            .entries()?
            .into_iter()
            .map(|(_, entry)| entry.id)
            .max()
            .unwrap_or(0);
        table.next_id = highest + 1;
        Ok(table)
    }

    fn services_error(&self) -> impl Fn(MapError) -> DataplaneError + '_ {
        |source| DataplaneError::Map {
            path: self.services_path.clone(),
            source,
        }
    }

    fn counters_error(&self, source: MapError) -> DataplaneError {
        DataplaneError::Map {
            path: self.counters_path.clone(),
            source,
        }
    }

    fn backends_error(&self) -> impl Fn(MapError) -> DataplaneError + '_ {
        |source| DataplaneError::Map {
            path: self.backends_path.clone(),
            source,
        }
    }

    fn entries(&self) -> Result<Vec<(ServiceKey, ServiceEntry)>, DataplaneError> {
        self.services
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.services_error())
    }

    fn entry(&self, key: &ServiceKey) -> Result<Option<ServiceEntry>, DataplaneError> {
        match self.services.get(key, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(self.services_error()(source)),
        }
    }

    /// Makes `frontend` balance over `backends` (none: connections are
    /// refused). Make-before-break: new slots are written before the count
    /// takes them in, and the count drops before slots go, so no
    /// connection is ever sent to an empty slot.
    /// `affinity_seconds` is sessionAffinity ClientIP's timeout (0: none).
    pub fn set(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
        affinity_seconds: u32,
    ) -> Result<(), DataplaneError> {
        let key = frontend.key();
        let (id, old_count) = match self.entry(&key)? {
            Some(entry) => (entry.id, entry.backends),
            None => {
                let id = self.next_id;
                self.next_id += 1;
                (id, 0)
            }
        };
        let count = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        for (slot, backend) in (0..count).zip(backends) {
            self.backends
                .insert(BackendKey { service: id, slot }, backend_value(*backend), 0)
                .map_err(self.backends_error())?;
        }
        self.services
            .insert(
                key,
                ServiceEntry {
                    id,
                    backends: count,
                    affinity_seconds,
                    pad: 0,
                },
                0,
            )
            .map_err(self.services_error())?;
        for slot in count..old_count {
            self.remove_slot(id, slot)?;
        }
        Ok(())
    }

    fn remove_slot(&mut self, service: u32, slot: u32) -> Result<(), DataplaneError> {
        match self.backends.remove(&BackendKey { service, slot }) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(self.backends_error()(source)),
        }
    }

    /// Stops balancing `frontend`: the service entry goes first, then its
    /// backends. Returns whether it was there.
    pub fn remove(&mut self, frontend: Frontend) -> Result<bool, DataplaneError> {
        let key = frontend.key();
        let Some(entry) = self.entry(&key)? else {
            return Ok(false);
        };
        match self.services.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => return Err(self.services_error()(source)),
        }
        for slot in 0..entry.backends {
            self.remove_slot(entry.id, slot)?;
        }
        // The id is not used again: its counters go with it.
        match self.counters.remove(&entry.id) {
            Ok(()) => {}
            // Never counted (per-CPU maps say so with ENOENT).
            Err(MapError::KeyNotFound) => {}
            Err(MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(nix::libc::ENOENT) => {}
            Err(source) => return Err(self.counters_error(source)),
        }
        Ok(true)
    }

    /// What the balancers counted for each frontend, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<(Frontend, ServiceCounters)>, DataplaneError> {
        let mut counted = Vec::new();
        for (key, entry) in self.entries()? {
            let Some(frontend) = Frontend::from_key(&key) else {
                continue;
            };
            let mut total = ServiceCounters::default();
            match self.counters.get(&entry.id, 0) {
                Ok(per_cpu) => {
                    for cpu in per_cpu.iter() {
                        total.connections += cpu.connections;
                        total.packets += cpu.packets;
                        total.bytes += cpu.bytes;
                    }
                }
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(self.counters_error(source)),
            }
            counted.push((frontend, total));
        }
        counted.sort_by_key(|(frontend, _)| *frontend);
        Ok(counted)
    }

    /// Every frontend with its backends, decoded, sorted by frontend.
    pub fn list(&self) -> Result<Vec<(Frontend, Balancing)>, DataplaneError> {
        let mut services = Vec::new();
        for (key, entry) in self.entries()? {
            let Some(frontend) = Frontend::from_key(&key) else {
                continue;
            };
            let mut backends = Vec::with_capacity(entry.backends as usize);
            for slot in 0..entry.backends {
                match self.backends.get(
                    &BackendKey {
                        service: entry.id,
                        slot,
                    },
                    0,
                ) {
                    Ok(backend) => backends.push(backend_address(&backend)),
                    Err(MapError::KeyNotFound) => {}
                    Err(source) => return Err(self.backends_error()(source)),
                }
            }
            let balancing = Balancing {
                backends,
                affinity_seconds: entry.affinity_seconds,
            };
            services.push((frontend, balancing));
        }
        services.sort();
        Ok(services)
    }
}

/// The table as `orch-node dataplane dump` (and `orchctl node dataplane`)
/// print it: one line per frontend.
pub fn render(table: &[(Frontend, Balancing)]) -> String {
    let mut text = format!(
        "{:<22} {:<5} {:<9} BACKENDS\n",
        "FRONTEND", "PROTO", "AFFINITY"
    );
    for (frontend, balancing) in table {
        let backends: Vec<String> = balancing.backends.iter().map(ToString::to_string).collect();
        let affinity = match balancing.affinity_seconds {
            0 => "-".to_string(),
            seconds => format!("{seconds}s"),
        };
        text.push_str(&format!(
            "{:<22} {:<5} {:<9} {}\n",
            format!("{}:{}", frontend.address, frontend.port),
            format!("{:?}", frontend.protocol).to_uppercase(),
            affinity,
            if backends.is_empty() {
                "<none: connections refused>".to_owned()
            } else {
                backends.join(",")
            }
        ));
    }
    text
}
