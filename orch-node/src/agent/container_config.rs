//! A pod's container as the runtime runs it: the process (Kubernetes'
//! command/args over the image's entrypoint/cmd), environment, user,
//! resources as cgroup limits, security context, and mounts (volumes and
//! the pod's /etc/hosts, /etc/hostname, /etc/resolv.conf).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::image::oci::ImageConfig;
use crate::runtime::spec::{BindMount, ContainerSpec, Resources, SandboxNamespaces};

/// cgroup v1 CFS period (µs) for CPU limits.
const CPU_PERIOD: u64 = 100_000;

/// Why a container cannot be configured: the pod asks for something the
/// node cannot give (reported as CreateContainerConfigError).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn quantity(
    value: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
) -> Option<orch_core::quantity::Quantity> {
    orch_core::quantity::parse_k8s(value).ok()
}

/// The process: Kubernetes' rules for command/args over the image's.
pub fn process_args(
    container: &Container,
    image: &ImageConfig,
) -> Result<Vec<String>, ConfigError> {
    let entrypoint = image.config.entrypoint.clone().unwrap_or_default();
    let cmd = image.config.cmd.clone().unwrap_or_default();
    let args = match (&container.command, &container.args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.clone(),
        (None, Some(args)) => entrypoint.into_iter().chain(args.iter().cloned()).collect(),
        (None, None) => entrypoint.into_iter().chain(cmd).collect(),
    };
    if args.is_empty() {
        return Err(ConfigError(format!(
            "container {}: no command: neither the pod nor the image names one",
            container.name
        )));
    }
    Ok(args)
}

