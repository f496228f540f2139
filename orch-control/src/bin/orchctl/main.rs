//! `orchctl`: the kubectl-shaped command line of orch.

mod change;
mod objects;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use orch_core::manifest::{Document, ManifestErrors};
use orch_core::object::Kind;

#[derive(Parser)]
#[command(name = "orchctl", version, about = "Command line for orch clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check manifests offline, as `kubectl apply --dry-run=client` would:
    /// decode, default and validate; print warnings for ignored fields.
    Validate {
        /// Manifest file, directory (its .yaml/.yml/.json files) or `-` for stdin.
        #[arg(short = 'f', long = "filename", required = true)]
        filenames: Vec<PathBuf>,
        /// Print the defaulted objects as YAML.
        #[arg(short, long, value_parser = ["yaml", "name"])]
        output: Option<String>,
    },
    /// List the kinds orch serves.
    ApiResources,
    /// Show objects: a table (kubectl's columns), or -o yaml|json|name.
    Get(objects::GetArgs),
    /// Create what is missing and update what differs, from manifests.
    Apply(objects::ApplyArgs),
    /// Create objects from manifests (an existing one is an error).
    Create(objects::ApplyArgs),
    /// Delete objects by kind and name, label selector, or manifest.
    Delete(objects::DeleteArgs),
    /// Show an object in detail, with its recent events.
    Describe(change::ObjectArgs),
    /// Edit an object in $EDITOR and update it.
    Edit(change::ObjectArgs),
    /// Set the replicas of a deployment or replicaset.
    Scale(change::ScaleArgs),
    /// Set (`key=value`) or remove (`key-`) labels.
    Label(change::MetadataArgs),
    /// Set (`key=value`) or remove (`key-`) annotations.
    Annotate(change::MetadataArgs),
    /// Mark a node unschedulable.
    Cordon(change::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(change::NodeArgs),
    /// The client config in use.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script (bash, zsh, fish).
    Completion { shell: clap_complete::Shell },
    /// Save or inspect store snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// The control plane's replicas (like `etcdctl member`).
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Show the client config (keys and tokens hidden unless --raw).
    View(change::ConfigArgs),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// List the replicas, the leader, and the cluster id.
    List {
        #[command(flatten)]
        peers: PeerArgs,
    },
    /// Remove replica ID from the cluster (it stops receiving the log; stop
    /// its process and delete its data directory afterwards).
    Remove {
        id: u64,
        #[command(flatten)]
        peers: PeerArgs,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Stream a consistent snapshot of the store to FILE (checksum verified
    /// before FILE is written); restore it with `orch-control restore`.
    Save {
        file: PathBuf,
        #[command(flatten)]
        peers: PeerArgs,
    },
}

/// Where the replication ports are, and the credentials for them: the
/// client certificate of the client config (a token does not open them).
#[derive(clap::Args)]
struct PeerArgs {
    /// Control-plane replicas' replication ports (`host:port`, their
    /// --listen), tried in order.
    #[arg(long = "server", required = true, value_delimiter = ',')]
    servers: Vec<String>,
    /// Client config file with the cluster CA and a client certificate
    /// (default: ORCH_CONFIG, then ~/.orch/config).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl PeerArgs {
    fn tls(&self) -> Result<orch_control::store::raft::peer_tls::PeerTls> {
        let path = orch_core::api::config::ClientConfig::locate(self.config.as_deref())?;
        let config = orch_core::api::config::ClientConfig::load(&path)?;
        orch_control::store::raft::peer_tls::PeerTls::from_client_config(&config)
            .with_context(|| path.display().to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { filenames, output } => validate(&filenames, output.as_deref()),
        Command::ApiResources => {
            api_resources();
            Ok(true)
        }
        Command::Snapshot {
            command: SnapshotCommand::Save { file, peers },
        } => save_snapshot(&file, &peers).map(|()| true),
        Command::Member { command } => member(command).map(|()| true),
        Command::Get(args) => objects::get(args).map(|()| true),
        Command::Apply(args) => objects::apply(args, false),
        Command::Create(args) => objects::apply(args, true),
        Command::Delete(args) => objects::delete(args),
        Command::Describe(args) => change::describe(args).map(|()| true),
        Command::Edit(args) => change::edit(args).map(|()| true),
        Command::Scale(args) => change::scale(args).map(|()| true),
        Command::Label(args) => change::metadata(args, "labels", "labeled").map(|()| true),
        Command::Annotate(args) => {
            change::metadata(args, "annotations", "annotated").map(|()| true)
        }
        Command::Cordon(args) => change::cordon(args, true).map(|()| true),
        Command::Uncordon(args) => change::cordon(args, false).map(|()| true),
        Command::Config {
            command: ConfigCommand::View(args),
        } => change::config_view(args).map(|()| true),
        Command::Completion { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "orchctl",
                &mut std::io::stdout(),
            );
            Ok(true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // The server's refusals read as kubectl prints them.
            match error.downcast_ref::<orch_core::api::ApiError>() {
                Some(api) => eprintln!("Error from server ({}): {api}", api.reason()),
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Returns whether every manifest was valid.
fn validate(filenames: &[PathBuf], output: Option<&str>) -> Result<bool> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for filename in filenames {
        match objects::load(filename, true)? {
            Ok(mut docs) => documents.append(&mut docs),
            Err(ManifestErrors(mut errs)) => errors.append(&mut errs),
        }
    }
    for warning in documents.iter().flat_map(|d| &d.warnings) {
        eprintln!("Warning: {warning}");
    }
    if !errors.is_empty() {
        for error in &errors {
            eprintln!("error: {error}");
        }
        return Ok(false);
    }
    print_documents(&documents, output)?;
    Ok(true)
}

fn print_documents(documents: &[Document], output: Option<&str>) -> Result<()> {
    match output {
        Some("yaml") => {
            for document in documents {
                println!("---");
                print!("{}", serde_yaml_ng::to_string(&document.object)?);
            }
        }
        _ => {
            for document in documents {
                let kind = document.object.kind();
                let name = document.object.metadata().name.as_deref().unwrap_or("");
                let group = kind.group();
                let resource = if group.is_empty() {
                    kind.plural().to_string()
                } else {
                    format!("{}.{group}", kind.plural())
                };
                println!("{resource}/{name} valid");
            }
        }
    }
    Ok(())
}

fn api_resources() {
    println!(
        "{:<16} {:<11} {:<24} {:<11} KIND",
        "NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED"
    );
    for kind in Kind::ALL {
        println!(
            "{:<16} {:<11} {:<24} {:<11} {}",
            kind.plural(),
            kind.short_names().join(","),
            kind.api_version(),
            kind.namespaced(),
            kind.name()
        );
    }
}

/// Why one server's attempt failed: worth asking the next one, or final.
enum Failure {
    TryNext(String),
    Final(anyhow::Error),
}

impl From<tonic::Status> for Failure {
    /// Down or without a leader: the next replica may do better.
    fn from(status: tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable => Failure::TryNext(status.message().to_string()),
            _ => Failure::Final(anyhow::anyhow!("{}", status.message())),
        }
    }
}

/// Runs `attempt` against each server in turn until one succeeds.
fn each_server<T>(
    servers: &[String],
    attempt: impl AsyncFn(&str) -> Result<T, Failure>,
) -> Result<T> {
    let runtime = objects::runtime()?;
    let mut failures = Vec::new();
    for server in servers {
        match runtime.block_on(attempt(server)) {
            Ok(value) => return Ok(value),
            Err(Failure::TryNext(reason)) => failures.push(format!("{server}: {reason}")),
            Err(Failure::Final(error)) => return Err(error.context(server.clone())),
        }
    }
    anyhow::bail!("no replica answered: {}", failures.join("; "))
}

fn save_snapshot(file: &std::path::Path, peers: &PeerArgs) -> Result<()> {
    use orch_control::store::raft::transport::proto::SnapshotRequest;
    use orch_control::store::raft::transport::proto::store_client::StoreClient;
    use tokio::io::AsyncWriteExt as _;

    let partial = file.with_extension("partial");
    let tls = peers.tls()?;
    let (bytes, server) = each_server(&peers.servers, async |server| {
        let download = async {
            let mut client = StoreClient::connect(tls.endpoint(server)?).await?;
            let mut stream = client.snapshot(SnapshotRequest {}).await?.into_inner();
            let mut out = tokio::fs::File::create(&partial).await?;
            let mut bytes = 0u64;
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.data).await?;
                bytes += chunk.data.len() as u64;
            }
            out.sync_all().await?;
            anyhow::Ok(bytes)
        };
        match download.await {
            Ok(bytes) => Ok((bytes, server.to_string())),
            Err(error) => {
                let _ = std::fs::remove_file(&partial);
                Err(Failure::TryNext(format!("{error:#}")))
            }
        }
    })
    .context("no replica gave a snapshot")?;
    orch_control::store::snapshot::verify_file(&partial)?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    println!(
        "snapshot saved to {} ({bytes} bytes, from {server})",
        file.display()
    );
    Ok(())
}

fn member(command: MemberCommand) -> Result<()> {
    use orch_control::store::raft::transport::proto::LeaveRequest;
    match command {
        MemberCommand::List { peers } => {
            let tls = peers.tls()?;
            let status = each_server(&peers.servers, async |server| {
                Ok(orch_control::store::raft::client::replica_status(server, &tls).await?)
            })?;
            println!("CLUSTER ID: {}", status.cluster_id);
            println!("{:<6} {:<24} {:<8} LEADER", "ID", "ADDRESS", "ROLE");
            for member in &status.members {
                let (id, addr) = member.split_once('=').unwrap_or((member, ""));
                let id: u64 = id.parse().unwrap_or(0);
                let role = if status.voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                let leader = if id == status.leader_id { "yes" } else { "" };
                println!("{id:<6} {addr:<24} {role:<8} {leader}");
            }
        }
        MemberCommand::Remove { id, peers } => {
            let tls = peers.tls()?;
            let reply = each_server(&peers.servers, async |server| {
                let mut client =
                    orch_control::store::raft::client::membership(server, &tls).await?;
                Ok(client
                    .leave(LeaveRequest { node_id: id })
                    .await?
                    .into_inner())
            })?;
            println!(
                "removed member {id}; members now: {}",
                reply.members.join(", ")
            );
        }
    }
    Ok(())
}
