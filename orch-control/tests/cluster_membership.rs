//! Cluster sizes and membership with real `orch-control` processes: one
//! replica (restart, compaction window), five replicas losing two members
//! and shrinking by removal, and cluster identity (a data directory never
//! joins or takes traffic from another cluster).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Replica, put};
use orch_control::store::raft::service::WatchError;

const ORCHCTL: &str = env!("CARGO_BIN_EXE_orchctl");

fn orchctl(args: &[&str]) -> String {
    let output = Command::new(ORCHCTL).args(args).output().expect("orchctl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "orchctl {args:?}: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_replica_restarts_with_its_writes_and_keeps_a_compaction_window() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init", "--compaction-retention", "50"]);
    let addrs = vec![replica.addr.clone()];
    // The API server creates the system namespaces at start: let that
    // finish, so this test's writes get consecutive revisions.
    common::system_namespaces_created(&replica.addr).await;
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    let mut last = 0;
    for i in 0..200u128 {
        last = client
            .write(&put(1 + i, &format!("/registry/single/{i:03}")))
            .await
            .expect("write")
            .revision;
    }

    // The leader compacts to `current - 50` once history outgrows the
    // window by a tenth of it (it may have compacted part-way during the
    // writes): a watch from the start must relist, and compaction never
    // reaches into the window.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut stream = common::watch(&replica.addr, b"/registry/single/", 2).await;
        match common::next_batch(&mut stream).await {
            Err(WatchError::Compacted { compacted, .. }) => {
                assert!(
                    compacted <= last - 50,
                    "compacted into the window: {compacted}"
                );
                if compacted >= last - 55 {
                    break;
                }
            }
            Ok(_) => {}
            Err(other) => panic!("watch failed: {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "history was not compacted to within 55 revisions of {last} in 15 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and the window itself replays whole, in order.
    let mut stream = common::watch(&replica.addr, b"/registry/single/", last - 49).await;
    let mut revisions = Vec::new();
    while revisions.len() < 50 {
        let batch = common::next_batch(&mut stream).await.expect("events");
        revisions.extend(batch.iter().map(|event| event.kv.mod_revision));
    }
    assert_eq!(revisions, (last - 49..=last).collect::<Vec<_>>());

    // kill -9 and restart without flags: every acknowledged write is back.
    let before = common::local_state(&replica.addr).await.expect("state");
    let written = before
        .1
        .keys()
        .filter(|key| key.starts_with(b"/registry/single/"))
        .count();
    assert_eq!(written, 200);
    replica.kill();
    replica.start(&["--compaction-retention", "50"]);
    let after = common::converged(&addrs).await;
    assert_eq!(after, before);
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    let response = client
        .write(&put(9_999, "/registry/single/after"))
        .await
        .expect("write after restart");
    assert_eq!(response.revision, last + 1, "a revision was reused or lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_replicas_outlive_two_failures_and_shrink_by_member_removal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut replicas, addrs) = common::cluster(dir.path(), 5).await;
    let servers = addrs.join(",");
    // The replication ports take the admin client certificate.
    let config = replicas[0].dir.join("pki").join("admin.conf");
    let config = config.to_string_lossy().into_owned();
    let listing = orchctl(&["member", "list", "--server", &servers, "--config", &config]);
    assert_eq!(
        listing.lines().filter(|l| l.contains("voter")).count(),
        5,
        "{listing}"
    );
    let mut client = common::store_client(&addrs, Duration::from_secs(20));
    let mut acknowledged = Vec::new();
    for i in 0..20u128 {
        let key = format!("/registry/five/{i}");
        client.write(&put(10 + i, &key)).await.expect("write");
        acknowledged.push(key);
    }

    // Kill -9 the leader and one follower: three of five still commit.
    let leader = common::leader_id(&addrs).await;
    let follower = replicas
        .iter()
        .map(|r| r.id)
        .find(|id| *id != leader)
        .expect("a follower");
    let dead = [leader, follower];
    for replica in replicas.iter_mut().filter(|r| dead.contains(&r.id)) {
        replica.kill();
    }
    let started = Instant::now();
    for i in 0..20u128 {
        let key = format!("/registry/five/after-failures/{i}");
        client.write(&put(100 + i, &key)).await.expect("write");
        acknowledged.push(key);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "writes resumed only after {:?}",
        started.elapsed()
    );

    // Cluster status names the two dead replicas, and fails.
    let status = Command::new(ORCHCTL)
        .args([
            "cluster", "status", "--server", &servers, "--config", &config,
        ])
        .output()
        .expect("orchctl cluster status");
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(!status.status.success(), "{table}");
    assert_eq!(table.matches("unreachable").count(), 2, "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" leader ")).count(),
        1,
        "{table}"
    );

    // Remove the dead members: the cluster becomes three replicas, whose
    // majority is two, so it now survives losing one more.
    let live: Vec<String> = replicas
        .iter()
        .filter(|r| !dead.contains(&r.id))
        .map(|r| r.addr.clone())
        .collect();
    let live_servers = live.join(",");
    for id in dead {
        let removed = orchctl(&[
            "member",
            "remove",
            &id.to_string(),
            "--server",
            &live_servers,
            "--config",
            &config,
        ]);
        assert!(
            removed.contains(&format!("removed member {id}")),
            "{removed}"
        );
    }
    let listing = orchctl(&[
        "member",
        "list",
        "--server",
        &live_servers,
        "--config",
        &config,
    ]);
    assert_eq!(
        listing.lines().filter(|l| l.contains("voter")).count(),
        3,
        "{listing}"
    );
    let status = orchctl(&[
        "cluster",
        "status",
        "--server",
        &live_servers,
        "--config",
        &config,
    ]);
    assert_eq!(status.matches(" ok").count(), 3, "{status}");
    for id in dead {
        assert!(
            !listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&id.to_string())),
            "{listing}"
        );
    }
    let third = replicas
        .iter()
        .map(|r| r.id)
        .find(|id| !dead.contains(id))
        .expect("a live replica");
    for replica in replicas.iter_mut().filter(|r| r.id == third) {
        replica.kill();
    }
    let survivors: Vec<String> = replicas
        .iter()
        .filter(|r| r.process.is_some())
        .map(|r| r.addr.clone())
        .collect();
    assert_eq!(survivors.len(), 2);
    let mut client = common::store_client(&survivors, Duration::from_secs(20));
    for i in 0..20u128 {
        let key = format!("/registry/five/after-removal/{i}");
        client
            .write(&put(200 + i, &key))
            .await
            .expect("two of three commit");
        acknowledged.push(key);
    }
    let (_, keys) = common::converged(&survivors).await;
    for key in &acknowledged {
        assert!(keys.contains_key(key.as_bytes()), "{key} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_dirs_never_cross_clusters() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Cluster A: two replicas. Cluster B: one, with a write of its own.
    let mut a1 = Replica::new(1, dir.path().join("a-1"));
    a1.start(&["--init"]);
    let mut a2 = Replica::new(2, dir.path().join("a-2"));
    a2.copy_ca_from(&a1);
    a2.start(&["--join", &a1.addr]);
    let a_addrs = vec![a1.addr.clone(), a2.addr.clone()];
    // Let each API server finish creating its system namespaces first, so
    // the states compared below are final.
    common::system_namespaces_created(&a1.addr).await;
    let mut client = common::store_client(&a_addrs, Duration::from_secs(20));
    client
        .write(&put(1, "/registry/a/one"))
        .await
        .expect("A write");
    let a_state = common::converged(&a_addrs).await;
    // B is made with A's CA (an operator reusing one CA for two clusters):
    // TLS lets them talk, so the cluster ids must keep them apart.
    let mut b1 = Replica::new(1, dir.path().join("b-1"));
    b1.copy_ca_from(&a1);
    b1.start(&["--init"]);
    common::system_namespaces_created(&b1.addr).await;
    let mut client = common::store_client(&[b1.addr.clone()], Duration::from_secs(20));
    client
        .write(&put(2, "/registry/b/one"))
        .await
        .expect("B write");
    let b_state = common::local_state(&b1.addr).await.expect("B state");
    let a_id = common::status(&a1.addr).await.expect("A").cluster_id;
    let b_id = common::status(&b1.addr).await.expect("B").cluster_id;
    assert_ne!(a_id, b_id);
    b1.kill();
    let b_dir = b1.dir.to_string_lossy().into_owned();
    let b_files = common::dir_contents(&b1.dir);

    // B's data directory as another node id, or joining A: refused, and
    // nothing in it changes.
    let error = common::refused(&[
        "--data-dir",
        &b_dir,
        "--node-id",
        "7",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(
        error.contains("belongs to node 1, not --node-id 7"),
        "{error}"
    );
    let error = common::refused(&[
        "--data-dir",
        &b_dir,
        "--node-id",
        "1",
        "--listen",
        "127.0.0.1:0",
        "--join",
        &a1.addr,
    ]);
    assert!(
        error.contains(&format!(
            "belongs to cluster {b_id}, but the cluster at {} is {a_id}",
            a1.addr
        )),
        "{error}"
    );
    assert_eq!(common::dir_contents(&b1.dir), b_files, "B's data changed");

    // A new replica that means to join B, pointed at A: refused, nothing
    // written.
    let fresh = Replica::new(3, dir.path().join("fresh"));
    fresh.copy_ca_from(&a1);
    let fresh_files = common::dir_contents(&fresh.dir);
    let fresh = fresh.dir.clone();
    let error = common::refused(&[
        "--data-dir",
        &fresh.to_string_lossy(),
        "--node-id",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--join",
        &a1.addr,
        "--cluster-id",
        &b_id,
    ]);
    assert!(
        error.contains(&format!(
            "the replica at {} belongs to cluster {a_id}; refusing to join it",
            a1.addr
        )),
        "{error}"
    );
    assert_eq!(common::dir_contents(&fresh), fresh_files, "files written");

    // A replica holding another CA cannot even ask A which cluster it is:
    // refused at once (no retrying for a minute), nothing written.
    let stranger = dir.path().join("stranger");
    orch_control::pki::Pki::new(&stranger)
        .create_ca()
        .expect("a foreign CA");
    let stranger_files = common::dir_contents(&stranger);
    let started = Instant::now();
    let error = common::refused(&[
        "--data-dir",
        &stranger.to_string_lossy(),
        "--node-id",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--join",
        &a1.addr,
    ]);
    assert!(
        error.contains(&format!("refusing to join {}", a1.addr))
            && error.contains("do not share a cluster CA"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{error}");
    assert_eq!(
        common::dir_contents(&stranger),
        stranger_files,
        "files written"
    );

    // B's replica started where A's second replica was: A keeps sending it
    // Raft traffic, B refuses every RPC, and neither cluster's data moves.
    a2.kill();
    b1.addr = a2.addr.clone();
    b1.start(&[]);
    let log = b1.dir.with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&format!(
            "cluster id mismatch: this replica belongs to cluster {b_id}, the request came from cluster {a_id}"
        )) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B never refused A's traffic: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(common::local_state(&b1.addr).await, Some(b_state));
    assert_eq!(common::local_state(&a1.addr).await, Some(a_state));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_data_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let mut client = common::store_client(&[replica.addr.clone()], Duration::from_secs(20));
    for i in 0..20u128 {
        client
            .write(&put(1 + i, &format!("/registry/d/{i}")))
            .await
            .expect("write");
    }
    replica.kill();
    type Damage = fn(&std::path::Path);
    let cases: [(&str, Damage); 3] = [
        ("log.redb", |file| truncate_to_half(file)),
        ("state/state.redb", |file| truncate_to_half(file)),
        ("identity", |file| {
            std::fs::write(file, "cluster-id=not-hex\nnode-id=1\n").expect("write")
        }),
    ];
    for (name, damage) in cases {
        let copy = dir
            .path()
            .join(format!("damaged-{}", name.replace('/', "-")));
        copy_dir(&replica.dir, &copy);
        damage(&copy.join(name));
        let before = common::dir_contents(&copy);
        let error = common::refused(&[
            "--data-dir",
            &copy.to_string_lossy(),
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(
            error.contains(&copy.join(name).to_string_lossy().into_owned()),
            "{name}: the error must name the file: {error}"
        );
        assert_eq!(common::dir_contents(&copy), before, "{name}: files changed");
    }
}

fn truncate_to_half(file: &std::path::Path) {
    let length = std::fs::metadata(file).expect("stat").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|f| f.set_len(length / 2))
        .expect("truncate");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
