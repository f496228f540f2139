//! The API server: every replica serves `orch.api.v1.Api` on its listen
//! address. Requests pass one admission chain (`admission`), objects live
//! in the store under `/registry/...` (`registry`), writes and linearizable
//! reads reach the Raft leader and watches are served from this replica
//! (`access`). Logs and exec are relayed to the pod's node agent
//! (`node_proxy`).

pub mod access;
pub mod admission;
pub mod auth;
pub mod bootstrap;
pub mod filter;
pub mod node_proxy;
pub mod registry;
pub mod service;

use std::sync::Arc;
use std::time::Duration;

use orch_core::api::ApiError;
use orch_core::object::Kind;

use registry::Registry;

/// Namespaces every cluster has, as in Kubernetes.
pub const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-node-lease"];

/// Creates the system namespaces that are missing, retrying while the
/// cluster has no leader; returns once they all exist.
pub async fn ensure_system_namespaces(registry: Arc<Registry>) {
    for name in SYSTEM_NAMESPACES {
        let manifest = serde_json::json!({
            "apiVersion": Kind::Namespace.api_version(),
            "kind": Kind::Namespace.name(),
            "metadata": {"name": name},
        });
        let bytes = manifest.to_string().into_bytes();
        loop {
            match registry.create(Kind::Namespace, "", &bytes, false).await {
                Ok(_) | Err(ApiError::AlreadyExists(_)) => break,
                Err(error) => {
                    tracing::debug!(%error, namespace = name, "creating a system namespace; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
