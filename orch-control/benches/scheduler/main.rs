//! `cargo xtask bench scheduler`: a 3-replica control plane (real
//! processes, TLS, the Raft store) schedules pods onto 5,000 simulated
//! nodes (Node objects written through the API, as agents register them),
//! every binding persisted through the API and the store. Two runs:
//!
//! - backlog: 30,000 pods are created while the scheduler is off, then
//!   the replicas restart with it on; printed: pods bound per second from
//!   the moment the bench watches again to the last binding, over the pods
//!   not yet bound then (the scheduler's own rate, with the API and store
//!   under it);
//! - steady: 30,000 more pods are created while the scheduler runs;
//!   printed: pods bound per second from the first create to the last
//!   binding, and created -> bound p50/p99. Creating pods through the same
//!   API on the same two cores is this run's ceiling, so the create rate
//!   is printed beside it.
//!
//! Also the time for a 1,000-replica Deployment to have every pod bound,
//! and each replica's resident memory.
//!
//! Arguments (after `--`): `--nodes N` (5000), `--pods N` (30000, per
//! run), `--deployment N` (1000), `--quick` (500 nodes, 3,000 pods, 100).

#[allow(dead_code)]
#[path = "../store/clusters.rs"]
mod clusters;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusters::{OrchCluster, percentile, resident_bytes};
use orch_core::api::{ApiClient, ApiError, ListOptions, WatchEventType};
use orch_core::object::{Kind, Object};

const CLIENTS: usize = 64;

fn parse(yaml: &str) -> Result<Object> {
    let mut documents =
        orch_core::manifest::parse_str(yaml, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    documents.pop().map(|d| d.object).context("an object")
}

/// A node as an agent registers it: Ready, 32 CPUs, 256 GiB, 110 pods.
async fn register_node(client: &mut ApiClient, name: &str) -> Result<()> {
    let node = parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}}}}}\n"
    ))?;
    client.create(&node, false).await?;
    let status = parse(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}}}\nstatus:\n  capacity: {{cpu: '32', memory: 256Gi, pods: '110'}}\n  allocatable: {{cpu: '32', memory: 256Gi, pods: '110'}}\n  conditions: [{{type: Ready, status: 'True', reason: KubeletReady}}]\n"
    ))?;
    let Object::Node(status) = status else {
        bail!("not a node")
    };
    // Node IPAM patches the node meanwhile: read again on a conflict.
    for _ in 0..20 {
        let Object::Node(mut node) = client.get(Kind::Node, None, name).await? else {
            bail!("not a node")
        };
        node.status = status.status.clone();
        match client.update_status(&Object::Node(node)).await {
            Ok(_) => return Ok(()),
            Err(ApiError::Conflict(_)) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    bail!("node {name}: status kept conflicting")
}

fn pod(name: &str) -> Result<Object> {
    parse(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: bench}}}}\nspec:\n  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}}}]\n"
    ))
}

/// When each pod was seen bound, by name.
type Bound = Arc<Mutex<HashMap<String, Instant>>>;

/// Follows every pod from `revision`, noting when each first shows a node.
fn watch_bindings(mut client: ApiClient, revision: String, bound: Bound) {
    tokio::spawn(async move {
        let Ok(mut stream) = client
            .watch(Kind::Pod, None, &ListOptions::default(), &revision, false)
            .await
        else {
            eprintln!("bench scheduler: the watch failed to start");
            return;
        };
        while let Ok(Some(event)) = stream.next().await {
            if !matches!(
                event.event_type,
                WatchEventType::Added | WatchEventType::Modified
            ) {
                continue;
            }
            let Some(Object::Pod(pod)) = event.object else {
                continue;
            };
            let on_node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty());
            if on_node && let Some(name) = pod.metadata.name {
                let mut bound = bound.lock().unwrap_or_else(|p| p.into_inner());
                bound.entry(name).or_insert_with(Instant::now);
            }
        }
    });
}

