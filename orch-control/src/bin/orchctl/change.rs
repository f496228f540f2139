//! Commands that change one field of an object, each a JSON merge patch as
//! kubectl sends it: scale, label, annotate, patch, cordon, uncordon; and edit
//! (the whole object in $EDITOR) and describe.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use orch_core::api::config::{ClientConfig, ConfigFile};
use orch_core::api::{ApiClient, ListOptions};
use orch_core::object::{Kind, Object};
use serde_json::{Value, json};

use super::objects::{Connection, kind_arg, object_ref};
use super::table::age;

#[derive(clap::Args)]
pub struct ScaleArgs {
    /// deployment/NAME, replicaset/NAME, or KIND NAME.
    pub target: Vec<String>,
    #[arg(long)]
    pub replicas: i32,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct MetadataArgs {
    pub kind: String,
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub changes: Vec<String>,
    /// Replace values that are already set.
    #[arg(long)]
    pub overwrite: bool,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct PatchArgs {
    /// KIND/NAME or KIND NAME.
    pub target: Vec<String>,
    /// The patch, JSON or YAML.
    #[arg(short = 'p', long)]
    pub patch: String,
    /// Only `merge` (a JSON merge patch, RFC 7386) is served.
    #[arg(long = "type", default_value = "merge")]
    pub patch_type: String,
    /// `status` patches the status subresource.
    #[arg(long)]
    pub subresource: Option<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct NodeArgs {
    pub node: String,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::Args)]
pub struct ObjectArgs {
    pub kind: String,
    pub name: String,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

/// `deployment/web` or `deployment web` -> (kind, name).
pub(super) fn target(words: &[String]) -> Result<(Kind, String)> {
    match words {
        [one] => {
            let (kind, name) = one
                .split_once('/')
                .with_context(|| format!("{one:?}: expected KIND/NAME or KIND NAME"))?;
            Ok((kind_arg(kind)?, name.to_string()))
        }
        [kind, name] => Ok((kind_arg(kind)?, name.clone())),
        _ => bail!("expected KIND/NAME or KIND NAME"),
    }
}

pub(super) fn namespace_for(kind: Kind, namespace: &Option<String>) -> Option<String> {
    kind.namespaced()
        .then(|| namespace.clone().unwrap_or_else(|| "default".into()))
}

/// Patches `kind/name` and prints `kind/name <verb>`.
pub(super) fn patch(
    connection: &Connection,
    kind: Kind,
    namespace: Option<String>,
    name: &str,
    patch: Value,
    verb: &str,
) -> Result<()> {
    let (runtime, mut client) = connection.session()?;
    let object = runtime.block_on(client.patch(kind, namespace.as_deref(), name, &patch, false))?;
    println!("{} {verb}", object_ref(&object));
    Ok(())
}

pub fn scale(args: ScaleArgs) -> Result<()> {
    let (kind, name) = target(&args.target)?;
    if !matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
        bail!("{} cannot be scaled", kind.plural());
    }
    if args.replicas < 0 {
        bail!("--replicas: must be 0 or more, not {}", args.replicas);
    }
    let namespace = namespace_for(kind, &args.namespace);
    patch(
        &args.connection,
        kind,
        namespace,
        &name,
        json!({"spec": {"replicas": args.replicas}}),
        "scaled",
    )
}

/// `patch`: a JSON merge patch of the object or its status, as given.
pub fn patch_command(args: PatchArgs) -> Result<()> {
    let (kind, name) = target(&args.target)?;
    if args.patch_type != "merge" {
        bail!(
            "--type: {:?} is not served; orch takes \"merge\" (a JSON merge patch)",
            args.patch_type
        );
    }
    let status = match args.subresource.as_deref() {
        None => false,
        Some("status") => true,
        Some(other) => bail!("--subresource: {other:?} is not served; use \"status\""),
    };
    let body: Value = serde_yaml_ng::from_str(&args.patch)
        .with_context(|| format!("--patch: not JSON or YAML: {:?}", args.patch))?;
    if !body.is_object() {
        bail!("--patch: a merge patch is an object, not {body}");
    }
    let namespace = namespace_for(kind, &args.namespace);
    let (runtime, mut client) = args.connection.session()?;
    let object =
        runtime.block_on(client.patch(kind, namespace.as_deref(), &name, &body, status))?;
    println!("{} patched", object_ref(&object));
    Ok(())
}

/// `label` or `annotate`: sets and removes keys of one metadata map.
pub fn metadata(args: MetadataArgs, field: &str, verb: &str) -> Result<()> {
    let kind = kind_arg(&args.kind)?;
    let namespace = namespace_for(kind, &args.namespace);
    let mut changes = serde_json::Map::new();
    for change in &args.changes {
        if let Some(key) = change.strip_suffix('-') {
            changes.insert(key.to_string(), Value::Null);
        } else if let Some((key, value)) = change.split_once('=') {
            changes.insert(key.to_string(), Value::from(value));
        } else {
            bail!("{change:?}: expected key=value or key-");
        }
    }
    let (runtime, mut client) = args.connection.session()?;
    if !args.overwrite {
        let current = runtime
            .block_on(client.get(kind, namespace.as_deref(), &args.name))?
            .to_json();
        for (key, value) in &changes {
            let existing = &current["metadata"][field][key];
            if !value.is_null() && !existing.is_null() && existing != value {
                bail!(
                    "'{key}' already has a value ({}), and --overwrite is false",
                    existing.as_str().unwrap_or_default()
                );
            }
        }
    }
    let patch = json!({"metadata": {field: Value::Object(changes)}});
    let object =
        runtime.block_on(client.patch(kind, namespace.as_deref(), &args.name, &patch, false))?;
    println!("{} {verb}", object_ref(&object));
    Ok(())
}

pub fn cordon(args: NodeArgs, unschedulable: bool) -> Result<()> {
    let verb = if unschedulable {
        "cordoned"
    } else {
        "uncordoned"
    };
    let value = if unschedulable {
        json!(true)
    } else {
        Value::Null
    };
    patch(
        &args.connection,
        Kind::Node,
        None,
        &args.node,
        json!({"spec": {"unschedulable": value}}),
        verb,
    )
}

/// The object in $EDITOR (YAML); saved changes are sent as an update
/// guarded by the version edited, so a concurrent change is a conflict.
pub fn edit(args: ObjectArgs) -> Result<()> {
    let kind = kind_arg(&args.kind)?;
    let namespace = namespace_for(kind, &args.namespace);
    let (runtime, mut client) = args.connection.session()?;
    let object = runtime.block_on(client.get(kind, namespace.as_deref(), &args.name))?;
    let original = serde_yaml_ng::to_string(&object)?;
    let file = tempfile::Builder::new()
        .prefix("orchctl-edit-")
        .suffix(".yaml")
        .tempfile()?;
    std::fs::write(file.path(), &original)?;
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file.path())
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed: {status}");
    }
    let edited = std::fs::read_to_string(file.path())?;
    if edited == original {
        println!("Edit cancelled, no changes made.");
        return Ok(());
    }
    let mut documents = orch_core::manifest::load_str(&edited, "edited object")
        .map_err(|errors| anyhow::anyhow!("{errors}"))?;
    let Some(document) = documents.pop() else {
        bail!("the edited file holds no object");
    };
    let updated = runtime.block_on(client.update(&document.object, false))?;
    println!("{} edited", object_ref(&updated));
    Ok(())
}

