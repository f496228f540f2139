//! The health port: GET /healthz (the process answers), /readyz (this
//! replica knows a leader, so it can serve reads and forward writes, and
//! the system namespaces exist, as kube-apiserver's post-start hooks gate
//! its readiness) and /metrics (Prometheus), on orch-core's plain-HTTP
//! health port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use orch_core::health_port::Answer;
use tokio::net::TcpListener;

use crate::store::raft::node::RaftNode;

/// Serves the health port until the process ends.
/// `namespaces_ready` turns true once the system namespaces exist.
pub async fn serve(listener: TcpListener, node: Arc<RaftNode>, namespaces_ready: Arc<AtomicBool>) {
    orch_core::health_port::serve(listener, move |path: String| {
        let node = node.clone();
        let namespaces_ready = namespaces_ready.clone();
        async move {
            match path.as_str() {
                "/healthz" | "/livez" => Answer::text("200 OK", "ok"),
                "/readyz" => match ready(&node).and_then(|()| {
                    if namespaces_ready.load(Ordering::Acquire) {
                        Ok(())
                    } else {
                        Err("the system namespaces are being created".into())
                    }
                }) {
                    Ok(()) => Answer::text("200 OK", "ok"),
                    Err(reason) => Answer::text("503 Service Unavailable", reason),
                },
                "/metrics" => Answer::metrics(crate::metrics::global().render(&gauges(&node))),
                _ => Answer::not_found(),
            }
        }
    })
    .await
}

fn ready(node: &RaftNode) -> Result<(), String> {
    let metrics = node.raft.metrics().borrow().clone();
    if let Some(error) = &metrics.running_state.as_ref().err() {
        return Err(format!("raft stopped: {error}"));
    }
    match metrics.current_leader {
        Some(_) => Ok(()),
        None => Err("no leader: an election is in progress or a majority is unreachable".into()),
    }
}

fn gauges(node: &RaftNode) -> Vec<(&'static str, &'static str, f64)> {
    let metrics = node.raft.metrics().borrow().clone();
    let revision = node.store().revision().unwrap_or(0);
    vec![
        (
            "orch_store_revision",
            "The revision this replica has applied.",
            revision as f64,
        ),
        (
            "orch_raft_is_leader",
            "1 when this replica leads the cluster.",
            f64::from(u8::from(metrics.current_leader == Some(node.id))),
        ),
        (
            "orch_raft_term",
            "The current Raft term.",
            metrics.current_term as f64,
        ),
        (
            "orch_raft_applied_index",
            "The last log index this replica applied.",
            metrics.last_applied.map_or(0, |id| id.index) as f64,
        ),
    ]
}
