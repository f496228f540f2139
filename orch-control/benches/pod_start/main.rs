//! `cargo xtask bench pods` (second part): pod start latency as Kubernetes
//! measures it, from the create of a pod bound to a node to its status
//! showing phase Running, observed through a watch; the image is already
//! on the node. 100 pods one after another (each left running), then 100
//! created at once. Real processes: one orch-control replica, one
//! orch-node agent (release builds), busybox from a registry on loopback.
//! Also the agent's resident memory idle and with 100 pods, and the
//! shims' per pod. Printed beside the targets (Kubernetes' own
//! SLO: p99 <= 5 s); the runtime itself is compared with runc and crun
//! by the first part (orch-node's `pods` bench).
//!
//! Arguments (after `--`): `--pods N` (default 100).

#[allow(dead_code)]
#[path = "../store/clusters.rs"]
mod clusters;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clusters::{OrchCluster, proc_bytes, resident_bytes};
use orch_core::api::client::WatchStream;
use orch_core::api::{ApiClient, ListOptions, WatchEventType};
use orch_core::object::{Kind, Object};

const NODE: &str = "bench-node";

/// The agent, killed on drop; then everything of its pods is released.
struct Agent {
    child: Child,
    state: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(error) = orch_node::runtime::release::release_all(&self.state, NODE) {
            eprintln!("releasing the bench node's pods: {error}");
        }
    }
}

