//! The eBPF dataplane: loads orch's kernel programs with aya, pins programs,
//! links and maps under `/sys/fs/bpf/orch/<node>/` so they outlive the agent,
//! and reads the maps back.

mod bpf_link;
pub mod bpffs;
pub mod cgroup2;
pub mod iface_counters;
pub mod kernel_logs;
pub mod metrics;
pub mod monitor;
pub mod pod_network;
pub mod service_sync;
pub mod services;
mod tc;

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors of the dataplane loader.
#[derive(Debug, Error)]
pub enum DataplaneError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "this orch-node was built without its eBPF object: run `cargo xtask build-ebpf`, then rebuild orch-node"
    )]
    NoKernelObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("pinning {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link pinned at {}: {source}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("interface `{interface}`: {source}")]
    Tc {
        interface: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// The kernel programs, embedded at build time (see `build.rs`).
pub fn kernel_object() -> Result<&'static [u8], DataplaneError> {
    #[cfg(orch_ebpf_object)]
    {
        static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("ORCH_EBPF_OBJECT_PATH"));
        Ok(OBJECT)
    }
    #[cfg(not(orch_ebpf_object))]
    {
        Err(DataplaneError::NoKernelObject)
    }
}

/// Loads the kernel object with every map reused from (or created at) its
/// pin under the node's directory, so all programs of a node share one
/// instance of each map and a restarted agent finds what the last one
/// wrote.
pub fn load(layout: &PinLayout) -> Result<aya::Ebpf, DataplaneError> {
    layout.prepare()?;
    let mut loader = aya::EbpfLoader::new();
    for map in orch_ebpf_common::PINNED_MAPS {
        loader.map_pin_path(map, layout.map(map));
    }
    Ok(loader.load(kernel_object()?)?)
}

/// Where one node's programs, links and maps are pinned:
/// `<bpffs>/orch/<node>/`. Several agents can share one kernel (tests run a
/// whole cluster on one machine), so every pin lives under the node's name.
#[derive(Clone, Debug)]
pub struct PinLayout {
    bpffs_root: PathBuf,
    node_dir: PathBuf,
}

impl PinLayout {
    /// The layout for `node_name` under the bpffs mounted at `bpffs_root`.
    ///
    /// bpffs refuses '.' in names, and Kubernetes node names are DNS
    /// subdomains that may hold dots, so dots become '_' (which a DNS name
    /// cannot hold, so two nodes never share a directory).
    pub fn new(bpffs_root: &Path, node_name: &str) -> Result<Self, DataplaneError> {
        check_pin_component("node name", node_name)?;
        let dir_name = node_name.replace('.', "_");
        Ok(Self {
            bpffs_root: bpffs_root.to_path_buf(),
            node_dir: bpffs_root.join("orch").join(dir_name),
        })
    }

    /// The node's pin directory.
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// Pin path of a map (maps are pinned by their name in the object).
    pub fn map(&self, name: &str) -> PathBuf {
        self.node_dir.join(name)
    }

    /// Pin path of a program.
    pub fn program(&self, name: &str) -> PathBuf {
        self.node_dir.join(name)
    }

    /// Pin path of the link attaching `program` to `interface`.
    pub fn link(&self, program: &str, interface: &str) -> PathBuf {
        self.node_dir
            .join(format!("link_{program}_{}", interface.replace('.', "_")))
    }

    /// Unpins everything of this node. Unpinning a tcx link drops its last
    /// reference, so the kernel detaches it; maps and programs go once no link
    /// or process holds them. Returns whether there was anything to remove.
    pub fn remove_all(&self) -> Result<bool, DataplaneError> {
        match std::fs::remove_dir_all(&self.node_dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(DataplaneError::Io {
                path: self.node_dir.clone(),
                source,
            }),
        }
    }

    /// Mounts bpffs if needed and creates the node's pin directory.
    pub fn prepare(&self) -> Result<(), DataplaneError> {
        bpffs::ensure_mounted(&self.bpffs_root)?;
        std::fs::create_dir_all(&self.node_dir).map_err(|source| DataplaneError::Io {
            path: self.node_dir.clone(),
            source,
        })
    }
}

/// Removes one pin (a program, link or map); returns whether it was there.
/// Unpinning a link drops the reference that kept it attached.
pub(crate) fn remove_pin(path: &Path) -> Result<bool, DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataplaneError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn check_pin_component(what: &'static str, value: &str) -> Result<(), DataplaneError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > 253 {
        Some("must be at most 253 characters")
    } else if value.contains('/') || value.contains('\0') {
        Some("must not contain '/' or NUL")
    } else if value.starts_with('.') {
        Some("must not start with '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DataplaneError::InvalidName {
            what,
            value: value.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_paths_have_no_dots() {
        let layout = PinLayout::new(Path::new("/sys/fs/bpf"), "node-1.example.com").unwrap();
        assert_eq!(
            layout.node_dir(),
            Path::new("/sys/fs/bpf/orch/node-1_example_com")
        );
        assert_eq!(
            layout.link("iface_count_ingress", "eth0.100"),
            Path::new("/sys/fs/bpf/orch/node-1_example_com/link_iface_count_ingress_eth0_100")
        );
    }

    #[test]
    fn rejects_bad_node_names() {
        for bad in ["", "../x", "a/b", ".hidden"] {
            let err = PinLayout::new(Path::new("/sys/fs/bpf"), bad).unwrap_err();
            assert!(err.to_string().contains("invalid node name"), "{err}");
        }
    }
}
