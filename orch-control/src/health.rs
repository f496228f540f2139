//! The health port: GET /healthz (the process answers), /readyz (this
//! replica knows a leader, so it can serve reads and forward writes) and
//! /metrics (Prometheus). Plain HTTP/1.1, one request per connection: what
//! probes and scrapers need, nothing more.

use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::store::raft::node::RaftNode;

/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Serves the health port until the process ends.
pub async fn serve(listener: TcpListener, node: Arc<RaftNode>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(error) = answer(stream, &node).await {
                tracing::debug!(%error, "health request");
            }
        });
    }
}

async fn answer(mut stream: TcpStream, node: &RaftNode) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buffer).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut words = text.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path) {
        ("GET", "/healthz") | ("GET", "/livez") => ("200 OK", "text/plain", "ok".to_string()),
        ("GET", "/readyz") => match ready(node) {
            Ok(()) => ("200 OK", "text/plain", "ok".to_string()),
            Err(reason) => ("503 Service Unavailable", "text/plain", reason),
        },
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            crate::metrics::global().render(&gauges(node)),
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
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
