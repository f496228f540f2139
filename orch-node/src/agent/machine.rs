//! What the node has: CPUs, memory, disk and process ids, read from the
//! kernel, and how much of each is free (for the pressure conditions).

use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum MachineError {
    #[error("reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: no {field} line", path.display())]
    Missing { path: PathBuf, field: &'static str },
    #[error("statvfs {}: {source}", path.display())]
    Statvfs {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn read(path: &Path) -> Result<String, MachineError> {
    std::fs::read_to_string(path).map_err(|source| MachineError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Memory figures of /proc/meminfo, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

/// Parses /proc/meminfo's `MemTotal` and `MemAvailable` (kB).
pub fn parse_meminfo(text: &str, path: &Path) -> Result<Memory, MachineError> {
    let field = |name: &'static str| {
        text.lines()
            .find_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix(':')?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .map(|kib| kib * 1024)
            .ok_or(MachineError::Missing {
                path: path.to_path_buf(),
                field: name,
            })
    };
    Ok(Memory {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
    })
}

pub fn memory() -> Result<Memory, MachineError> {
    let path = Path::new("/proc/meminfo");
    parse_meminfo(&read(path)?, path)
}

/// Logical CPUs online (what cAdvisor reports to the kubelet as cores):
/// the machine's, not this process's share (affinity and CPU quota would
/// understate what pods on the node may use).
pub fn cpus() -> u64 {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|list| count_cpu_list(list.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u64))
}

/// Counts a kernel CPU list such as `0-3,6,8-9`.
fn count_cpu_list(list: &str) -> Option<u64> {
    list.split(',').try_fold(0u64, |total, range| {
        let count = match range.split_once('-') {
            Some((first, last)) => last.parse::<u64>().ok()? - first.parse::<u64>().ok()? + 1,
            None => {
                range.parse::<u64>().ok()?;
                1
            }
        };
        Some(total + count)
    })
}

/// Size and free space of the filesystem holding `path`, in bytes.
#[derive(Clone, Copy, Debug)]
pub struct Disk {
    pub total: u64,
    pub available: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn disk(path: &Path) -> Result<Disk, MachineError> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(|source| MachineError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    let block = stat.fragment_size();
    Ok(Disk {
        total: stat.blocks() * block,
        available: stat.blocks_available() * block,
        inodes: stat.files(),
        inodes_free: stat.files_available(),
    })
}

/// Process ids in use and the kernel's limit.
#[derive(Clone, Copy, Debug)]
pub struct Pids {
    pub used: u64,
    pub max: u64,
}

pub fn pids() -> Result<Pids, MachineError> {
    let path = Path::new("/proc/sys/kernel/pid_max");
    let max = read(path)?
        .trim()
        .parse()
        .map_err(|_| MachineError::Missing {
            path: path.to_path_buf(),
            field: "pid_max",
        })?;
    let path = Path::new("/proc/loadavg");
    // "0.00 0.01 0.05 1/123 4567": the 4th field's denominator counts
    // every task (threads included), which is what exhausts pid_max.
    let used = read(path)?
        .split_whitespace()
        .nth(3)
        .and_then(|field| field.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
        .ok_or(MachineError::Missing {
            path: path.to_path_buf(),
            field: "tasks",
        })?;
    Ok(Pids { used, max })
}

/// Identity of the machine and its kernel (Node.status.nodeInfo).
#[derive(Clone, Debug, Default)]
pub struct SystemInfo {
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_version: String,
    pub os_image: String,
}

pub fn system_info() -> SystemInfo {
    let first_line = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.lines().next().map(|l| l.trim().to_string()))
            .unwrap_or_default()
    };
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "Linux".into());
    SystemInfo {
        machine_id: first_line("/etc/machine-id"),
        boot_id: first_line("/proc/sys/kernel/random/boot_id"),
        kernel_version: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        os_image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       24572828 kB\nMemFree:  100 kB\nMemAvailable:   20000000 kB\n";
        let memory = parse_meminfo(text, Path::new("meminfo")).expect("parses");
        assert_eq!(memory.total, 24_572_828 * 1024);
        assert_eq!(memory.available, 20_000_000 * 1024);
        let error = parse_meminfo("MemTotal: 1 kB\n", Path::new("meminfo")).expect_err("missing");
        assert_eq!(error.to_string(), "meminfo: no MemAvailable line");
    }

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn this_machine_reads() {
        assert!(cpus() >= 1);
        let memory = memory().expect("meminfo");
        assert!(memory.available <= memory.total && memory.total > 0);
        let pids = pids().expect("pids");
        assert!(pids.used > 0 && pids.used < pids.max);
        let disk = disk(Path::new("/")).expect("statvfs");
        assert!(disk.available <= disk.total);
    }
}
