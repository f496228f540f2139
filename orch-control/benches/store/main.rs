//! `cargo xtask bench store`: orch's replicated store against etcd, both
//! as real processes on loopback with mutual TLS on every port, measured
//! in the same run and printed side by side with orch/etcd ratios.
//!
//! - puts of 256-byte values, 1 and 64 clients, 1 and 3 replicas:
//!   throughput (median of the rounds), p50 and p99 latency (all rounds);
//! - linearizable get latency (one client, one key);
//! - leader failover: kill -9 of the leader to the first acknowledged put;
//! - one replica holding 100,000 objects of 1 KiB: resident memory,
//!   snapshot save and restore times.
//!
//! Arguments (after `--`): `--rounds N` (default 3), `--quick` (small
//! counts, one round: checks the bench itself runs), `--replicas 1|3|1,3`
//! (default both), `--no-holding` (skip the 100,000-object rows).

// Shared with the api bench, which uses other parts of it.
#[allow(dead_code)]
mod clusters;
mod load;

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clusters::{EtcdCluster, OrchCluster, disk_bytes, percentile, resident_bytes, timed};
use load::{Run, Target, failover, gets, median, puts};

const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");
const ORCH_CONTROL: &str = env!("CARGO_BIN_EXE_orch-control");
const VALUE_BYTES: usize = 256;

struct Sizes {
    rounds: usize,
    puts_one_client: usize,
    puts_per_client_of_64: usize,
    gets: usize,
    failovers: usize,
    objects: usize,
    /// Cluster sizes to measure puts and gets on.
    replicas: Vec<usize>,
    /// Whether to measure the 100,000-object memory and snapshot rows.
    holding: bool,
}

impl Sizes {
    fn parse() -> Result<Self> {
        let mut sizes = Sizes {
            rounds: 3,
            puts_one_client: 2_000,
            puts_per_client_of_64: 500,
            gets: 2_000,
            failovers: 3,
            objects: 100_000,
            replicas: vec![1, 3],
            holding: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--rounds" => {
                    let value = args.next().context("--rounds needs a number")?;
                    sizes.rounds = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .with_context(|| format!("--rounds {value:?}: a positive number"))?;
                }
                "--quick" => {
                    sizes = Sizes {
                        rounds: 1,
                        puts_one_client: 200,
                        puts_per_client_of_64: 20,
                        gets: 200,
                        failovers: 1,
                        objects: 5_000,
                        ..sizes
                    }
                }
                "--replicas" => {
                    let value = args.next().context("--replicas needs 1, 3 or 1,3")?;
                    sizes.replicas = value
                        .split(',')
                        .map(|n| match n.trim() {
                            "1" => Ok(1),
                            "3" => Ok(3),
                            other => bail!("--replicas {other:?}: 1 or 3"),
                        })
                        .collect::<Result<_>>()?;
                }
                "--no-holding" => sizes.holding = false,
                // cargo bench passes --bench to every bench binary.
                "--bench" => {}
                other => bail!(
                    "unknown argument {other:?} (known: --rounds N, --quick, --replicas 1|3|1,3, --no-holding)"
                ),
            }
        }
        Ok(sizes)
    }
}

