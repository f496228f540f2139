//! What a cluster leaves behind, looked for everywhere it could be: the
//! check behind the harness's promise that teardown removes everything.

use std::path::Path;

use super::cgroup2_mount;

/// What of a cluster tagged `tag` (state in `dir`) is still on the
/// machine: namespaces, pins, cgroups, processes, the directory.
pub fn leftovers(tag: &str, dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(namespaces) = std::fs::read_dir("/var/run/netns") {
        for namespace in namespaces.flatten() {
            let name = namespace.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}-")) {
                left.push(format!("network namespace {name}"));
            }
        }
    }
    if let Ok(pins) = std::fs::read_dir("/sys/fs/bpf/orch") {
        for pin in pins.flatten() {
            let name = pin.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{tag}-")) {
                left.push(format!("bpffs pins {}", pin.path().display()));
            }
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = dir.to_string_lossy().into_owned();
    for line in mounts.lines() {
        if line.contains(&needle) {
            left.push(format!("mount {line}"));
        }
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if let Some(point) = before.split_whitespace().nth(4)
            && after.starts_with("cgroup")
            && let Ok(entries) = std::fs::read_dir(Path::new(point).join("orch"))
        {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{tag}-"))
                {
                    left.push(format!("cgroup {}", entry.path().display()));
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(cgroup2_mount()) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{tag}-"))
            {
                left.push(format!("service cgroup {}", entry.path().display()));
            }
        }
    }
    if let Ok(processes) = std::fs::read_dir("/proc") {
        for process in processes.flatten() {
            let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                left.push(format!(
                    "process {}: {}",
                    process.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ")
                ));
            }
        }
    }
    if dir.exists() {
        left.push(format!("directory {}", dir.display()));
    }
    left
}
