use std::sync::Arc;

use super::*;
use orch_core::manifest;

fn object(yaml: &str) -> Arc<Object> {
    Arc::new(
        manifest::parse_str(yaml, "test")
            .expect("manifest")
            .remove(0)
            .object,
    )
}

fn node(name: &str, zone: &str, cpu: &str) -> Arc<Object> {
    object(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: {name}, labels: {{kubernetes.io/hostname: {name}, zone: {zone}}}}}\nstatus:\n  allocatable: {{cpu: '{cpu}', memory: 4Gi, pods: '10'}}\n  conditions: [{{type: Ready, status: 'True'}}]\n"
    ))
}

fn pod(name: &str, node: Option<&str>, extra: &str) -> Arc<Object> {
    let node = node.map_or(String::new(), |n| format!("  nodeName: {n}\n"));
    object(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\nspec:\n{node}{extra}  containers: [{{name: c, image: busybox, resources: {{requests: {{cpu: 500m}}}}}}]\n"
    ))
}

fn table(nodes: &[Arc<Object>], pods: &[Arc<Object>]) -> NodeTable {
    let mut table = NodeTable::default();
    for node in nodes {
        table.set_node(node.clone());
    }
    for pod in pods {
        table.set_pod(pod.clone());
    }
    table
}

fn feasible(table: &NodeTable, pod: &Arc<Object>) -> Vec<String> {
    let candidate = Candidate::new(pod, table).expect("candidate");
    table
        .nodes
        .values()
        .filter(|info| candidate.filter(info, table).is_empty())
        .map(|info| info.name().to_owned())
        .collect()
}

#[test]
fn the_message_counts_reasons_like_kubernetes() {
    let reasons = BTreeMap::from([
        ("node(s) were unschedulable".to_string(), 2),
        ("Insufficient cpu".to_string(), 3),
    ]);
    assert_eq!(
        unschedulable_message(5, &reasons),
        "0/5 nodes are available: 2 node(s) were unschedulable, 3 Insufficient cpu."
    );
    assert_eq!(
        unschedulable_message(0, &BTreeMap::new()),
        "0/0 nodes are available: no nodes available to schedule pods."
    );
}

#[test]
fn resources_count_bound_and_assumed_pods_until_they_finish() {
    let nodes = [node("a", "z1", "1")];
    let mut table = table(&nodes, &[pod("one", Some("a"), "")]);
    let second = pod("two", None, "");
    assert_eq!(feasible(&table, &second), ["a"]);
    table.assume(second.clone(), "a");
    let third = pod("three", None, "");
    let candidate = Candidate::new(&third, &table).expect("candidate");
    let info = table.nodes.get("a").expect("node");
    assert_eq!(candidate.filter(info, &table), ["Insufficient cpu"]);
    // The assumed pod's binding failed: its room is free again.
    table.forget(&orch_core::runtime::ObjectRef::of(&second));
    assert_eq!(feasible(&table, &third), ["a"]);
    // A finished pod holds nothing.
    let done = object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: one, namespace: default}\nspec:\n  nodeName: a\n  containers: [{name: c, image: busybox, resources: {requests: {cpu: 500m}}}]\nstatus: {phase: Succeeded}\n",
    );
    table.set_pod(done);
    table.assume(second, "a");
    assert_eq!(feasible(&table, &third), ["a"]);
}

#[test]
fn hard_spread_and_anti_affinity_filter_by_domain() {
    let nodes = [
        node("a", "z1", "8"),
        node("b", "z1", "8"),
        node("c", "z2", "8"),
    ];
    let placed = [pod("p1", Some("a"), ""), pod("p2", Some("b"), "")];
    let table = table(&nodes, &placed);
    let spread = pod(
        "new",
        None,
        "  topologySpreadConstraints:\n  - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}\n",
    );
    // z1 holds 2, z2 none: one more in z1 would make the skew 3.
    assert_eq!(feasible(&table, &spread), ["c"]);
    let anti = pod(
        "new",
        None,
        "  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app: web}}}\n",
    );
    assert_eq!(feasible(&table, &anti), ["c"]);
    // An existing pod's anti-affinity keeps newcomers out of its zone.
    let guard = object(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: guard, namespace: default, labels: {role: guard}}\nspec:\n  nodeName: c\n  affinity:\n    podAntiAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n      - {topologyKey: zone, labelSelector: {matchLabels: {app: web}}}\n  containers: [{name: c, image: busybox}]\n",
    );
    let mut guarded = table;
    guarded.set_pod(guard);
    let plain = pod("plain", None, "");
    assert_eq!(feasible(&guarded, &plain), ["a", "b"]);
}

#[test]
fn scores_prefer_free_and_preferred_nodes() {
    let nodes = [node("busy", "z1", "2"), node("idle", "z1", "2")];
    let table = table(&nodes, &[pod("p1", Some("busy"), "")]);
    let new = pod("new", None, "");
    let candidate = Candidate::new(&new, &table).expect("candidate");
    let busy = table.nodes.get("busy").expect("busy");
    let idle = table.nodes.get("idle").expect("idle");
    let counts = [candidate.counts(busy), candidate.counts(idle)];
    let normal = Normalisers::over(&counts);
    let busy = candidate.score(busy, &counts[0], &normal);
    let idle = candidate.score(idle, &counts[1], &normal);
    assert!(idle > busy, "idle {idle} vs busy {busy}");
}

#[test]
fn searches_rotate_over_the_nodes() {
    let mut table = table(
        &[
            node("a", "z", "1"),
            node("b", "z", "1"),
            node("c", "z", "1"),
        ],
        &[],
    );
    let order = |table: &NodeTable| -> Vec<String> {
        table
            .search_order()
            .map(|info| info.name().to_owned())
            .collect()
    };
    assert_eq!(order(&table), ["a", "b", "c"]);
    table.searched_up_to(Some("a".into()));
    assert_eq!(order(&table), ["b", "c", "a"]);
    table.searched_up_to(Some("c".into()));
    assert_eq!(order(&table), ["a", "b", "c"]);
    // A search that examined nothing leaves the cursor; a removed node's
    // name still orders the next search.
    table.searched_up_to(None);
    assert_eq!(order(&table), ["a", "b", "c"]);
    table.searched_up_to(Some("bb".into()));
    assert_eq!(order(&table), ["c", "a", "b"]);
}