/// Runs `count` operations spread over the clients, `CLIENTS` at a time.
async fn spread<F, Fut>(clients: &[ApiClient], count: usize, op: F) -> Result<Duration>
where
    F: Fn(ApiClient, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let op = op.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = index;
            while i < count {
                op(client.clone(), i).await?;
                i += CLIENTS;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}

/// Creates pods `{prefix}-0` .. `{prefix}-{count-1}` over the clients;
/// when `sent` is given, notes when each create was sent.
async fn create_pods(
    clients: &[ApiClient],
    prefix: &'static str,
    count: usize,
    sent: Option<Arc<Mutex<HashMap<String, Instant>>>>,
) -> Result<Duration> {
    spread(clients, count, move |mut client, i| {
        let sent = sent.clone();
        async move {
            let name = format!("{prefix}-{i}");
            let object = pod(&name)?;
            if let Some(sent) = &sent {
                sent.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(name, Instant::now());
            }
            client.create(&object, false).await?;
            Ok(())
        }
    })
    .await
}

/// Pods that have a node now.
async fn bound_count(client: &mut ApiClient) -> Result<usize> {
    let pods = client
        .list(Kind::Pod, None, &ListOptions::default())
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|pod| match pod {
            Object::Pod(pod) => pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty()),
            _ => false,
        })
        .count())
}

/// The store's revision now (a list's resourceVersion), to watch from.
async fn current_revision(client: &ApiClient) -> Result<String> {
    let options = ListOptions {
        limit: 1,
        ..ListOptions::default()
    };
    Ok(client
        .clone()
        .list(Kind::Pod, None, &options)
        .await?
        .resource_version)
}

