//! The Node object this agent registers and the status it reports:
//! capacity and allocatable from the machine minus what is reserved,
//! addresses, system info and the kubelet's four conditions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::machine::{Disk, Memory, Pids, SystemInfo};

/// Memory below which the node reports MemoryPressure (the kubelet's
/// default hard eviction threshold, `memory.available<100Mi`).
pub const MEMORY_PRESSURE_BELOW: u64 = 100 << 20;
/// Free share of the node's filesystem below which it reports
/// DiskPressure (`nodefs.available<10%`, `nodefs.inodesFree<5%`).
pub const DISK_PRESSURE_PERCENT: u64 = 10;
pub const INODE_PRESSURE_PERCENT: u64 = 5;
/// Free share of pid_max below which it reports PIDPressure.
pub const PID_PRESSURE_PERCENT: u64 = 5;

/// What the agent keeps for the system and itself (`--system-reserved`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reserved {
    pub millicpu: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
}

/// Readings of the machine at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Readings {
    pub cpus: u64,
    pub memory: Memory,
    pub disk: Disk,
    pub pids: Pids,
}

/// How the node is configured.
#[derive(Clone, Debug)]
pub struct NodeSpecifics {
    pub name: String,
    pub internal_ip: String,
    pub max_pods: u64,
    pub reserved: Reserved,
    pub system: SystemInfo,
    /// Port of the agent's own server (logs, exec), 0 when it has none yet.
    pub agent_port: i32,
}

fn quantity(text: String) -> Quantity {
    Quantity(text)
}

fn bytes(value: u64) -> Quantity {
    // Kubernetes reports node memory and storage in Ki.
    quantity(format!("{}Ki", value / 1024))
}

fn millicpu(value: u64) -> Quantity {
    if value.is_multiple_of(1000) {
        quantity((value / 1000).to_string())
    } else {
        quantity(format!("{value}m"))
    }
}

/// The Node object as registered (metadata and the parts of the status
/// that do not change while the agent runs).
pub fn node_object(node: &NodeSpecifics) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch().to_string()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(node.name.clone()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: None,
        status: None,
    }
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The status for `readings`, carrying over each condition's
/// lastTransitionTime from `previous` when its status did not change.
pub fn status(
    node: &NodeSpecifics,
    readings: &Readings,
    previous: Option<&NodeStatus>,
    images: Vec<k8s_openapi::api::core::v1::ContainerImage>,
    now: Time,
) -> NodeStatus {
    let capacity = BTreeMap::from([
        ("cpu".to_string(), millicpu(readings.cpus * 1000)),
        ("memory".to_string(), bytes(readings.memory.total)),
        ("ephemeral-storage".to_string(), bytes(readings.disk.total)),
        ("pods".to_string(), quantity(node.max_pods.to_string())),
    ]);
    let reserved = node.reserved;
    let allocatable = BTreeMap::from([
        (
            "cpu".to_string(),
            millicpu((readings.cpus * 1000).saturating_sub(reserved.millicpu)),
        ),
        (
            "memory".to_string(),
            bytes(readings.memory.total.saturating_sub(reserved.memory)),
        ),
        (
            "ephemeral-storage".to_string(),
            bytes(
                readings
                    .disk
                    .total
                    .saturating_sub(reserved.ephemeral_storage),
            ),
        ),
        ("pods".to_string(), quantity(node.max_pods.to_string())),
    ]);
    let memory_pressure = readings.memory.available < MEMORY_PRESSURE_BELOW;
    let disk_pressure = readings.disk.available * 100 < readings.disk.total * DISK_PRESSURE_PERCENT
        || readings.disk.inodes_free * 100 < readings.disk.inodes * INODE_PRESSURE_PERCENT;
    let pid_pressure = (readings.pids.max.saturating_sub(readings.pids.used)) * 100
        < readings.pids.max * PID_PRESSURE_PERCENT;
    let conditions = vec![
        pressure(
            "MemoryPressure",
            memory_pressure,
            (
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            ),
            (
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
        ),
        pressure(
            "DiskPressure",
            disk_pressure,
            ("KubeletHasDiskPressure", "kubelet has disk pressure"),
            ("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        ),
        pressure(
            "PIDPressure",
            pid_pressure,
            (
                "KubeletHasInsufficientPID",
                "kubelet has insufficient PID available",
            ),
            (
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
        ),
        NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: Some("KubeletReady".into()),
            message: Some("orch-node is posting ready status".into()),
            ..NodeCondition::default()
        },
    ]
    .into_iter()
    .map(|mut condition| {
        let before = previous
            .and_then(|p| p.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == condition.type_));
        condition.last_heartbeat_time = Some(now.clone());
        condition.last_transition_time = match before {
            Some(before) if before.status == condition.status => {
                before.last_transition_time.clone()
            }
            _ => Some(now.clone()),
        };
        condition
    })
    .collect();
    // Conditions other components own (NetworkUnavailable, a problem
    // detector's) stay, after the agent's own four.
    let mut conditions: Vec<NodeCondition> = conditions;
    for other in previous
        .and_then(|p| p.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if !AGENT_CONDITIONS.contains(&other.type_.as_str()) {
            conditions.push(other.clone());
        }
    }
    // Fields the agent does not own (volumes, configuration) are kept.
    let kept = previous.cloned().unwrap_or_default();
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: node.internal_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: node.name.clone(),
            },
        ]),
        conditions: Some(conditions),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                port: node.agent_port,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: arch().into(),
            boot_id: node.system.boot_id.clone(),
            container_runtime_version: format!(
                "orch-node://{} (libcontainer)",
                env!("CARGO_PKG_VERSION")
            ),
            kernel_version: node.system.kernel_version.clone(),
            kube_proxy_version: String::new(),
            kubelet_version: format!("orch-node/{}", env!("CARGO_PKG_VERSION")),
            machine_id: node.system.machine_id.clone(),
            operating_system: "linux".into(),
            os_image: node.system.os_image.clone(),
            system_uuid: node.system.machine_id.clone(),
            ..NodeSystemInfo::default()
        }),
        images: Some(images),
        ..kept
    }
}

