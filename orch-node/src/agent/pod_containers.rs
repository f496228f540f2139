//! One container of a pod: its instances as the shim reports them, its
//! (re)start by restart policy with the kubelet's back-off, and starting
//! an instance (image, root filesystem, runtime spec, shim create+start).

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use orch_core::api::ApiClient;

use super::container_config::{self, ConfigError};
use super::pod_files;
use super::pod_status::ContainerRecord;
use super::pods::{PodManager, backoff, blocking, instance_of, now_seconds};
use crate::runtime::shim::client::ShimClient;
use crate::runtime::shim::protocol::{ContainerState, Request, Status};
use crate::runtime::subpath;
use crate::runtime::{bundle, rootfs, sandbox, spec};

impl PodManager {
    /// One container's turn: what the shim says of its instances, and a
    /// (re)start when it has none or its last one exited and `policy`
    /// says so (after the back-off).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn step(
        &self,
        client: &mut ApiClient,
        pod: &Pod,
        dir: &Path,
        instances: &[ContainerState],
        container: &Container,
        record: &mut ContainerRecord,
        policy: &str,
        volumes: &std::collections::BTreeMap<String, PathBuf>,
        next: &mut Duration,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let dir = dir.to_path_buf();
        let mut mine: Vec<(i32, &ContainerState)> = instances
            .iter()
            .filter_map(|i| {
                instance_of(&i.id)
                    .filter(|(n, _)| *n == container.name)
                    .map(|(_, a)| (a, i))
            })
            .collect();
        mine.sort_by_key(|(attempt, _)| *attempt);
        // Older instances than the one before the current go.
        while mine.len() > 2 {
            let (_, old) = mine.remove(0);
            let (id, dir_for) = (old.id.clone(), dir.clone());
            blocking(move || {
                let _ = ShimClient::new(&dir_for).call(&Request::Delete { id: id.clone() });
                let _ = rootfs::remove(&dir_for.join("containers").join(&id));
            })
            .await;
        }
        record.current = mine.last().map(|(_, i)| (*i).clone());
        record.previous = mine.len().checked_sub(2).map(|i| mine[i].1.clone());
        record.restart_count = mine.last().map_or(0, |(a, _)| *a);
        let start_attempt = match &record.current {
            None => Some(0),
            Some(current) if current.status == Status::Exited => {
                let failed = current.exit_code != Some(0);
                let restart = policy == "Always" || (policy == "OnFailure" && failed);
                if !restart {
                    record.done = true;
                    None
                } else {
                    let ran =
                        current.finished_at.unwrap_or(0.0) - current.started_at.unwrap_or(0.0);
                    let wait = backoff(record.restart_count, ran);
                    let since = now_seconds() - current.finished_at.unwrap_or(0.0);
                    if since >= wait.as_secs_f64() {
                        Some(record.restart_count + 1)
                    } else {
                        record.waiting = Some((
                            "CrashLoopBackOff".into(),
                            format!(
                                "back-off {}s restarting failed container={} pod={name}_{namespace}({uid})",
                                wait.as_secs(),
                                container.name
                            ),
                        ));
                        *next = (*next).min(Duration::from_secs_f64(
                            (wait.as_secs_f64() - since).max(0.1),
                        ));
                        None
                    }
                }
            }
            Some(current) if current.status == Status::Created => {
                // Created but never started (a start that failed or
                // was cut short): start it now.
                let (start, shim_dir) = (
                    Request::Start {
                        id: current.id.clone(),
                    },
                    dir.clone(),
                );
                if let Err(error) = blocking(move || ShimClient::new(&shim_dir).call(&start)).await
                {
                    record.waiting = Some(("RunContainerError".into(), error.to_string()));
                    *next = (*next).min(Duration::from_secs(2));
                }
                None
            }
            Some(current) => {
                // Running: what its probes say.
                let grace = Duration::from_secs(
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                let verdict = self
                    .prober
                    .check(&uid, &dir, container, current, grace)
                    .await;
                record.ready = Some(verdict.ready);
                if let Some((reason, signal)) = verdict.restart {
                    if signal != 0 {
                        tracing::info!(pod = %name, container = %container.name, %reason, signal, "restarting the container");
                        let (kill, shim_dir) = (
                            Request::Kill {
                                id: current.id.clone(),
                                signal,
                            },
                            dir.clone(),
                        );
                        let _ = blocking(move || ShimClient::new(&shim_dir).call(&kill)).await;
                    }
                    *next = (*next).min(Duration::from_millis(500));
                }
                // The next probe is due within its period.
                *next = (*next).min(Duration::from_secs(1));
                None
            }
        };
        if let Some(attempt) = start_attempt {
            match self
                .start_instance(client, pod, &dir, container, attempt, volumes)
                .await
            {
                Ok(image_id) => {
                    record.image_id = image_id;
                    let state_client = ShimClient::new(&dir);
                    let id = format!("{}-{attempt}", container.name);
                    let fresh = blocking(move || state_client.state())
                        .await
                        .unwrap_or_default();
                    record.previous = record.current.take();
                    record.current = fresh.into_iter().find(|i| i.id == id);
                    record.restart_count = attempt;
                    record.done = false;
                    record.waiting = None;
                }
                Err(waiting) => {
                    record.waiting = Some(waiting);
                    *next = (*next).min(Duration::from_secs(2));
                }
            }
        } else {
            record.image_id = self.images.image_id(container);
        }
    }

