//! What a replica measures, in Prometheus' text format: API requests
//! (counts by method, resource and code; latency histograms by method and
//! resource), store commit latency, open watches. Served on the health
//! port with /healthz and /readyz (see `health`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Latency buckets in seconds (Kubernetes' apiserver uses similar ones).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (bucket, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bucket {
                *count += 1;
            }
        }
        self.sum += seconds;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bucket, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bucket}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default)]
struct State {
    /// (method, resource, code) -> count.
    requests: BTreeMap<(String, String, String), u64>,
    /// (method, resource) -> latency.
    latency: BTreeMap<(String, String), Histogram>,
    commits: Histogram,
    /// resource -> open watches.
    watches: BTreeMap<String, i64>,
}

#[derive(Default)]
pub struct Metrics {
    state: Mutex<State>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

/// Counts a watch as open until dropped.
pub struct OpenWatch {
    resource: String,
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        *global()
            .lock()
            .watches
            .entry(self.resource.clone())
            .or_default() -= 1;
    }
}

impl Metrics {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub fn observe_request(&self, method: &str, resource: &str, code: &str, took: Duration) {
        let mut state = self.lock();
        *state
            .requests
            .entry((method.into(), resource.into(), code.into()))
            .or_default() += 1;
        state
            .latency
            .entry((method.into(), resource.into()))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// One Raft entry committed (and applied) for a batch of writes.
    pub fn observe_commit(&self, took: Duration) {
        self.lock().commits.observe(took.as_secs_f64());
    }

    pub fn watch_opened(&self, resource: &str) -> OpenWatch {
        *self.lock().watches.entry(resource.into()).or_default() += 1;
        OpenWatch {
            resource: resource.into(),
        }
    }

    /// Everything, in Prometheus' text exposition format, with `gauges`
    /// (name, help, value) read by the caller at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let state = self.lock();
        let mut out = String::new();
        out.push_str(
            "# HELP orch_api_requests_total API requests by method, resource and gRPC code.\n",
        );
        out.push_str("# TYPE orch_api_requests_total counter\n");
        for ((method, resource, code), count) in &state.requests {
            let _ = writeln!(
                out,
                "orch_api_requests_total{{method=\"{method}\",resource=\"{resource}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str("# HELP orch_api_request_duration_seconds API request latency.\n");
        out.push_str("# TYPE orch_api_request_duration_seconds histogram\n");
        for ((method, resource), histogram) in &state.latency {
            histogram.render(
                &mut out,
                "orch_api_request_duration_seconds",
                &format!("method=\"{method}\",resource=\"{resource}\""),
            );
        }
        out.push_str("# HELP orch_store_commit_duration_seconds Time for a batch of writes to commit through Raft and apply.\n");
        out.push_str("# TYPE orch_store_commit_duration_seconds histogram\n");
        state
            .commits
            .render(&mut out, "orch_store_commit_duration_seconds", "");
        out.push_str("# HELP orch_api_watches Open watches by resource.\n");
        out.push_str("# TYPE orch_api_watches gauge\n");
        for (resource, open) in &state.watches {
            let _ = writeln!(out, "orch_api_watches{{resource=\"{resource}\"}} {open}");
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.observe_request("get", "pods", "OK", Duration::from_millis(3));
        metrics.observe_request("get", "pods", "OK", Duration::from_millis(30));
        metrics.observe_commit(Duration::from_millis(2));
        let text = metrics.render(&[("orch_store_revision", "The store revision.", 42.0)]);
        assert!(
            text.contains(
                "orch_api_requests_total{method=\"get\",resource=\"pods\",code=\"OK\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("orch_api_request_duration_seconds_bucket{method=\"get\",resource=\"pods\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("orch_api_request_duration_seconds_bucket{method=\"get\",resource=\"pods\",le=\"+Inf\"} 2"), "{text}");
        assert!(
            text.contains("orch_store_commit_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("orch_store_revision 42"), "{text}");
    }
}
