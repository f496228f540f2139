//! The API server of real `orch-control` processes, through orch-core's
//! typed client: every kind's create/get/list/update/patch/delete,
//! conflicts, admission refusals that write nothing, namespace lifecycle,
//! the status subresource, and watches (order, selectors, too-old).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError, ListOptions, WatchEventType};
use orch_core::manifest;
use orch_core::object::{Kind, Object};

fn corpus() -> Vec<Object> {
    let dir = format!("{}/../tests/manifests/valid", env!("CARGO_MANIFEST_DIR"));
    manifest::load_path(std::path::Path::new(&dir))
        .expect("the valid corpus loads")
        .into_iter()
        .map(|document| document.object)
        .collect()
}

fn object(yaml: &str) -> Object {
    manifest::parse_str(yaml, "test")
        .expect("test manifest")
        .remove(0)
        .object
}

async fn single() -> (tempfile::TempDir, common::Replica, ApiClient) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let config = replica.api_config(&[replica.api_addr.clone()]);
    let client = ApiClient::new(&config, Duration::from_secs(20)).expect("client");
    (dir, replica, client)
}

/// Waits for the system namespaces the API server creates at start (all
/// of them: a test comparing revisions must not see one created later).
async fn wait_for_default(client: &mut ApiClient) {
    for namespace in orch_control::api::SYSTEM_NAMESPACES {
        let mut found = false;
        for _ in 0..100 {
            if client.get(Kind::Namespace, None, namespace).await.is_ok() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(found, "namespace {namespace} never appeared");
    }
}

const REPLICA_SET: &str = "
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web-1, namespace: default, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: busybox}]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_round_trips_through_the_api() {
    let (_dir, _replica, mut client) = single().await;
    wait_for_default(&mut client).await;
    let mut objects = corpus();
    objects.push(object(REPLICA_SET));
    // Namespaces first, then whatever lives in them.
    objects.sort_by_key(|o| o.kind() != Kind::Namespace);
    let mut kinds = BTreeSet::new();
    for original in &objects {
        let kind = original.kind();
        kinds.insert(kind.name());
        let namespace = original.metadata().namespace.clone();
        if let Some(ns) = &namespace
            && client.get(Kind::Namespace, None, ns).await.is_err()
        {
            let ns_object = object(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            ));
            client.create(&ns_object, false).await.expect("namespace");
        }
        let name = original.metadata().name.clone().expect("named");
        let created = client
            .create(original, false)
            .await
            .unwrap_or_else(|e| panic!("create {kind} {name}: {e}"));
        // Objects without a namespace land in "default", as in Kubernetes.
        let namespace = created.metadata().namespace.clone();
        let meta = created.metadata();
        assert!(
            meta.uid.as_deref().is_some_and(|u| u.len() == 36),
            "{kind}: uid"
        );
        assert!(
            meta.creation_timestamp.is_some(),
            "{kind}: creationTimestamp"
        );
        let version: u64 = meta
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("numeric resourceVersion");

        let fetched = client
            .get(kind, namespace.as_deref(), &name)
            .await
            .expect("get");
        assert_eq!(
            fetched.to_json(),
            created.to_json(),
            "{kind} {name}: get differs"
        );

        let listed = client
            .list(kind, namespace.as_deref(), &ListOptions::default())
            .await
            .expect("list");
        assert!(
            listed
                .items
                .iter()
                .any(|o| o.metadata().name.as_deref() == Some(&name)),
            "{kind} {name} not listed"
        );

        let mut changed = fetched.clone();
        changed
            .metadata_mut()
            .labels
            .get_or_insert_with(Default::default)
            .insert("touched".into(), "yes".into());
        let updated = client.update(&changed, false).await.expect("update");
        let updated_version: u64 = updated
            .metadata()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("numeric resourceVersion");
        assert!(updated_version > version, "{kind}: version did not move");

        // The old version is stale now: a Conflict naming the current one.
        let stale = client.update(&changed, false).await.expect_err("stale");
        match stale {
            ApiError::Conflict(message) => assert!(
                message.contains(&format!("current resourceVersion {updated_version}")),
                "{message}"
            ),
            other => panic!("{kind}: expected a conflict, got {other:?}"),
        }

        let patched = client
            .patch(
                kind,
                namespace.as_deref(),
                &name,
                &serde_json::json!({"metadata": {"annotations": {"patched": "1"}}}),
                false,
            )
            .await
            .expect("patch");
        assert_eq!(
            patched
                .metadata()
                .annotations
                .as_ref()
                .and_then(|a| a.get("patched")),
            Some(&"1".to_string())
        );
        assert_eq!(
            patched
                .metadata()
                .labels
                .as_ref()
                .and_then(|l| l.get("touched")),
            Some(&"yes".to_string()),
            "{kind}: a merge patch keeps what it does not name"
        );
    }
    assert_eq!(kinds.len(), Kind::ALL.len(), "kinds covered: {kinds:?}");

    // Delete everything but namespaces; each is gone afterwards.
    for original in objects.iter().filter(|o| o.kind() != Kind::Namespace) {
        let kind = original.kind();
        let namespace = original
            .metadata()
            .namespace
            .clone()
            .or_else(|| kind.namespaced().then(|| "default".to_string()));
        let name = original.metadata().name.clone().expect("named");
        client
            .delete(kind, namespace.as_deref(), &name, &DeleteRequest::default())
            .await
            .unwrap_or_else(|e| panic!("delete {kind} {name}: {e}"));
        match client.get(kind, namespace.as_deref(), &name).await {
            Err(ApiError::NotFound(message)) => {
                assert!(
                    message.contains(&format!("\"{name}\" not found")),
                    "{message}"
                )
            }
            other => panic!("{kind} {name} still there: {other:?}"),
        }
    }
}