async fn until_bound(bound: &Bound, names: &[String], within: Duration) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        {
            let bound = bound.lock().unwrap_or_else(|p| p.into_inner());
            if names.iter().all(|n| bound.contains_key(n)) {
                return names
                    .iter()
                    .filter_map(|n| bound.get(n).copied())
                    .max()
                    .context("no pods");
            }
            if Instant::now() > deadline {
                let missing = names.iter().filter(|n| !bound.contains_key(*n)).count();
                bail!(
                    "{missing} of {} pods not bound within {within:?}",
                    names.len()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let (mut nodes, mut pods, mut replicas) = (5_000usize, 30_000usize, 1_000usize);
    let mut args = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<usize> {
        let value = value.with_context(|| format!("{flag} needs a number"))?;
        value
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{flag} {value:?}: a positive number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--nodes" => nodes = number("--nodes", args.next())?,
            "--pods" => pods = number("--pods", args.next())?,
            "--deployment" => replicas = number("--deployment", args.next())?,
            "--quick" => (nodes, pods, replicas) = (500, 3_000, 100),
            "--bench" => {}
            other => bail!(
                "unknown argument {other:?} (known: --nodes N, --pods N, --deployment N, --quick)"
            ),
        }
    }
    eprintln!("bench scheduler: starting 3 replicas, the scheduler off...");
    // Simulated nodes renew no Lease: keep the lifecycle controller from
    // marking them Unknown; give IPAM room for every node.
    let common = [
        "--node-monitor-grace-period",
        "86400",
        "--cluster-cidr",
        "10.0.0.0/8",
    ];
    let mut flags = common.to_vec();
    flags.extend(["--controllers", "*,-scheduler"]);
    let mut cluster = OrchCluster::start_with(3, &flags).await?;
    let clients = cluster
        .api_clients(CLIENTS, Duration::from_secs(60))
        .await?;

    eprintln!("bench scheduler: registering {nodes} nodes...");
    let registering = spread(&clients, nodes, |mut client, i| async move {
        register_node(&mut client, &format!("node-{i}")).await
    })
    .await?;

    eprintln!("bench scheduler: creating a backlog of {pods} pods...");
    let backlog: Vec<String> = (0..pods).map(|i| format!("backlog-{i}")).collect();
    let creating_backlog = create_pods(&clients, "backlog", pods, None).await?;
    let backlog_revision = current_revision(&clients[0]).await?;
    drop(clients);

    eprintln!("bench scheduler: restarting the replicas with the scheduler on...");
    let restarted = Instant::now();
    cluster.restart_all_with(&common).await?;
    let clients = cluster
        .api_clients(CLIENTS, Duration::from_secs(60))
        .await?;
    let mut probe = clients[0].clone();
    let bound: Bound = Arc::default();
    watch_bindings(probe.clone(), backlog_revision, bound.clone());
    // The scheduler may have started before the watch: bindings made
    // until now arrive replayed, stamped late. They are counted and left
    // out of the rate, which runs from here.
    let watching = Instant::now();
    let bound_before = bound_count(&mut probe).await?;
    until_bound(&bound, &backlog, Duration::from_secs(900)).await?;
    let last_backlog = {
        let bound = bound.lock().unwrap_or_else(|p| p.into_inner());
        backlog
            .iter()
            .filter_map(|n| bound.get(n).copied())
            .max()
            .context("no bindings")?
    };

    eprintln!("bench scheduler: creating {pods} pods with the scheduler running...");
    let names: Vec<String> = (0..pods).map(|i| format!("pod-{i}")).collect();
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let first_sent = Instant::now();
    let creating = create_pods(&clients, "pod", pods, Some(sent.clone())).await?;
    let last_bound = until_bound(&bound, &names, Duration::from_secs(900)).await?;
    let scheduling = last_bound - first_sent;
    let mut latencies: Vec<Duration> = {
        let sent = sent.lock().unwrap_or_else(|p| p.into_inner());
        let bound = bound.lock().unwrap_or_else(|p| p.into_inner());
        names
            .iter()
            .filter_map(|n| Some(bound.get(n)?.saturating_duration_since(*sent.get(n)?)))
            .collect()
    };
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let memory: Vec<u64> = (0..3)
        .filter_map(|i| cluster.pid(i))
        .map(|pid| resident_bytes(pid).unwrap_or(0))
        .collect();

    eprintln!("bench scheduler: a Deployment of {replicas}...");
    let deployment = parse(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: big, namespace: default}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: big}}}}\n  template:\n    metadata: {{labels: {{app: big}}}}\n    spec:\n      containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 10m}}}}}}]\n"
    ))?;
    let deployed = Instant::now();
    probe.create(&deployment, false).await?;
    let deadline = deployed + Duration::from_secs(600);
    let deployment_bound = loop {
        let list = probe
            .list(
                Kind::Pod,
                Some("default"),
                &ListOptions {
                    label_selector: "app=big".into(),
                    ..ListOptions::default()
                },
            )
            .await?;
        let bound_names: Vec<String> = list
            .items
            .iter()
            .filter_map(|p| p.metadata().name.clone())
            .collect();
        if bound_names.len() == replicas
            && let Ok(last) = until_bound(&bound, &bound_names, Duration::ZERO).await
        {
            break last - deployed;
        }
        if Instant::now() > deadline {
            bail!("the Deployment's pods were not all bound within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The scheduler records a Scheduled event per binding; under a flood
    // its recorder drops the excess (as client-go's does): say how many
    // were written, since each is a store write the rates above include.
    let scheduled_events = probe
        .list(
            Kind::Event,
            Some("default"),
            &ListOptions {
                field_selector: "reason=Scheduled".into(),
                ..ListOptions::default()
            },
        )
        .await?
        .items
        .len();
    let rate = |count: usize, over: Duration| format!("{:.0}", count as f64 / over.as_secs_f64());
    println!();
    println!(
        "scheduler benchmark: 3 replicas, {nodes} simulated nodes, {pods} pods per run, {CLIENTS} API clients; loopback, TLS"
    );
    println!("{:<62} {:>10} {:>10}", "measure", "orch", "target");
    let row = |what: &str, value: String, target: &str| {
        println!("{what:<62} {value:>10} {target:>10}");
    };
    row(
        &format!("{nodes} nodes registered (create + status), s"),
        format!("{:.1}", registering.as_secs_f64()),
        "",
    );
    row(
        "backlog: pods created per second, scheduler off",
        rate(pods, creating_backlog),
        "",
    );
    row(
        "backlog: restart -> watching, s",
        format!("{:.1}", (watching - restarted).as_secs_f64()),
        "",
    );
    row(
        &format!(
            "backlog: pods bound per second (the {} bound after that)",
            pods - bound_before
        ),
        rate(pods - bound_before, last_backlog - watching),
        ">= 3000",
    );
    row(
        "steady: pods created per second (the API's create rate)",
        rate(pods, creating),
        "",
    );
    row(
        "steady: pods bound per second (first create to last binding)",
        rate(pods, scheduling),
        ">= 3000",
    );
    row(
        "steady: created -> bound p50, ms",
        format!("{:.1}", p50.as_secs_f64() * 1e3),
        "",
    );
    row(
        "steady: created -> bound p99, ms",
        format!("{:.1}", p99.as_secs_f64() * 1e3),
        "",
    );
    row(
        &format!("Deployment of {replicas}: created -> all bound, s"),
        format!("{:.2}", deployment_bound.as_secs_f64()),
        "",
    );
    row(
        "Scheduled events written (of one per binding)",
        format!("{scheduled_events}/{}", 2 * pods + replicas),
        "",
    );
    for (index, bytes) in memory.iter().enumerate() {
        row(
            &format!("replica {} resident memory, MiB", index + 1),
            format!("{:.0}", *bytes as f64 / (1024.0 * 1024.0)),
            "",
        );
    }
    Ok(())
}