    /// Starts attempt `attempt` of `container`; (reason, message) on failure.
    #[allow(clippy::too_many_arguments)]
    async fn start_instance(
        &self,
        client: &mut ApiClient,
        pod: &Pod,
        dir: &Path,
        container: &Container,
        attempt: i32,
        volumes: &std::collections::BTreeMap<String, PathBuf>,
    ) -> Result<String, (String, String)> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (image, layers, image_id) = self.images.ensure(client, pod, container).await?;
        let config_error =
            |e: ConfigError| ("CreateContainerConfigError".to_string(), e.to_string());
        let resolved = pod_files::env_values(client, pod, container, &self.node, &self.host_ip)
            .await
            .map_err(config_error)?;
        let id = format!("{}-{attempt}", container.name);
        let container_dir = dir.join("containers").join(&id);
        let mount_dir = container_dir.clone();
        let root = blocking(move || rootfs::mount(&mount_dir, &layers))
            .await
            .map_err(|e| {
                (
                    "CreateContainerError".to_string(),
                    format!("root filesystem: {e}"),
                )
            })?;
        let built = container_config::build(
            pod,
            container,
            &image.config,
            root,
            sandbox::namespaces(dir),
            format!("{}/{id}", self.pod_cgroup(&uid)),
            &dir.join("etc"),
            volumes,
            &resolved,
        )
        .map_err(config_error)?;
        let mut built = built;
        for sub in std::mem::take(&mut built.sub_paths) {
            let staging = dir
                .join("volume-subpaths")
                .join(&container.name)
                .join(sub.mount.to_string());
            let target = staging.clone();
            blocking(move || subpath::prepare(&sub.volume, &sub.sub_path, &target))
                .await
                .map_err(|e| ("CreateContainerConfigError".to_string(), e.to_string()))?;
            built.spec.mounts[sub.mount].source = staging;
        }
        let config = spec::runtime_spec(&built.spec);
        let bundle_dir = container_dir.clone();
        blocking(move || bundle::write(&bundle_dir, &config).map_err(|e| e.to_string()))
            .await
            .map_err(|e| ("CreateContainerError".to_string(), format!("bundle: {e}")))?;
        let log = dir
            .join("logs")
            .join(&container.name)
            .join(format!("{attempt}.log"));
        let (create, start) = (
            Request::Create {
                id: id.clone(),
                bundle: container_dir.clone(),
                log,
                log_rotation: Some(self.log_rotation),
            },
            Request::Start { id: id.clone() },
        );
        let shim_for_call = ShimClient::new(dir);
        let created = blocking(move || shim_for_call.call(&create).map(|_| ())).await;
        if let Err(error) = created {
            let _ = blocking(move || rootfs::remove(&container_dir)).await;
            return Err(("CreateContainerError".into(), error.to_string()));
        }
        let shim_for_call = ShimClient::new(dir);
        blocking(move || shim_for_call.call(&start).map(|_| ()))
            .await
            .map_err(|e| ("RunContainerError".to_string(), e.to_string()))?;
        tracing::info!(pod = %pod.metadata.name.clone().unwrap_or_default(), container = %container.name, attempt, "container started");
        Ok(image_id)
    }
}
