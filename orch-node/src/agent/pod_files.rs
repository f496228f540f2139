//! What a pod's containers see besides their image: the pod's
//! /etc/hosts, /etc/hostname and /etc/resolv.conf, its volumes (emptyDir,
//! hostPath, configMap, secret) and environment values taken from
//! ConfigMaps, Secrets and the pod's own fields.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};

use super::container_config::ConfigError;
use super::volume_writer;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |e| ConfigError(format!("{}: {e}", path.display()))
}

/// Writes the pod's etc files under `dir`; returns `dir`.
pub fn write_etc(dir: &Path, hostname: &str, pod_ip: &str) -> Result<PathBuf, ConfigError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut hosts =
        String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if !pod_ip.is_empty() {
        hosts.push_str(&format!("{pod_ip}\t{hostname}\n"));
    }
    std::fs::write(dir.join("hosts"), hosts).map_err(io(&dir.join("hosts")))?;
    std::fs::write(dir.join("hostname"), format!("{hostname}\n"))
        .map_err(io(&dir.join("hostname")))?;
    // No cluster DNS yet: the node's resolver (the kubelet's "Default").
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(dir.join("resolv.conf"), resolv).map_err(io(&dir.join("resolv.conf")))?;
    Ok(dir.to_path_buf())
}

async fn data_of(
    client: &mut ApiClient,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, ConfigError> {
    match client.get(kind, Some(namespace), name).await {
        Ok(Object::ConfigMap(map)) => {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (key, value) in map.binary_data.unwrap_or_default() {
                data.insert(key, value.0);
            }
            Ok(Some(data))
        }
        Ok(Object::Secret(secret)) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (key, value) in secret.string_data.unwrap_or_default() {
                data.insert(key, value.into_bytes());
            }
            Ok(Some(data))
        }
        Ok(other) => Err(ConfigError(format!(
            "{kind} {name}: the API returned a {}",
            other.kind()
        ))),
        Err(ApiError::NotFound(_)) => Ok(None),
        Err(error) => Err(ConfigError(format!(
            "reading {kind} {namespace}/{name}: {error}"
        ))),
    }
}

fn resource(kind: Kind) -> &'static str {
    if kind == Kind::ConfigMap {
        "configmap"
    } else {
        "secret"
    }
}

/// Where each of the pod's volumes is on the host (after `volumes` made
/// them), without touching them.
pub fn volume_paths(pod: &Pod, dir: &Path) -> BTreeMap<String, PathBuf> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|volume| {
            let path = match &volume.host_path {
                Some(host) => PathBuf::from(&host.path),
                None => dir.join(&volume.name),
            };
            (volume.name.clone(), path)
        })
        .collect()
}

