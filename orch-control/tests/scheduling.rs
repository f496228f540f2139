//! The scheduler and the ReplicaSet controller of a real `orch-control`
//! process, against simulated nodes (Node objects written by the test, as
//! an agent would register them): placement honours resources, taints,
//! selectors, affinity and spread constraints; a pod that fits nowhere
//! says why and is placed once a node changes; a ReplicaSet keeps its
//! count, adopts orphans and scales down the least useful pods first.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::kubelet::register_node;
use orch_core::api::{ApiClient, ApiError, ListOptions};
use orch_core::manifest;
use orch_core::object::{Kind, Object};

fn parse(yaml: &str) -> Object {
    manifest::parse_str(yaml, "test")
        .expect("manifest")
        .remove(0)
        .object
}

async fn pod_of(client: &mut ApiClient, name: &str) -> k8s_openapi::api::core::v1::Pod {
    match client.get(Kind::Pod, Some("default"), name).await {
        Ok(Object::Pod(pod)) => *pod,
        other => panic!("get pod {name}: {other:?}"),
    }
}

fn node_of(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .node_name
        .clone()
        .filter(|n| !n.is_empty())
}

/// Waits for the pod to be bound; returns its node.
async fn bound(client: &mut ApiClient, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(node) = node_of(&pod_of(client, name).await) {
            return node;
        }
        assert!(Instant::now() < deadline, "pod {name} not bound in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the pod's PodScheduled=False condition; returns its message.
async fn unschedulable_message(client: &mut ApiClient, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pod = pod_of(client, name).await;
        assert_eq!(node_of(&pod), None, "pod {name} was bound");
        let condition = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "PodScheduled")
            .cloned();
        if let Some(condition) = condition {
            assert_eq!(condition.status, "False");
            assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
            return condition.message.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} has no PodScheduled condition after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn pods_by_node(client: &mut ApiClient, selector: &str) -> (usize, BTreeMap<String, usize>) {
    let list = client
        .list(
            Kind::Pod,
            Some("default"),
            &ListOptions {
                label_selector: selector.into(),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list pods");
    let mut by_node = BTreeMap::new();
    for item in &list.items {
        if let Object::Pod(pod) = item
            && let Some(node) = node_of(pod)
        {
            *by_node.entry(node).or_default() += 1;
        }
    }
    (list.items.len(), by_node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_honours_resources_taints_selectors_and_affinity() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    register_node(
        &mut client,
        "gpu",
        "4",
        "",
        "taints: [{key: gpu, value: 'true', effect: NoSchedule}]",
        true,
    )
    .await;
    register_node(
        &mut client,
        "ssd",
        "4",
        ", disk: ssd, cores: '16'",
        "",
        true,
    )
    .await;
    register_node(&mut client, "down", "4", "", "", false).await;
    register_node(
        &mut client,
        "cordoned",
        "4",
        "",
        "unschedulable: true",
        true,
    )
    .await;
    register_node(&mut client, "small", "500m", ", disk: hdd", "", true).await;

    // Only "ssd" has room, no taint, is Ready and schedulable.
    let plain = "apiVersion: v1\nkind: Pod\nmetadata: {name: plain}\nspec:\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '1'}}}]\n";
    client.create(&parse(plain), false).await.expect("create");
    assert_eq!(bound(&mut client, "plain").await, "ssd");

    // A toleration opens "gpu"; required affinity (Gt) and a preference
    // for gpu=... pick between gpu and ssd.
    let tolerant = "apiVersion: v1\nkind: Pod\nmetadata: {name: tolerant}\nspec:\n  tolerations: [{key: gpu, operator: Equal, value: 'true', effect: NoSchedule}]\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions: [{key: disk, operator: DoesNotExist}]\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '1'}}}]\n";
    client
        .create(&parse(tolerant), false)
        .await
        .expect("create");
    assert_eq!(bound(&mut client, "tolerant").await, "gpu");

    let affine = "apiVersion: v1\nkind: Pod\nmetadata: {name: affine}\nspec:\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n        - matchExpressions: [{key: cores, operator: Gt, values: ['8']}]\n  containers: [{name: c, image: busybox}]\n";
    client.create(&parse(affine), false).await.expect("create");
    assert_eq!(bound(&mut client, "affine").await, "ssd");

    // Fits nowhere: the message counts each node's reason.
    let hdd = "apiVersion: v1\nkind: Pod\nmetadata: {name: wants-hdd}\nspec:\n  nodeSelector: {disk: hdd}\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: '1'}}}]\n";
    client.create(&parse(hdd), false).await.expect("create");
    let message = unschedulable_message(&mut client, "wants-hdd").await;
    assert_eq!(
        message,
        "0/5 nodes are available: 1 Insufficient cpu, \
         1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {gpu: true}, \
         1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
         1 node(s) were unschedulable."
    );
    // The event says the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = client
            .list(
                Kind::Event,
                Some("default"),
                &ListOptions {
                    field_selector: "involvedObject.name=wants-hdd".into(),
                    ..ListOptions::default()
                },
            )
            .await
            .expect("events");
        let found = events.items.iter().any(|e| match e {
            Object::Event(e) => {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.message.as_deref() == Some(message.as_str())
            }
            _ => false,
        });
        if found {
            break;
        }
        assert!(Instant::now() < deadline, "no FailedScheduling event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Room made on "small": the waiting pod is placed without being
    // touched.
    let Object::Node(mut small) = client.get(Kind::Node, None, "small").await.expect("get") else {
        panic!("not a node")
    };
    let status = small.status.as_mut().expect("status");
    for list in [&mut status.capacity, &mut status.allocatable] {
        list.as_mut().expect("resources").insert(
            "cpu".into(),
            k8s_openapi::apimachinery::pkg::api::resource::Quantity("2".into()),
        );
    }
    client
        .update_status(&Object::Node(small))
        .await
        .expect("grow node");
    assert_eq!(bound(&mut client, "wants-hdd").await, "small");
    let pod = pod_of(&mut client, "wants-hdd").await;
    let scheduled = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "PodScheduled")
        .expect("condition");
    assert_eq!(scheduled.status, "True");

    // "small" has 1 cpu left: a pod asking 1.5 waits, told so.
    let more = hdd
        .replace("wants-hdd", "wants-hdd-2")
        .replace("'1'", "'1500m'");
    client.create(&parse(&more), false).await.expect("create");
    let message = unschedulable_message(&mut client, "wants-hdd-2").await;
    assert!(message.contains("1 Insufficient cpu"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_spreads_keeps_its_count_and_adopts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    for n in 1..=5 {
        register_node(&mut client, &format!("node-{n}"), "8", "", "", true).await;
    }
    let kubelet = common::kubelet::start(
        client.clone(),
        &["node-1", "node-2", "node-3", "node-4", "node-5"],
    );
    // An orphan that matches the selector is adopted, not duplicated.
    let orphan = "apiVersion: v1\nkind: Pod\nmetadata: {name: orphan, labels: {app: web}}\nspec:\n  containers: [{name: c, image: busybox}]\n";
    client.create(&parse(orphan), false).await.expect("orphan");
    let rs = "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: web}\nspec:\n  replicas: 10\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}\n      containers: [{name: c, image: busybox, resources: {requests: {cpu: 100m}}}]\n";
    client.create(&parse(rs), false).await.expect("replica set");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (count, by_node) = pods_by_node(&mut client, "app=web").await;
        let placed: usize = by_node.values().sum();
        if count == 10 && placed == 10 {
            assert_eq!(by_node.len(), 5, "{by_node:?}");
            let most = by_node.values().max().copied().unwrap_or(0);
            let least = by_node.values().min().copied().unwrap_or(0);
            assert!(most - least <= 1, "skew over 1: {by_node:?}");
            break;
        }
        assert!(count <= 10, "more pods than replicas: {count}");
        assert!(
            Instant::now() < deadline,
            "not 10 placed pods: {count} {by_node:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orphan = pod_of(&mut client, "orphan").await;
    let owner = orphan
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .expect("orphan adopted");
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ReplicaSet", "web")
    );

    // A deleted pod is replaced; status counts what runs.
    client
        .delete(Kind::Pod, Some("default"), "orphan", &Default::default())
        .await
        .expect("delete pod");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (count, by_node) = pods_by_node(&mut client, "app=web").await;
        let replaced = match client.get(Kind::Pod, Some("default"), "orphan").await {
            Err(ApiError::NotFound(_)) => true,
            Ok(_) => false,
            Err(error) => panic!("{error}"),
        };
        if replaced && count == 10 && by_node.values().sum::<usize>() == 10 {
            break;
        }
        assert!(Instant::now() < deadline, "pod not replaced: {count}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Status counts what the (fake) kubelet reports.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Object::ReplicaSet(rs) = client
            .get(Kind::ReplicaSet, Some("default"), "web")
            .await
            .expect("get rs")
        else {
            panic!("not a replica set")
        };
        let status = rs.status.unwrap_or_default();
        if status.ready_replicas == Some(10) {
            assert_eq!(status.replicas, 10);
            assert_eq!(status.fully_labeled_replicas, Some(10));
            assert_eq!(status.available_replicas, Some(10));
            assert_eq!(status.observed_generation, rs.metadata.generation);
            break;
        }
        assert!(Instant::now() < deadline, "status not 10 ready: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Scale down: two left, the rest deleted.
    client
        .patch(
            Kind::ReplicaSet,
            Some("default"),
            "web",
            &serde_json::json!({"spec": {"replicas": 2}}),
            false,
        )
        .await
        .expect("scale");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (count, _) = pods_by_node(&mut client, "app=web").await;
        if count == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "still {count} pods");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it stays at two.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pods_by_node(&mut client, "app=web").await.0, 2);
    kubelet.abort();
}

/// Pods of `app` not being deleted: how many are ready, how many in all
/// (pods on their way out count toward neither, as in Kubernetes' surge).
async fn ready_and_total(client: &mut ApiClient, app: &str) -> (usize, usize) {
    let list = client
        .list(
            Kind::Pod,
            Some("default"),
            &ListOptions {
                label_selector: format!("app={app}"),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list pods");
    let ready = list
        .items
        .iter()
        .filter(|item| match item {
            Object::Pod(pod) => {
                pod.metadata.deletion_timestamp.is_none()
                    && pod
                        .status
                        .iter()
                        .flat_map(|s| s.conditions.iter().flatten())
                        .any(|c| c.type_ == "Ready" && c.status == "True")
            }
            _ => false,
        })
        .count();
    let active = list
        .items
        .iter()
        .filter(|item| item.metadata().deletion_timestamp.is_none())
        .count();
    (ready, active)
}

async fn deployment_status(
    client: &mut ApiClient,
    name: &str,
) -> k8s_openapi::api::apps::v1::DeploymentStatus {
    match client.get(Kind::Deployment, Some("default"), name).await {
        Ok(Object::Deployment(d)) => d.status.unwrap_or_default(),
        other => panic!("get deployment {name}: {other:?}"),
    }
}

/// Waits until the Deployment reports its rollout complete.
async fn rolled_out(client: &mut ApiClient, name: &str, replicas: i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = deployment_status(client, name).await;
        let complete = status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        });
        if complete
            && status.updated_replicas == Some(replicas)
            && status.available_replicas == Some(replicas)
            && status.replicas == Some(replicas)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rollout of {name} not complete: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ReplicaSets of the Deployment: (revision, image, replicas).
async fn revisions(client: &mut ApiClient) -> Vec<(String, String, i32)> {
    let list = client
        .list(Kind::ReplicaSet, Some("default"), &ListOptions::default())
        .await
        .expect("list replica sets");
    let mut sets: Vec<(String, String, i32)> = list
        .items
        .iter()
        .filter_map(|item| match item {
            Object::ReplicaSet(rs) => {
                let spec = rs.spec.as_ref()?;
                let image = spec
                    .template
                    .as_ref()?
                    .spec
                    .as_ref()?
                    .containers
                    .first()?
                    .image
                    .clone()?;
                let revision = rs
                    .metadata
                    .annotations
                    .as_ref()?
                    .get("deployment.kubernetes.io/revision")?
                    .clone();
                Some((revision, image, spec.replicas.unwrap_or(0)))
            }
            _ => None,
        })
        .collect();
    sets.sort();
    sets
}

fn set_image(image: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_keeps_availability_and_rolls_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    let nodes = ["node-1", "node-2", "node-3"];
    for node in nodes {
        register_node(&mut client, node, "8", "", "", true).await;
    }
    let kubelet = common::kubelet::start(client.clone(), &nodes);
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 1}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: 'busybox:v1'}]\n";
    client
        .create(&parse(deployment), false)
        .await
        .expect("deployment");
    rolled_out(&mut client, "web", 4).await;
    assert_eq!(
        revisions(&mut client).await,
        [("1".into(), "busybox:v1".into(), 4)]
    );

    // Watch the pods through the update: never fewer than 4 - 1 ready,
    // never more than 4 + 1 not being deleted.
    let watching = tokio::spawn({
        let mut client = client.clone();
        async move {
            let (mut least_ready, mut most) = (usize::MAX, 0);
            loop {
                let (ready, total) = ready_and_total(&mut client, "web").await;
                least_ready = least_ready.min(ready);
                most = most.max(total);
                let status = deployment_status(&mut client, "web").await;
                let done = status.updated_replicas == Some(4)
                    && status.available_replicas == Some(4)
                    && status.replicas == Some(4)
                    && status.observed_generation == Some(2);
                if done && total == 4 {
                    return (least_ready, most);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    client
        .patch(
            Kind::Deployment,
            Some("default"),
            "web",
            &set_image("busybox:v2"),
            false,
        )
        .await
        .expect("update image");
    let (least_ready, most) = tokio::time::timeout(Duration::from_secs(60), watching)
        .await
        .expect("rollout finished in 60 s")
        .expect("watcher");
    assert!(least_ready >= 3, "ready pods dropped to {least_ready}");
    assert!(most <= 5, "{most} pods at once");
    rolled_out(&mut client, "web", 4).await;
    assert_eq!(
        revisions(&mut client).await,
        [
            ("1".into(), "busybox:v1".into(), 0),
            ("2".into(), "busybox:v2".into(), 4)
        ]
    );

    // Rolling back to the first template reuses its ReplicaSet, which
    // becomes revision 3.
    client
        .patch(
            Kind::Deployment,
            Some("default"),
            "web",
            &set_image("busybox:v1"),
            false,
        )
        .await
        .expect("roll back");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sets = revisions(&mut client).await;
        if sets
            == [
                ("2".to_string(), "busybox:v2".to_string(), 0),
                ("3".into(), "busybox:v1".into(), 4),
            ]
        {
            break;
        }
        assert!(Instant::now() < deadline, "not rolled back: {sets:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rolled_out(&mut client, "web", 4).await;
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_rollout_follows_pauses_and_undoes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (replica, mut client) = common::replica_with_controllers(dir.path()).await;
    let config = replica.dir.join("pki").join("admin.conf");
    let config = config.to_string_lossy().into_owned();
    register_node(&mut client, "node-1", "8", "", "", true).await;
    let kubelet = common::kubelet::start(client.clone(), &["node-1"]);
    let manifest = dir.path().join("web.yaml");
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: 'busybox:v1'}]\n";
    std::fs::write(&manifest, deployment).expect("manifest");
    let manifest = manifest.to_string_lossy().into_owned();
    common::ok(&config, &["apply", "-f", &manifest]);
    let status = common::ok(
        &config,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    );
    assert!(
        status.ends_with("deployment \"web\" successfully rolled out\n"),
        "{status}"
    );

    std::fs::write(&manifest, deployment.replace("busybox:v1", "busybox:v2")).expect("edit");
    common::ok(&config, &["apply", "-f", &manifest]);
    common::ok(
        &config,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    );
    assert_eq!(
        common::ok(&config, &["rollout", "history", "deployment/web"]),
        "deployment.apps/web \nREVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n"
    );
    let first = common::ok(
        &config,
        &["rollout", "history", "deployment/web", "--revision", "1"],
    );
    assert!(first.contains("image: busybox:v1"), "{first}");

    // Paused: a template change waits; resumed: it rolls out.
    assert_eq!(
        common::ok(&config, &["rollout", "pause", "deployment/web"]),
        "deployment.apps/web paused\n"
    );
    assert_eq!(
        common::ok(&config, &["rollout", "undo", "deployment/web"]),
        "deployment.apps/web rolled back\n"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replicas_of = |sets: &[(String, String, i32)], image: &str| {
        sets.iter()
            .filter(|s| s.1 == image)
            .map(|s| s.2)
            .sum::<i32>()
    };
    let sets = revisions(&mut client).await;
    assert_eq!(
        (
            replicas_of(&sets, "busybox:v1"),
            replicas_of(&sets, "busybox:v2")
        ),
        (0, 2),
        "a paused deployment rolled out: {sets:?}"
    );
    assert_eq!(
        common::ok(&config, &["rollout", "resume", "deployment/web"]),
        "deployment.apps/web resumed\n"
    );
    common::ok(
        &config,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    );
    assert_eq!(
        revisions(&mut client).await,
        [
            ("2".into(), "busybox:v2".into(), 0),
            ("3".into(), "busybox:v1".into(), 2)
        ]
    );
    assert_eq!(
        common::ok(
            &config,
            &["rollout", "undo", "deployment/web", "--to-revision", "3"]
        ),
        "deployment.apps/web skipped rollback (current template already matches revision 3)\n"
    );
    let missing = common::orchctl(
        &config,
        &["rollout", "undo", "deployment/web", "--to-revision", "9"],
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("unable to find specified revision 9 in history"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // Restart: a new revision with the same image, every pod replaced.
    assert_eq!(
        common::ok(&config, &["rollout", "restart", "deployment/web"]),
        "deployment.apps/web restarted\n"
    );
    common::ok(
        &config,
        &["rollout", "status", "deployment/web", "--timeout", "60s"],
    );
    let sets = revisions(&mut client).await;
    assert_eq!(
        sets.last().map(|r| (r.0.as_str(), r.2)),
        Some(("4", 2)),
        "{sets:?}"
    );
    kubelet.abort();
}

/// A slice as the tests read it: its (port name, number)s and endpoints as
/// (address, ready, serving, terminating).
type SliceView = (Vec<(Option<String>, i32)>, Vec<(String, bool, bool, bool)>);

/// The Service's EndpointSlices, sorted.
async fn slices_of(client: &mut ApiClient, service: &str) -> Vec<SliceView> {
    let list = client
        .list(
            Kind::EndpointSlice,
            Some("default"),
            &ListOptions {
                label_selector: format!("kubernetes.io/service-name={service}"),
                ..ListOptions::default()
            },
        )
        .await
        .expect("list slices");
    let mut slices: Vec<_> = list
        .items
        .iter()
        .filter_map(|item| match item {
            Object::EndpointSlice(slice) => Some(slice),
            _ => None,
        })
        .map(|slice| {
            let ports = slice
                .ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone(), p.port.unwrap_or(0)))
                .collect();
            let mut endpoints: Vec<_> = slice
                .endpoints
                .iter()
                .map(|e| {
                    let c = e.conditions.clone().unwrap_or_default();
                    (
                        e.addresses.join(","),
                        c.ready == Some(true),
                        c.serving == Some(true),
                        c.terminating == Some(true),
                    )
                })
                .collect();
            endpoints.sort();
            (ports, endpoints)
        })
        .collect();
    slices.sort();
    slices
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_slices_follow_the_pods_a_service_selects() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers(dir.path()).await;
    register_node(&mut client, "node-1", "64", "", "", true).await;
    // Cordoned: only pods given it by name go there, and no kubelet
    // finishes them.
    register_node(&mut client, "ghost", "8", "", "unschedulable: true", true).await;
    let kubelet = common::kubelet::start(client.clone(), &["node-1"]);
    let objects = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports: [{name: http, port: 80, targetPort: http}]\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 8080}]}]\n";
    for document in manifest::parse_str(objects, "test").expect("manifests") {
        client
            .create(&document.object, false)
            .await
            .expect("create");
    }
    let until = async |client: &mut ApiClient, what: &str, check: &dyn Fn(&[SliceView]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let slices = slices_of(client, "web").await;
            if check(&slices) {
                return slices;
            }
            assert!(Instant::now() < deadline, "{what}: {slices:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The named targetPort resolves to the pods' 8080.
    let slices = until(&mut client, "three ready endpoints", &|s| {
        s.len() == 1 && s[0].1.len() == 3 && s[0].1.iter().all(|e| e.1)
    })
    .await;
    assert_eq!(slices[0].0, [(Some("http".to_string()), 8080)]);

    // A pod being deleted stays listed, terminating, while it drains (on
    // "ghost" no kubelet finishes it).
    let ghost = parse(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: draining, labels: {app: web}}\nspec:\n  nodeName: ghost\n  containers: [{name: c, image: busybox, ports: [{name: http, containerPort: 9090}]}]\n",
    );
    let Object::Pod(mut ghost) = client.create(&ghost, false).await.expect("ghost pod") else {
        panic!("not a pod")
    };
    let status = ghost.status.get_or_insert_with(Default::default);
    status.phase = Some("Running".into());
    status.pod_ip = Some("10.99.0.7".into());
    status.conditions = Some(vec![k8s_openapi::api::core::v1::PodCondition {
        type_: "Ready".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    client
        .update_status(&Object::Pod(ghost))
        .await
        .expect("ghost status");
    until(&mut client, "the ghost's own slice (port 9090)", &|s| {
        s.iter().any(|(ports, eps)| {
            ports == &[(Some("http".to_string()), 9090)]
                && eps == &[("10.99.0.7".to_string(), true, true, false)]
        })
    })
    .await;
    client
        .delete(Kind::Pod, Some("default"), "draining", &Default::default())
        .await
        .expect("delete ghost");
    until(
        &mut client,
        "the ghost terminating, serving, not ready",
        &|s| {
            s.iter()
                .any(|(_, eps)| eps == &[("10.99.0.7".to_string(), false, true, true)])
        },
    )
    .await;

    // A Service with an unnamed port gets its slice too (stored with the
    // port named ""), and settled slices are not rewritten.
    client
        .create(
            &parse("apiVersion: v1\nkind: Service\nmetadata: {name: plain}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n"),
            false,
        )
        .await
        .expect("plain service");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let slices = slices_of(&mut client, "plain").await;
        if slices
            .iter()
            .any(|(ports, eps)| ports == &[(Some(String::new()), 8080)] && eps.len() == 4)
        {
            break;
        }
        assert!(Instant::now() < deadline, "plain's slice: {slices:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let versions = async |client: &mut ApiClient| {
        let list = client
            .list(
                Kind::EndpointSlice,
                Some("default"),
                &ListOptions::default(),
            )
            .await
            .expect("slices");
        list.items
            .iter()
            .map(|s| s.metadata().resource_version.clone())
            .collect::<Vec<_>>()
    };
    let before = versions(&mut client).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        versions(&mut client).await,
        before,
        "slices rewritten with nothing changed"
    );

    // 105 pods: 100 in one slice, the rest in another.
    client
        .patch(
            Kind::Deployment,
            Some("default"),
            "web",
            &serde_json::json!({"spec": {"replicas": 105}}),
            false,
        )
        .await
        .expect("scale");
    until(
        &mut client,
        "105 endpoints in slices of at most 100",
        &|s| {
            let on_8080: Vec<usize> = s
                .iter()
                .filter(|(ports, _)| ports == &[(Some("http".to_string()), 8080)])
                .map(|(_, eps)| eps.len())
                .collect();
            on_8080.iter().sum::<usize>() == 105 && on_8080.iter().all(|n| *n <= 100)
        },
    )
    .await;
    kubelet.abort();
}

async fn node(client: &mut ApiClient, name: &str) -> k8s_openapi::api::core::v1::Node {
    match client.get(Kind::Node, None, name).await {
        Ok(Object::Node(node)) => *node,
        other => panic!("get node {name}: {other:?}"),
    }
}

/// Active (not being deleted) pods of app=web, by node.
async fn active_by_node(client: &mut ApiClient) -> BTreeMap<String, usize> {
    let list = client
        .list(
            Kind::Pod,
            Some("default"),
            &ListOptions {
                label_selector: "app=web".into(),
                ..ListOptions::default()
            },
        )
        .await
        .expect("pods");
    let mut by_node = BTreeMap::new();
    for item in &list.items {
        if let Object::Pod(pod) = item
            && pod.metadata.deletion_timestamp.is_none()
            && let Some(node) = node_of(pod)
        {
            *by_node.entry(node).or_default() += 1;
        }
    }
    by_node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_move() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_replica, mut client) = common::replica_with_controllers_and(
        dir.path(),
        &[
            "--node-monitor-grace-period",
            "2",
            "--default-unreachable-toleration-seconds",
            "2",
        ],
    )
    .await;
    register_node(&mut client, "node-1", "8", "", "", true).await;
    register_node(&mut client, "node-2", "8", "", "", true).await;
    let first = common::kubelet::start(client.clone(), &["node-1"]);
    let second = common::kubelet::start(client.clone(), &["node-2"]);

    // Node IPAM: each node its own /24 of 10.244.0.0/16.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut cidrs = loop {
        let mut cidrs = Vec::new();
        for name in ["node-1", "node-2"] {
            cidrs.extend(node(&mut client, name).await.spec.and_then(|s| s.pod_cidr));
        }
        if cidrs.len() == 2 {
            break cidrs;
        }
        assert!(
            Instant::now() < deadline,
            "pod CIDRs not assigned: {cidrs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    cidrs.sort();
    assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24"]);

    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 4\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}\n      containers: [{name: c, image: busybox}]\n";
    client
        .create(&parse(deployment), false)
        .await
        .expect("deployment");
    rolled_out(&mut client, "web", 4).await;
    let spread = active_by_node(&mut client).await;
    assert_eq!(spread.get("node-2"), Some(&2), "{spread:?}");
    // Every pod got the default unreachable toleration (2 s here).
    let Object::Pod(sample) = client
        .list(Kind::Pod, Some("default"), &ListOptions::default())
        .await
        .expect("pods")
        .items
        .remove(0)
    else {
        panic!("not a pod")
    };
    let tolerations = sample.spec.and_then(|s| s.tolerations).unwrap_or_default();
    assert!(
        tolerations.iter().any(
            |t| t.key.as_deref() == Some("node.kubernetes.io/unreachable")
                && t.effect.as_deref() == Some("NoExecute")
                && t.toleration_seconds == Some(2)
        ),
        "{tolerations:?}"
    );

    // node-2's agent goes quiet: Unknown, tainted, its pods move.
    second.abort();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let silent = node(&mut client, "node-2").await;
        let ready = silent
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone());
        let taints: Vec<(String, String)> = silent
            .spec
            .iter()
            .flat_map(|s| s.taints.iter().flatten())
            .map(|t| (t.key.clone(), t.effect.clone()))
            .collect();
        let unreachable = |effect: &str| {
            taints.contains(&(
                "node.kubernetes.io/unreachable".to_string(),
                effect.to_string(),
            ))
        };
        if ready.as_deref() == Some("Unknown")
            && unreachable("NoSchedule")
            && unreachable("NoExecute")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-2 not marked: {ready:?} {taints:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its pods are not Ready any more (Services drop them), evicted or not.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pods = client
            .list(Kind::Pod, Some("default"), &ListOptions::default())
            .await
            .expect("pods");
        let still_ready: Vec<String> = pods
            .items
            .iter()
            .filter_map(|item| match item {
                Object::Pod(pod) if node_of(pod).as_deref() == Some("node-2") => Some(pod),
                _ => None,
            })
            .filter(|pod| {
                pod.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .filter_map(|pod| pod.metadata.name.clone())
            .collect();
        if still_ready.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node-2's pods still Ready: {still_ready:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let by_node = active_by_node(&mut client).await;
        let status = deployment_status(&mut client, "web").await;
        if by_node.get("node-1") == Some(&4)
            && by_node.len() == 1
            && status.available_replicas == Some(4)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods not moved: {by_node:?} {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Back: the agent renews and reports Ready (again whenever it reads
    // otherwise, as orch-node does); the taints go.
    let second = common::kubelet::start(client.clone(), &["node-2"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut back = node(&mut client, "node-2").await;
        let taints = back
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        if taints.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "taints stay: {taints:?}");
        let mut reported = false;
        for condition in back
            .status
            .iter_mut()
            .flat_map(|s| s.conditions.iter_mut().flatten())
        {
            if condition.type_ == "Ready" && condition.status != "True" {
                condition.status = "True".into();
                condition.reason = Some("KubeletReady".into());
                reported = true;
            }
        }
        if reported {
            let _ = client.update_status(&Object::Node(Box::new(back))).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    first.abort();
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_kill_moves_the_controllers_without_duplicate_pods() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replicas = common::replicas_with_controllers(dir.path(), 3);
    let servers: Vec<String> = replicas.iter().map(|r| r.api_addr.clone()).collect();
    let config = replicas[0].api_config(&servers);
    let mut client = ApiClient::new(&config, Duration::from_secs(20)).expect("client");
    let nodes = ["node-1", "node-2", "node-3"];
    for name in nodes {
        register_node(&mut client, name, "8", "", "", true).await;
    }
    let kubelet = common::kubelet::start(client.clone(), &nodes);
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 6\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: busybox}]\n";
    client
        .create(&parse(deployment), false)
        .await
        .expect("deployment");
    rolled_out(&mut client, "web", 6).await;

    // Kill the replica running the controllers, and scale meanwhile.
    let holder = common::controller_lease_holder(&mut client).await;
    let leader = replicas
        .iter()
        .position(|r| holder.starts_with(&format!("orch-control-{}_", r.id)))
        .unwrap_or_else(|| panic!("holder {holder:?} is no replica"));
    replicas[leader].kill();
    client
        .patch(
            Kind::Deployment,
            Some("default"),
            "web",
            &serde_json::json!({"spec": {"replicas": 9}}),
            false,
        )
        .await
        .expect("scale during the failover");
    rolled_out(&mut client, "web", 9).await;
    assert_ne!(common::controller_lease_holder(&mut client).await, holder);
    // Exactly nine pods, one ReplicaSet, and it stays so.
    for _ in 0..10 {
        let (_, by_node) = pods_by_node(&mut client, "app=web").await;
        let active: usize = active_by_node(&mut client).await.values().sum();
        assert_eq!(active, 9, "{by_node:?}");
        assert_eq!(revisions(&mut client).await.len(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kubelet.abort();
}
