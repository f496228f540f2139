//! The commands that work on a cluster's objects through the API: get,
//! apply, create, delete.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use orch_core::api::config::ClientConfig;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError, ListOptions};
use orch_core::manifest::{self, Document, ManifestErrors};
use orch_core::object::{Kind, Object};

use super::table;

/// Where the cluster is and who is calling.
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// Client config file (servers, CA, credentials); else ORCH_CONFIG,
    /// else ~/.orch/config.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// API servers to use instead of the config's (`host:port`,
    /// comma-separated; any replica), tried in order.
    #[arg(long = "server", value_delimiter = ',')]
    pub servers: Vec<String>,
    /// A bearer token to authenticate with instead of the config's
    /// client certificate.
    #[arg(long)]
    pub token: Option<String>,
    /// Seconds a call may take, failovers between replicas included.
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
}

impl Connection {
    /// A runtime and a client of the cluster to run on it (the client's
    /// channels are made inside the runtime that drives them).
    pub fn session(&self) -> Result<(tokio::runtime::Runtime, ApiClient)> {
        let runtime = runtime()?;
        let client = {
            let _entered = runtime.enter();
            self.client()?
        };
        Ok((runtime, client))
    }

    fn client(&self) -> Result<ApiClient> {
        let path = ClientConfig::locate(self.config.as_deref())?;
        let mut config = ClientConfig::load(&path)?;
        if !self.servers.is_empty() {
            config.servers = self.servers.clone();
        }
        if let Some(token) = &self.token {
            config.token = Some(token.clone());
            config.client_certificate = None;
            config.client_key = None;
        }
        Ok(ApiClient::new(
            &config,
            Duration::from_secs(self.request_timeout.max(1)),
        )?)
    }
}

