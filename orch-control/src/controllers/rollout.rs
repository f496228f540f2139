//! Deployment rollout arithmetic shared by the Deployment controller and
//! `orchctl rollout`: pod-template hashes, revisions, maxSurge and
//! maxUnavailable, the ReplicaSet a template becomes, and the status a
//! Deployment reports.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use orch_core::object::Object;

use super::deployment::condition;
use super::replica_set::replica_set;

/// The label (on ReplicaSets, their selectors and pods) that tells
/// templates apart.
pub const TEMPLATE_HASH: &str = "pod-template-hash";
/// A ReplicaSet's revision within its Deployment.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// The Progressing reason of a finished rollout.
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";

/// The revision annotation of a ReplicaSet (0 when missing).
pub fn revision(rs: &Object) -> u64 {
    rs.metadata()
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

pub fn max_revision(sets: &[Arc<Object>]) -> u64 {
    sets.iter().map(|rs| revision(rs)).max().unwrap_or(0)
}

/// The template without the hash label, for comparing templates.
fn without_hash(template: &PodTemplateSpec) -> PodTemplateSpec {
    let mut template = template.clone();
    if let Some(meta) = template.metadata.as_mut() {
        if let Some(labels) = meta.labels.as_mut() {
            labels.remove(TEMPLATE_HASH);
        }
        // No labels left reads the same as none.
        if meta.labels.as_ref().is_some_and(|l| l.is_empty()) {
            meta.labels = None;
        }
        if *meta == ObjectMeta::default() {
            template.metadata = None;
        }
    }
    template
}

pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// Kubernetes' hash alphabet (no vowels, so no words).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The pod-template-hash: FNV-1a of the template's JSON and the collision
/// count, its decimal digits mapped onto the safe alphabet as Kubernetes
/// maps them.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u32::from(*byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(&serde_json::to_vec(&without_hash(template)).unwrap_or_default());
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()]))
        .collect()
}

fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => {
            let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let scaled = percent * i64::from(total);
            let value = if round_up {
                (scaled + 99) / 100
            } else {
                scaled / 100
            };
            value as i32
        }
        None => resolve(Some(&IntOrString::String("25%".into())), total, round_up),
    }
}

pub fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// maxSurge (rounded up) and maxUnavailable (rounded down) for
/// `replicas`; both zero would stall, so maxUnavailable becomes 1.
pub fn surge_and_unavailable(d: &Deployment, replicas: i32) -> (i32, i32) {
    // Recreate tolerates no unavailability in its Available condition,
    // as Kubernetes' MaxUnavailable says for non-rolling strategies.
    if is_recreate(d) {
        return (0, 0);
    }
    let rolling = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), replicas, true);
    let unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(replicas))
    }
}

/// The ReplicaSet of the Deployment's current template, at 0 replicas.
pub fn new_replica_set(d: &Deployment, owner: OwnerReference, revision: u64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let collisions = d.status.as_ref().and_then(|s| s.collision_count);
    let hash = template_hash(&spec.template, collisions);
    let mut template = spec.template.clone();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH.into(), hash.clone());
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_HASH.into(), hash.clone());
    let replicas = spec.replicas.unwrap_or(1);
    let (surge, _) = surge_and_unavailable(d, replicas);
    let annotations = [
        (REVISION.to_string(), revision.to_string()),
        (DESIRED_REPLICAS.to_string(), replicas.to_string()),
        (MAX_REPLICAS.to_string(), (replicas + surge).to_string()),
    ]
    .into_iter()
    .collect();
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                d.metadata.name.as_deref().unwrap_or_default()
            )),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(0),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