const BAD_DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: bad, namespace: default}
spec:
  replicas: -1
  selector: {matchLabels: {app: bad}}
  template:
    metadata: {labels: {app: other}}
    spec: {containers: [{name: c, image: busybox}]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_writes_leave_the_store_unchanged() {
    let (_dir, _replica, mut client) = single().await;
    wait_for_default(&mut client).await;
    let before = client
        .list(Kind::Deployment, None, &ListOptions::default())
        .await
        .expect("list");

    let error = client
        .create(&object(BAD_DEPLOYMENT), false)
        .await
        .expect_err("invalid");
    let message = error.to_string();
    assert!(matches!(error, ApiError::Invalid(_)), "{error:?}");
    assert!(
        message.contains("Deployment.apps \"bad\" is invalid"),
        "{message}"
    );
    assert!(message.contains("spec.replicas"), "{message}");
    assert!(
        message.contains("spec.template.metadata.labels"),
        "{message}"
    );

    let elsewhere = object(
        &BAD_DEPLOYMENT
            .replace("replicas: -1", "replicas: 1")
            .replace("labels: {app: other}", "labels: {app: bad}")
            .replace("namespace: default", "namespace: nowhere"),
    );
    match client.create(&elsewhere, false).await {
        Err(ApiError::NotFound(message)) => {
            assert!(
                message.contains("namespaces \"nowhere\" not found"),
                "{message}"
            )
        }
        other => panic!("create in a missing namespace: {other:?}"),
    }

    let after = client
        .list(Kind::Deployment, None, &ListOptions::default())
        .await
        .expect("list");
    assert_eq!(
        after.resource_version, before.resource_version,
        "a refused write moved the store"
    );
    assert!(after.items.is_empty());

    // A terminating namespace takes no new objects.
    let ns = object("apiVersion: v1\nkind: Namespace\nmetadata: {name: closing}\n");
    client.create(&ns, false).await.expect("namespace");
    let cm = object(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: closing}\ndata: {a: b}\n",
    );
    client.create(&cm, false).await.expect("configmap");
    let deleted = client
        .delete(Kind::Namespace, None, "closing", &DeleteRequest::default())
        .await
        .expect("delete namespace");
    assert!(
        deleted.metadata().deletion_timestamp.is_some(),
        "a namespace with content terminates first"
    );
    let mut second = cm.clone();
    second.metadata_mut().name = Some("d".into());
    match client.create(&second, false).await {
        Err(ApiError::Forbidden(message)) => {
            assert!(message.contains("being terminated"), "{message}")
        }
        other => panic!("create in a terminating namespace: {other:?}"),
    }
}