/// The conditions the agent reports; any other type is someone else's.
pub const AGENT_CONDITIONS: [&str; 4] = ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"];

fn pressure(
    type_: &str,
    under: bool,
    (bad_reason, bad_message): (&str, &str),
    (good_reason, good_message): (&str, &str),
) -> NodeCondition {
    let (status, reason, message) = if under {
        ("True", bad_reason, bad_message)
    } else {
        ("False", good_reason, good_message)
    };
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..NodeCondition::default()
    }
}

/// Whether two statuses differ in anything but heartbeat times (a status
/// that only ages is not written more than every report interval).
pub fn differs(a: &NodeStatus, b: &NodeStatus) -> bool {
    let strip = |status: &NodeStatus| {
        let mut status = status.clone();
        for condition in status.conditions.iter_mut().flatten() {
            condition.last_heartbeat_time = None;
        }
        status
    };
    strip(a) != strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeSpecifics {
        NodeSpecifics {
            name: "n1".into(),
            internal_ip: "10.0.0.1".into(),
            max_pods: 110,
            reserved: Reserved {
                millicpu: 100,
                memory: 256 << 20,
                ephemeral_storage: 0,
            },
            system: SystemInfo::default(),
            agent_port: 10250,
        }
    }

    fn readings(available_memory: u64) -> Readings {
        Readings {
            cpus: 2,
            memory: Memory {
                total: 8 << 30,
                available: available_memory,
            },
            disk: Disk {
                total: 100 << 30,
                available: 50 << 30,
                inodes: 1000,
                inodes_free: 900,
            },
            pids: Pids {
                used: 300,
                max: 4_194_304,
            },
        }
    }

    fn time(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).expect("time"))
    }

    fn condition<'a>(status: &'a NodeStatus, type_: &str) -> &'a NodeCondition {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == type_)
            .expect("condition")
    }

    #[test]
    fn capacity_minus_reserved_is_allocatable() {
        let status = status(&node(), &readings(4 << 30), None, vec![], time(100));
        let capacity = status.capacity.expect("capacity");
        let allocatable = status.allocatable.expect("allocatable");
        assert_eq!(capacity["cpu"].0, "2");
        assert_eq!(allocatable["cpu"].0, "1900m");
        assert_eq!(capacity["memory"].0, "8388608Ki");
        assert_eq!(allocatable["memory"].0, "8126464Ki");
        assert_eq!(capacity["pods"].0, "110");
        assert_eq!(allocatable["ephemeral-storage"].0, "104857600Ki");
    }

    #[test]
    fn what_others_own_is_kept() {
        let mut previous = status(&node(), &readings(4 << 30), None, vec![], time(100));
        previous
            .conditions
            .get_or_insert_with(Vec::new)
            .push(NodeCondition {
                type_: "NetworkUnavailable".into(),
                status: "False".into(),
                ..NodeCondition::default()
            });
        previous.volumes_in_use = Some(vec!["kubernetes.io/csi/x".into()]);
        let next = status(
            &node(),
            &readings(4 << 30),
            Some(&previous),
            vec![],
            time(200),
        );
        assert_eq!(condition(&next, "NetworkUnavailable").status, "False");
        assert_eq!(next.volumes_in_use, previous.volumes_in_use);
        assert_eq!(next.conditions.as_ref().map(Vec::len), Some(5));
    }

    #[test]
    fn pressure_flips_and_transition_times_are_kept() {
        let first = status(&node(), &readings(4 << 30), None, vec![], time(100));
        assert_eq!(condition(&first, "Ready").status, "True");
        assert_eq!(condition(&first, "MemoryPressure").status, "False");
        let same = status(&node(), &readings(3 << 30), Some(&first), vec![], time(200));
        assert_eq!(
            condition(&same, "MemoryPressure").last_transition_time,
            Some(time(100))
        );
        assert_eq!(
            condition(&same, "MemoryPressure").last_heartbeat_time,
            Some(time(200))
        );
        assert!(!differs(&first, &same), "only heartbeats moved");
        let low = status(&node(), &readings(50 << 20), Some(&same), vec![], time(300));
        let memory = condition(&low, "MemoryPressure");
        assert_eq!(memory.status, "True");
        assert_eq!(
            memory.reason.as_deref(),
            Some("KubeletHasInsufficientMemory")
        );
        assert_eq!(memory.last_transition_time, Some(time(300)));
        assert!(differs(&same, &low));
    }
}
