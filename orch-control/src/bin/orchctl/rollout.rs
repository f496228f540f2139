//! `orchctl rollout`: status, history, undo, restart, pause and resume of a
//! Deployment, as kubectl does them: undo copies an old ReplicaSet's
//! template back into the Deployment (the controller then rolls to it),
//! restart stamps the template with `kubectl.kubernetes.io/restartedAt`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use orch_control::controllers::replica_set::replica_set;
use orch_control::controllers::rollout::{self, TEMPLATE_HASH};
use orch_core::api::{ApiClient, ListOptions};
use orch_core::object::{Kind, Object};
use serde_json::json;

use super::change::{namespace_for, patch, target};
use super::objects::Connection;

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// deployment/NAME or deployment NAME.
    pub target: Vec<String>,
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(Subcommand)]
pub enum RolloutCommand {
    /// Wait for the rollout to finish, printing its progress.
    Status {
        #[command(flatten)]
        args: RolloutArgs,
        /// Print the state once instead of waiting.
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// Give up after this long (`30s`, `5m`; 0: never).
        #[arg(long, default_value = "0s")]
        timeout: String,
    },
    /// The revisions, or one revision's pod template.
    History {
        #[command(flatten)]
        args: RolloutArgs,
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Go back to the previous revision, or to --to-revision.
    Undo {
        #[command(flatten)]
        args: RolloutArgs,
        #[arg(long, default_value_t = 0)]
        to_revision: u64,
    },
    /// Replace every pod, one rollout step at a time.
    Restart(RolloutArgs),
    /// Stop rolling out template changes (scaling goes on).
    Pause(RolloutArgs),
    /// Roll out again.
    Resume(RolloutArgs),
}

fn deployment_target(args: &RolloutArgs) -> Result<(Option<String>, String)> {
    let (kind, name) = target(&args.target)?;
    if kind != Kind::Deployment {
        bail!("{}: rollout is served for deployments only", kind.plural());
    }
    Ok((namespace_for(kind, &args.namespace), name))
}

pub fn run(command: RolloutCommand) -> Result<()> {
    match command {
        RolloutCommand::Status {
            args,
            watch,
            timeout,
        } => status(&args, watch, &timeout),
        RolloutCommand::History { args, revision } => history(&args, revision),
        RolloutCommand::Undo { args, to_revision } => undo(&args, to_revision),
        RolloutCommand::Restart(args) => {
            let (namespace, name) = deployment_target(&args)?;
            let now = orch_core::time::now().to_string();
            let stamp = json!({"spec": {"template": {"metadata": {"annotations": {
                "kubectl.kubernetes.io/restartedAt": now
            }}}}});
            patch(
                &args.connection,
                Kind::Deployment,
                namespace,
                &name,
                stamp,
                "restarted",
            )
        }
        RolloutCommand::Pause(args) => set_paused(&args, true),
        RolloutCommand::Resume(args) => set_paused(&args, false),
    }
}

fn set_paused(args: &RolloutArgs, paused: bool) -> Result<()> {
    let (namespace, name) = deployment_target(args)?;
    let verb = if paused { "paused" } else { "resumed" };
    patch(
        &args.connection,
        Kind::Deployment,
        namespace,
        &name,
        json!({"spec": {"paused": if paused { json!(true) } else { json!(null) }}}),
        verb,
    )
}

async fn get_deployment(
    client: &mut ApiClient,
    namespace: Option<&str>,
    name: &str,
) -> Result<k8s_openapi::api::apps::v1::Deployment> {
    match client.get(Kind::Deployment, namespace, name).await? {
        Object::Deployment(d) => Ok(*d),
        other => bail!("{} is not a deployment", other.display_name()),
    }
}

fn status(args: &RolloutArgs, watch: bool, timeout: &str) -> Result<()> {
    let (namespace, name) = deployment_target(args)?;
    let limit = humantime_seconds(timeout)?;
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async {
        let started = Instant::now();
        let mut last = String::new();
        loop {
            let d = get_deployment(&mut client, namespace.as_deref(), &name).await?;
            let (message, done) = rollout::progress_message(&d).map_err(anyhow::Error::msg)?;
            if message != last {
                println!("{message}");
                last = message;
            }
            if done || !watch {
                return Ok(());
            }
            if limit.is_some_and(|limit| started.elapsed() >= limit) {
                bail!("timed out waiting for the condition");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
}

/// `30s`, `5m`, `1h` (0: None, no limit).
fn humantime_seconds(text: &str) -> Result<Option<Duration>> {
    let duration =
        orch_core::time::parse_duration("--timeout", text).map_err(anyhow::Error::msg)?;
    Ok((!duration.is_zero()).then_some(duration))
}

/// The Deployment's ReplicaSets by revision, oldest first.
async fn revisions(
    client: &mut ApiClient,
    d: &k8s_openapi::api::apps::v1::Deployment,
) -> Result<Vec<(u64, Object)>> {
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let list = client
        .list(
            Kind::ReplicaSet,
            d.metadata.namespace.as_deref(),
            &ListOptions::default(),
        )
        .await?;
    let mut owned: Vec<(u64, Object)> = list
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata()
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.controller == Some(true) && r.uid == uid)
        })
        .map(|rs| (rollout::revision(&rs), rs))
        .collect();
    owned.sort_by_key(|(revision, _)| *revision);
    Ok(owned)
}

fn history(args: &RolloutArgs, revision: Option<u64>) -> Result<()> {
    let (namespace, name) = deployment_target(args)?;
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async {
        let d = get_deployment(&mut client, namespace.as_deref(), &name).await?;
        let sets = revisions(&mut client, &d).await?;
        match revision {
            None => {
                println!("deployment.apps/{name} ");
                println!("REVISION  CHANGE-CAUSE");
                for (revision, rs) in &sets {
                    let cause = rs
                        .metadata()
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get("kubernetes.io/change-cause"))
                        .map_or("<none>", String::as_str);
                    println!("{revision:<9} {cause}");
                }
            }
            Some(wanted) => {
                let (_, rs) = sets
                    .iter()
                    .find(|(revision, _)| *revision == wanted)
                    .with_context(|| format!("unable to find the specified revision {wanted}"))?;
                let template = replica_set(rs)
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| s.template.clone())
                    .unwrap_or_default();
                println!("deployment.apps/{name} with revision #{wanted}");
                println!("Pod Template:");
                let yaml = serde_yaml_ng::to_string(&template)?;
                for line in yaml.lines() {
                    println!("  {line}");
                }
            }
        }
        Ok(())
    })
}