#[derive(clap::Args)]
pub struct GetArgs {
    /// Kind: plural, singular or short name (pods, pod, po, deploy, svc...).
    pub kind: String,
    /// Object names (all when none).
    pub names: Vec<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=web,tier!=db`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. `spec.nodeName=n1`.
    #[arg(long)]
    pub field_selector: Option<String>,
    #[arg(short, long, value_parser = ["wide", "yaml", "json", "name"])]
    pub output: Option<String>,
    /// After listing, watch: print a row for every change until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// Manifest file, directory or `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub filenames: Vec<PathBuf>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// `client`: validate locally; `server`: run admission, write nothing.
    #[arg(long, value_parser = ["none", "client", "server"], default_value = "none")]
    pub dry_run: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct DeleteArgs {
    /// Kind and names (or use -f).
    pub kind: Option<String>,
    pub names: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    pub filenames: Vec<PathBuf>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Delete every object of the kind matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Seconds a pod gets to stop (-1: its own terminationGracePeriodSeconds).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// What happens to dependents: background, foreground or orphan.
    #[arg(long, value_parser = ["background", "foreground", "orphan"], default_value = "background")]
    pub cascade: String,
    /// Wait until objects kept by finalizers or a grace period are gone
    /// (kubectl's default); `--wait=false` returns once they are marked.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
    /// Seconds to wait for that (0: as long as it takes).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    #[command(flatten)]
    pub connection: Connection,
}

/// `deployment.apps/web`, as kubectl names objects in its messages.
pub fn object_ref(object: &Object) -> String {
    let kind = object.kind();
    format!(
        "{}/{}",
        kind_ref(kind),
        object.metadata().name.as_deref().unwrap_or_default()
    )
}

fn kind_ref(kind: Kind) -> String {
    let singular = kind.name().to_ascii_lowercase();
    if kind.group().is_empty() {
        singular
    } else {
        format!("{singular}.{}", kind.group())
    }
}

pub fn kind_arg(name: &str) -> Result<Kind> {
    Kind::from_user_name(name)
        .with_context(|| format!("the server doesn't have a resource type {name:?}"))
}

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// One file, directory or `-` (stdin), decoded and, with `validate`,
/// defaulted and validated.
pub fn load(filename: &Path, validate: bool) -> Result<Result<Vec<Document>, ManifestErrors>> {
    if filename.as_os_str() != "-" {
        return Ok(if validate {
            manifest::load_path(filename)
        } else {
            manifest::parse_path(filename)
        });
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading manifests from stdin")?;
    Ok(if validate {
        manifest::load_str(&text, "<stdin>")
    } else {
        manifest::parse_str(&text, "<stdin>")
    })
}

/// Every manifest of `filenames`; warnings printed, the first bad file an
/// error.
fn read_manifests(filenames: &[PathBuf], validate: bool) -> Result<Vec<Document>> {
    let mut documents = Vec::new();
    for filename in filenames {
        documents
            .append(&mut load(filename, validate)?.map_err(|errors| anyhow::anyhow!("{errors}"))?);
    }
    for warning in documents.iter().flat_map(|d| &d.warnings) {
        eprintln!("Warning: {warning}");
    }
    Ok(documents)
}

fn place(object: &mut Object, namespace: Option<&str>) {
    if object.kind().namespaced() && object.metadata().namespace.is_none() {
        object.metadata_mut().namespace = Some(namespace.unwrap_or("default").to_string());
    }
}

pub fn get(args: GetArgs) -> Result<()> {
    // `get deploy,svc`: several kinds, each its own table.
    let kinds = args
        .kind
        .split(',')
        .map(kind_arg)
        .collect::<Result<Vec<Kind>>>()?;
    if kinds.len() > 1 && !args.names.is_empty() {
        bail!("names cannot be given with several kinds");
    }
    let wide = args.output.as_deref() == Some("wide");
    if args.watch && (kinds.len() > 1 || !args.names.is_empty() || (args.output.is_some() && !wide))
    {
        bail!("-w watches one kind, as a table, without names");
    }
    let (runtime, mut client) = args.connection.session()?;
    let mut found: Vec<(Kind, Vec<Object>)> = Vec::new();
    // Where the (last) list was read: a watch goes on from there.
    let mut listed_at = String::new();
    let options = ListOptions {
        label_selector: args.selector.clone().unwrap_or_default(),
        field_selector: args.field_selector.clone().unwrap_or_default(),
        ..ListOptions::default()
    };
    for kind in kinds.iter().copied() {
        let namespace = if args.all_namespaces || !kind.namespaced() {
            None
        } else {
            Some(args.namespace.clone().unwrap_or_else(|| "default".into()))
        };
        let objects = runtime.block_on(async {
            if args.names.is_empty() {
                let list = client.list(kind, namespace.as_deref(), &options).await?;
                listed_at = list.resource_version;
                Ok::<_, ApiError>(list.items)
            } else {
                let mut objects = Vec::new();
                for name in &args.names {
                    objects.push(client.get(kind, namespace.as_deref(), name).await?);
                }
                Ok(objects)
            }
        })?;
        found.push((kind, objects));
    }
    let all: Vec<Object> = found.iter().flat_map(|(_, o)| o.clone()).collect();
    // As kubectl: one object named is printed as itself; anything listed
    // (a selector's single match included) as a List.
    let one_named = kinds.len() == 1 && args.names.len() == 1;
    match args.output.as_deref() {
        Some("yaml") => print!("{}", to_yaml(&all, one_named)?),
        Some("json") => println!("{}", to_json(&all, one_named)?),
        Some("name") => {
            for object in &all {
                println!("{}", object_ref(object));
            }
        }
        _ if all.is_empty() => match (&args.namespace, args.all_namespaces) {
            (_, true) => eprintln!("No resources found"),
            (namespace, false) => eprintln!(
                "No resources found in {} namespace.",
                namespace.as_deref().unwrap_or("default")
            ),
        },
        _ => {
            let several = found.len() > 1;
            let tables: Vec<String> = found
                .iter()
                .filter(|(_, objects)| !objects.is_empty())
                .map(|(kind, objects)| {
                    table::render(*kind, objects, args.all_namespaces, several, wide)
                })
                .collect();
            print!("{}", tables.join("\n"));
        }
    }
    if args.watch {
        let kind = kinds[0];
        let namespace = (!args.all_namespaces && kind.namespaced())
            .then(|| args.namespace.clone().unwrap_or_else(|| "default".into()));
        runtime.block_on(async {
            let mut stream = client
                .watch(kind, namespace.as_deref(), &options, &listed_at, false)
                .await?;
            let mut header = all.is_empty();
            while let Some(event) = stream.next().await? {
                let Some(object) = event.object else { continue };
                // The table's row alone, as kubectl -w prints it; the
                // header only when nothing was listed before.
                let text = table::render(kind, &[object], args.all_namespaces, false, wide);
                let skip = usize::from(!header);
                header = false;
                for line in text.lines().skip(skip) {
                    println!("{line}");
                }
            }
            Ok::<_, ApiError>(())
        })?;
    }
    Ok(())
}

fn to_yaml(objects: &[Object], one_named: bool) -> Result<String> {
    if let ([one], true) = (objects, one_named) {
        return Ok(serde_yaml_ng::to_string(one)?);
    }
    Ok(serde_yaml_ng::to_string(&list_of(objects))?)
}

fn to_json(objects: &[Object], one_named: bool) -> Result<String> {
    if let ([one], true) = (objects, one_named) {
        return Ok(serde_json::to_string_pretty(one)?);
    }
    Ok(serde_json::to_string_pretty(&list_of(objects))?)
}

fn list_of(objects: &[Object]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": objects.iter().map(Object::to_json).collect::<Vec<_>>(),
        "metadata": {"resourceVersion": ""},
    })
}

