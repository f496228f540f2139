//! `orchctl events` (kubectl events: the newest last), `orchctl drain`
//! (cordon, then delete the node's pods and wait until they are gone) and
//! `orchctl image import` (an image archive onto a node).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError, ListOptions};
use orch_core::object::{Kind, Object};
use serde_json::{Value, json};

use super::objects::{Connection, kind_arg};

#[derive(clap::Args)]
pub struct EventsArgs {
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Events of every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only the events of this object: KIND/NAME (pod/web-1, deploy/web).
    #[arg(long = "for")]
    pub for_object: Option<String>,
    /// Only these types (Normal, Warning), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    #[command(flatten)]
    pub connection: Connection,
}

/// When an event last happened: lastTimestamp, eventTime, or creation.
fn last_seen(event: &Value) -> String {
    [
        &event["lastTimestamp"],
        &event["eventTime"],
        &event["metadata"]["creationTimestamp"],
    ]
    .into_iter()
    .find_map(|v| v.as_str().map(str::to_string))
    .unwrap_or_default()
}

pub fn events(args: EventsArgs) -> Result<()> {
    let mut selectors = Vec::new();
    if let Some(target) = &args.for_object {
        let Some((kind, name)) = target.split_once('/') else {
            bail!("--for {target:?}: expected KIND/NAME, e.g. pod/web-1");
        };
        let kind = kind_arg(kind)?;
        selectors.push(format!("involvedObject.kind={}", kind.name()));
        selectors.push(format!("involvedObject.name={name}"));
    }
    for kind in &args.types {
        if kind != "Normal" && kind != "Warning" {
            bail!("--types {kind:?}: expected Normal or Warning");
        }
    }
    let namespace = if args.all_namespaces {
        None
    } else {
        Some(args.namespace.clone().unwrap_or_else(|| "default".into()))
    };
    let options = ListOptions {
        field_selector: selectors.join(","),
        ..ListOptions::default()
    };
    let (runtime, mut client) = args.connection.session()?;
    let listed = runtime.block_on(client.list(Kind::Event, namespace.as_deref(), &options))?;
    let mut events: Vec<Value> = listed
        .items
        .iter()
        .map(Object::to_json)
        .filter(|e| {
            args.types.is_empty()
                || args
                    .types
                    .iter()
                    .any(|t| e["type"].as_str() == Some(t.as_str()))
        })
        .collect();
    if events.is_empty() {
        match &namespace {
            Some(namespace) => eprintln!("No events found in {namespace} namespace."),
            None => eprintln!("No events found."),
        }
        return Ok(());
    }
    events.sort_by_key(last_seen);
    let with_namespace = namespace.is_none();
    if with_namespace {
        print!("{:<16}", "NAMESPACE");
    }
    println!(
        "{:<22} {:<8} {:<20} {:<32} MESSAGE",
        "LAST SEEN", "TYPE", "REASON", "OBJECT"
    );
    for event in &events {
        if with_namespace {
            print!(
                "{:<16}",
                event["metadata"]["namespace"].as_str().unwrap_or_default()
            );
        }
        let involved = &event["involvedObject"];
        println!(
            "{:<22} {:<8} {:<20} {:<32} {}",
            last_seen(event),
            event["type"].as_str().unwrap_or_default(),
            event["reason"].as_str().unwrap_or_default(),
            format!(
                "{}/{}",
                involved["kind"].as_str().unwrap_or_default().to_lowercase(),
                involved["name"].as_str().unwrap_or_default()
            ),
            event["message"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DrainArgs {
    pub node: String,
    /// Seconds each pod gets to stop (default: the pod's own
    /// terminationGracePeriodSeconds; 0 removes at once).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Also delete pods no controller manages (they will not come back).
    #[arg(long)]
    pub force: bool,
    /// Give up waiting after this many seconds (0: wait as long as it takes).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    #[command(flatten)]
    pub connection: Connection,
}

fn pod_name(pod: &Object) -> String {
    let meta = pod.metadata();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

async fn pods_on(client: &mut ApiClient, node: &str) -> Result<Vec<Object>, ApiError> {
    let options = ListOptions {
        field_selector: format!("spec.nodeName={node}"),
        ..ListOptions::default()
    };
    Ok(client.list(Kind::Pod, None, &options).await?.items)
}

/// kubectl drain: cordon the node, delete its pods (refusing, unless
/// --force, pods no controller would recreate), wait until they are gone.
pub fn drain(args: DrainArgs) -> Result<()> {
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async {
        client
            .patch(
                Kind::Node,
                None,
                &args.node,
                &json!({"spec": {"unschedulable": true}}),
                false,
            )
            .await?;
        println!("node/{} cordoned", args.node);
        let pods = pods_on(&mut client, &args.node).await?;
        let unmanaged: Vec<String> = pods
            .iter()
            .filter(|pod| {
                !pod.metadata()
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.controller == Some(true))
            })
            .map(pod_name)
            .collect();
        if !unmanaged.is_empty() && !args.force {
            bail!(
                "cannot delete Pods that declare no controller (use --force to override): {}",
                unmanaged.join(", ")
            );
        }
        let mut evicted = std::collections::HashSet::new();
        for pod in &pods {
            let meta = pod.metadata();
            let name = meta.name.clone().unwrap_or_default();
            let uid = meta.uid.clone().unwrap_or_default();
            // This pod, not one re-created under its name meanwhile.
            let options = DeleteRequest {
                grace_period_seconds: (args.grace_period >= 0).then_some(args.grace_period),
                uid: uid.clone(),
                ..DeleteRequest::default()
            };
            match client
                .delete(Kind::Pod, meta.namespace.as_deref(), &name, &options)
                .await
            {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                // Its uid differs: the pod we listed is gone already.
                Err(ApiError::Conflict(message)) if message.contains("UID in precondition") => {}
                Err(error) => return Err(error.into()),
            }
            evicted.insert(uid);
            println!("evicting pod {}", pod_name(pod));
        }
        // Done when the pods evicted are gone (by uid, as kubectl waits):
        // pods that arrive meanwhile are not this drain's to wait for.
        let started = Instant::now();
        loop {
            let left: Vec<String> = pods_on(&mut client, &args.node)
                .await?
                .iter()
                .filter(|pod| {
                    pod.metadata()
                        .uid
                        .as_ref()
                        .is_some_and(|uid| evicted.contains(uid))
                })
                .map(pod_name)
                .collect();
            if left.is_empty() {
                break;
            }
            if args.timeout > 0 && started.elapsed() > Duration::from_secs(args.timeout) {
                bail!(
                    "drain did not complete within {}s: still on node/{}: {}",
                    args.timeout,
                    args.node,
                    left.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        for pod in &pods {
            println!(
                "pod/{} evicted",
                pod.metadata().name.as_deref().unwrap_or_default()
            );
        }
        println!("node/{} drained", args.node);
        Ok(())
    })
}

#[derive(clap::Args)]
pub struct ImageImportArgs {
    /// A `docker save` archive or an OCI layout tarball (gzip or not).
    pub file: std::path::PathBuf,
    /// The node to put the image on.
    #[arg(long, required = true)]
    pub node: String,
    #[command(flatten)]
    pub connection: Connection,
}

pub fn image_import(args: ImageImportArgs) -> Result<()> {
    if !args.file.is_file() {
        bail!("{}: no such file", args.file.display());
    }
    let (runtime, mut client) = args.connection.session()?;
    let names = runtime.block_on(client.import_image(&args.node, &args.file))?;
    for name in names {
        println!("{name} imported on node {}", args.node);
    }
    Ok(())
}