fn undo(args: &RolloutArgs, to_revision: u64) -> Result<()> {
    let (namespace, name) = deployment_target(args)?;
    let (runtime, mut client) = args.connection.session()?;
    runtime.block_on(async {
        // The controller writes the Deployment's status meanwhile: a
        // conflict means read again and retry.
        let mut attempts = 0;
        loop {
            match undo_once(&mut client, namespace.as_deref(), &name, to_revision).await {
                Err(error)
                    if attempts < 5
                        && matches!(
                            error.downcast_ref::<orch_core::api::ApiError>(),
                            Some(orch_core::api::ApiError::Conflict(_))
                        ) =>
                {
                    attempts += 1;
                }
                other => return other,
            }
        }
    })
}

async fn undo_once(
    client: &mut ApiClient,
    namespace: Option<&str>,
    name: &str,
    to_revision: u64,
) -> Result<()> {
    let d = get_deployment(client, namespace, name).await?;
    let sets = revisions(client, &d).await?;
    if sets.is_empty() {
        bail!("no rollout history found for deployment {name:?}");
    }
    let chosen = if to_revision == 0 {
        // The revision before the newest.
        sets.iter()
            .rev()
            .nth(1)
            .with_context(|| format!("no revision to roll back to for deployment {name:?}"))?
    } else {
        sets.iter()
            .find(|(revision, _)| *revision == to_revision)
            .with_context(|| {
                format!("unable to find specified revision {to_revision} in history")
            })?
    };
    let mut template = replica_set(&chosen.1)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(TEMPLATE_HASH);
    }
    let current = d.spec.as_ref().map(|s| &s.template);
    if current.is_some_and(|c| rollout::equal_ignoring_hash(c, &template)) {
        println!(
            "deployment.apps/{name} skipped rollback (current template already matches revision {})",
            chosen.0
        );
        return Ok(());
    }
    let mut updated = d.clone();
    updated.spec.get_or_insert_with(Default::default).template = template;
    client.update(&Object::from(updated), false).await?;
    println!("deployment.apps/{name} rolled back");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::humantime_seconds;
    use std::time::Duration;

    #[test]
    fn timeouts_read_like_kubectls() {
        assert_eq!(humantime_seconds("0s").ok().flatten(), None);
        assert_eq!(
            humantime_seconds("90s").ok().flatten(),
            Some(Duration::from_secs(90))
        );
        assert!(humantime_seconds("90").is_err());
        assert_eq!(
            humantime_seconds("5m").ok().flatten(),
            Some(Duration::from_secs(300))
        );
        assert!(humantime_seconds("soon").is_err());
        assert!(humantime_seconds("5d").is_err());
    }
}