/// One line of the table: a figure for orch and for etcd.
struct Row {
    what: String,
    orch: f64,
    etcd: f64,
    unit: &'static str,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// Throughput median over the rounds; latency percentiles over all puts.
fn put_rows(label: &str, orch: &mut [Run], etcd: &mut [Run]) -> Vec<Row> {
    let figures = |runs: &mut [Run]| {
        let mut rates: Vec<f64> = runs.iter().map(Run::per_second).collect();
        let mut all: Vec<Duration> = runs.iter().flat_map(|r| r.latencies.clone()).collect();
        (
            median(&mut rates),
            millis(percentile(&mut all, 50.0)),
            millis(percentile(&mut all, 99.0)),
        )
    };
    let (orch_rate, orch_p50, orch_p99) = figures(orch);
    let (etcd_rate, etcd_p50, etcd_p99) = figures(etcd);
    vec![
        Row {
            what: format!("{label} throughput"),
            orch: orch_rate,
            etcd: etcd_rate,
            unit: "puts/s",
        },
        Row {
            what: format!("{label} p50"),
            orch: orch_p50,
            etcd: etcd_p50,
            unit: "ms",
        },
        Row {
            what: format!("{label} p99"),
            orch: orch_p99,
            etcd: etcd_p99,
            unit: "ms",
        },
    ]
}

async fn replicated(replicas: usize, sizes: &Sizes, rows: &mut Vec<Row>) -> Result<()> {
    let mut orch = OrchCluster::start(replicas).await?;
    let mut etcd = EtcdCluster::start(replicas).await?;
    let orch_target = Target::Orch(orch.addrs.clone(), orch.tls()?);
    // etcd's clients talk to its leader, as orch's client does (a follower
    // would forward each put: an extra hop orch's clients don't take).
    let etcd_target = Target::Etcd(
        vec![etcd.client_urls[etcd.leader().await?].clone()],
        etcd.tls.clone(),
    );
    for target in [&orch_target, &etcd_target] {
        puts(target, 8, 50, VALUE_BYTES, "/registry/bench/warm").await?;
    }
    for (clients, per_client) in [
        (1, sizes.puts_one_client),
        (64, sizes.puts_per_client_of_64),
    ] {
        let (mut orch_runs, mut etcd_runs) = (Vec::new(), Vec::new());
        for round in 0..sizes.rounds {
            // Alternate who goes first, so drift in the machine's load
            // does not favour one side.
            let prefix = format!("/registry/bench/c{clients}/r{round}");
            let order = if round % 2 == 0 {
                [&orch_target, &etcd_target]
            } else {
                [&etcd_target, &orch_target]
            };
            for target in order {
                let who = match target {
                    Target::Orch(..) => "orch",
                    Target::Etcd(..) => "etcd",
                };
                eprintln!(
                    "bench store: {replicas} replica(s), {clients} client(s) putting to {who}..."
                );
                let run = puts(target, clients, per_client, VALUE_BYTES, &prefix).await?;
                match target {
                    Target::Orch(..) => orch_runs.push(run),
                    Target::Etcd(..) => etcd_runs.push(run),
                }
            }
        }
        let label = format!("put, {replicas} replica(s), {clients} client(s):");
        rows.extend(put_rows(&label, &mut orch_runs, &mut etcd_runs));
    }
    let mut orch_gets = gets(&orch_target, sizes.gets).await?;
    let mut etcd_gets = gets(&etcd_target, sizes.gets).await?;
    for (p, name) in [(50.0, "p50"), (99.0, "p99")] {
        rows.push(Row {
            what: format!("linearizable get, {replicas} replica(s): {name}"),
            orch: millis(percentile(&mut orch_gets.latencies, p)),
            etcd: millis(percentile(&mut etcd_gets.latencies, p)),
            unit: "ms",
        });
    }
    if replicas > 1 {
        let (mut orch_times, mut etcd_times) = (Vec::new(), Vec::new());
        for _ in 0..sizes.failovers {
            let leader = orch.leader().await?;
            let took = failover(&orch_target, || {
                orch.kill(leader);
                Ok(())
            })
            .await?;
            orch_times.push(millis(took));
            orch.restart(leader).await?;

            let leader = etcd.leader().await?;
            let all = Target::Etcd(etcd.client_urls.clone(), etcd.tls.clone());
            let took = failover(&all, || {
                etcd.kill(leader);
                Ok(())
            })
            .await?;
            etcd_times.push(millis(took));
            etcd.restart(leader).await?;
        }
        rows.push(Row {
            what: format!(
                "leader kill -9 to first acknowledged put, {replicas} replicas (median of {})",
                sizes.failovers
            ),
            orch: median(&mut orch_times),
            etcd: median(&mut etcd_times),
            unit: "ms",
        });
    }
    Ok(())
}

/// One replica holding `objects` values of 1 KiB: memory, snapshot, restore.
async fn holding(sizes: &Sizes, rows: &mut Vec<Row>) -> Result<()> {
    let clients = 50;
    let per_client = sizes.objects / clients;
    let objects = clients * per_client;
    let orch = OrchCluster::start(1).await?;
    let etcd = EtcdCluster::start(1).await?;
    let orch_target = Target::Orch(orch.addrs.clone(), orch.tls()?);
    let etcd_target = Target::Etcd(etcd.client_urls.clone(), etcd.tls.clone());
    puts(&orch_target, clients, per_client, 1024, "/registry/objects").await?;
    puts(&etcd_target, clients, per_client, 1024, "/registry/objects").await?;
    // Let background work (compaction, flushes) settle before sampling.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let orch_rss = resident_bytes(orch.pid(0).context("orch replica")?)?;
    let etcd_rss = resident_bytes(etcd.pid(0).context("etcd member")?)?;
    rows.push(Row {
        what: format!("resident memory, 1 replica holding {objects} x 1 KiB"),
        orch: orch_rss as f64 / (1 << 20) as f64,
        etcd: etcd_rss as f64 / (1 << 20) as f64,
        unit: "MiB",
    });
    rows.push(Row {
        what: "data directory on disk, same".into(),
        orch: disk_bytes(orch.root.path()) as f64 / (1 << 20) as f64,
        etcd: disk_bytes(etcd.root.path()) as f64 / (1 << 20) as f64,
        unit: "MiB",
    });

    let work = tempfile::tempdir()?;
    let orch_file = work.path().join("orch.snap");
    let etcd_file = work.path().join("etcd.db");
    let orch_save = timed(
        Command::new(ORCHCTL)
            .args(["snapshot", "save"])
            .arg(&orch_file)
            .args(["--server", &orch.addrs[0]])
            .arg("--config")
            .arg(orch.root.path().join("replica-1/pki/admin.conf")),
        "orchctl snapshot save",
    )?;
    let etcd_save = timed(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.client_urls[0]])
            .args(&etcd.etcdctl_tls)
            .args(["snapshot", "save"])
            .arg(&etcd_file),
        "etcdctl snapshot save",
    )?;
    rows.push(Row {
        what: "snapshot save, same".into(),
        orch: millis(orch_save),
        etcd: millis(etcd_save),
        unit: "ms",
    });
    let orch_restore = timed(
        Command::new(ORCH_CONTROL)
            .arg("restore")
            .arg(&orch_file)
            .arg("--data-dir")
            .arg(work.path().join("orch-restored")),
        "orch-control restore",
    )?;
    let etcd_restore = timed(
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&etcd_file)
            .arg("--data-dir")
            .arg(work.path().join("etcd-restored")),
        "etcdctl snapshot restore",
    )?;
    rows.push(Row {
        what: "snapshot restore, same".into(),
        orch: millis(orch_restore),
        etcd: millis(etcd_restore),
        unit: "ms",
    });
    Ok(())
}

