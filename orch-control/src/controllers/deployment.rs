//! The Deployment controller: a Deployment owns one ReplicaSet per pod
//! template (named `<deployment>-<pod-template-hash>`, the hash also a
//! label of its pods), and moves replicas from the old ReplicaSets to the
//! new one by its strategy: RollingUpdate within maxSurge and
//! maxUnavailable, counting only available pods; Recreate, old pods all
//! gone before new ones start. Revisions are the ReplicaSets'
//! `deployment.kubernetes.io/revision` annotations; old ReplicaSets beyond
//! revisionHistoryLimit are deleted. A paused Deployment is scaled but not
//! rolled out. Status and the Available and Progressing conditions
//! (progressDeadlineSeconds) follow Kubernetes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::events::{self, EventRecorder};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};
use orch_core::selector::Selector;

use super::garbage_collector::{delete, update};
use super::ownership::{claim, controller_key, controller_of, controller_reference};
use super::replica_set::replica_set;
use super::rollout::{self, REVISION};

pub const COMPONENT: &str = "deployment-controller";

pub struct DeploymentController {
    cache: Arc<Cache>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
    events: EventRecorder,
}

fn deployment(object: &Object) -> Option<&Deployment> {
    match object {
        Object::Deployment(d) => Some(d),
        _ => None,
    }
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    rs.status.as_ref().map_or((0, 0, 0), |s| {
        (
            s.replicas,
            s.ready_replicas.unwrap_or(0),
            s.available_replicas.unwrap_or(0),
        )
    })
}

/// The ReplicaSets of one Deployment: the one running its template (if
/// any) and the others, oldest first.
struct Sets {
    new: Option<Arc<Object>>,
    old: Vec<Arc<Object>>,
}

impl DeploymentController {
    pub fn new(cache: Arc<Cache>, events: EventRecorder) -> Arc<Self> {
        Arc::new(Self {
            cache,
            queue: WorkQueue::new(),
            events,
        })
    }

    pub fn on_change(&self, change: &Change) {
        let object = match change {
            Change::Applied { new, .. } => new,
            Change::Deleted(old) => old,
        };
        match object.kind() {
            Kind::Deployment => self.queue.add(ObjectRef::of(object)),
            Kind::ReplicaSet => match controller_key(object, Kind::Deployment) {
                Some(owner) => self.queue.add(owner),
                // An orphan may be adopted by a Deployment selecting it.
                None => {
                    for d in self.selecting(object) {
                        self.queue.add(d);
                    }
                }
            },
            // Recreate waits on the old pods themselves.
            Kind::Pod if matches!(change, Change::Deleted(_)) => {
                if let Some(rs) =
                    controller_key(object, Kind::ReplicaSet).and_then(|key| self.cache.get(&key))
                    && let Some(owner) = controller_key(&rs, Kind::Deployment)
                {
                    self.queue.add(owner);
                }
            }
            _ => {}
        }
    }

