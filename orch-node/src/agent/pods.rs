//! The pods bound to this node, made real: one reconcile per pod key (the
//! shared watch/cache/work-queue runtime, one worker per pod at a time)
//! drives what the API asks against what the pod's shim reports: sandbox,
//! images, containers started and restarted with back-off, status written
//! through the status subresource, and on deletion a graceful stop
//! (SIGTERM, the grace period, SIGKILL) before everything the pod held is
//! released and the Pod object is finally removed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Next, ObjectRef, WorkQueue};

use super::pod_files;
use super::pod_images::ImagePuller;
use super::pod_status::{self, ContainerRecord};
use crate::image::ImageStore;
use crate::image::registry::RegistryClient;
use crate::runtime::release::release;
use crate::runtime::sandbox;
use crate::runtime::shim::client::ShimClient;
use crate::runtime::shim::protocol::{ContainerState, LogRotation, Status};

/// First restart back-off; doubled per restart up to `MAX_BACKOFF`, reset
/// after a container ran `BACKOFF_RESET` (the kubelet's numbers).
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: f64 = 600.0;
/// How often a pod's containers are looked at while it runs.
const RESYNC: Duration = Duration::from_secs(1);
/// How often a running pod's configMap and secret volumes are brought up
/// to date (the kubelet takes up to a minute).
const VOLUME_RESYNC: Duration = Duration::from_secs(10);

pub struct PodManager {
    pub node: String,
    pub host_ip: String,
    pub pods_dir: PathBuf,
    /// The node's cgroup parent (`/orch/<node>`).
    pub cgroup_root: String,
    pub images: Arc<ImagePuller>,
    pub cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    /// orch-shim and orch-runtime, sealed, that each pod's shim runs.
    pub shim_programs: Arc<crate::runtime::shim::ShimPrograms>,
    /// How the containers' log files are rotated.
    pub log_rotation: LogRotation,
    /// When unused images are deleted.
    pub image_gc: super::image_gc::ImageGcPolicy,
    /// Pod uid -> when its volumes were last brought up to date.
    volumes_synced: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Pods (uids) whose preStop hooks have run: once per deletion, as
    /// the kubelet runs them, however often the deletion is retried.
    pre_stopped: std::sync::Mutex<std::collections::HashSet<String>>,
    pub prober: super::probes::Prober,
    /// The pods' network and service cgroup.
    pub plumbing: super::pod_network::PodPlumbing,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct PodRecord {
    namespace: String,
    name: String,
    uid: String,
}

pub(super) async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

pub(super) fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The pods held on disk under `pods_dir`: (directory, record).
fn local_pods_in(pods_dir: &Path) -> Vec<(PathBuf, PodRecord)> {
    let Ok(entries) = std::fs::read_dir(pods_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let bytes = std::fs::read(entry.path().join("pod.json")).ok()?;
            Some((entry.path(), serde_json::from_slice(&bytes).ok()?))
        })
        .collect()
}

/// Writes `path` whole or not at all (the reason, for a waiting reason).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    crate::files::write_atomically(path, bytes)
        .map_err(|(path, e)| format!("{}: {e}", path.display()))
}

/// `<name>-<attempt>` -> (name, attempt).
pub(super) fn instance_of(id: &str) -> Option<(&str, i32)> {
    let (name, attempt) = id.rsplit_once('-')?;
    Some((name, attempt.parse().ok()?))
}

/// Seconds of grace a deleted pod has left at `now` (Unix seconds): the
/// API server set deletionTimestamp to the deletion's time plus the grace
/// period, so an agent restarted in the middle does not start it over.
fn deletion_grace(pod: &Pod, now: i64) -> u64 {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    pod.metadata
        .deletion_timestamp
        .as_ref()
        .map_or(grace, |at| at.0.as_second() - now)
        .clamp(0, grace) as u64
}

pub(super) fn backoff(restarts: i32, ran_for: f64) -> Duration {
    if ran_for >= BACKOFF_RESET {
        return BASE_BACKOFF;
    }
    BASE_BACKOFF
        .saturating_mul(1u32 << restarts.clamp(0, 8) as u32)
        .min(MAX_BACKOFF)
}