fn print(rows: &[Row], sizes: &Sizes) {
    let etcd_version = Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| v.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd (version unknown)".into());
    println!();
    println!(
        "store benchmark: {} round(s); orch-control vs {etcd_version}; loopback, mutual TLS on client and peer ports, temporary data dirs, heartbeat {} ms, election timeout {} ms",
        sizes.rounds,
        clusters::HEARTBEAT_MS,
        clusters::ELECTION_MS
    );
    println!(
        "{:<84} {:>12} {:>12} {:>8}",
        "measure", "orch", "etcd", "orch/etcd"
    );
    for row in rows {
        let ratio = if row.etcd > 0.0 {
            format!("{:.2}x", row.orch / row.etcd)
        } else {
            "-".into()
        };
        println!(
            "{:<84} {:>12} {:>12} {:>8}",
            format!("{} ({})", row.what, row.unit),
            format!("{:.2}", row.orch),
            format!("{:.2}", row.etcd),
            ratio
        );
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let sizes = Sizes::parse()?;
    let mut rows = Vec::new();
    for replicas in sizes.replicas.clone() {
        eprintln!("bench store: {replicas} replica(s)...");
        replicated(replicas, &sizes, &mut rows).await?;
    }
    if sizes.holding {
        eprintln!("bench store: {} objects of 1 KiB...", sizes.objects);
        holding(&sizes, &mut rows).await?;
    }
    print(&rows, &sizes);
    Ok(())
}