/// orch-node beside this bench's binary (target/release), built by xtask.
fn orch_node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let release = exe
        .parent()
        .and_then(Path::parent)
        .context("the bench's directory")?;
    let binary = release.join("orch-node");
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo xtask bench pods` (it builds it)",
            binary.display()
        );
    }
    Ok(binary)
}

fn pod(name: &str, image: &str) -> Result<Object> {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeName: {NODE}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    imagePullPolicy: IfNotPresent\n    command: [sleep, '3600']\n"
    );
    let mut documents =
        orch_core::manifest::parse_str(&yaml, "bench pod").map_err(|e| anyhow::anyhow!("{e}"))?;
    documents.pop().map(|d| d.object).context("a pod")
}

fn running(object: &Object) -> bool {
    matches!(object, Object::Pod(pod)
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
}

/// Waits on `watch` until every pod of `names` was seen Running; when.
async fn until_running(
    watch: &mut WatchStream,
    names: &[String],
    within: Duration,
) -> Result<HashMap<String, Instant>> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + within;
    while seen.len() < names.len() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(remaining, watch.next())
            .await
            .with_context(|| {
                format!(
                    "{} of {} pods Running within {within:?}",
                    seen.len(),
                    names.len()
                )
            })??
            .context("the watch ended")?;
        if event.event_type == WatchEventType::Bookmark {
            continue;
        }
        let Some(object) = event.object else { continue };
        let name = object.metadata().name.clone().unwrap_or_default();
        if running(&object) && names.contains(&name) && !seen.contains_key(&name) {
            seen.insert(name, Instant::now());
        }
    }
    Ok(seen)
}

/// Deletes the pods and waits until the API has none left.
async fn delete_all(client: &mut ApiClient, names: &[String]) -> Result<()> {
    for name in names {
        client
            .delete(Kind::Pod, Some("default"), name, &Default::default())
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = client
            .list(Kind::Pod, Some("default"), &ListOptions::default())
            .await?
            .items
            .len();
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods still there after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1000.0
}

/// The pids of the bench node's shims.
fn shims(state: &Path) -> Vec<u32> {
    let needle = state.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let shim = args.first() == Some(&&b"orch-shim"[..])
                && args
                    .iter()
                    .any(|a| String::from_utf8_lossy(a).starts_with(&needle));
            shim.then_some(pid)
        })
        .collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut count = 100usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--pods" => {
                let value = args.next().context("--pods needs a number")?;
                count = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 1)
                    .with_context(|| format!("--pods {value:?}: a positive number"))?;
            }
            "--bench" => {}
            other => bail!("unknown argument {other:?} (known: --pods N)"),
        }
    }
    let node_binary = orch_node_binary()?;
    eprintln!("bench pod start: a replica, a registry, an agent...");
    let cluster = OrchCluster::start(1).await?;
    let root = cluster.root.path().to_path_buf();
    let config = cluster.api_config(0)?;
    let mut client = ApiClient::new(&config, Duration::from_secs(30))?;
    for _ in 0..100 {
        if client.get(Kind::Namespace, None, "default").await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // busybox, built here, served on loopback.
    let registry = orch_node::image::local_registry::LocalRegistry::start(&root.join("registry"))
        .map_err(|e| anyhow::anyhow!(e))?;
    let builder = orch_node::image::ImageStore::open(&root.join("builder"))?;
    let local = orch_node::image::Reference::parse("orch.bench/busybox:1")?;
    orch_node::image::build::busybox_image(
        &builder,
        &local,
        Path::new(orch_node::image::build::BUSYBOX),
        &[],
        &["sh"],
    )?;
    let image = format!("{}/busybox:1", registry.addr);
    orch_node::image::registry::RegistryClient::new(Vec::new())?
        .push(
            &builder,
            &local,
            &orch_node::image::Reference::parse(&image)?,
            None,
        )
        .await?;

    let node_config = orch_control::pki::Pki::new(&root.join("replica-1"))
        .node_config(NODE, &cluster.api_addrs)?;
    let node_config_path = root.join("node.conf");
    std::fs::write(&node_config_path, node_config.to_yaml())?;
    let state = root.join("node-state");
    let child = Command::new(&node_binary)
        .args(["--node-name", NODE, "--config"])
        .arg(&node_config_path)
        .arg("--state-dir")
        .arg(&state)
        .args([
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-bind-address",
            "127.0.0.1:0",
        ])
        .args(["--max-pods", &(count + 10).to_string()])
        // The image must stay between pods whatever this disk holds: a
        // pull inside a measurement would not be a pod start.
        .args(["--image-gc-high-threshold", "100"])
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("orch-node.log"))?)
        .spawn()
        .context("starting orch-node")?;
    let agent = Agent {
        child,
        state: state.clone(),
    };
    let agent_pid = agent.child.id();

    // The image on the node first: a pod pulls it.
    let mut watch = client
        .watch(
            Kind::Pod,
            Some("default"),
            &ListOptions::default(),
            "",
            false,
        )
        .await?;
    client.create(&pod("warm-up", &image)?, false).await?;
    until_running(
        &mut watch,
        &["warm-up".to_string()],
        Duration::from_secs(120),
    )
    .await
    .with_context(|| std::fs::read_to_string(root.join("orch-node.log")).unwrap_or_default())?;
    delete_all(&mut client, &["warm-up".to_string()]).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = resident_bytes(agent_pid)?;

    eprintln!("bench pod start: {count} pods one by one...");
    let mut one_by_one = Vec::new();
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("one-{i}");
        let started = Instant::now();
        client.create(&pod(&name, &image)?, false).await?;
        let seen = until_running(
            &mut watch,
            std::slice::from_ref(&name),
            Duration::from_secs(60),
        )
        .await?;
        one_by_one.push(seen[&name] - started);
        names.push(name);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded_rss = resident_bytes(agent_pid)?;
    let shim_pids = shims(&state);
    let shim_rss: u64 = shim_pids
        .iter()
        .filter_map(|pid| resident_bytes(*pid).ok())
        .sum();
    let shim_pss: u64 = shim_pids
        .iter()
        // Shared pages split among their users.
        .filter_map(|pid| proc_bytes(*pid, "smaps_rollup", "Pss").ok())
        .sum();
    let shim_anon: u64 = shim_pids
        .iter()
        // Private memory: what a shim costs beyond the binary all share.
        .filter_map(|pid| proc_bytes(*pid, "status", "RssAnon").ok())
        .sum();
    // The agent seals orch-shim and orch-runtime once for all its shims.
    let sealed_copy = std::fs::metadata(node_binary.with_file_name("orch-shim"))?.len()
        + std::fs::metadata(node_binary.with_file_name("orch-runtime"))?.len();
    delete_all(&mut client, &names).await?;

    eprintln!("bench pod start: {count} pods at once...");
    let names: Vec<String> = (0..count).map(|i| format!("burst-{i}")).collect();
    let mut creates = Vec::new();
    for name in &names {
        let (mut client, object) = (client.clone(), pod(name, &image)?);
        creates.push(tokio::spawn(async move {
            let started = Instant::now();
            client.create(&object, false).await.map(|_| started)
        }));
    }
    let seen_task = {
        let names = names.clone();
        tokio::spawn(
            async move { until_running(&mut watch, &names, Duration::from_secs(300)).await },
        )
    };
    let mut started = HashMap::new();
    for (name, create) in names.iter().zip(creates) {
        started.insert(name.clone(), create.await??);
    }
    let seen = seen_task.await??;
    let mut at_once: Vec<Duration> = names.iter().map(|n| seen[n] - started[n]).collect();
    delete_all(&mut client, &names).await?;
    drop(agent);

    let (p50, p99) = (
        percentile(&mut one_by_one, 50.0),
        percentile(&mut one_by_one, 99.0),
    );
    let (burst50, burst99) = (
        percentile(&mut at_once, 50.0),
        percentile(&mut at_once, 99.0),
    );
    let shims_seen = shim_pids.len().max(1) as u64;
    println!("pod start benchmark: {count} pods, image present, create -> Running seen in a watch");
    println!("{:<52} {:>12} {:>12}", "measure", "orch", "target");
    let row = |what: &str, value: String, target: &str| {
        println!("{what:<52} {value:>12} {target:>12}");
    };
    row("one by one: p50 ms", format!("{p50:.1}"), "<= 60");
    row("one by one: p99 ms", format!("{p99:.1}"), "<= 200");
    row(
        &format!("{count} at once: p50 ms"),
        format!("{burst50:.1}"),
        "",
    );
    row(
        &format!("{count} at once: p99 ms"),
        format!("{burst99:.1}"),
        "<= 2000",
    );
    row(
        "orch-node RSS idle, MiB",
        format!("{:.1}", mib(idle_rss)),
        "< 40",
    );
    row(
        &format!("orch-node RSS with {count} pods, MiB"),
        format!("{:.1}", mib(loaded_rss)),
        "",
    );
    row(
        &format!("shim RSS per pod ({} shims), MiB", shim_pids.len()),
        format!("{:.2}", mib(shim_rss / shims_seen)),
        "< 3",
    );
    row(
        "shim PSS per pod (shared pages split), MiB",
        format!("{:.2}", mib(shim_pss / shims_seen)),
        "< 3",
    );
    row(
        "shim private memory per pod (RssAnon), MiB",
        format!("{:.2}", mib(shim_anon / shims_seen)),
        "< 3",
    );
    row(
        "sealed orch-shim + orch-runtime, once per agent, MiB",
        format!("{:.1}", mib(sealed_copy)),
        "",
    );
    Ok(())
}
