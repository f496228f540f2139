//! `orchctl get` tables, shaped like kubectl's default columns per kind.

use orch_core::object::{Kind, Object};
use serde_json::Value;

/// kubectl's short age: 42s, 5m, 3h, 2d.
pub fn age(object: &Object) -> String {
    let Some(created) = &object.metadata().creation_timestamp else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let seconds = (now - created.0.as_second()).max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn count(value: &Value) -> usize {
    value.as_array().map_or(0, Vec::len) + value.as_object().map_or(0, |m| m.len())
}

fn number(value: &Value) -> i64 {
    value.as_i64().unwrap_or(0)
}

/// The header and one row per object.
fn columns(kind: Kind, objects: &[Object]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let rows = objects.iter().map(|object| {
        let v = object.to_json();
        let name = object.metadata().name.clone().unwrap_or_default();
        let mut row = vec![name];
        match kind {
            Kind::Pod => {
                let statuses = v["status"]["containerStatuses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let containers = count(&v["spec"]["containers"]);
                let ready = statuses.iter().filter(|s| s["ready"] == true).count();
                let restarts: i64 = statuses.iter().map(|s| number(&s["restartCount"])).sum();
                let phase = if !v["metadata"]["deletionTimestamp"].is_null() {
                    "Terminating".to_string()
                } else {
                    match text(&v["status"]["phase"]) {
                        phase if phase.is_empty() => "Pending".to_string(),
                        phase => phase,
                    }
                };
                row.extend([format!("{ready}/{containers}"), phase, restarts.to_string()]);
            }
            Kind::Deployment => {
                let desired = number(&v["spec"]["replicas"]);
                row.extend([
                    format!("{}/{desired}", number(&v["status"]["readyReplicas"])),
                    number(&v["status"]["updatedReplicas"]).to_string(),
                    number(&v["status"]["availableReplicas"]).to_string(),
                ]);
            }
            Kind::ReplicaSet => row.extend([
                number(&v["spec"]["replicas"]).to_string(),
                number(&v["status"]["replicas"]).to_string(),
                number(&v["status"]["readyReplicas"]).to_string(),
            ]),
            Kind::Service => {
                let ports: Vec<String> = v["spec"]["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| {
                        let node_port = if p["nodePort"].is_null() {
                            String::new()
                        } else {
                            format!(":{}", text(&p["nodePort"]))
                        };
                        format!("{}{node_port}/{}", text(&p["port"]), text(&p["protocol"]))
                    })
                    .collect();
                let cluster_ip = text(&v["spec"]["clusterIP"]);
                row.extend([
                    text(&v["spec"]["type"]),
                    if cluster_ip.is_empty() {
                        "<none>".into()
                    } else {
                        cluster_ip
                    },
                    "<none>".into(),
                    if ports.is_empty() {
                        "<none>".into()
                    } else {
                        ports.join(",")
                    },
                ]);
            }
            Kind::Node => {
                let ready = v["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| {
                        if c["status"] == "True" {
                            "Ready"
                        } else {
                            "NotReady"
                        }
                    })
                    .unwrap_or("NotReady");
                let status = if v["spec"]["unschedulable"] == true {
                    format!("{ready},SchedulingDisabled")
                } else {
                    ready.to_string()
                };
                let version = text(&v["status"]["nodeInfo"]["kubeletVersion"]);
                // kubectl puts AGE before VERSION for nodes.
                row.extend([status, "<none>".into(), age(object), version]);
                return row;
            }
            Kind::Namespace => row.push(text(&v["status"]["phase"])),
            Kind::ConfigMap => row.push((count(&v["data"]) + count(&v["binaryData"])).to_string()),
            Kind::Secret => row.extend([
                {
                    let t = text(&v["type"]);
                    if t.is_empty() { "Opaque".into() } else { t }
                },
                (count(&v["data"]) + count(&v["stringData"])).to_string(),
            ]),
            Kind::EndpointSlice => {
                let ports: Vec<String> = v["ports"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|p| text(&p["port"]))
                    .collect();
                let addresses: Vec<String> = v["endpoints"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                    .map(|a| text(&a))
                    .collect();
                row.extend([
                    text(&v["addressType"]),
                    if ports.is_empty() {
                        "<unset>".into()
                    } else {
                        ports.join(",")
                    },
                    if addresses.is_empty() {
                        "<unset>".into()
                    } else {
                        addresses.join(",")
                    },
                ]);
            }
            Kind::Lease => row.push(text(&v["spec"]["holderIdentity"])),
            Kind::Event => {
                let object = format!(
                    "{}/{}",
                    text(&v["involvedObject"]["kind"]).to_lowercase(),
                    text(&v["involvedObject"]["name"])
                );
                // Events lead with when and what, not the event's own name.
                row = vec![
                    text(&v["type"]),
                    text(&v["reason"]),
                    object,
                    text(&v["message"]),
                ];
            }
        }
        row.push(age(object));
        row
    });
    let header = match kind {
        Kind::Pod => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        Kind::Deployment => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        Kind::ReplicaSet => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        Kind::Service => vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ],
        Kind::Node => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        Kind::Namespace => vec!["NAME", "STATUS", "AGE"],
        Kind::ConfigMap => vec!["NAME", "DATA", "AGE"],
        Kind::Secret => vec!["NAME", "TYPE", "DATA", "AGE"],
        Kind::EndpointSlice => vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
        Kind::Lease => vec!["NAME", "HOLDER", "AGE"],
        Kind::Event => vec!["TYPE", "REASON", "OBJECT", "MESSAGE", "LAST SEEN"],
    };
    (header, rows.collect())
}

