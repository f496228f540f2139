//! The per-interface traffic counter: a tc classifier on ingress and egress
//! that counts packets and bytes per interface in a pinned per-CPU map.

use std::ffi::CStr;
use std::io;
use std::str::FromStr;

use aya::Ebpf;
use aya::maps::{Map, MapData, PerCpuHashMap};
use aya::programs::tc::{NlOptions, TcAttachOptions, TcError};
use aya::programs::{SchedClassifier, TcAttachType};
use orch_ebpf_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, IFACE_COUNTERS_MAP, IFACE_EGRESS_PROG, IFACE_INGRESS_PROG,
    IfaceCounters, IfaceKey,
};

use super::tc::{attach_tcx, detach_tcx, pin_program};
use super::{DataplaneError, PinLayout};

/// How the classifier is hooked into an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// tcx links (Linux >= 6.6): pinned under bpffs, so the programs stay
    /// attached while the agent is down and are replaced atomically when it
    /// attaches again.
    Tcx,
    /// The clsact qdisc with a netlink tc filter, for kernels without tcx.
    /// Filters cannot be pinned; they stay in the qdisc until detached.
    Clsact,
}

impl FromStr for AttachMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcx" => Ok(AttachMode::Tcx),
            "clsact" => Ok(AttachMode::Clsact),
            other => Err(format!(
                "unsupported attach mode `{other}`: expected `tcx` or `clsact`"
            )),
        }
    }
}

const PROGRAMS: [(&str, TcAttachType); 2] = [
    (IFACE_INGRESS_PROG, TcAttachType::Ingress),
    (IFACE_EGRESS_PROG, TcAttachType::Egress),
];

/// Loads the counter programs, pins them and their map under the node's
/// directory, and attaches them to `interface` on ingress and egress.
///
/// Idempotent: the map is reused from its pin (counts survive), and an
/// interface that already has the programs gets the new ones swapped in
/// atomically (tcx) rather than a second copy. The returned [`Ebpf`] holds the
/// aya-log ring buffer of the freshly loaded programs.
pub fn attach(
    layout: &PinLayout,
    interface: &str,
    mode: AttachMode,
) -> Result<Ebpf, DataplaneError> {
    let mut ebpf = super::load(layout)?;
    for (name, attach_type) in PROGRAMS {
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(DataplaneError::MissingProgram(name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        program
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        pin_program(layout, name, program)?;
        match mode {
            AttachMode::Tcx => attach_tcx(layout, name, program, interface, attach_type)?,
            AttachMode::Clsact => attach_clsact(name, program, interface, attach_type)?,
        }
        tracing::info!(program = name, interface, ?mode, "attached");
    }
    Ok(ebpf)
}

fn attach_clsact(
    name: &'static str,
    program: &mut SchedClassifier,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<(), DataplaneError> {
    let tc_error = |source| DataplaneError::Tc {
        interface: interface.to_string(),
        source,
    };
    match aya::programs::tc::qdisc_add_clsact(interface) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc_eexist()) => {}
        Err(e) => return Err(tc_error(e)),
    }
    // One filter per program and direction: drop an older copy first.
    detach_clsact_filter(name, interface, attach_type)?;
    let link_id = program
        .attach_with_options(
            interface,
            attach_type,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(|source| DataplaneError::Program { name, source })?;
    let link = program
        .take_link(link_id)
        .map_err(|source| DataplaneError::Program { name, source })?;
    // Dropping the link would delete the filter; the filter must outlive
    // this process, and `detach` removes it by program name.
    std::mem::forget(link);
    Ok(())
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

/// Detaches the counter programs from `interface`. Returns whether anything
/// was attached.
pub fn detach(
    layout: &PinLayout,
    interface: &str,
    mode: AttachMode,
) -> Result<bool, DataplaneError> {
    let mut detached = false;
    for (name, attach_type) in PROGRAMS {
        detached |= match mode {
            AttachMode::Tcx => detach_tcx(&layout.link(name, interface))?,
            AttachMode::Clsact => detach_clsact_filter(name, interface, attach_type)?,
        };
    }
    Ok(detached)
}

fn detach_clsact_filter(
    name: &'static str,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<bool, DataplaneError> {
    match aya::programs::tc::qdisc_detach_program(interface, attach_type, name) {
        Ok(()) => Ok(true),
        Err(TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataplaneError::Tc {
            interface: interface.to_string(),
            source,
        }),
    }
}

/// Traffic through one interface in one direction, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfaceTraffic {
    pub ifindex: u32,
    /// The interface's current name, when it still exists.
    pub interface: Option<String>,
    /// `ingress` or `egress`.
    pub direction: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the pinned counter map of the node. Works whether or not the agent
/// that attached the programs still runs.
pub fn read(layout: &PinLayout) -> Result<Vec<IfaceTraffic>, DataplaneError> {
    let path = layout.map(IFACE_COUNTERS_MAP);
    let map_error = |source| DataplaneError::Map {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(map_error)?;
    let map: PerCpuHashMap<MapData, IfaceKey, IfaceCounters> =
        PerCpuHashMap::try_from(Map::PerCpuHashMap(data)).map_err(map_error)?;
    let mut traffic = Vec::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry.map_err(map_error)?;
        let mut total = IfaceCounters::default();
        for counters in per_cpu.iter() {
            total.add(counters);
        }
        traffic.push(IfaceTraffic {
            ifindex: key.ifindex,
            interface: interface_name(key.ifindex),
            direction: match key.direction {
                DIRECTION_INGRESS => "ingress",
                DIRECTION_EGRESS => "egress",
                _ => "unknown",
            },
            packets: total.packets,
            bytes: total.bytes,
        });
    }
    traffic.sort_by_key(|t| (t.ifindex, t.direction));
    Ok(traffic)
}

/// The name of interface `ifindex` in this network namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as nix::libc::c_char; nix::libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes, as if_indextoname requires.
    let ptr = unsafe { nix::libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if ptr.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