    fn selecting(&self, rs: &Object) -> Vec<ObjectRef> {
        let labels = rs.metadata().labels.clone().unwrap_or_default();
        self.cache
            .select_in(Kind::Deployment, rs.metadata().namespace.as_deref(), |d| {
                deployment(d).is_some_and(|d| {
                    Selector::from_label_selector(d.spec.as_ref().map(|s| &s.selector))
                        .is_ok_and(|s| !s.is_everything() && s.matches(&labels))
                })
            })
            .iter()
            .map(|d| ObjectRef::of(d))
            .collect()
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(object) = self.cache.get(&key) else {
            return Ok(Next::Done);
        };
        let Some(d) = deployment(&object) else {
            return Ok(Next::Done);
        };
        let spec = d.spec.clone().unwrap_or_default();
        let Ok(selector) = Selector::from_label_selector(Some(&spec.selector)) else {
            return Ok(Next::Done);
        };
        if selector.is_everything() {
            // Kubernetes refuses to act on an empty selector too.
            return Ok(Next::Done);
        }
        let sets = self
            .cache
            .select_in(Kind::ReplicaSet, key.namespace.as_deref(), |_| true);
        let owned = claim(client, &object, &selector, sets).await?;
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Next::Done);
        }
        let mut sets = split(d, owned);
        let paused = spec.paused == Some(true);
        let mut progressed = false;
        if !paused && sets.new.is_none() {
            sets.new = Some(self.create_new(client, &object, &sets).await?);
            progressed = true;
        }
        if let Some(new) = &sets.new {
            progressed |= self.ensure_revision(client, new, &sets.old).await?;
        }
        let replicas = spec.replicas.unwrap_or(1).max(0);
        if paused {
            progressed |= self.scale_paused(client, &object, &sets, replicas).await?;
        } else if rollout::is_recreate(d) {
            progressed |= self.recreate(client, &object, &sets, replicas).await?;
        } else {
            progressed |= self.roll(client, &object, &sets, replicas).await?;
        }
        self.clean_up(client, d, &sets).await?;
        self.write_status(client, d, &sets, replicas, progressed)
            .await
    }

    /// Creates the ReplicaSet for the current template, at 0 replicas
    /// (the strategy scales it), with the next revision.
    async fn create_new(
        &self,
        client: &mut ApiClient,
        object: &Object,
        sets: &Sets,
    ) -> Result<Arc<Object>, ApiError> {
        let Some(d) = deployment(object) else {
            return Err(ApiError::Internal("not a Deployment".into()));
        };
        let revision = rollout::max_revision(&sets.old) + 1;
        let rs = rollout::new_replica_set(d, controller_reference(object), revision);
        let name = rs.metadata.name.clone().unwrap_or_default();
        match client.create(&Object::from(rs), false).await {
            Ok(created) => {
                self.events.record(
                    object,
                    events::NORMAL,
                    "ScalingReplicaSet",
                    format!("Created new replica set \"{name}\""),
                );
                Ok(Arc::new(created))
            }
            // Ours already, created by an earlier pass the cache has not
            // shown yet: use it. Anything else of that name is a hash
            // collision: bump collisionCount so the next hash differs, as
            // Kubernetes does.
            Err(ApiError::AlreadyExists(message)) => {
                let namespace = d.metadata.namespace.as_deref();
                let existing = client.get(Kind::ReplicaSet, namespace, &name).await?;
                let ours =
                    controller_of(&existing).map(|r| r.uid.as_str()) == d.metadata.uid.as_deref();
                let same_template = replica_set(&existing)
                    .and_then(|rs| rs.spec.as_ref())
                    .and_then(|spec| spec.template.as_ref())
                    .zip(d.spec.as_ref().map(|spec| &spec.template))
                    .is_some_and(|(a, b)| rollout::equal_ignoring_hash(a, b));
                if ours && same_template {
                    return Ok(Arc::new(existing));
                }
                let mut bumped = d.clone();
                let status = bumped.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                client.update_status(&Object::from(bumped)).await?;
                Err(ApiError::AlreadyExists(message))
            }
            Err(error) => Err(error),
        }
    }

    /// A template rolled back to an old ReplicaSet's makes that one the
    /// newest revision again.
    async fn ensure_revision(
        &self,
        client: &mut ApiClient,
        new: &Arc<Object>,
        old: &[Arc<Object>],
    ) -> Result<bool, ApiError> {
        let newest = rollout::max_revision(old);
        if rollout::revision(new) > newest {
            return Ok(false);
        }
        let mut updated = new.as_ref().clone();
        updated
            .metadata_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), (newest + 1).to_string());
        update(client, &updated).await?;
        Ok(true)
    }

    async fn scale(
        &self,
        client: &mut ApiClient,
        d: &Object,
        rs: &Arc<Object>,
        replicas: i32,
    ) -> Result<bool, ApiError> {
        let Some(set) = replica_set(rs) else {
            return Ok(false);
        };
        let current = spec_replicas(set);
        if current == replicas {
            return Ok(false);
        }
        let mut scaled = set.clone();
        scaled.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
        let name = set.metadata.name.clone().unwrap_or_default();
        update(client, &Object::from(scaled)).await?;
        let verb = if replicas > current { "up" } else { "down" };
        self.events.record(
            d,
            events::NORMAL,
            "ScalingReplicaSet",
            format!("Scaled {verb} replica set {name} from {current} to {replicas}"),
        );
        Ok(true)
    }

    /// Paused: only `replicas` changes are carried out, on the newest
    /// active ReplicaSet.
    async fn scale_paused(
        &self,
        client: &mut ApiClient,
        d: &Object,
        sets: &Sets,
        replicas: i32,
    ) -> Result<bool, ApiError> {
        let active: Vec<&Arc<Object>> = sets
            .new
            .iter()
            .chain(sets.old.iter().rev())
            .filter(|rs| replica_set(rs).is_some_and(|s| spec_replicas(s) > 0))
            .collect();
        let total: i32 = active
            .iter()
            .filter_map(|rs| replica_set(rs))
            .map(spec_replicas)
            .sum();
        match active.first() {
            Some(first) if total != replicas => {
                let current = replica_set(first).map_or(0, spec_replicas);
                self.scale(client, d, first, (current + replicas - total).max(0))
                    .await
            }
            _ => Ok(false),
        }
    }

    /// Recreate: every old ReplicaSet to 0, and once none of their pods is
    /// left, the new one to `replicas`.
    async fn recreate(
        &self,
        client: &mut ApiClient,
        d: &Object,
        sets: &Sets,
        replicas: i32,
    ) -> Result<bool, ApiError> {
        let mut changed = false;
        for old in &sets.old {
            changed |= self.scale(client, d, old, 0).await?;
        }
        let old_uids: Vec<String> = sets
            .old
            .iter()
            .filter_map(|rs| rs.metadata().uid.clone())
            .collect();
        let namespace = d.metadata().namespace.as_deref();
        let old_pods_left = !self
            .cache
            .select_in(Kind::Pod, namespace, |pod| {
                controller_of(pod).is_some_and(|o| old_uids.contains(&o.uid))
                    && !super::pod_state::is_finished(pod)
            })
            .is_empty();
        if old_pods_left {
            return Ok(changed);
        }
        if let Some(new) = &sets.new {
            changed |= self.scale(client, d, new, replicas).await?;
        }
        Ok(changed)
    }

    /// RollingUpdate: the new ReplicaSet grows while the total stays
    /// within replicas + maxSurge; old ones shrink while the available
    /// pods stay at least replicas - maxUnavailable.
    async fn roll(
        &self,
        client: &mut ApiClient,
        object: &Object,
        sets: &Sets,
        replicas: i32,
    ) -> Result<bool, ApiError> {
        let Some(d) = deployment(object) else {
            return Ok(false);
        };
        let Some(new) = &sets.new else {
            return Ok(false);
        };
        let (max_surge, max_unavailable) = rollout::surge_and_unavailable(d, replicas);
        let new_spec = replica_set(new).map_or(0, spec_replicas);
        let all_specs: i32 = sets
            .old
            .iter()
            .chain(std::iter::once(new))
            .filter_map(|rs| replica_set(rs))
            .map(spec_replicas)
            .sum();
        // Room to surge counts the pods an old ReplicaSet still has, not
        // just what it was told to keep: its scale-down takes effect a
        // moment later, and until then those pods run (stricter than
        // Kubernetes, which counts specs only and can briefly exceed
        // maxSurge).
        let running: i32 = sets
            .old
            .iter()
            .chain(std::iter::once(new))
            .filter_map(|rs| replica_set(rs))
            .map(|rs| spec_replicas(rs).max(status_of(rs).0))
            .sum();
        // Grow (or trim) the new ReplicaSet first; the old ones shrink on
        // a later pass, once its pods show up in the counts.
        let target = if new_spec > replicas {
            replicas
        } else {
            let room = (replicas + max_surge - running).max(0);
            new_spec + room.min(replicas - new_spec)
        };
        if target != new_spec {
            return self.scale(client, object, new, target).await;
        }
        let mut specs: Vec<i32> = sets
            .old
            .iter()
            .map(|rs| replica_set(rs).map_or(0, spec_replicas))
            .collect();
        if specs.iter().sum::<i32>() == 0 {
            return Ok(false);
        }
        let available_of = |rs: &Arc<Object>| replica_set(rs).map_or(0, |s| status_of(s).2);
        let min_available = replicas - max_unavailable;
        let new_unavailable = (new_spec - available_of(new)).max(0);
        let max_scaled_down = all_specs - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Old pods that are not available go first: removing them costs
        // no availability.
        let mut cleaned = 0;
        for (spec, old) in specs.iter_mut().zip(&sets.old) {
            if cleaned >= max_scaled_down {
                break;
            }
            let unhealthy = (*spec - available_of(old)).max(0);
            let down = unhealthy.min(max_scaled_down - cleaned);
            *spec -= down;
            cleaned += down;
        }
        // Then available ones, down to the minimum available.
        let available: i32 = sets
            .old
            .iter()
            .chain(std::iter::once(new))
            .map(available_of)
            .sum();
        // Also bounded by what the spec counts allow: a ReplicaSet status
        // that has not caught up with earlier scale-downs must not make
        // this pass take more.
        let mut spare = (available - min_available)
            .max(0)
            .min(max_scaled_down - cleaned);
        for spec in specs.iter_mut() {
            if spare == 0 {
                break;
            }
            let down = (*spec).min(spare);
            *spec -= down;
            spare -= down;
        }
        let mut changed = false;
        for (spec, old) in specs.into_iter().zip(&sets.old) {
            changed |= self.scale(client, object, old, spec).await?;
        }
        Ok(changed)
    }

    /// Old ReplicaSets fully scaled down, beyond revisionHistoryLimit,
    /// oldest first.
    async fn clean_up(
        &self,
        client: &mut ApiClient,
        d: &Deployment,
        sets: &Sets,
    ) -> Result<(), ApiError> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let idle: Vec<&Arc<Object>> = sets
            .old
            .iter()
            .filter(|rs| {
                replica_set(rs).is_some_and(|s| spec_replicas(s) == 0 && status_of(s).0 == 0)
                    && rs.metadata().deletion_timestamp.is_none()
            })
            .collect();
        for rs in idle.iter().take(idle.len().saturating_sub(limit)) {
            delete(client, rs, "Background").await?;
        }
        Ok(())
    }

    async fn write_status(
        &self,
        client: &mut ApiClient,
        d: &Deployment,
        sets: &Sets,
        replicas: i32,
        progressed: bool,
    ) -> Result<Next, ApiError> {
        let status = rollout::status(d, sets.new.as_deref(), &sets.old, replicas, progressed);
        let deadline_pending = status.conditions.iter().flatten().any(|c| {
            c.type_ == "Progressing"
                && c.status == "True"
                && c.reason.as_deref() != Some(rollout::NEW_RS_AVAILABLE)
        });
        if Some(&status) != d.status.as_ref() {
            let mut updated = d.clone();
            updated.status = Some(status);
            match client.update_status(&Object::from(updated)).await {
                Ok(_) | Err(ApiError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        // progressDeadlineSeconds is a clock, not a watched change.
        Ok(
            if deadline_pending && d.spec.as_ref().and_then(|s| s.paused) != Some(true) {
                Next::After(Duration::from_secs(5))
            } else {
                Next::Done
            },
        )
    }
}

/// The ReplicaSet whose template equals the Deployment's (ignoring the
/// hash label) is the new one; the rest are old, oldest first.
fn split(d: &Deployment, owned: Vec<Arc<Object>>) -> Sets {
    let template = d.spec.as_ref().map(|s| &s.template);
    let mut new = None;
    let mut old = Vec::new();
    for rs in owned {
        let same = replica_set(&rs)
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.template.as_ref())
            .zip(template)
            .is_some_and(|(a, b)| rollout::equal_ignoring_hash(a, b));
        if same && new.is_none() {
            new = Some(rs);
        } else {
            old.push(rs);
        }
    }
    old.sort_by(|a, b| {
        let created = |o: &Object| o.metadata().creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| rollout::revision(a).cmp(&rollout::revision(b)))
    });
    Sets { new, old }
}

/// A condition, keeping its transition time when its status is unchanged.
pub fn condition(
    previous: Option<&DeploymentCondition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    touched: bool,
) -> DeploymentCondition {
    let now = Some(Time(orch_core::time::now()));
    let same_status = previous.is_some_and(|p| p.status == status);
    let same = previous.is_some_and(|p| {
        p.status == status
            && p.reason.as_deref() == Some(reason)
            && p.message.as_deref() == Some(&message)
    });
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: if same_status {
            previous.and_then(|p| p.last_transition_time.clone())
        } else {
            now.clone()
        },
        last_update_time: if same && !touched {
            previous.and_then(|p| p.last_update_time.clone())
        } else {
            now
        },
    }
}