impl PodManager {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: String,
        host_ip: String,
        state_dir: &Path,
        images: Arc<ImageStore>,
        registry: Arc<RegistryClient>,
        cache: Arc<Cache>,
        shim_programs: Arc<crate::runtime::shim::ShimPrograms>,
        log_rotation: LogRotation,
        image_gc: super::image_gc::ImageGcPolicy,
        plumbing: super::pod_network::PodPlumbing,
    ) -> Arc<Self> {
        Arc::new(Self {
            cgroup_root: format!("/orch/{node}"),
            node,
            host_ip,
            pods_dir: state_dir.join("pods"),
            images: Arc::new(ImagePuller::new(images, registry)),
            cache,
            queue: WorkQueue::new(),
            shim_programs,
            log_rotation,
            image_gc,
            volumes_synced: Default::default(),
            pre_stopped: Default::default(),
            prober: super::probes::Prober::default(),
            plumbing,
        })
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    pub(super) fn pod_cgroup(&self, uid: &str) -> String {
        format!("{}/pod{uid}", self.cgroup_root)
    }

    /// Queues every pod held on disk that the API no longer has (found at
    /// start and every few seconds), so its worker releases it.
    pub async fn housekeeping(self: Arc<Self>) {
        loop {
            let pods_dir = self.pods_dir.clone();
            for (_, record) in blocking(move || local_pods_in(&pods_dir)).await {
                self.queue.add(ObjectRef {
                    kind: Kind::Pod,
                    namespace: Some(record.namespace),
                    name: record.name,
                });
            }
            self.collect_images().await;
            // Addresses of pods whose directory is gone (a release whose
            // network teardown failed): their veths and addresses go.
            self.plumbing.release_vanished(&self.pods_dir).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Deletes images no pod of the node names when the disk is full.
    async fn collect_images(&self) {
        let wanted: Vec<String> = self
            .cache
            .select(|_| true)
            .iter()
            .filter_map(|object| match object.as_ref() {
                Object::Pod(pod) => pod.spec.clone(),
                _ => None,
            })
            .flat_map(|spec| {
                let init = spec.init_containers.unwrap_or_default();
                init.into_iter().chain(spec.containers)
            })
            .filter_map(|c| c.image)
            .collect();
        let images = self.images.clone();
        let policy = self.image_gc;
        let collected = blocking(move || {
            super::image_gc::collect_under_pressure(
                &images.store,
                policy,
                &wanted,
                &images.last_used,
            )
        })
        .await;
        match collected {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(?deleted, "unused images deleted under disk pressure");
            }
            Ok(_) => {}
            // Busy (a pull runs) or unreadable: the next round tries again.
            Err(error) => tracing::debug!(%error, "image garbage collection"),
        }
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let pod = match self.cache.get(&key).as_deref() {
            Some(Object::Pod(pod)) => Some((**pod).clone()),
            _ => None,
        };
        let uid = pod
            .as_ref()
            .and_then(|p| p.metadata.uid.clone())
            .unwrap_or_default();
        // What is on disk under this name but is not this pod (deleted, or
        // deleted and created again) is released.
        let scan = {
            let pods_dir = self.pods_dir.clone();
            blocking(move || local_pods_in(&pods_dir)).await
        };
        for (dir, record) in scan {
            if Some(record.namespace.as_str()) == key.namespace.as_deref()
                && record.name == key.name
                && record.uid != uid
            {
                self.stop_and_release(&dir, &record.uid, Duration::from_secs(2))
                    .await?;
            }
        }
        let Some(pod) = pod else {
            return Ok(Next::Done);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = Duration::from_secs(deletion_grace(&pod, now_seconds() as i64));
            let dir = self.pod_dir(&uid);
            let first = self
                .pre_stopped
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid.clone());
            let grace = if first {
                super::lifecycle::run_pre_stop_hooks(&pod, &dir, grace).await
            } else {
                grace
            };
            // The Pod goes only once everything it held is released: the
            // API must not say it is gone while its processes run.
            self.stop_and_release(&dir, &uid, grace).await?;
            let options = DeleteRequest {
                grace_period_seconds: Some(0),
                uid: uid.clone(),
                ..DeleteRequest::default()
            };
            return match client
                .delete(Kind::Pod, key.namespace.as_deref(), &key.name, &options)
                .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) | Err(ApiError::Conflict(_)) => Ok(Next::Done),
                Err(error) => Err(error),
            };
        }
        let next = self.sync(client, &pod).await?;
        Ok(Next::After(next))
    }

    /// Sets the pod up once: its directory and identity record, sandbox,
    /// etc files and volumes (a `prepared` marker, written last, says it is
    /// done); then makes sure its shim runs. Returns the volumes' paths.
    async fn prepare(
        &self,
        client: &mut ApiClient,
        pod: &Pod,
        dir: &Path,
    ) -> Result<std::collections::BTreeMap<String, PathBuf>, (String, String)> {
        let failed = |reason: &str| {
            let reason = reason.to_string();
            move |e: String| (reason.clone(), e)
        };
        let marker = dir.join("prepared");
        let volumes = if marker.exists() {
            pod_files::volume_paths(pod, &dir.join("volumes"))
        } else {
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("{}: {e}", dir.display()))
                .map_err(failed("CreateContainerError"))?;
            // The identity first, so a pod set up halfway is still found
            // (and released) by name.
            let record = serde_json::to_vec(&PodRecord {
                namespace,
                name: name.clone(),
                uid: uid.clone(),
            })
            .map_err(|e| e.to_string())
            .map_err(failed("CreateContainerError"))?;
            write_atomically(&dir.join("pod.json"), &record)
                .map_err(failed("CreateContainerError"))?;
            let hostname = pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_else(|| name.clone());
            let (sandbox_dir, host) = (dir.to_path_buf(), hostname.clone());
            blocking(move || sandbox::create(&sandbox_dir, &host))
                .await
                .map_err(|e| format!("pod sandbox: {e}"))
                .map_err(failed("CreateContainerError"))?;
            let netns = sandbox::namespaces(dir).network;
            self.plumbing.connect(&uid, &netns).await?;
            let pod_ip = self
                .plumbing
                .address_of(&uid)
                .map(|a| a.to_string())
                .or_else(|| pod.status.as_ref().and_then(|s| s.pod_ip.clone()))
                .unwrap_or_default();
            pod_files::write_etc(&dir.join("etc"), &hostname, &pod_ip)
                .map_err(|e| e.to_string())
                .map_err(failed("CreateContainerConfigError"))?;
            let volumes = pod_files::volumes(client, pod, &dir.join("volumes"))
                .await
                .map_err(|e| e.to_string())
                .map_err(failed("CreateContainerConfigError"))?;
            write_atomically(&marker, b"").map_err(failed("CreateContainerError"))?;
            volumes
        };
        self.ensure_shim(dir)
            .await
            .map_err(failed("CreateContainerError"))?;
        Ok(volumes)
    }

    /// Whether the pod's volumes are due to be brought up to date (not on
    /// the first look: `prepare` just wrote them).
    fn volumes_due(&self, uid: &str) -> bool {
        let mut synced = self
            .volumes_synced
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let last = synced.entry(uid.to_string()).or_insert(now);
        if now.duration_since(*last) >= VOLUME_RESYNC {
            *last = now;
            return true;
        }
        false
    }

    /// One pass over a live pod; returns when to look again.
    async fn sync(&self, client: &mut ApiClient, pod: &Pod) -> Result<Duration, ApiError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let dir = self.pod_dir(&uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut next = RESYNC;
        let mut records: Vec<ContainerRecord> = spec
            .containers
            .iter()
            .map(|c| ContainerRecord {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                ..ContainerRecord::default()
            })
            .collect();
        // Once a pod is a terminal phase it is never run again.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(Duration::from_secs(60));
        }
        let prepared = self.prepare(client, pod, &dir).await;
        let volumes = match prepared {
            Ok(volumes) => volumes,
            Err(waiting) => {
                // Nothing runs before the pod is set up: every container waits.
                for record in &mut records {
                    record.waiting = Some(waiting.clone());
                }
                self.write_status(client, pod, &[], &records).await?;
                return Ok(Duration::from_secs(5));
            }
        };
        if self.volumes_due(&uid)
            && let Err(error) = pod_files::volumes(client, pod, &dir.join("volumes")).await
        {
            // The volumes keep what they held (as the kubelet's do).
            tracing::debug!(pod = %name, %error, "bringing configMap and secret volumes up to date");
        }
        let state_client = ShimClient::new(&dir);
        let instances: Vec<ContainerState> = match blocking(move || state_client.state()).await {
            Ok(instances) => instances,
            Err(error) => {
                // Unknown is not "none": starting containers again could
                // run them twice. Look again shortly.
                tracing::warn!(pod = %name, %error, "asking the pod's shim for its containers");
                return Ok(Duration::from_secs(2));
            }
        };
        let restart_policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        // Init containers first, one at a time, each to success (restarted
        // on failure unless the policy is Never); then the app containers.
        let init_policy = if restart_policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        let mut init_records: Vec<ContainerRecord> = Vec::new();
        let mut initialized = true;
        for container in spec.init_containers.iter().flatten() {
            let mut record = ContainerRecord {
                name: container.name.clone(),
                image: container.image.clone().unwrap_or_default(),
                ..ContainerRecord::default()
            };
            if initialized {
                self.step(
                    client,
                    pod,
                    &dir,
                    &instances,
                    container,
                    &mut record,
                    init_policy,
                    &volumes,
                    &mut next,
                )
                .await;
                let succeeded = record
                    .current
                    .as_ref()
                    .is_some_and(|c| c.status == Status::Exited && c.exit_code == Some(0));
                if succeeded {
                    record.done = true;
                    record.waiting = None;
                }
                initialized = succeeded;
            } else {
                record.waiting = Some(("PodInitializing".into(), String::new()));
            }
            init_records.push(record);
        }
        for (container, record) in spec.containers.iter().zip(records.iter_mut()) {
            if initialized {
                self.step(
                    client,
                    pod,
                    &dir,
                    &instances,
                    container,
                    record,
                    &restart_policy,
                    &volumes,
                    &mut next,
                )
                .await;
            } else {
                record.waiting = Some(("PodInitializing".into(), String::new()));
            }
        }
        self.write_status(client, pod, &init_records, &records)
            .await?;
        Ok(next)
    }

    async fn write_status(
        &self,
        client: &mut ApiClient,
        pod: &Pod,
        init_records: &[ContainerRecord],
        records: &[ContainerRecord],
    ) -> Result<(), ApiError> {
        let now = pod_status::time(now_seconds());
        let mut fresh = pod_status::pod_status(pod, init_records, records, &self.host_ip, now);
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        self.plumbing.report(uid, &mut fresh);
        let unchanged = pod.status.as_ref() == Some(&fresh);
        if unchanged {
            return Ok(());
        }
        let mut updated = pod.clone();
        updated.status = Some(fresh);
        match client.update_status(&Object::Pod(Box::new(updated))).await {
            // A newer pod is in the cache soon: the next pass writes again.
            Ok(_) | Err(ApiError::Conflict(_)) | Err(ApiError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Stops the pod's containers (SIGTERM, `grace`, SIGKILL) and releases
    /// everything it held: shim, root filesystems, sandbox, cgroups, files.
    async fn stop_and_release(
        &self,
        dir: &Path,
        uid: &str,
        grace: Duration,
    ) -> Result<(), ApiError> {
        self.images.forget(uid);
        self.prober.forget(uid);
        self.volumes_synced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        let shim_dir = dir.to_path_buf();
        let cgroup = self.pod_cgroup(uid);
        blocking(move || release(&shim_dir, &cgroup, grace))
            .await
            .map_err(|error| ApiError::Unavailable(format!("releasing pod {uid}: {error}")))?;
        self.plumbing
            .disconnect(uid)
            .await
            .map_err(|error| ApiError::Unavailable(format!("pod {uid}'s network: {error}")))?;
        tracing::info!(pod_uid = %uid, "pod stopped and released");
        self.pre_stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_pod_gets_what_is_left_of_its_grace() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:30Z", "deletionGracePeriodSeconds": 30},
        }))
        .expect("pod");
        let deleted_at = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(deletion_grace(&pod, deleted_at), 30);
        assert_eq!(deletion_grace(&pod, deleted_at + 20), 10);
        assert_eq!(deletion_grace(&pod, deleted_at + 60), 0);
        // A clock behind the API server's never gives more than the grace.
        assert_eq!(deletion_grace(&pod, deleted_at - 100), 30);
    }
}