/// The image's environment, then the container's (`$(VAR)` references
/// to earlier variables expanded, as the kubelet does).
pub fn environment(
    container: &Container,
    image: &ImageConfig,
    resolved: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let mut known: BTreeMap<String, String> = env.iter().cloned().collect();
    for var in container.env.iter().flatten() {
        let value = match resolved.get(&var.name) {
            Some(value) => value.clone(),
            None => expand(var.value.as_deref().unwrap_or_default(), &known),
        };
        known.insert(var.name.clone(), value.clone());
        env.retain(|(name, _)| *name != var.name);
        env.push((var.name.clone(), value));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Expands `$(NAME)` from `known`; `$$(NAME)` is a literal `$(NAME)`;
/// unknown references stay as written.
fn expand(value: &str, known: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = escaped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match known.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// cgroup limits from the container's resources.
pub fn resources(container: &Container) -> Resources {
    let mut out = Resources::default();
    let Some(resources) = &container.resources else {
        return out;
    };
    if let Some(limits) = &resources.limits {
        if let Some(memory) = limits.get("memory").and_then(quantity) {
            out.memory_limit = memory.value().clamp(0, i64::MAX as i128) as i64;
        }
        if let Some(cpu) = limits.get("cpu").and_then(quantity) {
            let millis = cpu.milli_value().max(0) as u64;
            out.cpu_quota = (millis * CPU_PERIOD / 1000).max(1000) as i64;
            out.cpu_period = CPU_PERIOD;
        }
    }
    // Shares from the request (or the limit, which defaults it).
    let cpu_request = resources
        .requests
        .as_ref()
        .and_then(|r| r.get("cpu"))
        .or_else(|| resources.limits.as_ref().and_then(|l| l.get("cpu")))
        .and_then(quantity);
    out.cpu_shares = cpu_request.map_or(2, |cpu| {
        ((cpu.milli_value().max(0) as u64) * 1024 / 1000).max(2)
    });
    out
}

/// The numeric user of the container: its securityContext, the pod's,
/// else the image's `User` when numeric (`uid[:gid]`), else root.
fn user(pod: &Pod, container: &Container, image: &ImageConfig) -> Result<(u32, u32), ConfigError> {
    let pod_context = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let context = container.security_context.as_ref();
    let run_as_user = context
        .and_then(|c| c.run_as_user)
        .or_else(|| pod_context.and_then(|c| c.run_as_user));
    let run_as_group = context
        .and_then(|c| c.run_as_group)
        .or_else(|| pod_context.and_then(|c| c.run_as_group));
    let (image_uid, image_gid) = match image.config.user.as_deref().filter(|u| !u.is_empty()) {
        None => (0, 0),
        Some(user) => {
            let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
            match (uid.parse::<u32>(), gid.parse::<u32>()) {
                (Ok(uid), Ok(gid)) => (uid, gid),
                _ if run_as_user.is_some() => (0, 0),
                _ => {
                    return Err(ConfigError(format!(
                        "image user {user:?} is not numeric: set securityContext.runAsUser"
                    )));
                }
            }
        }
    };
    let uid = run_as_user.map_or(image_uid, |u| u as u32);
    let gid = run_as_group.map_or(image_gid, |g| g as u32);
    if context
        .and_then(|c| c.run_as_non_root)
        .or_else(|| pod_context.and_then(|c| c.run_as_non_root))
        == Some(true)
        && uid == 0
    {
        return Err(ConfigError(
            "runAsNonRoot is set but the container would run as root (uid 0)".into(),
        ));
    }
    Ok((uid, gid))
}

/// Everything the runtime spec needs besides the rootfs and cgroup path.
pub struct Built {
    pub spec: ContainerSpec,
    /// Mounts of a volume's sub path: `spec.mounts[mount]` must get, as its
    /// source, the staging path `runtime::subpath::prepare` mounts.
    pub sub_paths: Vec<SubPathMount>,
}

pub struct SubPathMount {
    pub mount: usize,
    pub volume: PathBuf,
    pub sub_path: String,
}

/// The runtime spec of `container` of `pod`.
#[allow(clippy::too_many_arguments)]
pub fn build(
    pod: &Pod,
    container: &Container,
    image: &ImageConfig,
    rootfs: PathBuf,
    namespaces: SandboxNamespaces,
    cgroups_path: String,
    pod_files: &Path,
    volumes: &BTreeMap<String, PathBuf>,
    resolved_env: &BTreeMap<String, String>,
) -> Result<Built, ConfigError> {
    let (uid, gid) = user(pod, container, image)?;
    let context = container.security_context.as_ref();
    let mut mounts = vec![
        BindMount {
            source: pod_files.join("hosts"),
            destination: "/etc/hosts".into(),
            readonly: false,
        },
        BindMount {
            source: pod_files.join("hostname"),
            destination: "/etc/hostname".into(),
            readonly: false,
        },
        BindMount {
            source: pod_files.join("resolv.conf"),
            destination: "/etc/resolv.conf".into(),
            readonly: false,
        },
    ];
    let mut sub_paths = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let source = volumes.get(&mount.name).ok_or_else(|| {
            ConfigError(format!(
                "container {}: volumeMounts {}: no volume of that name in the pod",
                container.name, mount.name
            ))
        })?;
        let sub_path = match (
            mount.sub_path.as_deref().filter(|p| !p.is_empty()),
            mount.sub_path_expr.as_deref().filter(|p| !p.is_empty()),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(format!(
                    "container {}: volumeMounts {}: subPath and subPathExpr are mutually exclusive",
                    container.name, mount.name
                )));
            }
            (Some(path), None) => Some(path.to_string()),
            (None, Some(expr)) => {
                let known: BTreeMap<String, String> = environment(container, image, resolved_env)
                    .into_iter()
                    .filter_map(|pair| {
                        let (k, v) = pair.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect();
                Some(expand(expr, &known))
            }
            (None, None) => None,
        };
        if let Some(sub_path) = sub_path {
            sub_paths.push(SubPathMount {
                mount: mounts.len(),
                volume: source.clone(),
                sub_path,
            });
        }
        // configMap and secret volumes are always read-only, as in
        // Kubernetes: the agent rewrites them, so a container must not be
        // able to plant anything in them.
        let projected = pod
            .spec
            .iter()
            .flat_map(|s| s.volumes.iter().flatten())
            .any(|v| v.name == mount.name && (v.config_map.is_some() || v.secret.is_some()));
        mounts.push(BindMount {
            source: source.clone(),
            destination: mount.mount_path.clone(),
            readonly: projected || mount.read_only.unwrap_or(false),
        });
    }
    let capabilities = context.and_then(|c| c.capabilities.as_ref());
    let seccomp_unconfined = context
        .and_then(|c| c.seccomp_profile.as_ref())
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|c| c.seccomp_profile.as_ref())
        })
        .is_some_and(|p| p.type_ == "Unconfined");
    Ok(Built {
        spec: ContainerSpec {
            args: process_args(container, image)?,
            env: environment(container, image, resolved_env),
            cwd: container
                .working_dir
                .clone()
                .or_else(|| image.config.working_dir.clone())
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into()),
            uid,
            gid,
            additional_gids: pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|c| c.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|g| g as u32)
                .collect(),
            rootfs,
            readonly_rootfs: context
                .and_then(|c| c.read_only_root_filesystem)
                .unwrap_or(false),
            privileged: context.and_then(|c| c.privileged).unwrap_or(false),
            add_capabilities: capabilities.and_then(|c| c.add.clone()).unwrap_or_default(),
            drop_capabilities: capabilities
                .and_then(|c| c.drop.clone())
                .unwrap_or_default(),
            seccomp: !seccomp_unconfined,
            // Kubernetes sets no_new_privs only when asked to forbid escalation.
            no_new_privileges: context.and_then(|c| c.allow_privilege_escalation) == Some(false),
            namespaces,
            cgroups_path,
            resources: resources(container),
            mounts,
            oom_score_adj: 0,
        },
        sub_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::oci::{RootFs, RunConfig};

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            config: RunConfig {
                entrypoint: entrypoint.map(|e| e.iter().map(|s| s.to_string()).collect()),
                cmd: cmd.map(|c| c.iter().map(|s| s.to_string()).collect()),
                env: Some(vec!["PATH=/bin".into(), "A=image".into()]),
                ..RunConfig::default()
            },
            rootfs: RootFs {
                type_: "layers".into(),
                diff_ids: vec![],
            },
        }
    }

    fn container(yaml: &str) -> Container {
        serde_yaml_ng::from_str(yaml).expect("container")
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image(Some(&["/entry"]), Some(&["default"]));
        let c = |yaml| process_args(&container(yaml), &img).expect("args");
        assert_eq!(c("{name: a, image: x}"), ["/entry", "default"]);
        assert_eq!(c("{name: a, image: x, args: [one]}"), ["/entry", "one"]);
        assert_eq!(c("{name: a, image: x, command: [sh]}"), ["sh"]);
        assert_eq!(
            c("{name: a, image: x, command: [sh], args: ['-c', x]}"),
            ["sh", "-c", "x"]
        );
        let empty = image(None, None);
        assert!(process_args(&container("{name: a, image: x}"), &empty).is_err());
    }

    #[test]
    fn environment_overrides_and_expands() {
        let img = image(None, Some(&["sh"]));
        let c = container(
            "{name: a, image: x, env: [{name: A, value: pod}, {name: B, value: '$(A)-$(PATH)-$$(A)-$(NOPE)'}]}",
        );
        let env = environment(&c, &img, &BTreeMap::new());
        assert_eq!(env, ["PATH=/bin", "A=pod", "B=pod-/bin-$(A)-$(NOPE)"]);
    }

    #[test]
    fn resources_become_limits() {
        let c = container(
            "{name: a, image: x, resources: {limits: {memory: 64Mi, cpu: 500m}, requests: {cpu: 250m}}}",
        );
        let r = resources(&c);
        assert_eq!(r.memory_limit, 64 << 20);
        assert_eq!((r.cpu_quota, r.cpu_period), (50_000, 100_000));
        assert_eq!(r.cpu_shares, 256);
    }
}
