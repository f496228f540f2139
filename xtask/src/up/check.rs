//! The test command's end-to-end check of `up` and `down`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::{
    BPF_PINS, DownArgs, HOST_LINK, NODE, OWNER_FILE, State, UpArgs, down, namespace_exists,
    service_cgroup, up,
};
use crate::output;

/// `up` then `down` from the debug builds, in a state directory of its
/// own, and a check that nothing is left: the test command's proof that
/// the README's first command works.
pub fn check_up_and_down() -> Result<()> {
    // A fixed directory: a run cut short (its daemons outlive it) is
    // cleaned up by the next one's `up`.
    let state_dir = std::env::temp_dir().join("orch-up-test");
    let brought_up = up(&UpArgs {
        state_dir: state_dir.clone(),
        debug: true,
    });
    if brought_up.is_err() {
        // `down` removes the logs with the state: show them first.
        let state = State {
            root: state_dir.clone(),
        };
        for daemon in ["orch-control", "orch-node"] {
            let log = std::fs::read_to_string(state.log(daemon)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- the end of {daemon}'s log ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
    let brought_down = down(&DownArgs {
        state_dir: state_dir.clone(),
    });
    brought_up.context("cargo xtask up")?;
    brought_down.context("cargo xtask down")?;
    let left = leftovers(&state_dir);
    if !left.is_empty() {
        bail!("`cargo xtask down` left behind: {}", left.join("; "));
    }
    Ok(())
}

/// What of a cluster in `state_dir` is still there.
fn leftovers(state_dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    if namespace_exists() {
        left.push(format!("network namespace {NODE}"));
    }
    if output(Command::new("ip").args(["link", "show", HOST_LINK])).is_some() {
        left.push(format!("interface {HOST_LINK}"));
    }
    if Path::new(OWNER_FILE).exists() {
        left.push(OWNER_FILE.to_string());
    }
    let pins = Path::new(BPF_PINS).join(NODE);
    if pins.exists() {
        left.push(format!("bpffs pins {}", pins.display()));
    }
    if let Ok((cgroup, true)) = service_cgroup()
        && cgroup.exists()
    {
        left.push(format!("cgroup {}", cgroup.display()));
    }
    if state_dir.exists() {
        left.push(format!("state directory {}", state_dir.display()));
    }
    let needle = state_dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        if line.contains(&needle) {
            left.push(format!("mount {line}"));
        }
        // The pods' cgroups, /orch/<node>/pod<uid> in every hierarchy.
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = after.split_whitespace().next().unwrap_or_default();
        if let Some(mount_point) = before.split_whitespace().nth(4)
            && fstype.starts_with("cgroup")
        {
            let pods = Path::new(mount_point).join("orch").join(NODE);
            if pods.exists() {
                left.push(format!("cgroup {}", pods.display()));
            }
        }
    }
    if let Ok(processes) = std::fs::read_dir("/proc") {
        for process in processes.flatten() {
            let cmdline = std::fs::read(process.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                left.push(format!(
                    "process {} ({})",
                    process.file_name().to_string_lossy(),
                    String::from_utf8_lossy(&cmdline).replace('\0', " ").trim()
                ));
            }
        }
    }
    left
}