/// What `-o wide` adds after kubectl's default columns, per kind.
fn wide_columns(kind: Kind, object: &Object) -> (Vec<&'static str>, Vec<String>) {
    let v = object.to_json();
    let or_none = |value: String| {
        if value.is_empty() {
            "<none>".to_string()
        } else {
            value
        }
    };
    let selector = |labels: &Value| {
        or_none(
            labels
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", text(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        )
    };
    let containers = |spec: &Value, field: &str| {
        or_none(
            spec["containers"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|c| text(&c[field]))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default(),
        )
    };
    match kind {
        Kind::Pod => (
            vec!["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
            vec![
                or_none(text(&v["status"]["podIP"])),
                or_none(text(&v["spec"]["nodeName"])),
                or_none(text(&v["status"]["nominatedNodeName"])),
                "<none>".into(),
            ],
        ),
        Kind::Deployment | Kind::ReplicaSet => {
            let template = &v["spec"]["template"]["spec"];
            (
                vec!["CONTAINERS", "IMAGES", "SELECTOR"],
                vec![
                    containers(template, "name"),
                    containers(template, "image"),
                    selector(&v["spec"]["selector"]["matchLabels"]),
                ],
            )
        }
        Kind::Service => (vec!["SELECTOR"], vec![selector(&v["spec"]["selector"])]),
        Kind::Node => {
            let address = |kind: &str| {
                or_none(
                    v["status"]["addresses"]
                        .as_array()
                        .and_then(|a| a.iter().find(|a| a["type"] == kind))
                        .map(|a| text(&a["address"]))
                        .unwrap_or_default(),
                )
            };
            let info = &v["status"]["nodeInfo"];
            (
                vec![
                    "INTERNAL-IP",
                    "EXTERNAL-IP",
                    "OS-IMAGE",
                    "KERNEL-VERSION",
                    "CONTAINER-RUNTIME",
                ],
                vec![
                    address("InternalIP"),
                    address("ExternalIP"),
                    or_none(text(&info["osImage"])),
                    or_none(text(&info["kernelVersion"])),
                    or_none(text(&info["containerRuntimeVersion"])),
                ],
            )
        }
        _ => (Vec::new(), Vec::new()),
    }
}

/// The table text: columns padded like kubectl's (three spaces apart),
/// with a NAMESPACE column first when listing across namespaces, names as
/// `kind/name` when several kinds are listed together, and `-o wide`'s
/// extra columns when `wide`.
pub fn render(
    kind: Kind,
    objects: &[Object],
    with_namespace: bool,
    qualified: bool,
    wide: bool,
) -> String {
    let (mut header, mut rows) = columns(kind, objects);
    if wide {
        for (row, object) in rows.iter_mut().zip(objects) {
            let (extra_header, extra) = wide_columns(kind, object);
            row.extend(extra);
            if header.len() < row.len() {
                header.extend(extra_header);
            }
        }
    }
    if qualified && kind != Kind::Event {
        for (row, object) in rows.iter_mut().zip(objects) {
            row[0] = super::objects::object_ref(object);
        }
    }
    if with_namespace && kind.namespaced() {
        header.insert(0, "NAMESPACE");
        for (row, object) in rows.iter_mut().zip(objects) {
            row.insert(0, object.metadata().namespace.clone().unwrap_or_default());
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   ", width = *width));
            }
        }
        out.trim_end().to_string()
    };
    let mut text = line(header.iter().map(|h| h.to_string()).collect());
    text.push('\n');
    for row in rows {
        text.push_str(&line(row));
        text.push('\n');
    }
    text
}
