//! What aya 0.14 does not offer for cgroup links, through bpf(2): opening
//! a pinned link, reading which cgroup it hangs off, and swapping a new
//! program into it (BPF_LINK_UPDATE), so an upgraded agent upgrades the
//! socket programs atomically, with no connect in between unbalanced.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

const BPF_OBJ_GET: nix::libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: nix::libc::c_long = 15;
const BPF_LINK_UPDATE: nix::libc::c_long = 29;

/// Explicit tail padding: the kernel refuses an attribute whose bytes
/// past the fields it knows are not zero.
#[repr(C)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

#[repr(C)]
struct GetInfo {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

#[repr(C)]
struct LinkUpdate {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The start of `struct bpf_link_info` for cgroup links.
#[repr(C)]
#[derive(Default)]
struct CgroupLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    pad2: u32,
}

fn bpf<T>(command: nix::libc::c_long, attr: &mut T) -> std::io::Result<nix::libc::c_long> {
    // SAFETY: `attr` is a live, initialised attribute struct of the
    // layout this command takes, and its size is passed with it.
    let result = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(result)
}

/// The link pinned at `path`.
pub fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr = ObjGet {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The id of the cgroup a cgroup link hangs off (a cgroup2 directory's
/// inode number).
pub fn cgroup_of(link: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut info = CgroupLinkInfo::default();
    let mut attr = GetInfo {
        bpf_fd: link.as_raw_fd() as u32,
        info_len: std::mem::size_of::<CgroupLinkInfo>() as u32,
        info: &mut info as *mut CgroupLinkInfo as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.cgroup_id)
}

/// Swaps `program` into `link`: one atomic replacement.
pub fn update(link: BorrowedFd<'_>, program: impl AsFd) -> std::io::Result<()> {
    let mut attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}
