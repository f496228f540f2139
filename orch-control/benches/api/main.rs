//! `cargo xtask bench api`: a 3-replica control plane (real processes on
//! loopback, TLS, client certificates) loaded through its API by 64
//! clients spread over the replicas: creates of 10,000 pods, updates, gets,
//! lists of 500 items; watch delivery latency (write issued to event
//! received on another replica); resident memory at 10,000 pods. Printed
//! beside the targets for this 2-core machine (Kubernetes' own SLO is p99
//! <= 1 s for mutating calls and single-object reads).
//!
//! The anchor, measured in the same run once the replicas are stopped: the
//! transport floor (`floor.rs`), three servers on the same gRPC, TLS and
//! authentication that do no work, loaded by as many clients configured
//! alike. `p99/floor` reads create and update against the floor's create,
//! get against its get. The floor's rows carry the targets too: a target
//! the floor misses is out of reach of any server on this transport here.
//!
//! Arguments (after `--`): `--pods N` (default 10000), `--quick` (1,000).

#[allow(dead_code)]
#[path = "../store/clusters.rs"]
mod clusters;
mod floor;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusters::{OrchCluster, percentile, resident_bytes};
use orch_core::api::{ApiClient, ListOptions, WatchEventType};
use orch_core::object::{Kind, Object};

const CLIENTS: usize = 64;

fn pod(name: &str) -> Result<Object> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: bench}}}}\nspec: {{containers: [{{name: c, image: busybox, command: [sleep, '3600']}}]}}\n"
    );
    let mut documents =
        orch_core::manifest::parse_str(&yaml, "bench pod").map_err(|e| anyhow::anyhow!("{e}"))?;
    documents.pop().map(|d| d.object).context("a pod")
}

struct Row {
    what: &'static str,
    ops: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// The target on this machine, where there is one.
    target_p99: Option<Duration>,
    /// The row of the transport floor's call this one is read against:
    /// its create for creates and updates (an object in, an object out),
    /// its get for gets.
    floor_row: Option<usize>,
}

/// Runs `per_client` operations on each of the 64 clients at once;
/// `op(client, client_index, i)` does one and returns the time its measured
/// API call took: one call each, as Kubernetes' SLOs count them, without
/// the client's own preparation (building the object, the get before an
/// update).
async fn load<F, Fut>(
    clients: &[ApiClient],
    per_client: usize,
    op: F,
) -> Result<(Duration, Vec<Duration>)>
where
    F: Fn(ApiClient, usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(ApiClient, Duration)>> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().enumerate() {
        let op = op.clone();
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let (returned, took) = op(client, index, i).await?;
                client = returned;
                latencies.push(took);
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((started.elapsed(), latencies))
}

/// Times `call`.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (T, Duration) {
    let sent = Instant::now();
    let result = call.await;
    (result, sent.elapsed())
}

/// `per_client` creates of pods `p-<client>-<i>` on each client at once.
async fn create_pods(
    clients: &[ApiClient],
    per_client: usize,
) -> Result<(Duration, Vec<Duration>)> {
    // Parsed once: a YAML parse per create would be the client's CPU,
    // taken from the same two cores as the servers'.
    let template = Arc::new(pod("p")?);
    load(clients, per_client, move |mut client, c, i| {
        let mut pod = (*template).clone();
        pod.metadata_mut().name = Some(format!("p-{c}-{i}"));
        async move {
            let (created, took) = timed(client.create(&pod, false)).await;
            created?;
            Ok((client, took))
        }
    })
    .await
}

/// `gets` gets on each client at once, of the pods `create_pods` made.
async fn get_pods(
    clients: &[ApiClient],
    gets: usize,
    per_client: usize,
) -> Result<(Duration, Vec<Duration>)> {
    load(clients, gets, move |mut client, c, i| async move {
        let name = format!("p-{c}-{}", i % per_client);
        let (found, took) = timed(client.get(Kind::Pod, Some("default"), &name)).await;
        found?;
        Ok((client, took))
    })
    .await
}