const POD: &str = "
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: default, labels: {app: web}}
spec: {containers: [{name: c, image: busybox}]}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_is_a_subresource() {
    let (_dir, _replica, mut client) = single().await;
    wait_for_default(&mut client).await;
    let created = client.create(&object(POD), false).await.expect("pod");

    // An update of the object cannot set the status...
    let mut with_status = created.to_json();
    with_status["status"] = serde_json::json!({"phase": "Running"});
    let sneaky = Kind::Pod.deserialize(with_status.clone()).expect("pod");
    let updated = client.update(&sneaky, false).await.expect("update");
    assert!(
        updated.to_json()["status"]["phase"].is_null(),
        "status changed through the object"
    );

    // ...and a status update sets only the status.
    with_status["metadata"]["resourceVersion"] = updated.metadata().resource_version.clone().into();
    with_status["spec"]["containers"][0]["image"] = "nginx".into();
    let status_only = Kind::Pod.deserialize(with_status).expect("pod");
    let after = client.update_status(&status_only).await.expect("status");
    let json = after.to_json();
    assert_eq!(json["status"]["phase"], "Running");
    assert_eq!(
        json["spec"]["containers"][0]["image"], "busybox",
        "spec changed through status"
    );
    assert_eq!(
        json["metadata"]["generation"], 1,
        "status updates keep the generation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watches_deliver_every_change_in_order_and_refuse_compacted_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (replicas, _) = common::cluster(dir.path(), 3).await;
    let addrs: Vec<String> = replicas.iter().map(|r| r.api_addr.clone()).collect();
    let config = |servers: &[String]| replicas[0].api_config(servers);
    let mut client = ApiClient::new(&config(&addrs), Duration::from_secs(20)).expect("client");
    wait_for_default(&mut client).await;
    let start = client
        .list(Kind::ConfigMap, Some("default"), &ListOptions::default())
        .await
        .expect("list")
        .resource_version;

    // One watch per replica (followers included), with a label selector.
    let selected = ListOptions {
        label_selector: "app=web".into(),
        ..ListOptions::default()
    };
    let mut watches = Vec::new();
    for addr in &addrs {
        let mut own = ApiClient::new(&config(std::slice::from_ref(addr)), Duration::from_secs(20))
            .expect("c");
        watches.push(
            own.watch(Kind::ConfigMap, Some("default"), &selected, &start, false)
                .await
                .expect("watch"),
        );
    }
    // Concurrent writers, through different replicas.
    let mut writers = Vec::new();
    for (w, addr) in addrs.iter().enumerate() {
        let mut own = ApiClient::new(&config(std::slice::from_ref(addr)), Duration::from_secs(20))
            .expect("c");
        writers.push(tokio::spawn(async move {
            for i in 0..10 {
                let app = if i % 2 == 0 { "web" } else { "db" };
                let cm = object(&format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: w{w}-{i}, namespace: default, labels: {{app: {app}}}}}\ndata: {{n: \"{i}\"}}\n"
                ));
                own.create(&cm, false).await.expect("create");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let listed = client
        .list(Kind::ConfigMap, Some("default"), &selected)
        .await
        .expect("list");
    let expected: Vec<(String, String)> = {
        let mut items: Vec<(String, String)> = listed
            .items
            .iter()
            .map(|o| {
                (
                    o.metadata().resource_version.clone().unwrap_or_default(),
                    o.metadata().name.clone().unwrap_or_default(),
                )
            })
            .collect();
        items.sort_by_key(|(v, _)| v.parse::<u64>().unwrap_or(0));
        items
    };
    assert_eq!(expected.len(), 15);
    for (addr, watch) in addrs.iter().zip(watches.iter_mut()) {
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let event = tokio::time::timeout(Duration::from_secs(20), watch.next())
                .await
                .unwrap_or_else(|_| panic!("{addr}: watch stalled after {seen:?}"))
                .expect("event")
                .expect("open");
            assert_eq!(event.event_type, WatchEventType::Added);
            let object = event.object.expect("object");
            seen.push((
                event.resource_version,
                object.metadata().name.clone().unwrap_or_default(),
            ));
        }
        assert_eq!(seen, expected, "{addr}: out of order, gapped or unselected");
    }

    // Relabeling out of the selection is a DELETED for the watcher.
    let mut moved = listed.items[0].clone();
    moved
        .metadata_mut()
        .labels
        .get_or_insert_with(Default::default)
        .insert("app".into(), "db".into());
    client.update(&moved, false).await.expect("relabel");
    let event = tokio::time::timeout(Duration::from_secs(20), watches[0].next())
        .await
        .expect("event in time")
        .expect("event")
        .expect("open");
    assert_eq!(event.event_type, WatchEventType::Deleted);
    drop(replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_from_compacted_history_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init", "--compaction-retention", "10"]);
    let config = replica.api_config(&[replica.api_addr.clone()]);
    let mut client = ApiClient::new(&config, Duration::from_secs(20)).expect("c");
    wait_for_default(&mut client).await;
    for i in 0..40 {
        let cm = object(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c{i}, namespace: default}}\n"
        ));
        client.create(&cm, false).await.expect("create");
    }
    // The leader compacts within a second or two; a watch from revision 1
    // must then be refused with Gone, naming the version.
    for _ in 0..50 {
        let mut watch = client
            .watch(
                Kind::ConfigMap,
                Some("default"),
                &ListOptions::default(),
                "1",
                false,
            )
            .await;
        let outcome = match &mut watch {
            Ok(stream) => tokio::time::timeout(Duration::from_millis(300), stream.next())
                .await
                .ok(),
            Err(error) => Some(Err(error.clone())),
        };
        if let Some(Err(ApiError::Gone(message))) = outcome {
            assert!(message.contains("too old resource version: 1"), "{message}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("a watch from compacted history was never refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_is_visible_at_once_through_every_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (replicas, _) = common::cluster(dir.path(), 3).await;
    let addrs: Vec<String> = replicas.iter().map(|r| r.api_addr.clone()).collect();
    let mut clients: Vec<ApiClient> = addrs
        .iter()
        .map(|addr| {
            let config = replicas[0].api_config(std::slice::from_ref(addr));
            ApiClient::new(&config, Duration::from_secs(20)).expect("c")
        })
        .collect();
    wait_for_default(&mut clients[0]).await;
    // Written through one replica, read at once through the next: the
    // follower's read index makes it wait for the write, never miss it.
    for i in 0..30 {
        let writer = i % 3;
        let reader = (i + 1) % 3;
        let cm = object(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: seen-{i}, namespace: default}}\ndata: {{n: \"{i}\"}}\n"
        ));
        let created = clients[writer].create(&cm, false).await.expect("create");
        let read = clients[reader]
            .get(Kind::ConfigMap, Some("default"), &format!("seen-{i}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "write {i} through {} not visible through {}: {e}",
                    addrs[writer], addrs[reader]
                )
            });
        assert_eq!(
            read.metadata().resource_version,
            created.metadata().resource_version
        );
        let listed = clients[reader]
            .list(Kind::ConfigMap, Some("default"), &ListOptions::default())
            .await
            .expect("list");
        assert_eq!(
            listed.items.len(),
            i + 1,
            "list through {} is stale",
            addrs[reader]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_is_bound_to_a_node_once() {
    let (_dir, replica, mut client) = single().await;
    wait_for_default(&mut client).await;
    let pod = object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting, namespace: default}\nspec:\n  containers: [{name: c, image: busybox}]\n",
    );
    client.create(&pod, false).await.expect("create pod");

    client
        .bind("default", "waiting", "node-1")
        .await
        .expect("bind");
    let Object::Pod(bound) = client
        .get(Kind::Pod, Some("default"), "waiting")
        .await
        .expect("get")
    else {
        panic!("get replied with a non-pod")
    };
    assert_eq!(
        bound.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("node-1")
    );
    let scheduled = bound
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "PodScheduled"))
        .expect("PodScheduled condition");
    assert_eq!(scheduled.status, "True");

    // Once only: a second binding names the node it already has.
    match client.bind("default", "waiting", "node-2").await {
        Err(ApiError::Conflict(message)) => {
            assert!(
                message.contains("already assigned to node \"node-1\""),
                "{message}"
            )
        }
        other => panic!("second bind: {other:?}"),
    }
    match client.bind("default", "missing", "node-1").await {
        Err(ApiError::NotFound(message)) => assert!(message.contains("missing"), "{message}"),
        other => panic!("bind of a missing pod: {other:?}"),
    }
    // A bad binding writes nothing.
    let before = client
        .get(Kind::Pod, Some("default"), "waiting")
        .await
        .expect("get");
    let mut raw = orch_core::api::proto::api_client::ApiClient::new(
        tonic::transport::Endpoint::from_shared(format!("https://{}", replica.api_addr))
            .expect("endpoint")
            .tls_config(replica.api_config(&[]).tls())
            .expect("tls")
            .connect()
            .await
            .expect("connect"),
    );
    // Bad bindings, each refused with the field it got wrong.
    for (target, field) in [
        (r#"{"kind":"Service","name":"x"}"#, "target.kind"),
        (
            r#"{"kind":"Node","name":"Node_1"}"#,
            "target.name: Invalid value: \"Node_1\"",
        ),
    ] {
        let binding = format!(
            r#"{{"apiVersion":"v1","kind":"Binding","metadata":{{"name":"waiting"}},"target":{target}}}"#
        );
        let refused = raw
            .bind(orch_core::api::proto::ObjectRequest {
                resource: "pods".into(),
                namespace: "default".into(),
                object: binding.into_bytes(),
                dry_run: false,
            })
            .await
            .expect_err(target);
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains(field), "{}", refused.message());
    }
    let after = client
        .get(Kind::Pod, Some("default"), "waiting")
        .await
        .expect("get");
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_takes_uid_and_resource_version_preconditions() {
    let (_dir, _replica, mut client) = single().await;
    wait_for_default(&mut client).await;
    let config_map = object(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: default}\ndata: {a: '1'}\n",
    );
    let first = client.create(&config_map, false).await.expect("create");
    let first_uid = first.metadata().uid.clone().expect("uid");
    let first_version = first.metadata().resource_version.clone().expect("rv");

    let refuse = |uid: &str, version: &str| DeleteRequest {
        uid: uid.into(),
        resource_version: version.into(),
        ..DeleteRequest::default()
    };
    match client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "settings",
            &refuse("not-it", ""),
        )
        .await
    {
        Err(ApiError::Conflict(message)) => assert!(
            message.contains("Precondition failed: UID in precondition: not-it")
                && message.contains(&first_uid),
            "{message}"
        ),
        other => panic!("delete with a foreign uid: {other:?}"),
    }
    client
        .get(Kind::ConfigMap, Some("default"), "settings")
        .await
        .expect("a refused delete leaves the object");

    // A later version: the old resourceVersion no longer matches.
    let mut changed = first.clone();
    changed.metadata_mut().labels = Some([("v".to_string(), "2".to_string())].into());
    client.update(&changed, false).await.expect("update");
    match client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "settings",
            &refuse(&first_uid, &first_version),
        )
        .await
    {
        Err(ApiError::Conflict(message)) => {
            assert!(
                message.contains(&format!("yours {first_version}")),
                "{message}"
            )
        }
        other => panic!("delete of a stale version: {other:?}"),
    }

    // Re-created under the same name: the first one's uid does not delete it.
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "settings",
            &refuse(&first_uid, ""),
        )
        .await
        .expect("delete with the right uid");
    let second = client.create(&config_map, false).await.expect("re-create");
    let second_uid = second.metadata().uid.clone().expect("uid");
    assert_ne!(first_uid, second_uid);
    assert!(matches!(
        client
            .delete(
                Kind::ConfigMap,
                Some("default"),
                "settings",
                &refuse(&first_uid, "")
            )
            .await,
        Err(ApiError::Conflict(_))
    ));
    client
        .delete(
            Kind::ConfigMap,
            Some("default"),
            "settings",
            &refuse(&second_uid, ""),
        )
        .await
        .expect("delete the second with its uid");
    assert!(matches!(
        client
            .get(Kind::ConfigMap, Some("default"), "settings")
            .await,
        Err(ApiError::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_after_the_event_ttl_and_keep_it_when_updated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init", "--event-ttl", "3s"]);
    let mut client = common::client_of(&replica).await;
    let event = |name: &str| {
        manifest::parse_str(
            &format!(
                "apiVersion: v1\nkind: Event\nmetadata: {{name: {name}, namespace: default}}\ninvolvedObject: {{kind: Pod, name: web, namespace: default}}\nreason: Test\nmessage: hello\ntype: Normal\n"
            ),
            "test",
        )
        .expect("event")
        .remove(0)
        .object
    };
    let created = Instant::now();
    client.create(&event("first"), false).await.expect("create");
    let second = client
        .create(&event("second"), false)
        .await
        .expect("create");
    // Rewritten, it keeps its expiry.
    let mut changed = second.clone();
    if let Object::Event(e) = &mut changed {
        e.message = Some("changed".into());
    }
    client.update(&changed, false).await.expect("update");
    // A ConfigMap made at the same time stays.
    client
        .create(
            &manifest::parse_str(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: stays, namespace: default}\n",
                "test",
            )
            .expect("cm")
            .remove(0)
            .object,
            false,
        )
        .await
        .expect("configmap");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = client
            .list(Kind::Event, Some("default"), &ListOptions::default())
            .await
            .expect("events")
            .items
            .len();
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} events left after 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        created.elapsed() >= Duration::from_secs(2),
        "events went after {:?}, before 0.9 of their TTL",
        created.elapsed()
    );
    client
        .get(Kind::ConfigMap, Some("default"), "stays")
        .await
        .expect("the ConfigMap has no lease");
}
