//! Three real `orch-control` processes on loopback: bootstrap and join,
//! concurrent clients, kill -9 of the leader mid-stream, no acknowledged
//! write lost, no revision reused, a restarted replica catching up; a
//! stopped follower doesn't stop writes; losing the majority fails writes
//! with "no quorum" in bounded time; a full restart keeps identical state.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Replica, put};
use orch_control::store::raft::client::ClientError;
use orch_control::store::types::{Outcome, Request, RequestId};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_killed_mid_stream_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut replicas, addrs) = common::cluster(dir.path(), 3).await;
    let mut probe = common::store_client(&addrs, Duration::from_secs(30));

    // 8 clients write continuously; the leader is killed while they do.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8u128 {
        let addrs = addrs.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut client = common::store_client(&addrs, Duration::from_secs(20));
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
    let mut after = common::store_client(&survivors, Duration::from_secs(20));
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
    let (_, keys) = common::converged(&addrs).await;
    for (key, revision) in &acked {
        assert_eq!(
            keys.get(key.as_bytes()),
            Some(revision),
            "acknowledged write {key} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_follower_quorum_loss_and_full_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut replicas, addrs) = common::cluster(dir.path(), 3).await;
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    client.write(&put(10, "/registry/a")).await.expect("write");
    let leader = client.last_answered().to_string();

    // SIGSTOP one follower: the other two still make a quorum.
    let follower = replicas
        .iter()
        .position(|r| r.addr != leader)
        .expect("a follower");
    replicas[follower].signal("STOP");
    let started = Instant::now();
    for i in 0..50u128 {
        client
            .write(&put(100 + i, &format!("/registry/while-stopped/{i}")))
            .await
            .expect("write with a stopped follower");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "writes stalled: {:?}",
        started.elapsed()
    );
    replicas[follower].signal("CONT");

    // Lose the majority: writes fail with "no quorum", within a bound.
    let mut lost: Vec<&mut Replica> = replicas.iter_mut().filter(|r| r.addr != leader).collect();
    for replica in lost.iter_mut() {
        replica.kill();
    }
    let mut lonely =
        // 9 s: each attempt may take 3 s, longer than the replica's 2 s write
        // timeout, so its "no quorum" answer arrives.
        common::store_client(std::slice::from_ref(&leader), Duration::from_secs(9));
    let started = Instant::now();
    match lonely.write(&put(999, "/registry/no-quorum")).await {
        Err(ClientError::Unavailable { last, .. }) => {
            assert!(last.contains("no quorum"), "{last}")
        }
        other => panic!("a write without quorum must fail, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failing took {:?}",
        started.elapsed()
    );

    // Restart everything: same state everywhere, nothing acknowledged lost.
    for replica in replicas.iter_mut() {
        replica.kill();
    }
    for replica in replicas.iter_mut() {
        replica.start(&[]);
    }
    let (_, keys) = common::converged(&addrs).await;
    assert!(keys.contains_key(&b"/registry/a"[..]));
    for i in 0..50 {
        assert!(
            keys.contains_key(format!("/registry/while-stopped/{i}").as_bytes()),
            "write {i} lost"
        );
    }
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    client
        .write(&put(5000, "/registry/after-restart"))
        .await
        .expect("write after full restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_replays_then_follows_live_in_order() {
    use orch_control::store::raft::service::{WatchBatch, WatchError, WatchQuery};
    use orch_control::store::raft::transport::proto::RaftMessage;
    use orch_control::store::raft::transport::proto::store_client::StoreClient as GrpcStore;
    use orch_control::store::types::Command as StoreCommand;

    let dir = tempfile::tempdir().expect("temp dir");
    let (_replicas, addrs) = common::cluster(dir.path(), 3).await;
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    let mut revisions_written = Vec::new();
    for i in 0..50u128 {
        let response = client
            .write(&put(10_000 + i, &format!("/registry/w/{i:03}")))
            .await
            .expect("write");
        revisions_written.push(response.revision);
    }
    // Watch on every replica (followers included) from the first write.
    let mut streams = Vec::new();
    for addr in &addrs {
        let mut grpc = GrpcStore::connect(common::peer_tls(addr).endpoint(addr).expect("endpoint"))
            .await
            .expect("connect");
        let query = WatchQuery {
            prefix: b"/registry/w/".to_vec(),
            start: revisions_written[0],
        };
        let data = postcard::to_stdvec(&query).expect("encode");
        streams.push(
            grpc.watch(RaftMessage { data })
                .await
                .expect("watch")
                .into_inner(),
        );
    }
    for i in 50..100u128 {
        let response = client
            .write(&put(10_000 + i, &format!("/registry/w/{i:03}")))
            .await
            .expect("write");
        revisions_written.push(response.revision);
        // Writes outside the prefix are not delivered.
        client
            .write(&put(20_000 + i, &format!("/registry/other/{i}")))
            .await
            .expect("write");
    }
    for (addr, stream) in addrs.iter().zip(streams.iter_mut()) {
        let mut seen = Vec::new();
        while seen.len() < 100 {
            let message = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .unwrap_or_else(|_| panic!("{addr}: watch stalled after {} events", seen.len()))
                .expect("stream")
                .expect("stream open");
            let batch: WatchBatch = postcard::from_bytes(&message.data).expect("decode");
            for event in batch.expect("events") {
                seen.push((
                    String::from_utf8_lossy(&event.kv.key).into_owned(),
                    event.kv.mod_revision,
                ));
            }
        }
        let expected: Vec<(String, u64)> = (0..100)
            .map(|i| format!("/registry/w/{i:03}"))
            .zip(revisions_written.iter().copied())
            .collect();
        assert_eq!(
            seen, expected,
            "{addr}: watch out of order, gapped or duplicated"
        );
    }

    // After compaction, a watch from before it is refused: relist.
    let compact = Request {
        id: RequestId(77),
        command: StoreCommand::Compact {
            revision: revisions_written[40],
        },
    };
    assert_eq!(
        client.write(&compact).await.expect("compact").outcome,
        Outcome::Compacted
    );
    match first_watch_batch(&addrs[0], b"/registry/w/", revisions_written[10]).await {
        Err(WatchError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(
                (requested, compacted),
                (revisions_written[10], revisions_written[40])
            );
        }
        other => panic!("expected a compacted error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_live_while_kept_alive_and_their_keys_go_when_they_expire() {
    use orch_control::store::types::{Command as StoreCommand, Op, Txn};

    let dir = tempfile::tempdir().expect("temp dir");
    let (_replicas, addrs) = common::cluster(dir.path(), 3).await;
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    let grant = Request {
        id: RequestId(500),
        command: StoreCommand::LeaseGrant {
            id: 7,
            ttl_seconds: 2,
        },
    };
    assert_eq!(
        client.write(&grant).await.expect("grant").outcome,
        Outcome::LeaseGranted
    );
    let heartbeat = Request {
        id: RequestId(501),
        command: StoreCommand::Txn(Txn {
            success: vec![Op::Put {
                key: b"/registry/leases/node-a".to_vec(),
                value: b"alive".to_vec(),
                lease: Some(7),
            }],
            ..Txn::default()
        }),
    };
    client.write(&heartbeat).await.expect("put with lease");

    // Kept alive well past its TTL: the key stays.
    let kept_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < kept_until {
        assert_eq!(client.keep_alive(7).await.expect("keep alive"), 2);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let present = |state: Option<(u64, std::collections::BTreeMap<Vec<u8>, u64>)>| {
        state.is_some_and(|(_, keys)| keys.contains_key(&b"/registry/leases/node-a"[..]))
    };
    assert!(
        present(common::local_state(&addrs[0]).await),
        "key deleted while kept alive"
    );

    // Left alone, the lease expires and every replica deletes the key.
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(10);
    loop {
        let mut gone = 0;
        for addr in &addrs {
            if !present(common::local_state(addr).await) {
                gone += 1;
            }
        }
        if gone == addrs.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired lease's key still present after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "lease expired early: {:?} after the last keep-alive",
        stopped.elapsed()
    );
    match client.keep_alive(7).await {
        Err(orch_control::store::raft::client::ClientError::Refused(error)) => {
            assert!(error.to_string().contains("lease 7 not found"), "{error}")
        }
        other => panic!("keep-alive of a revoked lease must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_saved_by_orchctl_restores_into_an_equal_new_cluster() {
    use orch_control::store::RESTORE_REVISION_BUMP;
    use orch_control::store::raft::service::WatchError;
    let dir = tempfile::tempdir().expect("temp dir");
    let (replicas, addrs) = common::cluster(dir.path(), 3).await;
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    for i in 0..100u128 {
        client
            .write(&put(
                30_000 + i,
                &format!("/registry/configmaps/default/cm-{i}"),
            ))
            .await
            .expect("write");
    }
    let source = common::converged(&addrs).await;

    let file = dir.path().join("backup.snap");
    let save = std::process::Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args([
            "snapshot",
            "save",
            &file.to_string_lossy(),
            "--server",
            &addrs.join(","),
            "--config",
            &replicas[0]
                .dir
                .join("pki")
                .join("admin.conf")
                .to_string_lossy(),
        ])
        .output()
        .expect("run orchctl");
    assert!(
        save.status.success(),
        "{}",
        String::from_utf8_lossy(&save.stderr)
    );
    assert!(String::from_utf8_lossy(&save.stdout).contains("snapshot saved to"));

    let restore = |file: &std::path::Path, data_dir: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_orch-control"))
            .args([
                "restore",
                &file.to_string_lossy(),
                "--data-dir",
                &data_dir.to_string_lossy(),
            ])
            .output()
            .expect("run orch-control restore")
    };
    // A damaged snapshot is refused and leaves nothing behind.
    let mut bytes = std::fs::read(&file).expect("read snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let damaged = dir.path().join("damaged.snap");
    std::fs::write(&damaged, &bytes).expect("write damaged copy");
    let refused_dir = dir.path().join("refused");
    let refused = restore(&damaged, &refused_dir);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("damaged.snap"), "{stderr}");
    assert!(
        !refused_dir.exists(),
        "a failed restore left {}",
        refused_dir.display()
    );

    // orchctl restores too (the same code path as orch-control restore).
    let new_dir = dir.path().join("restored");
    let restored = std::process::Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args(["snapshot", "restore", &file.to_string_lossy(), "--data-dir"])
        .arg(&new_dir)
        .output()
        .expect("run orchctl snapshot restore");
    assert!(
        String::from_utf8_lossy(&restored.stdout).contains(&format!(
            "revisions go on from {}",
            source.0 + RESTORE_REVISION_BUMP
        )),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    // Restoring over an existing replica is refused.
    let again = restore(&file, &new_dir);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    let mut replica = Replica::new(1, new_dir);
    replica.start(&["--init"]);
    // The same keys at the same revisions; the store's revision moved on
    // (see below).
    let restored_state = (source.0 + RESTORE_REVISION_BUMP, source.1.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(state) = common::local_state(&replica.addr).await
            && state == restored_state
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restored cluster does not hold the source's data"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it is a working cluster.
    let mut client =
        common::store_client(std::slice::from_ref(&replica.addr), Duration::from_secs(20));
    let response = client
        .write(&put(40_000, "/registry/after-restore"))
        .await
        .expect("write");
    assert_eq!(response.revision, source.0 + RESTORE_REVISION_BUMP + 1);
    // A watcher from before the backup (whose revisions the old cluster
    // may have reused after it) is told to relist.
    let batch = first_watch_batch(&replica.addr, b"/registry/", source.0 + 1).await;
    assert!(
        matches!(batch, Err(WatchError::Compacted { .. })),
        "a watch from before the restore got {batch:?}"
    );
}

/// The first batch a store watch of `prefix` from `start` gets at `addr`.
async fn first_watch_batch(
    addr: &str,
    prefix: &[u8],
    start: u64,
) -> orch_control::store::raft::service::WatchBatch {
    use orch_control::store::raft::service::WatchQuery;
    use orch_control::store::raft::transport::proto::RaftMessage;
    use orch_control::store::raft::transport::proto::store_client::StoreClient as GrpcStore;
    let endpoint = common::peer_tls(addr).endpoint(addr).expect("endpoint");
    let mut grpc = GrpcStore::connect(endpoint).await.expect("connect");
    let query = WatchQuery {
        prefix: prefix.to_vec(),
        start,
    };
    let data = postcard::to_stdvec(&query).expect("encode");
    let mut stream = grpc
        .watch(RaftMessage { data })
        .await
        .expect("watch")
        .into_inner();
    let message = stream.message().await.expect("stream").expect("a message");
    postcard::from_bytes(&message.data).expect("decode")
}
