//! Services' ClusterIPs and NodePorts from real `orch-control` processes:
//! allocated at create, never twice even when many Services are created
//! at once into a nearly full range, kept on update, released on delete,
//! and still taken after a restart.

mod common;

use std::collections::BTreeSet;

use orch_core::api::{ApiClient, ApiError};
use orch_core::manifest;
use orch_core::object::{Kind, Object};

fn service(name: &str, extra: &str) -> Object {
    manifest::parse_str(
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n{extra}  ports: [{{port: 80}}]\n"
        ),
        "test",
    )
    .expect("manifest")
    .remove(0)
    .object
}

/// (clusterIP, nodePorts) of a Service object.
fn addresses(object: &Object) -> (String, Vec<i32>) {
    let Object::Service(svc) = object else {
        panic!("not a service")
    };
    let spec = svc.spec.as_ref().expect("spec");
    (
        spec.cluster_ip.clone().unwrap_or_default(),
        spec.ports
            .iter()
            .flatten()
            .filter_map(|p| p.node_port)
            .collect(),
    )
}

async fn create_all(client: &ApiClient, objects: Vec<Object>) -> Vec<Result<Object, ApiError>> {
    let mut tasks = tokio::task::JoinSet::new();
    for object in objects {
        let mut client = client.clone();
        tasks.spawn(async move { client.create(&object, false).await });
    }
    let mut results = Vec::new();
    while let Some(result) = tasks.join_next().await {
        results.push(result.expect("task"));
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_ips_and_node_ports_never_collide_and_survive_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    // A /28 holds 14 usable addresses; ten node ports.
    let ranges = [
        "--service-cluster-ip-range",
        "10.200.0.0/28",
        "--service-node-port-range",
        "30000-30009",
    ];
    let mut args = vec!["--init"];
    args.extend(ranges);
    replica.start(&args);
    let mut client = common::client_of(&replica).await;

    // Fourteen at once fill the range, each with its own address.
    let mut wanted: Vec<Object> = (0..9).map(|i| service(&format!("ip-{i}"), "")).collect();
    wanted.extend((0..5).map(|i| service(&format!("np-{i}"), "  type: NodePort\n")));
    let created: Vec<Object> = create_all(&client, wanted)
        .await
        .into_iter()
        .map(|r| r.expect("create"))
        .collect();
    let ips: BTreeSet<String> = created.iter().map(|o| addresses(o).0).collect();
    assert_eq!(ips.len(), 14, "{ips:?}");
    for ip in &ips {
        let last: u8 = ip
            .strip_prefix("10.200.0.")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{ip} outside 10.200.0.0/28"));
        assert!(
            (1..=14).contains(&last),
            "{ip}: network or broadcast address"
        );
    }
    let ports: BTreeSet<i32> = created.iter().flat_map(|o| addresses(o).1).collect();
    assert_eq!(ports.len(), 5, "{ports:?}");
    assert!(
        ports.iter().all(|p| (30000..=30009).contains(p)),
        "{ports:?}"
    );

    // Full: the next one is refused, naming the range.
    let full = client.create(&service("one-too-many", ""), false).await;
    match full {
        Err(error) => assert!(
            error.to_string().contains("10.200.0.0/28 is full"),
            "{error}"
        ),
        Ok(object) => panic!("allocated {:?} in a full range", addresses(&object)),
    }
    // A headless Service needs no address.
    client
        .create(&service("headless", "  clusterIP: None\n"), false)
        .await
        .expect("headless");

    // Re-sending a Service without its addresses keeps them.
    let before = client
        .get(Kind::Service, Some("default"), "np-0")
        .await
        .expect("get");
    let mut resent = service("np-0", "  type: NodePort\n");
    resent.metadata_mut().labels = Some([("touched".to_string(), "yes".to_string())].into());
    let after = client.update(&resent, false).await.expect("update");
    assert_eq!(addresses(&after), addresses(&before));

    // Another Service's address, taken for good (`created` is in
    // completion order: any index may be np-0, changed and deleted below).
    let others_ip = created
        .iter()
        .find(|o| o.metadata().name.as_deref() != Some("np-0"))
        .map(|o| addresses(o).0)
        .expect("another service");
    // A ClusterIP is for life; a status write does not touch addresses.
    let mut moved = service("np-0", "  type: NodePort\n");
    if let Object::Service(svc) = &mut moved
        && let Some(spec) = svc.spec.as_mut()
    {
        spec.cluster_ip = Some(others_ip.clone());
    }
    let refused = client
        .update(&moved, false)
        .await
        .expect_err("clusterIP changed");
    assert!(
        refused.to_string().contains("may not change once set"),
        "{refused}"
    );
    let status = client.update_status(&after).await.expect("status update");
    assert_eq!(addresses(&status), addresses(&before));
    // Deleting frees the addresses; asking for a taken one is refused.
    let (freed_ip, freed_ports) = addresses(&before);
    client
        .delete(Kind::Service, Some("default"), "np-0", &Default::default())
        .await
        .expect("delete");
    // Ports given and picked in one Service never share a number (it takes
    // the address np-0 left, and gives it back).
    let mixed = service("mixed", "  type: NodePort\n").to_json();
    let mut mixed = mixed;
    mixed["spec"]["ports"] = serde_json::json!([
        {"name": "a", "port": 80},
        {"name": "b", "port": 81, "nodePort": 30009}
    ]);
    let mixed = Kind::Service.deserialize(mixed).expect("service");
    match client.create(&mixed, false).await {
        Ok(object) => {
            let ports = addresses(&object).1;
            assert_eq!(ports.len(), 2);
            assert_ne!(ports[0], ports[1], "{ports:?}");
            client
                .delete(Kind::Service, Some("default"), "mixed", &Default::default())
                .await
                .expect("delete mixed");
        }
        // 30009 may be one of the five taken above: then it says so.
        Err(error) => assert!(error.to_string().contains("already allocated"), "{error}"),
    }

    let refused = client
        .create(
            &service("wants-taken", &format!("  clusterIP: {others_ip}\n")),
            false,
        )
        .await
        .expect_err("taken IP");
    assert!(
        refused.to_string().contains("already allocated"),
        "{refused}"
    );
    let reuse = service(
        "reuse",
        &format!("  type: NodePort\n  clusterIP: {freed_ip}\n"),
    );
    let reuse = client.create(&reuse, false).await.expect("freed IP");
    assert_eq!(addresses(&reuse).0, freed_ip);
    assert_eq!(addresses(&reuse).1.len(), 1);
    assert!(!freed_ports.is_empty());

    // After a restart the store still knows what is taken.
    replica.kill();
    replica.start(&ranges);
    let mut client = common::client_of(&replica).await;
    let refused = client
        .create(
            &service("after-restart", &format!("  clusterIP: {freed_ip}\n")),
            false,
        )
        .await
        .expect_err("still taken");
    assert!(
        refused.to_string().contains("already allocated"),
        "{refused}"
    );
}