fn map_lines(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n             "),
        _ => "<none>".into(),
    }
}

fn indented(value: &Value) -> String {
    let yaml = serde_yaml_ng::to_string(value).unwrap_or_default();
    yaml.lines().map(|line| format!("  {line}\n")).collect()
}

/// kubectl describe's shape: identity, then spec and status, then the
/// object's recent events.
pub fn describe(args: ObjectArgs) -> Result<()> {
    let kind = kind_arg(&args.kind)?;
    let namespace = namespace_for(kind, &args.namespace);
    let (runtime, mut client) = args.connection.session()?;
    let object = runtime.block_on(client.get(kind, namespace.as_deref(), &args.name))?;
    let events = runtime.block_on(events_of(&mut client, &object))?;
    let value = object.to_json();
    let meta = &value["metadata"];
    let mut out = String::new();
    out.push_str(&format!("Name:        {}\n", args.name));
    if let Some(namespace) = &namespace {
        out.push_str(&format!("Namespace:   {namespace}\n"));
    }
    out.push_str(&format!("Kind:        {}\n", kind.name()));
    out.push_str(&format!("Labels:      {}\n", map_lines(&meta["labels"])));
    out.push_str(&format!(
        "Annotations: {}\n",
        map_lines(&meta["annotations"])
    ));
    out.push_str(&format!(
        "Created:     {} ({} ago)\n",
        meta["creationTimestamp"].as_str().unwrap_or_default(),
        age(&object)
    ));
    for (title, part) in [("Spec", &value["spec"]), ("Status", &value["status"])] {
        if !part.is_null() {
            out.push_str(&format!("{title}:\n{}", indented(part)));
        }
    }
    if events.is_empty() {
        out.push_str("Events:      <none>\n");
    } else {
        out.push_str("Events:\n  TYPE      REASON    AGE    MESSAGE\n");
        for event in &events {
            let e = event.to_json();
            out.push_str(&format!(
                "  {:<9} {:<9} {:<6} {}\n",
                e["type"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default(),
                age(event),
                e["message"].as_str().unwrap_or_default()
            ));
        }
    }
    print!("{out}");
    Ok(())
}

async fn events_of(client: &mut ApiClient, object: &Object) -> Result<Vec<Object>> {
    let meta = object.metadata();
    let options = ListOptions {
        field_selector: format!(
            "involvedObject.kind={},involvedObject.name={}",
            object.kind().name(),
            meta.name.as_deref().unwrap_or_default()
        ),
        ..ListOptions::default()
    };
    let namespace = meta.namespace.as_deref().or(Some("default"));
    Ok(client.list(Kind::Event, namespace, &options).await?.items)
}

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[arg(long = "config")]
    pub config: Option<std::path::PathBuf>,
    /// Show keys and tokens instead of DATA+OMITTED / REDACTED.
    #[arg(long)]
    pub raw: bool,
}