fn previous<'a>(d: &'a Deployment, type_: &str) -> Option<&'a DeploymentCondition> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The Deployment's status from its ReplicaSets: counts, and the
/// Available and Progressing conditions (progressDeadlineSeconds counted
/// from the last progress).
pub fn status(
    d: &Deployment,
    new: Option<&Object>,
    old: &[Arc<Object>],
    replicas: i32,
    progressed: bool,
) -> DeploymentStatus {
    let counts = |rs: &Object| {
        replica_set(rs)
            .and_then(|s| s.status.as_ref())
            .map_or((0, 0, 0), |s| {
                (
                    s.replicas,
                    s.ready_replicas.unwrap_or(0),
                    s.available_replicas.unwrap_or(0),
                )
            })
    };
    let all = old.iter().map(|rs| rs.as_ref()).chain(new);
    let (mut total, mut ready, mut available) = (0, 0, 0);
    for rs in all {
        let (t, r, a) = counts(rs);
        total += t;
        ready += r;
        available += a;
    }
    let (updated, _, updated_available) = new.map_or((0, 0, 0), counts);
    let (_, max_unavailable) = surge_and_unavailable(d, replicas);
    let mut conditions = Vec::new();
    let is_available = available >= replicas - max_unavailable;
    conditions.push(condition(
        previous(d, "Available"),
        "Available",
        if is_available { "True" } else { "False" },
        if is_available {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if is_available {
            "Deployment has minimum availability.".into()
        } else {
            "Deployment does not have minimum availability.".into()
        },
        false,
    ));
    let new_name = new
        .and_then(|rs| rs.metadata().name.clone())
        .unwrap_or_default();
    let old_left = old.iter().any(|rs| counts(rs).0 > 0);
    let complete = new.is_some()
        && updated == replicas
        && updated_available == replicas
        && total == replicas
        && !old_left;
    let before = previous(d, "Progressing");
    let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
    let deadline = d
        .spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .unwrap_or(600);
    let stalled_since = before
        .filter(|c| c.status == "True" && c.reason.as_deref() != Some(NEW_RS_AVAILABLE))
        .and_then(|c| c.last_update_time.as_ref())
        .map(|t| t.0.as_second());
    let now = orch_core::time::now().as_second();
    let progressing = if paused {
        condition(
            before,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            false,
        )
    } else if complete {
        condition(
            before,
            "Progressing",
            "True",
            NEW_RS_AVAILABLE,
            format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            false,
        )
    } else if !progressed
        && (before.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
            || stalled_since.is_some_and(|since| now - since > i64::from(deadline)))
    {
        condition(
            before,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_name}\" has timed out progressing."),
            false,
        )
    } else {
        condition(
            before,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_name}\" is progressing."),
            progressed,
        )
    };
    conditions.push(progressing);
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        conditions: Some(conditions),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        terminating_replicas: None,
    }
}

/// Where a Deployment's rollout stands, as `kubectl rollout status` says
/// it: `Ok((message, done))`, or `Err` once its progress deadline passed.
pub fn progress_message(d: &Deployment) -> Result<(String, bool), String> {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < generation {
        return Ok((
            "Waiting for deployment spec update to be observed...".into(),
            false,
        ));
    }
    let progressing = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    if progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
        return Err(format!(
            "deployment {name:?} exceeded its progress deadline"
        ));
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let waiting = |what: String| {
        Ok((
            format!("Waiting for deployment {name:?} rollout to finish: {what}"),
            false,
        ))
    };
    if updated < wanted {
        return waiting(format!(
            "{updated} out of {wanted} new replicas have been updated..."
        ));
    }
    if total > updated {
        return waiting(format!(
            "{} old replicas are pending termination...",
            total - updated
        ));
    }
    if available < updated {
        return waiting(format!(
            "{available} of {updated} updated replicas are available..."
        ));
    }
    Ok((format!("deployment {name:?} successfully rolled out"), true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_strategy(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        let mut d = Deployment::default();
        let spec = d.spec.get_or_insert_with(Default::default);
        spec.replicas = Some(replicas);
        spec.strategy = Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
        });
        d
    }

    #[test]
    fn surge_rounds_up_and_unavailable_down() {
        let pct = |s: &str| IntOrString::String(s.into());
        assert_eq!(
            surge_and_unavailable(&with_strategy(10, pct("25%"), pct("25%")), 10),
            (3, 2)
        );
        assert_eq!(
            surge_and_unavailable(
                &with_strategy(3, IntOrString::Int(0), IntOrString::Int(0)),
                3
            ),
            (0, 1)
        );
        assert_eq!(
            surge_and_unavailable(&with_strategy(4, IntOrString::Int(1), pct("50%")), 4),
            (1, 2)
        );
    }

    #[test]
    fn hashes_ignore_the_hash_label_and_change_with_collisions() {
        let mut template = PodTemplateSpec::default();
        let first = template_hash(&template, None);
        assert!(first.bytes().all(|b| ALPHABET.contains(&b)), "{first}");
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels = Some([(TEMPLATE_HASH.to_string(), first.clone())].into());
        assert_eq!(template_hash(&template, None), first);
        assert_ne!(template_hash(&template, Some(1)), first);
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert("app".into(), "web".into());
        assert_ne!(template_hash(&template, None), first);
    }
}
