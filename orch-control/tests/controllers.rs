//! The controllers of real `orch-control` processes: the garbage collector
//! (background, foreground and orphan propagation, dangling and partial
//! ownership), the namespace controller, and the Lease election that lets
//! only one replica run them, moving on when that replica is killed.

mod common;

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError, ListOptions, WatchEventType};
use orch_core::manifest;
use orch_core::object::{Kind, Object};

fn config_map(name: &str, namespace: &str, owners: &[&Object]) -> Object {
    let mut object = manifest::parse_str(
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {namespace}}}\ndata: {{k: v}}\n"),
        "test",
    )
    .expect("manifest")
    .remove(0)
    .object;
    let references = owners
        .iter()
        .map(|owner| OwnerReference {
            api_version: owner.kind().api_version().into(),
            kind: owner.kind().name().into(),
            name: owner.metadata().name.clone().unwrap_or_default(),
            uid: owner.metadata().uid.clone().unwrap_or_default(),
            block_owner_deletion: Some(true),
            controller: None,
        })
        .collect::<Vec<_>>();
    if !references.is_empty() {
        object.metadata_mut().owner_references = Some(references);
    }
    object
}

async fn exists(client: &mut ApiClient, kind: Kind, namespace: &str, name: &str) -> bool {
    match client.get(kind, Some(namespace), name).await {
        Ok(_) => true,
        Err(ApiError::NotFound(_)) => false,
        Err(error) => panic!("get {kind} {name}: {error}"),
    }
}