/// `config view`: the client config in use, secrets hidden like kubectl.
pub fn config_view(args: ConfigArgs) -> Result<()> {
    let path = ClientConfig::locate(args.config.as_deref())?;
    let mut config = ClientConfig::load(&path)?;
    if !args.raw {
        config.certificate_authority = "DATA+OMITTED".into();
        if config.client_certificate.is_some() {
            config.client_certificate = Some("DATA+OMITTED".into());
            config.client_key = Some("DATA+OMITTED".into());
        }
        if config.token.is_some() {
            config.token = Some("REDACTED".into());
        }
    }
    let mut shown: BTreeMap<&str, Value> = BTreeMap::new();
    shown.insert("file", Value::from(path.to_string_lossy().into_owned()));
    shown.insert("config", serde_json::to_value(&config)?);
    print!("{}", serde_yaml_ng::to_string(&shown)?);
    Ok(())
}

#[derive(clap::Args)]
pub struct ConfigFileArgs {
    #[arg(long = "config")]
    pub config: Option<std::path::PathBuf>,
}

pub fn get_contexts(args: ConfigFileArgs) -> Result<()> {
    let path = ClientConfig::locate(args.config.as_deref())?;
    let file = ConfigFile::load(&path)?;
    println!("{:<8} {:<20} SERVERS", "CURRENT", "NAME");
    match &file.contexts {
        Some(contexts) => {
            for context in contexts {
                let current = if file.current_context.as_deref() == Some(context.name.as_str()) {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{current:<8} {:<20} {}",
                    context.name,
                    context.config.servers.join(",")
                );
            }
        }
        None => {
            let servers = file.single.map(|c| c.servers.join(",")).unwrap_or_default();
            println!("{:<8} {:<20} {servers}", "*", "(this file)");
        }
    }
    Ok(())
}

pub fn current_context(args: ConfigFileArgs) -> Result<()> {
    let path = ClientConfig::locate(args.config.as_deref())?;
    match ConfigFile::load(&path)?.current_context {
        Some(name) => println!("{name}"),
        None => bail!("current-context is not set in {}", path.display()),
    }
    Ok(())
}

/// kubectl config use-context: the file's current context becomes NAME.
pub fn use_context(name: &str, args: ConfigFileArgs) -> Result<()> {
    let path = ClientConfig::locate(args.config.as_deref())?;
    let mut file = ConfigFile::load(&path)?;
    file.use_context(&path, name)?;
    println!("Switched to context \"{name}\".");
    Ok(())
}
