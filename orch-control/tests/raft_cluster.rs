//! Replication for real: three replicas, each with its own redb files and a
//! tonic gRPC server on a loopback port, in one test process. Batched writes
//! from many clients, convergence, leader loss, and a new member caught up
//! by snapshot. (Process-level faults - kill -9, SIGSTOP - come with the
//! orch-control binary's harness.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config};
use orch_control::store::identity::{ClusterId, Identity};
use orch_control::store::raft::NodeId;
use orch_control::store::raft::node::{NodeOptions, RaftNode, WriteError};
use orch_control::store::raft::recent_log::RECENT_ENTRIES;
use orch_control::store::raft::transport::TransportService;
use orch_control::store::types::{Command, MAX_VALUE_BYTES, Op, Outcome, Request, RequestId, Txn};
use tokio::task::JoinHandle;

const CLUSTER: ClusterId = ClusterId(0x0c1);

struct Replica {
    node: Arc<RaftNode>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Replica {
    async fn start(id: NodeId, dir: &std::path::Path) -> Self {
        let config = Config {
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            // Snapshot often, so the snapshot path is exercised.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(200),
            max_in_snapshot_log_to_keep: 0,
            ..Config::default()
        };
        let identity = Identity {
            cluster: CLUSTER,
            node: id,
        };
        // One CA and peer certificate for the test's replicas: the
        // replication port is mutual TLS, in process as between processes.
        let pki = orch_control::pki::Pki::new(dir);
        if !pki.has_ca() {
            pki.create_ca().expect("CA");
        }
        pki.ensure_peer_certificate(&["127.0.0.1".into()])
            .expect("peer certificate");
        let node = RaftNode::open(
            identity,
            &dir.join(format!("node-{id}")),
            config,
            NodeOptions {
                write_timeout: Duration::from_secs(3),
                compaction_retention: 0,
            },
            pki.peer_tls().expect("peer TLS"),
        )
        .await
        .expect("open replica");
        let server_tls = pki.peer_server_tls().expect("server TLS");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let service = TransportService::server(node.raft.clone(), CLUSTER);
        let server = tokio::spawn(async move {
            let incoming = orch_control::store::raft::transport::incoming(listener);
            let _ = tonic::transport::Server::builder()
                .tls_config(server_tls)
                .expect("TLS")
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        Self {
            node: Arc::new(node),
            addr,
            server,
        }
    }

    fn member(&self) -> BasicNode {
        BasicNode {
            addr: self.addr.to_string(),
        }
    }

    /// Adds `newcomer` as a learner through this (leading) replica, without
    /// waiting for it to catch up: `converged` waits, with a deadline, and
    /// openraft's own wait has none.
    async fn add_learner(&self, newcomer: &Replica) {
        self.node
            .raft
            .add_learner(newcomer.node.id, newcomer.member(), false)
            .await
            .expect("add learner");
    }

    async fn stop(self) {
        self.server.abort();
        let _ = self.node.raft.shutdown().await;
    }
}

fn put(id: u128, key: String, value: String) -> Request {
    Request {
        id: RequestId(id),
        command: Command::Txn(Txn {
            success: vec![Op::Put {
                key: key.into_bytes(),
                value: value.into_bytes(),
                lease: None,
            }],
            ..Txn::default()
        }),
    }
}

/// A replica, or its node alone (what a spawned client task can own).
trait HasNode {
    fn node(&self) -> &RaftNode;
}

impl HasNode for &Replica {
    fn node(&self) -> &RaftNode {
        &self.node
    }
}

impl HasNode for Arc<RaftNode> {
    fn node(&self) -> &RaftNode {
        self
    }
}

/// The one of `replicas` that leads, once one does.
async fn leader_of<R: HasNode>(replicas: &[R]) -> &R {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for replica in replicas {
            if let Some(leader) = replica.node().raft.current_leader().await
                && let Some(leading) = replicas.iter().find(|r| r.node().id == leader)
            {
                return leading;
            }
        }
        assert!(Instant::now() < deadline, "no leader elected within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes through whichever replica leads, retrying (same id) across an
/// election, as a client would.
async fn write(
    replicas: &[impl HasNode],
    request: Request,
) -> orch_control::store::types::Response {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match leader_of(replicas)
            .await
            .node()
            .write(request.clone())
            .await
        {
            Ok(response) => return response,
            Err(
                WriteError::NotLeader { .. } | WriteError::NoQuorum(_) | WriteError::Stopped(_),
            ) => {}
            Err(other) => panic!("write failed: {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "write not acknowledged within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A replica's revision and its keys with value and mod revision.
type Contents = (u64, BTreeMap<Vec<u8>, (Vec<u8>, u64)>);

fn contents(replica: &Replica) -> Contents {
    let store = replica.node.store();
    let kvs = store.range(b"", None, 0).expect("range").kvs;
    (
        store.revision().expect("revision"),
        kvs.into_iter()
            .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
            .collect(),
    )
}

async fn converged(replicas: &[&Replica]) -> Contents {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let states: Vec<_> = replicas.iter().map(|r| contents(r)).collect();
        if states.windows(2).all(|w| w[0] == w[1]) {
            return states.into_iter().next().expect("at least one replica");
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replicas 1, 2 and 3 in `dir`, initialized as one cluster.
async fn three_replicas(dir: &std::path::Path) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for id in 1..=3 {
        replicas.push(Replica::start(id, dir).await);
    }
    let members: BTreeMap<NodeId, BasicNode> =
        replicas.iter().map(|r| (r.node.id, r.member())).collect();
    replicas[0]
        .node
        .raft
        .initialize(members)
        .await
        .expect("initialize");
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_replicate_survive_leader_loss_and_catch_up_by_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = three_replicas(dir.path()).await;

    // 64 concurrent clients, 8 writes each: batched, all acknowledged, no
    // revision given twice.
    let all: Vec<&Replica> = replicas.iter().collect();
    let leading = leader_of(&all).await.node.clone();
    let leader = leading.id;
    let mut clients = Vec::new();
    for client in 0..64u128 {
        let node = leading.clone();
        clients.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for i in 0..8u128 {
                let request = put(
                    client * 1000 + i,
                    format!("/registry/c{client}/k{i}"),
                    format!("v{i}"),
                );
                let response = node.write(request).await.expect("acknowledged");
                assert!(matches!(
                    response.outcome,
                    Outcome::Txn {
                        succeeded: true,
                        ..
                    }
                ));
                revisions.push(response.revision);
            }
            revisions
        }));
    }
    let mut revisions = BTreeSet::new();
    for client in clients {
        for revision in client.await.expect("client task") {
            assert!(
                revisions.insert(revision),
                "revision {revision} acknowledged twice"
            );
        }
    }
    assert_eq!(revisions.len(), 512);
    let (revision, state) = converged(&all).await;
    assert_eq!(revision, 512);
    assert_eq!(state.len(), 512);

    // Lose the leader: the others elect a new one and keep taking writes.
    let index = replicas
        .iter()
        .position(|r| r.node.id == leader)
        .expect("leader index");
    let old = replicas.remove(index);
    old.stop().await;
    let survivors: Vec<&Replica> = replicas.iter().collect();
    let started = Instant::now();
    let response = write(
        &survivors,
        put(9_000_001, "/registry/after/failover".into(), "ok".into()),
    )
    .await;
    assert_eq!(response.revision, 513);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failover took {:?}",
        started.elapsed()
    );
    for i in 0..300u128 {
        write(
            &survivors,
            put(9_100_000 + i, format!("/registry/more/{i}"), "x".into()),
        )
        .await;
    }
    let (revision, _) = converged(&survivors).await;
    assert_eq!(revision, 813);

    // A new member joins after the log was compacted into a snapshot: it is
    // caught up by snapshot transfer over gRPC, then replicates normally.
    let newcomer = Replica::start(4, dir.path()).await;
    let leading = leader_of(&survivors).await;
    leading
        .node
        .raft
        .trigger()
        .snapshot()
        .await
        .expect("trigger snapshot");
    leading
        .node
        .raft
        .trigger()
        .purge_log(800)
        .await
        .expect("purge");
    leading.add_learner(&newcomer).await;
    replicas.push(newcomer);
    let everyone: Vec<&Replica> = replicas.iter().collect();
    write(
        &everyone[..2],
        put(9_200_000, "/registry/last".into(), "1".into()),
    )
    .await;
    let (revision, state) = converged(&everyone).await;
    assert_eq!(revision, 814);
    assert_eq!(state.len(), 512 + 1 + 300 + 1);
    assert!(
        dir.path().join("node-4/state/snapshot.snap").exists(),
        "the newcomer was not caught up by a snapshot"
    );

    for replica in replicas {
        replica.stop().await;
    }
}

/// A learner added once the log is longer than the leader keeps in memory
/// is sent the log itself (no snapshot yet): its start from redb, its end
/// from memory, in one run without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_member_is_sent_the_log_from_disk_and_memory() {
    a_late_member_catches_up_from_the_log(2 * RECENT_ENTRIES as u128 + 20, |i| format!("v{i}"))
        .await;
}

/// Writes `writes` entries one at a time (`value(i)` each; fewer than the
/// 200 that trigger a snapshot), then adds replica 4 as a learner: it must
/// be caught up from the log alone, to the same state.
async fn a_late_member_catches_up_from_the_log(writes: u128, value: impl Fn(u128) -> String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = three_replicas(dir.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    for i in 0..writes {
        write(&all, put(i, format!("/registry/log/{i}"), value(i))).await;
    }
    let newcomer = Replica::start(4, dir.path()).await;
    leader_of(&all).await.add_learner(&newcomer).await;
    replicas.push(newcomer);
    let everyone: Vec<&Replica> = replicas.iter().collect();
    let (revision, state) = converged(&everyone).await;
    assert_eq!(u128::from(revision), writes);
    assert_eq!(state.len() as u128, writes);
    assert!(
        !dir.path().join("node-4/state/snapshot.snap").exists(),
        "the newcomer was caught up by a snapshot, not the log"
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// Large values from many clients at once: the batcher caps an entry's
/// size, so no entry outgrows a replication message (one ~96 MiB entry
/// could never be sent, and every write behind it failed for want of a
/// quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn values_at_the_limit_from_many_clients_replicate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let replicas = three_replicas(dir.path()).await;
    let all: Vec<&Replica> = replicas.iter().collect();
    let nodes: Arc<Vec<Arc<RaftNode>>> =
        Arc::new(replicas.iter().map(|r| r.node.clone()).collect());
    let value = "x".repeat(MAX_VALUE_BYTES);
    let mut clients = Vec::new();
    for client in 0..64u128 {
        let (nodes, value) = (nodes.clone(), value.clone());
        clients.push(tokio::spawn(async move {
            // Retried across an election (replicas busy with 96 MiB may
            // miss a heartbeat); a write that can never commit still
            // fails after 15 s.
            write(
                &nodes,
                put(client, format!("/registry/big/{client}"), value),
            )
            .await
        }));
    }
    for client in clients {
        client.await.expect("client acknowledged");
    }
    let (revision, state) = converged(&all).await;
    assert_eq!(revision, 64);
    assert!(
        state
            .values()
            .all(|(stored, _)| stored.len() == MAX_VALUE_BYTES)
    );
    for replica in replicas {
        replica.stop().await;
    }
}

/// A member that joins after ~70 MiB of log is sent it in several
/// messages (openraft asks for up to 300 entries at a time; they no longer
/// all go in one).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_member_is_sent_a_large_log_in_parts() {
    let value = "y".repeat(MAX_VALUE_BYTES);
    a_late_member_catches_up_from_the_log(48, |_| value.clone()).await;
}