/// Creates what is missing and updates what differs; prints
/// `kind/name created|configured|unchanged` per object.
pub fn apply(args: ApplyArgs, create_only: bool) -> Result<bool> {
    let documents = read_manifests(&args.filenames, true)?;
    if args.dry_run == "client" {
        for document in &documents {
            println!(
                "{} {} (dry run)",
                object_ref(&document.object),
                verb(create_only, "created")
            );
        }
        return Ok(true);
    }
    let server_dry_run = args.dry_run == "server";
    let suffix = if server_dry_run {
        " (server dry run)"
    } else {
        ""
    };
    let (runtime, mut client) = args.connection.session()?;
    let mut all_ok = true;
    for document in documents {
        let mut object = document.object;
        place(&mut object, args.namespace.as_deref());
        let result = runtime.block_on(apply_one(&mut client, &object, server_dry_run, create_only));
        match result {
            Ok(outcome) => println!("{} {outcome}{suffix}", object_ref(&object)),
            Err(error) => {
                all_ok = false;
                eprintln!(
                    "Error from server ({}): {} {error}",
                    error.reason(),
                    object_ref(&object)
                );
            }
        }
    }
    Ok(all_ok)
}

fn verb(create_only: bool, default: &'static str) -> &'static str {
    if create_only { "created" } else { default }
}

async fn apply_one(
    client: &mut ApiClient,
    object: &Object,
    dry_run: bool,
    create_only: bool,
) -> Result<&'static str, ApiError> {
    let meta = object.metadata();
    let name = meta.name.clone().unwrap_or_default();
    let existing = if create_only || name.is_empty() {
        None
    } else {
        match client
            .get(object.kind(), meta.namespace.as_deref(), &name)
            .await
        {
            Ok(existing) => Some(existing),
            Err(ApiError::NotFound(_)) => None,
            Err(other) => return Err(other),
        }
    };
    let Some(existing) = existing else {
        client.create(object, dry_run).await?;
        return Ok("created");
    };
    // What the update would store, by a server-side dry run: equal to what
    // is stored means nothing to do.
    let mut desired = object.clone();
    desired.metadata_mut().resource_version = existing.metadata().resource_version.clone();
    let would_be = client.update(&desired, true).await?;
    if comparable(&would_be) == comparable(&existing) {
        return Ok("unchanged");
    }
    if !dry_run {
        client.update(&desired, false).await?;
    }
    Ok("configured")
}

