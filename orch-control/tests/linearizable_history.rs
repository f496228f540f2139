//! Jepsen-style: clients read and write a few keys of a three-replica
//! cluster of real processes while the leader is killed (-9); the recorded
//! history must be linearizable (checked per key as a register).

mod common;

use std::time::{Duration, Instant};

use orch_control::store::raft::service::RangeQuery;
use orch_control::store::types::{Command, Op, Request, RequestId, Txn};
use orch_tests::linearizability::{Action, Operation, check};

const KEYS: u64 = 8;
const CLIENTS: u64 = 6;
const OPS_PER_CLIENT: u64 = 60;

fn key(k: u64) -> String {
    format!("/registry/lin/{k}/")
}

/// A small deterministic generator per client (no dependency needed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_under_leader_kill_is_linearizable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut replicas, addrs) = common::cluster(dir.path(), 3).await;
    let epoch = Instant::now();
    let nanos = move || epoch.elapsed().as_nanos() as u64;

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let addrs = addrs.clone();
        clients.push(tokio::spawn(async move {
            let mut client = common::store_client(&addrs, Duration::from_secs(8));
            let mut random = Lcg(c + 1);
            let mut history = Vec::new();
            for i in 0..OPS_PER_CLIENT {
                let k = random.next() % KEYS;
                let invoked = nanos();
                if random.next().is_multiple_of(2) {
                    let value = (c + 1) * 1_000_000 + i;
                    let request = Request {
                        id: RequestId(u128::from(value)),
                        command: Command::Txn(Txn {
                            success: vec![Op::Put {
                                key: key(k).into_bytes(),
                                value: value.to_le_bytes().to_vec(),
                                lease: None,
                            }],
                            ..Txn::default()
                        }),
                    };
                    let completed = client.write(&request).await.ok().map(|_| nanos());
                    history.push(Operation {
                        key: key(k),
                        action: Action::Write(value),
                        invoked,
                        completed,
                    });
                } else {
                    let query = RangeQuery {
                        prefix: key(k).into_bytes(),
                        start: None,
                        limit: 0,
                        linearizable: true,
                    };
                    // A failed read had no effect: leave it out.
                    if let Ok(page) = client.range(&query).await {
                        let value = page.kvs.first().map(|kv| {
                            let mut bytes = [0u8; 8];
                            bytes.copy_from_slice(&kv.value[..8]);
                            u64::from_le_bytes(bytes)
                        });
                        history.push(Operation {
                            key: key(k),
                            action: Action::Read(value),
                            invoked,
                            completed: Some(nanos()),
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            history
        }));
    }
    // Kill the leader while the clients run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut probe = common::store_client(&addrs, Duration::from_secs(10));
    probe
        .write(&common::put(42, "/registry/probe-leader"))
        .await
        .expect("probe write");
    let leader = probe.last_answered().to_string();
    replicas
        .iter_mut()
        .find(|r| r.addr == leader)
        .expect("leader")
        .kill();
    let killed_at = nanos();

    let mut history = Vec::new();
    for client in clients {
        history.extend(client.await.expect("client task"));
    }
    let after_kill = history
        .iter()
        .filter(|op| op.invoked > killed_at && op.completed.is_some())
        .count();
    assert!(
        after_kill > 20,
        "only {after_kill} operations completed after the kill"
    );
    let reads = history
        .iter()
        .filter(|op| matches!(op.action, Action::Read(Some(_))))
        .count();
    assert!(
        reads > 20,
        "only {reads} reads saw a value: the check would prove little"
    );
    if let Err(violation) = check(&history) {
        panic!("{violation}");
    }
}
