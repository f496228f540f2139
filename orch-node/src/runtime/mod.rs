//! Running containers: pod sandboxes, container root filesystems and
//! runtime specs, and the per-pod shims that call libcontainer.

pub mod bundle;
pub mod cgroups;
pub mod exec;
pub mod mounts;
pub mod release;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod seccomp_program;
pub mod shim;
pub mod spec;
pub mod subpath;
