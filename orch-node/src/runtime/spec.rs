//! The OCI runtime spec (a bundle's config.json) of a container, built
//! from what the pod asks: process, user, resources as cgroup limits,
//! the default capability set, a default seccomp profile, no_new_privs,
//! read-only paths, bind mounts, and the pod sandbox's namespaces joined.

use std::path::PathBuf;

use serde_json::{Value, json};

/// Capabilities a container gets unless it is privileged (the set
/// containerd and Docker give).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A file or directory of the host made visible in the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// cgroup limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes; 0: none.
    pub memory_limit: i64,
    /// CFS quota per period (µs); 0: none.
    pub cpu_quota: i64,
    pub cpu_period: u64,
    /// Relative weight (requests: 1024 per CPU).
    pub cpu_shares: u64,
    /// 0: none.
    pub pids_limit: i64,
}

/// The pod sandbox's namespaces, joined by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxNamespaces {
    pub network: PathBuf,
    pub ipc: PathBuf,
    pub uts: PathBuf,
}

/// What one container is to run, and how.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub seccomp: bool,
    pub no_new_privileges: bool,
    pub namespaces: SandboxNamespaces,
    /// Absolute, e.g. `/orch/<node>/<pod uid>/<container>`.
    pub cgroups_path: String,
    pub resources: Resources,
    pub mounts: Vec<BindMount>,
    pub oom_score_adj: i32,
}

/// Kubernetes names capabilities without the `CAP_` prefix.
fn capability(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

fn capabilities(spec: &ContainerSpec) -> Vec<String> {
    if spec.privileged {
        return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
    }
    let dropped: Vec<String> = spec
        .drop_capabilities
        .iter()
        .map(|c| capability(c))
        .collect();
    let drop_all = dropped.iter().any(|c| c == "CAP_ALL");
    let mut set: Vec<String> = if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !dropped.contains(c))
            .collect()
    };
    for added in &spec.add_capabilities {
        let added = capability(added);
        if added == "CAP_ALL" {
            return ALL_CAPABILITIES.iter().map(|c| c.to_string()).collect();
        }
        if !set.contains(&added) {
            set.push(added);
        }
    }
    set
}

/// Every capability (a privileged container's).
const ALL_CAPABILITIES: [&str; 41] = [
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

/// The bundle's config.json.
pub fn runtime_spec(spec: &ContainerSpec) -> Value {
    let caps = capabilities(spec);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        // Always a tmpfs /dev: device nodes must never land in the image.
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if spec.privileged { "rw" } else { "ro" }]}),
    ];
    for bind in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        if bind.readonly {
            options.push("ro");
        }
        mounts.push(json!({
            "destination": bind.destination,
            "type": "bind",
            "source": bind.source,
            "options": options,
        }));
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if spec.privileged {
        resources["devices"] = json!([{"allow": true, "access": "rwm"}]);
    }
    if spec.resources.memory_limit > 0 {
        resources["memory"] = json!({"limit": spec.resources.memory_limit});
    }
    let mut cpu = serde_json::Map::new();
    if spec.resources.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(spec.resources.cpu_shares));
    }
    if spec.resources.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(spec.resources.cpu_quota));
        cpu.insert("period".into(), json!(spec.resources.cpu_period.max(1000)));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if spec.resources.pids_limit > 0 {
        resources["pids"] = json!({"limit": spec.resources.pids_limit});
    }
    let mut linux = json!({
        "namespaces": [
            {"type": "pid"},
            {"type": "mount"},
            {"type": "network", "path": spec.namespaces.network},
            {"type": "ipc", "path": spec.namespaces.ipc},
            {"type": "uts", "path": spec.namespaces.uts},
        ],
        "cgroupsPath": spec.cgroups_path,
        "resources": resources,
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!(MASKED_PATHS);
        linux["readonlyPaths"] = json!(READONLY_PATHS);
        if spec.seccomp {
            linux["seccomp"] = super::seccomp::default_profile(&caps);
        }
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": spec.uid, "gid": spec.gid, "additionalGids": spec.additional_gids},
            "args": spec.args,
            "env": spec.env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps,
            },
            // No rlimits: the container keeps the node's (the agent's),
            // which may not be raised here without CAP_SYS_RESOURCE.
            "oomScoreAdj": spec.oom_score_adj,
        },
        "root": {"path": spec.rootfs, "readonly": spec.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    });
    // Only ever `true`: where libcontainer 0.7 loads the filter itself (a
    // profile not precompiled, `runtime::bundle`), it does so before
    // dropping capabilities only when the field is absent; an explicit
    // `false` makes it load the filter after, without CAP_SYS_ADMIN, and
    // the container fails to start.
    if spec.no_new_privileges && !spec.privileged {
        config["process"]["noNewPrivileges"] = json!(true);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            args: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rootfs: "/r".into(),
            readonly_rootfs: false,
            privileged: false,
            add_capabilities: vec![],
            drop_capabilities: vec![],
            seccomp: true,
            no_new_privileges: true,
            namespaces: SandboxNamespaces {
                network: "/p/ns/net".into(),
                ipc: "/p/ns/ipc".into(),
                uts: "/p/ns/uts".into(),
            },
            cgroups_path: "/orch/n1/uid/c".into(),
            resources: Resources {
                memory_limit: 64 << 20,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                cpu_shares: 512,
                pids_limit: 100,
            },
            mounts: vec![],
            oom_score_adj: 0,
        }
    }

    #[test]
    fn limits_namespaces_and_hardening() {
        let config = runtime_spec(&spec());
        assert_eq!(config["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(config["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(config["linux"]["resources"]["pids"]["limit"], 100);
        assert_eq!(config["linux"]["namespaces"][2]["path"], "/p/ns/net");
        assert_eq!(config["process"]["cwd"], "/");
        assert_eq!(config["process"]["noNewPrivileges"], true);
        let mut escalating = spec();
        escalating.no_new_privileges = false;
        assert!(
            runtime_spec(&escalating)["process"]
                .get("noNewPrivileges")
                .is_none()
        );
        assert_eq!(
            config["linux"]["seccomp"]["defaultAction"],
            "SCMP_ACT_ERRNO"
        );
        assert_eq!(
            config["process"]["capabilities"]["bounding"]
                .as_array()
                .map(Vec::len),
            Some(DEFAULT_CAPABILITIES.len())
        );
    }

    #[test]
    fn capabilities_follow_add_drop_and_privileged() {
        let mut s = spec();
        s.drop_capabilities = vec!["NET_RAW".into()];
        s.add_capabilities = vec!["NET_ADMIN".into()];
        let caps = capabilities(&s);
        assert!(!caps.contains(&"CAP_NET_RAW".to_string()));
        assert!(caps.contains(&"CAP_NET_ADMIN".to_string()));
        s.drop_capabilities = vec!["ALL".into()];
        s.add_capabilities = vec!["CHOWN".into()];
        assert_eq!(capabilities(&s), ["CAP_CHOWN"]);
        s.privileged = true;
        assert_eq!(capabilities(&s).len(), ALL_CAPABILITIES.len());
        assert!(runtime_spec(&s)["linux"]["seccomp"].is_null());
    }
}
