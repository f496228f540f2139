//! Container lifecycle hooks as the kubelet runs them on deletion: each
//! running container's preStop handler (exec, httpGet, tcpSocket or sleep)
//! runs before its SIGTERM, all containers' at once, within the pod's
//! grace period. That window is what lets a Service stop sending new
//! connections to a terminating pod before it stops serving.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::pods::{blocking, instance_of};
use super::probes::{Action, run_action};
use crate::runtime::sandbox;
use crate::runtime::shim::client::ShimClient;

/// The kubelet's one-time extension: a container whose preStop hook used
/// up the grace period still gets this long after its SIGTERM.
const AFTER_HOOK_GRACE: Duration = Duration::from_secs(2);

/// Runs the preStop hooks of `pod`'s running containers (its directory is
/// `pod_dir`), at most `grace` long; returns the grace left for SIGTERM.
/// A failed hook is logged and does not stop the deletion, as in the
/// kubelet.
pub async fn run_pre_stop_hooks(pod: &Pod, pod_dir: &Path, grace: Duration) -> Duration {
    let containers: Vec<Container> = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.clone())
        .unwrap_or_default();
    let with_hooks: Vec<Container> = containers
        .into_iter()
        .filter(|c| c.lifecycle.as_ref().is_some_and(|l| l.pre_stop.is_some()))
        .collect();
    if with_hooks.is_empty() {
        return grace;
    }
    let shim_dir = pod_dir.to_path_buf();
    let running = blocking(move || ShimClient::new(&shim_dir).running()).await;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let started = Instant::now();
    let hooks = running.iter().filter_map(|id| {
        let (name, _) = instance_of(id)?;
        let container = with_hooks.iter().find(|c| c.name == name)?;
        Some(run_one(pod_dir, id, container, grace, &pod_name))
    });
    let ran = futures_util::future::join_all(hooks).await;
    if ran.is_empty() {
        return grace;
    }
    let left = grace.saturating_sub(started.elapsed());
    left.max(AFTER_HOOK_GRACE)
}

/// One container's preStop hook, cut off when `grace` ends.
async fn run_one(pod_dir: &Path, id: &str, container: &Container, grace: Duration, pod: &str) {
    let Some(handler) = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return;
    };
    let outcome = if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64).min(grace)).await;
        Ok(())
    } else {
        let action = Action {
            exec: handler.exec.as_ref(),
            http_get: handler.http_get.as_ref(),
            tcp_socket: handler.tcp_socket.as_ref(),
        };
        let netns = sandbox::namespaces(pod_dir).network;
        match tokio::time::timeout(
            grace,
            run_action(netns, pod_dir, id, container, action, grace),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(format!("not done within the grace period ({grace:?})")),
        }
    };
    match outcome {
        Ok(()) => tracing::info!(%pod, container = %container.name, "preStop hook done"),
        Err(reason) => {
            tracing::warn!(%pod, container = %container.name, %reason, "FailedPreStopHook")
        }
    }
}