/// One untimed get on every client, so that no measured call carries its
/// connection's TCP and TLS handshake.
async fn connect(
    clients: &[ApiClient],
    kind: Kind,
    namespace: Option<&str>,
    name: &str,
) -> Result<()> {
    for client in clients {
        client.clone().get(kind, namespace, name).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut pods = 10_000usize;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--pods") => {
                let value = args.next().context("--pods needs a number")?;
                pods = value
                    .to_str()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n >= CLIENTS)
                    .with_context(|| format!("--pods {value:?}: a number of at least {CLIENTS}"))?;
            }
            Some("--quick") => pods = 1_000,
            // Internal: the bench starting its transport floor (floor.rs).
            Some("--floor-server") => {
                let dir = args.next().context("--floor-server needs a directory")?;
                return floor::serve(std::path::Path::new(&dir)).await;
            }
            Some("--bench") => {}
            _ => bail!("unknown argument {arg:?} (known: --pods N, --quick)"),
        }
    }
    let per_client = pods / CLIENTS;
    let pods = per_client * CLIENTS;
    eprintln!("bench api: starting 3 replicas...");
    // No nodes here: a scheduler would only mark every pod unschedulable,
    // a write per pod the API's figures should not carry.
    let cluster = OrchCluster::start_with(3, &["--controllers", "*,-scheduler"]).await?;
    let clients = cluster
        .api_clients(CLIENTS, Duration::from_secs(30))
        .await?;
    connect(&clients, Kind::Namespace, None, "default").await?;
    let mut rows = Vec::new();

    eprintln!("bench api: creating {pods} pods...");
    let (elapsed, latencies) = create_pods(&clients, per_client).await?;
    let create_row = rows.len();
    rows.push(Row {
        what: "create pod",
        ops: pods,
        elapsed,
        latencies,
        target_p99: Some(Duration::from_millis(25)),
        floor_row: None,
    });

    let updates = (2_000 / CLIENTS).max(1);
    eprintln!("bench api: updating {} pods...", updates * CLIENTS);
    let (elapsed, latencies) = load(&clients, updates, move |mut client, c, i| async move {
        let name = format!("p-{c}-{}", i % per_client);
        let mut current = client.get(Kind::Pod, Some("default"), &name).await?;
        current
            .metadata_mut()
            .labels
            .get_or_insert_with(Default::default)
            .insert("round".into(), i.to_string());
        let (updated, took) = timed(client.update(&current, false)).await;
        updated?;
        Ok((client, took))
    })
    .await?;
    let update_row = rows.len();
    rows.push(Row {
        what: "update pod (after a get)",
        ops: updates * CLIENTS,
        elapsed,
        latencies,
        target_p99: Some(Duration::from_millis(25)),
        floor_row: None,
    });

    let gets = (5_000 / CLIENTS).max(1);
    eprintln!("bench api: getting {} pods...", gets * CLIENTS);
    let (elapsed, latencies) = get_pods(&clients, gets, per_client).await?;
    let get_row = rows.len();
    rows.push(Row {
        what: "get pod",
        ops: gets * CLIENTS,
        elapsed,
        latencies,
        target_p99: Some(Duration::from_millis(5)),
        floor_row: None,
    });

    let lists = 4;
    eprintln!("bench api: listing 500 pods {} times...", lists * CLIENTS);
    let (elapsed, latencies) = load(&clients, lists, |mut client, _, _| async move {
        let options = ListOptions {
            limit: 500,
            ..ListOptions::default()
        };
        let (page, took) = timed(client.list(Kind::Pod, Some("default"), &options)).await;
        let page = page?;
        if page.items.len() != 500 {
            bail!("a list of 500 returned {}", page.items.len());
        }
        Ok((client, took))
    })
    .await?;
    rows.push(Row {
        what: "list 500 pods",
        ops: lists * CLIENTS,
        elapsed,
        latencies,
        target_p99: None,
        floor_row: None,
    });

    // Watch delivery: written through replica 1, watched on replica 2.
    eprintln!("bench api: watching 500 writes...");
    let mut watcher = ApiClient::new(&cluster.api_config(1)?, Duration::from_secs(30))?;
    let mut writer = ApiClient::new(&cluster.api_config(0)?, Duration::from_secs(30))?;
    let start = writer
        .list(Kind::ConfigMap, Some("default"), &ListOptions::default())
        .await?;
    let mut stream = watcher
        .watch(
            Kind::ConfigMap,
            Some("default"),
            &ListOptions::default(),
            &start.resource_version,
            false,
        )
        .await?;
    let mut delivery = Vec::new();
    let watch_started = Instant::now();
    for i in 0..500 {
        let config_map = orch_core::manifest::parse_str(
            &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{i}, namespace: default}}\ndata: {{i: \"{i}\"}}\n"),
            "bench",
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .remove(0)
        .object;
        let sent = Instant::now();
        writer.create(&config_map, false).await?;
        loop {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .context("watch event within 10 s")??
                .context("watch ended")?;
            if event.event_type == WatchEventType::Added
                && event
                    .object
                    .as_ref()
                    .and_then(|o| o.metadata().name.clone())
                    == Some(format!("w{i}"))
            {
                delivery.push(sent.elapsed());
                break;
            }
        }
    }
    rows.push(Row {
        what: "watch delivery (write issued -> event)",
        ops: 500,
        elapsed: watch_started.elapsed(),
        latencies: delivery,
        target_p99: Some(Duration::from_millis(10)),
        floor_row: None,
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory: Vec<u64> = (0..3)
        .filter_map(|i| cluster.pid(i))
        .map(resident_bytes)
        .collect::<Result<_>>()?;

    eprintln!("bench api: the transport floor (three servers that do no work)...");
    let served = writer.get(Kind::Pod, Some("default"), "p-0-0").await?;
    let pod_json = serde_json::to_vec(&served).context("encoding a pod")?;
    // The replicas are stopped first: their heartbeats and controllers
    // would take the floor's CPU.
    drop(cluster);
    let floor_servers = (0..3)
        .map(|_| floor::FloorServer::start(&pod_json))
        .collect::<Result<Vec<_>>>()?;
    let floor_clients = floor::clients(&floor_servers, CLIENTS)?;
    connect(&floor_clients, Kind::Pod, Some("default"), "p-0-0").await?;
    let (elapsed, latencies) = create_pods(&floor_clients, per_client).await?;
    rows[create_row].floor_row = Some(rows.len());
    rows[update_row].floor_row = Some(rows.len());
    rows.push(Row {
        what: "floor: create (the server echoes the object)",
        ops: pods,
        elapsed,
        latencies,
        target_p99: Some(Duration::from_millis(25)),
        floor_row: None,
    });
    let (elapsed, latencies) = get_pods(&floor_clients, gets, per_client).await?;
    rows[get_row].floor_row = Some(rows.len());
    rows.push(Row {
        what: "floor: get (the server answers from memory)",
        ops: gets * CLIENTS,
        elapsed,
        latencies,
        target_p99: Some(Duration::from_millis(5)),
        floor_row: None,
    });

    println!();
    println!(
        "API benchmark: 3 replicas, {CLIENTS} clients over TLS spread across them, {pods} pods"
    );
    println!(
        "{:<46} {:>8} {:>10} {:>9} {:>9} {:>11} {:>6} {:>10}",
        "operation", "ops", "ops/s", "p50 ms", "p99 ms", "target p99", "met", "p99/floor"
    );
    let p99s: Vec<Duration> = rows
        .iter_mut()
        .map(|row| percentile(&mut row.latencies, 99.0))
        .collect();
    for (index, row) in rows.iter_mut().enumerate() {
        let rate = row.ops as f64 / row.elapsed.as_secs_f64();
        let p50 = percentile(&mut row.latencies, 50.0);
        let p99 = p99s[index];
        let (target, met) = match row.target_p99 {
            Some(target) => (
                format!("{} ms", target.as_millis()),
                if p99 <= target { "yes" } else { "NO" },
            ),
            None => ("-".to_string(), "-"),
        };
        let versus_floor = match row.floor_row {
            Some(floor) => format!("{:.2}x", p99.as_secs_f64() / p99s[floor].as_secs_f64()),
            None => "-".to_string(),
        };
        println!(
            "{:<46} {:>8} {:>10.0} {:>9.2} {:>9.2} {:>11} {:>6} {:>10}",
            row.what,
            row.ops,
            rate,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            target,
            met,
            versus_floor
        );
    }
    let mib: Vec<String> = memory
        .iter()
        .map(|b| format!("{:.0}", *b as f64 / (1 << 20) as f64))
        .collect();
    println!(
        "resident memory per replica at {pods} pods: {} MiB",
        mib.join(", ")
    );
    Ok(())
}