/// An object without the fields every write changes.
fn comparable(object: &Object) -> serde_json::Value {
    let mut value = object.to_json();
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
        meta.remove("generation");
    }
    value
}

pub fn delete(args: DeleteArgs) -> Result<bool> {
    let (runtime, mut client) = args.connection.session()?;
    let mut targets: Vec<(Kind, Option<String>, String)> = Vec::new();
    if !args.filenames.is_empty() {
        for document in read_manifests(&args.filenames, false)? {
            let mut object = document.object;
            place(&mut object, args.namespace.as_deref());
            let meta = object.metadata();
            targets.push((
                object.kind(),
                meta.namespace.clone(),
                meta.name.clone().unwrap_or_default(),
            ));
        }
    } else {
        let Some(kind) = &args.kind else {
            bail!("give a kind and names, -l SELECTOR, or -f FILE");
        };
        let kind = kind_arg(kind)?;
        let namespace = kind
            .namespaced()
            .then(|| args.namespace.clone().unwrap_or_else(|| "default".into()));
        let mut names = args.names.clone();
        if let Some(selector) = &args.selector {
            let options = ListOptions {
                label_selector: selector.clone(),
                ..ListOptions::default()
            };
            let listed = runtime.block_on(client.list(kind, namespace.as_deref(), &options))?;
            names.extend(
                listed
                    .items
                    .iter()
                    .filter_map(|o| o.metadata().name.clone()),
            );
        }
        if names.is_empty() && args.selector.is_none() {
            bail!("give names, -l SELECTOR, or -f FILE");
        }
        targets.extend(
            names
                .into_iter()
                .map(|name| (kind, namespace.clone(), name)),
        );
    }
    let options = DeleteRequest {
        grace_period_seconds: (args.grace_period >= 0).then_some(args.grace_period),
        propagation_policy: match args.cascade.as_str() {
            "foreground" => "Foreground",
            "orphan" => "Orphan",
            _ => "Background",
        }
        .into(),
        ..DeleteRequest::default()
    };
    let mut all_ok = true;
    let mut lingering = Vec::new();
    for (kind, namespace, name) in targets {
        match runtime.block_on(client.delete(kind, namespace.as_deref(), &name, &options)) {
            Ok(marked) => {
                println!("{} \"{name}\" deleted", kind_ref(kind));
                if marked.metadata().deletion_timestamp.is_some() {
                    lingering.push((kind, namespace, name, marked.metadata().uid.clone()));
                }
            }
            Err(error) => {
                all_ok = false;
                eprintln!("Error from server ({}): {error}", error.reason());
            }
        }
    }
    if args.wait && !lingering.is_empty() {
        runtime.block_on(wait_until_gone(&mut client, lingering, args.timeout))?;
    }
    Ok(all_ok)
}

/// Waits until each object is gone (or replaced: another uid), as
/// `kubectl delete --wait` does for objects finalizers keep around.
async fn wait_until_gone(
    client: &mut ApiClient,
    mut waiting: Vec<(Kind, Option<String>, String, Option<String>)>,
    timeout: u64,
) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        let mut left = Vec::new();
        for (kind, namespace, name, uid) in waiting {
            match client.get(kind, namespace.as_deref(), &name).await {
                Ok(object) if object.metadata().uid == uid => {
                    left.push((kind, namespace, name, uid))
                }
                Ok(_) | Err(orch_core::api::ApiError::NotFound(_)) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        if timeout > 0 && started.elapsed() > Duration::from_secs(timeout) {
            let names: Vec<String> = left
                .iter()
                .map(|(kind, _, name, _)| format!("{}/{name}", kind_ref(*kind)))
                .collect();
            bail!(
                "timed out after {timeout}s waiting for {} to go (finalizers or a grace period keep them)",
                names.join(", ")
            );
        }
        waiting = left;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
