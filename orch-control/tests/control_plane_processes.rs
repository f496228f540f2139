//! Three real `orch-control` processes on loopback: bootstrap and join,
//! concurrent clients, kill -9 of the leader mid-stream, no acknowledged
//! write lost, no revision reused, and a restarted replica catching up.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_control::store::raft::client::StoreClient;
use orch_control::store::raft::service::RangeQuery;
use orch_control::store::types::{Command as StoreCommand, Op, Outcome, Request, RequestId, Txn};

const ORCH_CONTROL: &str = env!("CARGO_BIN_EXE_orch-control");

struct Replica {
    id: u64,
    addr: String,
    dir: std::path::PathBuf,
    process: Option<Child>,
}

impl Replica {
    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.with_extension("log")).expect("log file");
        let child = Command::new(ORCH_CONTROL)
            .args([
                "--data-dir",
                &self.dir.to_string_lossy(),
                "--node-id",
                &self.id.to_string(),
            ])
            .args([
                "--listen",
                &self.addr,
                "--heartbeat-ms",
                "50",
                "--election-timeout-ms",
                "300",
            ])
            .args(["--write-timeout-ms", "2000"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start orch-control");
        self.process = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn put(id: u128, key: &str) -> Request {
    Request {
        id: RequestId(id),
        command: StoreCommand::Txn(Txn {
            success: vec![Op::Put {
                key: key.as_bytes().to_vec(),
                value: id.to_le_bytes().to_vec(),
                lease: None,
            }],
            ..Txn::default()
        }),
    }
}

async fn local_state(addr: &str) -> Option<(u64, BTreeMap<Vec<u8>, u64>)> {
    let mut client = StoreClient::new(&[addr.to_string()], Duration::from_secs(2)).ok()?;
    let query = RangeQuery {
        prefix: b"/registry/".to_vec(),
        start: None,
        limit: 0,
        linearizable: false,
    };
    let page = client.range(&query).await.ok()?;
    Some((
        page.revision,
        page.kvs
            .into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas: Vec<Replica> = (1..=3)
        .map(|id| Replica {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            dir: dir.path().join(format!("replica-{id}")),
            process: None,
        })
        .collect();
    let seed = replicas[0].addr.clone();
    replicas[0].start(&["--init"]);
    replicas[1].start(&["--join", &seed]);
    replicas[2].start(&["--join", &seed]);
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();

    // Writes work once the cluster is up (joins are blocking on the leader).
    let mut probe = StoreClient::new(&addrs, Duration::from_secs(30)).expect("client");
    probe
        .write(&put(1, "/registry/probe"))
        .await
        .expect("first write");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = 0;
        for addr in &addrs {
            if local_state(addr)
                .await
                .is_some_and(|(_, keys)| keys.contains_key(&b"/registry/probe"[..]))
            {
                seen += 1;
            }
        }
        if seen == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not all join within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 8 clients write continuously; the leader is killed while they do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u128 {
        let addrs = addrs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut client = StoreClient::new(&addrs, Duration::from_secs(20)).expect("client");
            let mut acked = Vec::new();
            let mut i = 0u128;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = (w + 1) * 1_000_000 + i;
                let response = client
                    .write(&put(id, &format!("/registry/w{w}/{i}")))
                    .await
                    .expect("write acknowledged");
                assert!(matches!(
                    response.outcome,
                    Outcome::Txn {
                        succeeded: true,
                        ..
                    }
                ));
                acked.push((format!("/registry/w{w}/{i}"), response.revision));
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    probe
        .write(&put(2, "/registry/probe2"))
        .await
        .expect("probe write");
    let leader_addr = probe.last_answered().to_string();
    let leader = replicas
        .iter_mut()
        .find(|r| r.addr == leader_addr)
        .expect("leader is a replica");
    leader.kill();
    let killed_at = Instant::now();
    let survivors: Vec<String> = addrs
        .iter()
        .filter(|a| **a != leader_addr)
        .cloned()
        .collect();
    let mut after = StoreClient::new(&survivors, Duration::from_secs(20)).expect("client");
    after
        .write(&put(3, "/registry/after-kill"))
        .await
        .expect("write after failover");
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("writer task"));
    }
    assert!(
        acked.len() > 100,
        "only {} writes acknowledged",
        acked.len()
    );
    let revisions: BTreeSet<u64> = acked.iter().map(|(_, r)| *r).collect();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "a revision was acknowledged twice"
    );

    // Every acknowledged write is on every surviving replica, at the
    // revision it was acknowledged with (or later, never lost).
    let killed = replicas
        .iter_mut()
        .find(|r| r.addr == leader_addr)
        .expect("killed replica");
    killed.start(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let states = loop {
        let mut states = Vec::new();
        for addr in &addrs {
            states.push(local_state(addr).await);
        }
        if states.iter().all(Option::is_some) && states.windows(2).all(|w| w[0] == w[1]) {
            break states;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge after restart within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, keys) = states.into_iter().next().flatten().expect("state");
    for (key, revision) in &acked {
        assert_eq!(
            keys.get(key.as_bytes()),
            Some(revision),
            "acknowledged write {key} lost"
        );
    }
}
