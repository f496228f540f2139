//! `orchctl`: the kubectl-shaped command line of orch.

mod change;
mod cluster;
mod node_dataplane;
mod node_ops;
mod objects;
mod pod_io;
mod rollout;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
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
    /// Manage a deployment's rollout: status, history, undo, restart,
    /// pause, resume.
    Rollout {
        #[command(subcommand)]
        command: rollout::RolloutCommand,
    },
    /// Set (`key=value`) or remove (`key-`) labels.
    Label(change::MetadataArgs),
    /// Change fields of an object with a JSON merge patch (`-p`).
    Patch(change::PatchArgs),
    /// Set (`key=value`) or remove (`key-`) annotations.
    Annotate(change::MetadataArgs),
    /// Mark a node unschedulable.
    Cordon(change::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(change::NodeArgs),
    /// Cordon a node and delete its pods, waiting until they are gone.
    Drain(node_ops::DrainArgs),
    /// Print a container's log.
    Logs(pod_io::LogsArgs),
    /// Run a command in a container: `orchctl exec -it POD -- sh`.
    Exec(pod_io::ExecArgs),
    /// A node's dataplane: `orchctl node dataplane NODE`, `orchctl node
    /// monitor NODE [--drops] [--pod P] [--service S]`.
    Node {
        #[command(subcommand)]
        command: node_dataplane::NodeCommand,
    },
    /// Node images: `orchctl image import FILE --node N`.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// List events, newest last (kubectl events).
    Events(node_ops::EventsArgs),
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
    /// The control plane at a glance.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Put an image archive (`docker save`, OCI layout tarball) on a node.
    Import(node_ops::ImageImportArgs),
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Every replica: role, leader, term, applied index, revision, and
    /// whether it answers (like `etcdctl endpoint status --cluster`).
    Status {
        #[command(flatten)]
        peers: cluster::PeerArgs,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Show the client config (keys and tokens hidden unless --raw).
    View(change::ConfigArgs),
    /// List the contexts of the config file (`*` marks the current one).
    GetContexts(change::ConfigFileArgs),
    /// Print the current context's name.
    CurrentContext(change::ConfigFileArgs),
    /// Make NAME the current context (rewrites the config file).
    UseContext {
        name: String,
        #[command(flatten)]
        file: change::ConfigFileArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum MemberCommand {
    /// List the replicas, the leader, and the cluster id.
    List {
        #[command(flatten)]
        peers: cluster::PeerArgs,
    },
    /// Remove replica ID from the cluster (it stops receiving the log; stop
    /// its process and delete its data directory afterwards).
    Remove {
        id: u64,
        #[command(flatten)]
        peers: cluster::PeerArgs,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Stream a consistent snapshot of the store to FILE (checksum verified
    /// before FILE is written); restore it with `orch-control restore`.
    Save {
        file: PathBuf,
        #[command(flatten)]
        peers: cluster::PeerArgs,
    },
    /// Build a new cluster's first data directory from FILE (verified
    /// first; nothing is written otherwise); start it with
    /// `orch-control --data-dir DIR --init`.
    Restore {
        file: PathBuf,
        /// Must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
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
        } => cluster::save_snapshot(&file, &peers).map(|()| true),
        Command::Snapshot {
            command: SnapshotCommand::Restore { file, data_dir },
        } => cluster::restore_snapshot(&file, &data_dir).map(|()| true),
        Command::Member { command } => cluster::member(command).map(|()| true),
        Command::Cluster {
            command: ClusterCommand::Status { peers },
        } => cluster::status(&peers),
        Command::Get(args) => objects::get(args).map(|()| true),
        Command::Apply(args) => objects::apply(args, false),
        Command::Create(args) => objects::apply(args, true),
        Command::Delete(args) => objects::delete(args),
        Command::Describe(args) => change::describe(args).map(|()| true),
        Command::Edit(args) => change::edit(args).map(|()| true),
        Command::Scale(args) => change::scale(args).map(|()| true),
        Command::Label(args) => change::metadata(args, "labels", "labeled").map(|()| true),
        Command::Patch(args) => change::patch_command(args).map(|()| true),
        Command::Annotate(args) => {
            change::metadata(args, "annotations", "annotated").map(|()| true)
        }
        Command::Cordon(args) => change::cordon(args, true).map(|()| true),
        Command::Uncordon(args) => change::cordon(args, false).map(|()| true),
        Command::Drain(args) => node_ops::drain(args).map(|()| true),
        Command::Events(args) => node_ops::events(args).map(|()| true),
        Command::Rollout { command } => rollout::run(command).map(|()| true),
        Command::Logs(args) => pod_io::logs(args).map(|()| true),
        Command::Node { command } => node_dataplane::run(command).map(|()| true),
        Command::Image {
            command: ImageCommand::Import(args),
        } => node_ops::image_import(args).map(|()| true),
        Command::Exec(args) => match pod_io::exec(args) {
            // The command's own exit code, as kubectl exec returns it.
            Ok(0) => Ok(true),
            Ok(code) => {
                eprintln!("command terminated with exit code {code}");
                return ExitCode::from(u8::try_from(code).unwrap_or(1));
            }
            Err(error) => Err(error),
        },
        Command::Config {
            command: ConfigCommand::View(args),
        } => change::config_view(args).map(|()| true),
        Command::Config {
            command: ConfigCommand::GetContexts(args),
        } => change::get_contexts(args).map(|()| true),
        Command::Config {
            command: ConfigCommand::CurrentContext(args),
        } => change::current_context(args).map(|()| true),
        Command::Config {
            command: ConfigCommand::UseContext { name, file },
        } => change::use_context(&name, file).map(|()| true),
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
