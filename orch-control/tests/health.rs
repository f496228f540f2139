//! The health port of real replicas: /healthz, /readyz (503 without a
//! leader) and /metrics (API requests, commits, watches, Raft gauges).

mod common;

use std::time::{Duration, Instant};

use orch_core::api::{ApiClient, ListOptions};
use orch_core::object::Kind;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_readiness_and_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut replicas, _) = common::cluster(dir.path(), 3).await;
    let api: Vec<String> = replicas.iter().map(|r| r.api_addr.clone()).collect();
    let mut client =
        ApiClient::new(&replicas[0].api_config(&api), Duration::from_secs(20)).expect("client");
    for _ in 0..100 {
        if client.get(Kind::Namespace, None, "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _watch = client
        .watch(Kind::Pod, None, &ListOptions::default(), "", false)
        .await
        .expect("watch");
    client
        .list(Kind::Pod, None, &ListOptions::default())
        .await
        .expect("list");

    let health = replicas[0].health_addr.clone();
    assert_eq!(
        common::http_get(&health, "/healthz"),
        ("HTTP/1.1 200 OK".to_string(), "ok".to_string())
    );
    // Ready once the system namespaces exist (default is the first made).
    let mut ready = common::http_get(&health, "/readyz");
    for _ in 0..100 {
        if ready.0 == "HTTP/1.1 200 OK" {
            break;
        }
        assert!(ready.1.contains("system namespaces"), "{ready:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready = common::http_get(&health, "/readyz");
    }
    assert_eq!(ready.0, "HTTP/1.1 200 OK");
    assert_eq!(
        common::http_get(&health, "/nope").0,
        "HTTP/1.1 404 Not Found"
    );
    let (status, metrics) = common::http_get(&health, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        "orch_api_requests_total{method=\"get\",resource=\"namespaces\",code=\"OK\"}",
        "orch_api_requests_total{method=\"list\",resource=\"pods\",code=\"OK\"} 1",
        "orch_api_request_duration_seconds_bucket{method=\"list\",resource=\"pods\",le=\"+Inf\"} 1",
        "orch_api_watches{resource=\"pods\"} 1",
        "orch_store_commit_duration_seconds_count ",
        "orch_raft_term ",
        "orch_store_revision ",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    let leaders: f64 = replicas
        .iter()
        .map(|r| {
            let (_, text) = common::http_get(&r.health_addr, "/metrics");
            text.lines()
                .find_map(|l| l.strip_prefix("orch_raft_is_leader "))
                .and_then(|v| v.parse::<f64>().ok())
                .expect("orch_raft_is_leader")
        })
        .sum();
    assert_eq!(leaders, 1.0, "exactly one replica reports leading");

    // Without a majority a replica stops being ready (but stays healthy).
    let leader =
        common::leader_id(&replicas.iter().map(|r| r.addr.clone()).collect::<Vec<_>>()).await;
    let survivor = replicas
        .iter()
        .position(|r| r.id != leader)
        .expect("a follower");
    // Every replica creates the system namespaces itself (retrying until
    // they exist): the follower must be ready first, or its 503 below could
    // be for the namespaces, not for the lost majority.
    let health = replicas[survivor].health_addr.clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while common::http_get(&health, "/readyz").0 != "HTTP/1.1 200 OK" {
        assert!(Instant::now() < deadline, "the follower never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (index, replica) in replicas.iter_mut().enumerate() {
        if index != survivor {
            replica.kill();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = common::http_get(&health, "/readyz");
        if status == "HTTP/1.1 503 Service Unavailable" {
            assert!(body.contains("no leader"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still ready without a majority: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(common::http_get(&health, "/healthz").0, "HTTP/1.1 200 OK");
}
