//! The agent's plain-HTTP port (`--metrics-bind-address`, like
//! kube-proxy's): /healthz, and /metrics with the dataplane's service
//! counters and map pressure, read from the pinned maps at each scrape.

use std::sync::Arc;
use std::time::Duration;

use orch_core::health_port::Answer;

use crate::dataplane::service_sync::ServiceSync;
use crate::dataplane::services::ServiceTable;
use crate::dataplane::{DataplaneError, PinLayout, metrics};

/// /metrics and /healthz on `listener`: the dataplane's counters and map
/// pressure, read from the pinned maps at each scrape.
pub async fn serve(
    listener: std::net::TcpListener,
    layout: PinLayout,
    sync: Option<Arc<ServiceSync>>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "the metrics port");
            return;
        }
    };
    orch_core::health_port::serve(listener, move |path: String| {
        let (layout, sync) = (layout.clone(), sync.clone());
        async move {
            match path.as_str() {
                "/healthz" => Answer::text("200 OK", "ok"),
                "/metrics" => {
                    let owners = sync.map(|s| s.owners()).unwrap_or_default();
                    let read = tokio::task::spawn_blocking(move || {
                        let counters = match ServiceTable::open(&layout) {
                            Ok(table) => table.counters()?,
                            // No service table pinned yet: no services.
                            Err(_) => Vec::new(),
                        };
                        let maps = metrics::map_use(&layout)?;
                        Ok::<_, DataplaneError>(metrics::render(&counters, &owners, &maps))
                    })
                    .await;
                    match read {
                        Ok(Ok(text)) => Answer::metrics(text),
                        Ok(Err(error)) => {
                            Answer::text("500 Internal Server Error", error.to_string())
                        }
                        Err(error) => Answer::text("500 Internal Server Error", error.to_string()),
                    }
                }
                _ => Answer::not_found(),
            }
        }
    })
    .await
}

/// Looks at the maps' fill every 30 s and warns before one fills.
pub async fn watch_map_pressure(layout: PinLayout) {
    loop {
        let reading = layout.clone();
        match tokio::task::spawn_blocking(move || metrics::map_use(&reading)).await {
            Ok(Ok(maps)) => metrics::warn_pressure(&maps),
            Ok(Err(error)) => tracing::debug!(%error, "reading map pressure"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}
