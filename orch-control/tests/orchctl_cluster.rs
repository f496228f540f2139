//! orchctl against a real orch-control: apply (created, unchanged,
//! configured), get tables and outputs, delete, and errors with exit codes.

mod common;

use std::time::Duration;

use std::process::Command;

use common::{ORCHCTL, ok, orchctl};

const APP: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: busybox}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchctl_applies_gets_and_deletes_like_kubectl() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut replica = common::Replica::new(1, dir.path().join("replica-1"));
    replica.start(&["--init"]);
    let admin = replica.dir.join("pki").join("admin.conf");
    let server = admin.to_string_lossy().into_owned();
    let file = dir.path().join("app.yaml");
    std::fs::write(&file, APP).expect("write manifest");
    let file = file.to_string_lossy().into_owned();

    // The system namespaces appear right after start.
    for _ in 0..100 {
        if orchctl(&server, &["get", "ns", "default"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    assert_eq!(
        ok(&server, &["apply", "-f", &file]),
        "deployment.apps/web created\nservice/web created\n"
    );
    assert_eq!(
        ok(&server, &["apply", "-f", &file]),
        "deployment.apps/web unchanged\nservice/web unchanged\n"
    );
    std::fs::write(&file, APP.replace("replicas: 2", "replicas: 3")).expect("edit");
    assert_eq!(
        ok(&server, &["apply", "-f", &file]),
        "deployment.apps/web configured\nservice/web unchanged\n"
    );
    assert_eq!(
        ok(&server, &["apply", "-f", &file, "--dry-run=server"]),
        "deployment.apps/web unchanged (server dry run)\nservice/web unchanged (server dry run)\n"
    );

    let table = ok(&server, &["get", "deploy"]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some("NAME   READY   UP-TO-DATE   AVAILABLE   AGE"),
        "{table}"
    );
    let row = lines.next().expect("a row");
    assert!(
        row.starts_with("web    0/3     0            0           "),
        "{row:?}"
    );
    let services = ok(&server, &["get", "svc", "-o", "wide"]);
    let mut lines = services.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ],
        "{services}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row.len(), 7, "{services}");
    assert_eq!(
        (row[0], row[1], row[3], row[4], row[6]),
        ("web", "ClusterIP", "<none>", "80/TCP", "app=web")
    );
    // The API server gave it an address of the default service range.
    let ip: std::net::Ipv4Addr = row[2].parse().expect("a cluster IP");
    assert_eq!(
        u32::from(ip) >> 20,
        u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20,
        "{ip}"
    );
    // -o wide: kubectl's extra columns.
    let wide = ok(&server, &["get", "deploy", "-o", "wide"]);
    let mut lines = wide.lines();
    assert_eq!(
        lines.next(),
        Some("NAME   READY   UP-TO-DATE   AVAILABLE   AGE   CONTAINERS   IMAGES    SELECTOR"),
        "{wide}"
    );
    let row = lines.next().expect("a row");
    assert!(
        row.starts_with("web    0/3     0            0           "),
        "{row:?}"
    );
    assert!(row.ends_with("web          busybox   app=web"), "{row:?}");
    assert_eq!(
        ok(&server, &["get", "deploy,svc", "-o", "name"]),
        "deployment.apps/web\nservice/web\n"
    );
    assert_eq!(
        ok(
            &server,
            &["get", "deployments", "-l", "app=web", "-o", "name"]
        ),
        "deployment.apps/web\n"
    );
    let namespaces = ok(&server, &["get", "ns"]);
    for ns in ["default", "kube-node-lease", "kube-system"] {
        assert!(namespaces.contains(&format!("{ns} ")), "{namespaces}");
    }
    let yaml = ok(&server, &["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("replicas: 3") && yaml.contains("uid: "),
        "{yaml}"
    );

    // Errors: to stderr, naming the object and reason, non-zero exit.
    let missing = orchctl(&server, &["get", "deploy", "nope"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("deployments.apps \"nope\" not found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let unknown = orchctl(&server, &["get", "widgets"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("resource type \"widgets\""));
    let conflict = orchctl(&server, &["create", "-f", &file]);
    assert!(!conflict.status.success());
    assert!(
        String::from_utf8_lossy(&conflict.stderr)
            .contains("Error from server (AlreadyExists): deployment.apps/web deployments.apps \"web\" already exists"),
        "{}",
        String::from_utf8_lossy(&conflict.stderr)
    );

    // One-field changes, as kubectl makes them.
    assert_eq!(
        ok(&server, &["scale", "deploy/web", "--replicas", "5"]),
        "deployment.apps/web scaled\n"
    );
    assert_eq!(
        ok(&server, &["label", "deploy", "web", "tier=front"]),
        "deployment.apps/web labeled\n"
    );
    let clash = orchctl(&server, &["label", "deploy", "web", "tier=back"]);
    assert!(!clash.status.success());
    assert!(
        String::from_utf8_lossy(&clash.stderr)
            .contains("'tier' already has a value (front), and --overwrite is false"),
        "{}",
        String::from_utf8_lossy(&clash.stderr)
    );
    ok(
        &server,
        &["label", "deploy", "web", "tier=back", "--overwrite"],
    );
    assert_eq!(
        ok(&server, &["annotate", "deploy", "web", "note=hello"]),
        "deployment.apps/web annotated\n"
    );
    let described = ok(&server, &["describe", "deploy", "web"]);
    for expected in [
        "Name:        web\n",
        "Namespace:   default\n",
        "Kind:        Deployment\n",
        "tier=back",
        "note=hello",
        "Spec:\n",
        "  replicas: 5\n",
        "Events:      <none>\n",
    ] {
        assert!(
            described.contains(expected),
            "{expected:?} missing from:\n{described}"
        );
    }
    let edited = Command::new(ORCHCTL)
        .args(["edit", "deploy", "web"])
        .env("ORCH_CONFIG", &server)
        .env("EDITOR", "sed -i 's/replicas: 5/replicas: 4/'")
        .output()
        .expect("orchctl edit");
    assert_eq!(
        String::from_utf8_lossy(&edited.stdout),
        "deployment.apps/web edited\n",
        "{}",
        String::from_utf8_lossy(&edited.stderr)
    );
    let yaml = ok(&server, &["get", "deploy", "web", "-o", "yaml"]);
    assert!(
        yaml.contains("replicas: 4") && yaml.contains("tier: back"),
        "{yaml}"
    );

    let node = dir.path().join("node.yaml");
    std::fs::write(&node, "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n").expect("node");
    ok(&server, &["apply", "-f", &node.to_string_lossy()]);
    assert_eq!(ok(&server, &["cordon", "n1"]), "node/n1 cordoned\n");
    assert!(ok(&server, &["get", "nodes"]).contains("n1     NotReady,SchedulingDisabled"));
    assert_eq!(ok(&server, &["uncordon", "n1"]), "node/n1 uncordoned\n");

    // drain: cordons, refuses pods no controller manages unless --force,
    // then deletes the node's pods and waits until they are gone.
    let pods = dir.path().join("pods.yaml");
    std::fs::write(
        &pods,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keeper, namespace: default}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: loner, namespace: default}\n\
         spec: {nodeName: n1, containers: [{name: c, image: busybox}]}\n",
    )
    .expect("pods");
    ok(&server, &["apply", "-f", &pods.to_string_lossy()]);
    let keeper = ok(&server, &["get", "cm", "keeper", "-o", "json"]);
    let keeper: serde_json::Value = serde_json::from_str(&keeper).expect("json");
    let managed = dir.path().join("managed.yaml");
    std::fs::write(
        &managed,
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: managed\n  namespace: default\n  \
             ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: keeper, uid: {}, controller: true}}]\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: busybox}}]}}\n",
            keeper["metadata"]["uid"].as_str().expect("uid")
        ),
    )
    .expect("managed pod");
    ok(&server, &["apply", "-f", &managed.to_string_lossy()]);
    let refused = orchctl(&server, &["drain", "n1", "--grace-period", "0"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("cannot delete Pods that declare no controller")
            && stderr.contains("default/loner"),
        "{stderr}"
    );
    assert_eq!(
        ok(
            &server,
            &[
                "drain",
                "n1",
                "--grace-period",
                "0",
                "--force",
                "--timeout",
                "20"
            ]
        ),
        "node/n1 cordoned\nevicting pod default/loner\nevicting pod default/managed\n\
         pod/loner evicted\npod/managed evicted\nnode/n1 drained\n"
    );
    assert!(ok(&server, &["get", "nodes"]).contains("SchedulingDisabled"));
    ok(&server, &["uncordon", "n1"]);
    let gone = orchctl(
        &server,
        &["get", "pods", "--field-selector", "spec.nodeName=n1"],
    );
    assert!(String::from_utf8_lossy(&gone.stderr).contains("No resources found"));

    // drain waits for the pods it evicted (by uid), not for pods that
    // reach the node meanwhile.
    let held = dir.path().join("held.yaml");
    std::fs::write(
        &held,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: held, namespace: default, finalizers: [example.com/hold]}\n\
         spec: {nodeName: n1, containers: [{name: c, image: busybox}]}\n",
    )
    .expect("held pod");
    ok(&server, &["apply", "-f", &held.to_string_lossy()]);
    let draining = Command::new(ORCHCTL)
        .args([
            "drain",
            "n1",
            "--grace-period",
            "0",
            "--force",
            "--timeout",
            "30",
        ])
        .env("ORCH_CONFIG", &server)
        .env_remove("RUST_BACKTRACE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start drain");
    let evicting = std::time::Instant::now();
    loop {
        let pod = ok(&server, &["get", "pod", "held", "-o", "json"]);
        let pod: serde_json::Value = serde_json::from_str(&pod).expect("json");
        if !pod["metadata"]["deletionTimestamp"].is_null() {
            break;
        }
        assert!(
            evicting.elapsed() < Duration::from_secs(20),
            "drain never evicted held"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let newcomer = dir.path().join("newcomer.yaml");
    std::fs::write(
        &newcomer,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: newcomer, namespace: default}\n\
         spec: {nodeName: n1, containers: [{name: c, image: busybox}]}\n",
    )
    .expect("newcomer pod");
    ok(&server, &["apply", "-f", &newcomer.to_string_lossy()]);
    let refused = orchctl(
        &server,
        &["patch", "pod/held", "--type", "json", "-p", "[]"],
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--type: \"json\" is not served"),
        "{refused:?}"
    );
    assert_eq!(
        ok(
            &server,
            &[
                "patch",
                "pod",
                "held",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#
            ],
        ),
        "pod/held patched\n"
    );
    let drained = draining.wait_with_output().expect("drain ends");
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    assert!(
        String::from_utf8_lossy(&drained.stdout).ends_with("pod/held evicted\nnode/n1 drained\n"),
        "{}",
        String::from_utf8_lossy(&drained.stdout)
    );
    assert!(ok(&server, &["get", "pods"]).contains("newcomer"));
    ok(
        &server,
        &["delete", "pod", "newcomer", "--grace-period", "0"],
    );
    ok(&server, &["uncordon", "n1"]);

    // events: newest last, filtered by object and type.
    let events = dir.path().join("events.yaml");
    std::fs::write(
        &events,
        "apiVersion: v1\nkind: Event\nmetadata: {name: e1, namespace: default}\n\
         involvedObject: {kind: Pod, name: loner, namespace: default}\n\
         reason: Scheduled\ntype: Normal\nmessage: assigned to n1\nlastTimestamp: '2026-01-01T00:00:01Z'\n---\n\
         apiVersion: v1\nkind: Event\nmetadata: {name: e2, namespace: default}\n\
         involvedObject: {kind: Node, name: n1}\n\
         reason: NodeNotReady\ntype: Warning\nmessage: no agent\nlastTimestamp: '2026-01-01T00:00:00Z'\n",
    )
    .expect("events");
    ok(&server, &["apply", "-f", &events.to_string_lossy()]);
    let listing = ok(&server, &["events"]);
    let rows: Vec<&str> = listing.lines().collect();
    assert!(rows[0].starts_with("LAST SEEN"), "{listing}");
    assert!(
        rows[1].contains("NodeNotReady") && rows[1].contains("node/n1"),
        "{listing}"
    );
    assert!(
        rows[2].contains("Scheduled") && rows[2].contains("pod/loner"),
        "{listing}"
    );
    let for_pod = ok(&server, &["events", "--for", "pod/loner"]);
    assert_eq!(for_pod.lines().count(), 2, "{for_pod}");
    let warnings = ok(&server, &["events", "--types", "Warning"]);
    assert!(
        warnings.contains("no agent") && !warnings.contains("assigned"),
        "{warnings}"
    );
    assert!(ok(&server, &["get", "no", "n1"]).contains("n1     NotReady   <none>"));

    // get -w: the current table, then a row per change.
    let mut watching = Command::new(ORCHCTL)
        .args(["get", "configmaps", "-w"])
        .env("ORCH_CONFIG", &server)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("orchctl get -w");
    let stdout = watching.stdout.take().expect("stdout");
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cm = dir.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\ndata: {a: b, c: d}\n",
    )
    .expect("cm");
    ok(&server, &["apply", "-f", &cm.to_string_lossy()]);
    let mut printed = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !printed.iter().any(|l: &String| l.starts_with("watched ")) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match seen.recv_timeout(left) {
            Ok(line) => printed.push(line),
            Err(_) => panic!("get -w printed no row for the new object: {printed:?}"),
        }
    }
    let _ = watching.kill();
    let _ = watching.wait();
    let row = printed
        .iter()
        .find(|l| l.starts_with("watched "))
        .expect("row");
    assert!(
        row.starts_with("watched   2      "),
        "{row:?} in {printed:?}"
    );

    let view = ok(&server, &["config", "view"]);
    assert!(
        view.contains("certificate-authority: DATA+OMITTED"),
        "{view}"
    );
    assert!(!view.contains("BEGIN"), "secrets shown: {view}");
    // Contexts: a file with a dead cluster current, switched to the live one.
    let admin_config = orch_core::api::config::ClientConfig::load(&admin).expect("admin config");
    let mut dead = admin_config.clone();
    dead.servers = vec!["127.0.0.1:1".into()];
    let contexts = orch_core::api::config::ConfigFile {
        current_context: Some("dead".into()),
        contexts: Some(vec![
            orch_core::api::config::NamedContext {
                name: "live".into(),
                config: admin_config,
            },
            orch_core::api::config::NamedContext {
                name: "dead".into(),
                config: dead,
            },
        ]),
        single: None,
    };
    let contexts_path = dir.path().join("contexts.yaml");
    std::fs::write(&contexts_path, "contexts: []\n").expect("placeholder");
    let mut writer = contexts.clone();
    writer
        .use_context(&contexts_path, "dead")
        .expect("write the contexts file");
    let contexts_file = contexts_path.to_string_lossy().into_owned();
    assert!(
        !orchctl(
            &contexts_file,
            &["get", "ns", "default", "--request-timeout", "2"]
        )
        .status
        .success()
    );
    assert_eq!(
        ok(&contexts_file, &["config", "use-context", "live"]),
        "Switched to context \"live\".\n"
    );
    assert_eq!(ok(&contexts_file, &["config", "current-context"]), "live\n");
    ok(&contexts_file, &["get", "ns", "default"]);
    let listing = ok(&contexts_file, &["config", "get-contexts"]);
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("*") && l.contains("live")),
        "{listing}"
    );
    let unknown = orchctl(&contexts_file, &["config", "use-context", "staging"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no context named \"staging\""),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );

    let completion = ok(&server, &["completion", "bash"]);
    assert!(completion.contains("_orchctl()"), "{completion}");

    assert_eq!(
        ok(&server, &["delete", "-f", &file]),
        "deployment.apps \"web\" deleted\nservice \"web\" deleted\n"
    );
    let empty = orchctl(&server, &["get", "deploy"]);
    assert!(empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found in default namespace.")
    );
}