async fn eventually_gone(client: &mut ApiClient, kind: Kind, namespace: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists(client, kind, namespace, name).await {
        assert!(
            Instant::now() < deadline,
            "{kind} {namespace}/{name} still there after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn delete_with(propagation: &str) -> DeleteRequest {
    DeleteRequest {
        propagation_policy: propagation.into(),
        ..DeleteRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collector_follows_owner_references() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, mut client) = common::replica_with_controllers(dir.path()).await;
    let create = async |client: &mut ApiClient, object: Object| {
        client.create(&object, false).await.expect("create")
    };

    // Background: the owner goes at once, its dependents (and theirs) after.
    let owner = create(&mut client, config_map("owner", "default", &[])).await;
    let child = create(&mut client, config_map("child", "default", &[&owner])).await;
    create(&mut client, config_map("grandchild", "default", &[&child])).await;
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "owner",
            &delete_with("Background"),
        )
        .await
        .expect("delete owner");
    eventually_gone(&mut client, Kind::ConfigMap, "default", "child").await;
    eventually_gone(&mut client, Kind::ConfigMap, "default", "grandchild").await;

    // Foreground: the owner waits, marked, until its dependent is gone.
    let owner = create(&mut client, config_map("fg-owner", "default", &[])).await;
    create(&mut client, config_map("fg-child", "default", &[&owner])).await;
    let marked = client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "fg-owner",
            &delete_with("Foreground"),
        )
        .await
        .expect("delete foreground");
    assert!(marked.metadata().deletion_timestamp.is_some());
    assert_eq!(
        marked.metadata().finalizers.as_deref(),
        Some(&["foregroundDeletion".to_string()][..])
    );
    let from = marked
        .metadata()
        .resource_version
        .clone()
        .unwrap_or_default();
    let mut watch = client
        .watch(
            Kind::ConfigMap,
            Some("default"),
            &ListOptions::default(),
            &from,
            false,
        )
        .await
        .expect("watch");
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("foreground deletion stalled")
            .expect("watch")
            .expect("watch open");
        if event.event_type == WatchEventType::Deleted {
            let object = event.object.expect("deleted object");
            deleted.push(object.metadata().name.clone().unwrap_or_default());
        }
    }
    assert_eq!(
        deleted,
        ["fg-child", "fg-owner"],
        "dependent first, then owner"
    );

    // Orphan: the owner goes, the dependent stays without the reference.
    let owner = create(&mut client, config_map("or-owner", "default", &[])).await;
    create(&mut client, config_map("or-child", "default", &[&owner])).await;
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "or-owner",
            &delete_with("Orphan"),
        )
        .await
        .expect("delete orphan");
    eventually_gone(&mut client, Kind::ConfigMap, "default", "or-owner").await;
    let orphan = client
        .get(Kind::ConfigMap, Some("default"), "or-child")
        .await
        .expect("the orphan stays");
    assert!(
        orphan
            .metadata()
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty),
        "{:?}",
        orphan.metadata().owner_references
    );

    // Two owners, one deleted: the dependent stays, minus that reference.
    let first = create(&mut client, config_map("first", "default", &[])).await;
    let second = create(&mut client, config_map("second", "default", &[])).await;
    create(
        &mut client,
        config_map("shared", "default", &[&first, &second]),
    )
    .await;
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "first",
            &DeleteRequest::default(),
        )
        .await
        .expect("delete first");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shared = client
            .get(Kind::ConfigMap, Some("default"), "shared")
            .await
            .expect("shared stays while an owner is left");
        let names: Vec<String> = shared
            .metadata()
            .owner_references
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .collect();
        if names == ["second"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dangling reference kept: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A dependent whose owner never existed: collected.
    let mut ghost = config_map("ghost-owner", "default", &[]);
    ghost.metadata_mut().uid = Some("00000000-0000-0000-0000-000000000000".into());
    create(&mut client, config_map("haunted", "default", &[&ghost])).await;
    eventually_gone(&mut client, Kind::ConfigMap, "default", "haunted").await;
    assert!(exists(&mut client, Kind::ConfigMap, "default", "second").await);

    // orchctl delete --cascade=foreground waits (kubectl's --wait): when
    // it returns, the owner and its dependent are both gone.
    let owner = create(&mut client, config_map("cli-owner", "default", &[])).await;
    create(&mut client, config_map("cli-child", "default", &[&owner])).await;
    let admin = replica.dir.join("pki").join("admin.conf");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchctl"))
        .args([
            "delete",
            "configmap",
            "cli-owner",
            "--cascade",
            "foreground",
        ])
        .args(["--timeout", "30", "--config"])
        .arg(&admin)
        .output()
        .expect("orchctl delete");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "configmap \"cli-owner\" deleted\n"
    );
    assert!(!exists(&mut client, Kind::ConfigMap, "default", "cli-owner").await);
    assert!(!exists(&mut client, Kind::ConfigMap, "default", "cli-child").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_is_emptied_then_removed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    let namespace = manifest::parse_str(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n",
        "test",
    )
    .expect("manifest")
    .remove(0)
    .object;
    client.create(&namespace, false).await.expect("namespace");
    for i in 0..5 {
        client
            .create(&config_map(&format!("cm-{i}"), "doomed", &[]), false)
            .await
            .expect("config map");
    }
    // The system's own namespaces cannot be deleted.
    match client
        .delete(
            Kind::Namespace,
            None,
            "kube-system",
            &DeleteRequest::default(),
        )
        .await
    {
        Err(ApiError::Forbidden(message)) => {
            assert!(message.contains("may not be deleted"), "{message}")
        }
        other => panic!("deleting kube-system: {other:?}"),
    }
    let marked = client
        .delete(Kind::Namespace, None, "doomed", &DeleteRequest::default())
        .await
        .expect("delete namespace");
    assert!(marked.metadata().deletion_timestamp.is_some(), "{marked:?}");
    // Terminating: nothing new goes in.
    let refused = client
        .create(&config_map("late", "doomed", &[]), false)
        .await
        .expect_err("terminating namespace");
    assert!(matches!(refused, ApiError::Forbidden(_)), "{refused:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(Kind::Namespace, None, "doomed").await.is_ok() {
        assert!(Instant::now() < deadline, "namespace doomed never went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = client
        .list(Kind::ConfigMap, Some("doomed"), &ListOptions::default())
        .await
        .expect("list");
    assert!(left.items.is_empty(), "{:?}", left.items);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_replica_runs_the_controllers_and_another_takes_over() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = common::replicas_with_controllers(dir.path(), 3);
    let servers: Vec<String> = replicas.iter().map(|r| r.api_addr.clone()).collect();
    let mut client =
        ApiClient::new(&replicas[0].api_config(&servers), Duration::from_secs(20)).expect("client");
    let holder = common::controller_lease_holder(&mut client).await;
    let leader = replicas
        .iter()
        .position(|r| holder.starts_with(&format!("orch-control-{}_", r.id)))
        .unwrap_or_else(|| panic!("holder {holder:?} is no replica"));
    // The holder renews: the lease keeps its holder while it lives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(common::controller_lease_holder(&mut client).await, holder);

    replicas[leader].kill();
    let killed = Instant::now();
    let survivors: Vec<String> = replicas
        .iter()
        .filter(|r| r.process.is_some())
        .map(|r| r.api_addr.clone())
        .collect();
    let mut client = ApiClient::new(&replicas[0].api_config(&survivors), Duration::from_secs(20))
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_holder = loop {
        let now = common::controller_lease_holder(&mut client).await;
        if now != holder {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the lease never moved from {holder}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        killed.elapsed() < Duration::from_secs(15),
        "takeover took {:?}",
        killed.elapsed()
    );
    assert_ne!(new_holder, holder);

    // The new leader's garbage collector works.
    let owner = client
        .create(&config_map("after-failover", "default", &[]), false)
        .await
        .expect("owner");
    client
        .create(&config_map("dependent", "default", &[&owner]), false)
        .await
        .expect("dependent");
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "after-failover",
            &DeleteRequest::default(),
        )
        .await
        .expect("delete");
    eventually_gone(&mut client, Kind::ConfigMap, "default", "dependent").await;
}

/// The Lease's holder and its transition count.
async fn lease_record(client: &mut ApiClient, name: &str) -> (String, i32) {
    match client.get(Kind::Lease, Some("default"), name).await {
        Ok(Object::Lease(lease)) => {
            let spec = lease.spec.unwrap_or_default();
            (
                spec.holder_identity.unwrap_or_default(),
                spec.lease_transitions.unwrap_or_default(),
            )
        }
        other => panic!("lease {name}: {other:?}"),
    }
}

/// Waits until `leading` says `wanted`; returns how long that took.
async fn until_leading(
    leading: &mut tokio::sync::watch::Receiver<bool>,
    wanted: bool,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    tokio::time::timeout(within, leading.wait_for(|now| *now == wanted))
        .await
        .unwrap_or_else(|_| panic!("leading never became {wanted} within {within:?}"))
        .expect("the election task is alive");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_steps_down_when_it_cannot_renew_or_is_overtaken() {
    use orch_core::runtime::election::{self, Candidate, ElectionTimings};

    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let mut client = common::client_of(&replica).await;
    let timings = ElectionTimings {
        lease_duration: Duration::from_millis(3000),
        renew_deadline: Duration::from_millis(2000),
        retry_period: Duration::from_millis(300),
    };
    let candidate = Candidate {
        namespace: "default".into(),
        lease: "election-test".into(),
        identity: "holder-a".into(),
    };
    let (sender, mut leading) = tokio::sync::watch::channel(false);
    let election = tokio::spawn(election::run(client.clone(), candidate, timings, sender));
    until_leading(&mut leading, true, Duration::from_secs(10)).await;
    assert_eq!(
        lease_record(&mut client, "election-test").await,
        ("holder-a".to_string(), 0)
    );
    // While renewals succeed it keeps leading.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(*leading.borrow_and_update(), "stepped down while renewing");

    // Overtaken: another holder written into the lease (a rival that won)
    // makes it step down at its next renewal, and it does not take the
    // lease back until the rival's record has gone a lease duration
    // without change.
    let Ok(Object::Lease(mut lease)) = client
        .get(Kind::Lease, Some("default"), "election-test")
        .await
    else {
        panic!("the lease")
    };
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = Some("holder-b".into());
    }
    client
        .update(&Object::Lease(lease), false)
        .await
        .expect("the rival's write");
    until_leading(&mut leading, false, Duration::from_secs(2)).await;
    let regained = until_leading(&mut leading, true, Duration::from_secs(10)).await;
    assert!(
        regained >= timings.lease_duration - Duration::from_millis(500),
        "took the rival's lease after {regained:?}, before it expired"
    );
    assert_eq!(
        lease_record(&mut client, "election-test").await,
        ("holder-a".to_string(), 1)
    );

    // Cut off from the API server (stopped): it must step down by its
    // renew deadline, before a rival could take the lease over (a lease
    // duration after the last renewal).
    replica.signal("STOP");
    let stepped_down = until_leading(&mut leading, false, Duration::from_secs(10)).await;
    replica.signal("CONT");
    assert!(
        stepped_down < timings.lease_duration,
        "kept leading {stepped_down:?} without renewing: a rival may hold the lease after {:?}",
        timings.lease_duration
    );
    // Back in touch, it is still the holder of record and leads again.
    until_leading(&mut leading, true, Duration::from_secs(10)).await;
    election.abort();
}