/// Prepares the pod's volumes under `dir`, or brings configMap and secret
/// volumes up to date (each swapped whole, see `volume_writer`; secrets on
/// a tmpfs); returns name -> host path.
pub async fn volumes(
    client: &mut ApiClient,
    pod: &Pod,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = BTreeMap::new();
    for volume in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        let own = dir.join(&volume.name);
        let path = if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&own).map_err(io(&own))?;
            own
        } else if let Some(host) = &volume.host_path {
            let path = PathBuf::from(&host.path);
            match host.type_.as_deref().unwrap_or("") {
                "DirectoryOrCreate" => std::fs::create_dir_all(&path).map_err(io(&path))?,
                "Directory" if !path.is_dir() => {
                    return Err(ConfigError(format!(
                        "hostPath {}: not a directory",
                        host.path
                    )));
                }
                "File" if !path.is_file() => {
                    return Err(ConfigError(format!("hostPath {}: not a file", host.path)));
                }
                _ => {}
            }
            path
        } else {
            let (kind, name, optional, items, mode) = if let Some(map) = &volume.config_map {
                (
                    Kind::ConfigMap,
                    map.name.clone(),
                    map.optional,
                    map.items.clone(),
                    map.default_mode,
                )
            } else if let Some(secret) = &volume.secret {
                (
                    Kind::Secret,
                    secret.secret_name.clone().unwrap_or_default(),
                    secret.optional,
                    secret.items.clone(),
                    secret.default_mode,
                )
            } else {
                return Err(ConfigError(format!(
                    "volume {}: this volume type is not supported (emptyDir, hostPath, configMap, secret)",
                    volume.name
                )));
            };
            let data = match data_of(client, kind, &namespace, &name).await? {
                Some(data) => data,
                None if optional == Some(true) => BTreeMap::new(),
                None => {
                    return Err(ConfigError(format!(
                        "{} \"{name}\" not found",
                        resource(kind)
                    )));
                }
            };
            let files: Vec<(String, String, Option<i32>)> = match &items {
                Some(items) => items
                    .iter()
                    .map(|i| (i.key.clone(), i.path.clone(), i.mode))
                    .collect(),
                None => data.keys().map(|k| (k.clone(), k.clone(), None)).collect(),
            };
            let mut projected = Vec::new();
            for (key, relative, item_mode) in files {
                let Some(bytes) = data.get(&key) else {
                    if optional == Some(true) {
                        continue;
                    }
                    return Err(ConfigError(format!(
                        "{} \"{name}\": no key {key:?}",
                        resource(kind)
                    )));
                };
                if !volume_writer::valid_path(&relative) {
                    return Err(ConfigError(format!(
                        "volume {}: path {relative:?} must be relative, without .. and not start with ..",
                        volume.name
                    )));
                }
                projected.push(volume_writer::VolumeFile {
                    path: relative,
                    bytes: bytes.clone(),
                    mode: item_mode.or(mode).unwrap_or(0o644) as u32,
                });
            }
            if kind == Kind::Secret {
                volume_writer::mount_tmpfs(&own).map_err(io(&own))?;
            }
            volume_writer::write(&own, &projected).map_err(io(&own))?;
            own
        };
        out.insert(volume.name.clone(), path);
    }
    Ok(out)
}

/// Values of the container's `env[].valueFrom` (ConfigMap and Secret
/// keys, the pod's own fields).
pub async fn env_values(
    client: &mut ApiClient,
    pod: &Pod,
    container: &Container,
    node_name: &str,
    host_ip: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let mut out = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        let value = if let Some(field) = &from.field_ref {
            match field.field_path.as_str() {
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => namespace.clone(),
                "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                "spec.nodeName" => node_name.to_string(),
                "spec.serviceAccountName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_default(),
                "status.hostIP" => host_ip.to_string(),
                "status.podIP" => pod
                    .status
                    .as_ref()
                    .and_then(|s| s.pod_ip.clone())
                    .unwrap_or_default(),
                other => {
                    if let Some(label) = other
                        .strip_prefix("metadata.labels['")
                        .and_then(|l| l.strip_suffix("']"))
                    {
                        pod.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(label).cloned())
                            .unwrap_or_default()
                    } else {
                        return Err(ConfigError(format!(
                            "env {}: fieldRef {other:?} is not supported",
                            var.name
                        )));
                    }
                }
            }
        } else {
            let (kind, name, key, optional) = if let Some(r) = &from.config_map_key_ref {
                (Kind::ConfigMap, r.name.clone(), r.key.clone(), r.optional)
            } else if let Some(r) = &from.secret_key_ref {
                (Kind::Secret, r.name.clone(), r.key.clone(), r.optional)
            } else {
                return Err(ConfigError(format!(
                    "env {}: this valueFrom is not supported",
                    var.name
                )));
            };
            match data_of(client, kind, &namespace, &name)
                .await?
                .and_then(|d| d.get(&key).cloned())
            {
                Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                None if optional == Some(true) => continue,
                None => {
                    return Err(ConfigError(format!(
                        "couldn't find key {key} in {} {namespace}/{name}",
                        if kind == Kind::ConfigMap {
                            "ConfigMap"
                        } else {
                            "Secret"
                        }
                    )));
                }
            }
        };
        out.insert(var.name.clone(), value);
    }
    Ok(out)
}
