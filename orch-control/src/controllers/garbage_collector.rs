//! The garbage collector (Kubernetes' semantics): an object whose owners
//! (`metadata.ownerReferences`, matched by uid) are all gone is deleted; an
//! owner deleted with propagation Foreground (`foregroundDeletion`
//! finalizer) has its dependents deleted first and goes once no dependent
//! with `blockOwnerDeletion` is left; one deleted with Orphan (`orphan`
//! finalizer) has its reference removed from every dependent first.
//!
//! The cache says who depends on whom; before deleting anything the owner's
//! absence is confirmed by a live read, because caches of different kinds
//! lag each other (a new owner may not be cached yet).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use orch_core::api::proto::DeleteRequest;
use orch_core::api::{ApiClient, ApiError};
use orch_core::object::{Kind, Object};
use orch_core::runtime::{Cache, Change, Next, ObjectRef, WorkQueue};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

/// Who depends on whom, from the cached objects' owner references.
#[derive(Default)]
struct Graph {
    /// Owner uid -> its dependents.
    dependents: HashMap<String, HashSet<ObjectRef>>,
}

pub struct GarbageCollector {
    cache: Arc<Cache>,
    graph: Mutex<Graph>,
    pub queue: Arc<WorkQueue<ObjectRef>>,
}

fn owners(object: &Object) -> &[OwnerReference] {
    object
        .metadata()
        .owner_references
        .as_deref()
        .unwrap_or_default()
}

fn uid(object: &Object) -> String {
    object.metadata().uid.clone().unwrap_or_default()
}

fn has_finalizer(object: &Object, finalizer: &str) -> bool {
    object.metadata().deletion_timestamp.is_some()
        && object
            .metadata()
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|name| name == finalizer))
}

/// The object an owner reference of `dependent` names.
/// None when it cannot be resolved: an unknown kind, or a namespaced owner
/// of a cluster-scoped dependent (Kubernetes never collects those).
fn owner_ref(dependent: &Object, owner: &OwnerReference) -> Option<ObjectRef> {
    let kind = Kind::from_type_meta(&owner.api_version, &owner.kind)?;
    if kind.namespaced() && !dependent.kind().namespaced() {
        return None;
    }
    Some(ObjectRef {
        kind,
        namespace: dependent
            .metadata()
            .namespace
            .clone()
            .filter(|_| kind.namespaced()),
        name: owner.name.clone(),
    })
}

/// Deletes `object` with `propagation`, only as the version the decision
/// was made on (uid and resourceVersion preconditions: a changed or
/// re-created object is a conflict, looked at again); "already gone" is
/// the goal reached.
pub(super) async fn delete(
    client: &mut ApiClient,
    object: &Object,
    propagation: &str,
) -> Result<(), ApiError> {
    let key = ObjectRef::of(object);
    let options = DeleteRequest {
        propagation_policy: propagation.into(),
        uid: uid(object),
        resource_version: object
            .metadata()
            .resource_version
            .clone()
            .unwrap_or_default(),
        ..DeleteRequest::default()
    };
    match client
        .delete(key.kind, key.namespace.as_deref(), &key.name, &options)
        .await
    {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Writes `changed` (guarded by its resourceVersion: a stale cache makes
/// it a conflict, retried); an object gone meanwhile needs nothing more.
pub(super) async fn update(client: &mut ApiClient, changed: &Object) -> Result<(), ApiError> {
    match client.update(changed, false).await {
        Ok(_) | Err(ApiError::NotFound(_)) => Ok(()),
        Err(error) => Err(error),
    }
}

impl GarbageCollector {
    pub fn new(cache: Arc<Cache>) -> Arc<Self> {
        Arc::new(Self {
            cache,
            graph: Mutex::default(),
            queue: WorkQueue::new(),
        })
    }

    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps the graph current and queues what a change may have settled.
    pub fn on_change(&self, change: &Change) {
        match change {
            Change::Applied { old, new } => {
                let key = ObjectRef::of(new);
                let mut graph = self.graph();
                let mut released = Vec::new();
                if let Some(old) = old {
                    for owner in owners(old) {
                        if let Some(set) = graph.dependents.get_mut(&owner.uid) {
                            set.remove(&key);
                        }
                        // An owner this object no longer names may be
                        // waiting for it (foreground deletion).
                        if !owners(new).iter().any(|r| r.uid == owner.uid)
                            && let Some(owner) = owner_ref(old, owner)
                        {
                            released.push(owner);
                        }
                    }
                }
                for owner in owners(new) {
                    graph
                        .dependents
                        .entry(owner.uid.clone())
                        .or_default()
                        .insert(key.clone());
                }
                drop(graph);
                for owner in released {
                    self.queue.add(owner);
                }
                let refs_changed = old.as_ref().is_none_or(|old| owners(old) != owners(new));
                if (refs_changed && !owners(new).is_empty())
                    || has_finalizer(new, FOREGROUND)
                    || has_finalizer(new, ORPHAN)
                {
                    self.queue.add(key);
                }
            }
            Change::Deleted(object) => {
                let key = ObjectRef::of(object);
                let mut graph = self.graph();
                for owner in owners(object) {
                    if let Some(set) = graph.dependents.get_mut(&owner.uid) {
                        set.remove(&key);
                        if set.is_empty() {
                            graph.dependents.remove(&owner.uid);
                        }
                    }
                }
                let orphans = graph.dependents.get(&uid(object)).cloned();
                drop(graph);
                // Its dependents may have lost their last owner; its owners
                // may be waiting for it to go (foreground deletion).
                for dependent in orphans.into_iter().flatten() {
                    self.queue.add(dependent);
                }
                for owner in owners(object) {
                    if let Some(owner) = owner_ref(object, owner) {
                        self.queue.add(owner);
                    }
                }
            }
        }
    }

    fn dependents_of(&self, owner: &Object) -> Vec<Arc<Object>> {
        let keys = self
            .graph()
            .dependents
            .get(&uid(owner))
            .cloned()
            .unwrap_or_default();
        keys.iter().filter_map(|key| self.cache.get(key)).collect()
    }

    pub async fn reconcile(
        &self,
        client: &mut ApiClient,
        key: ObjectRef,
    ) -> Result<Next, ApiError> {
        let Some(object) = self.cache.get(&key) else {
            return Ok(Next::Done);
        };
        if has_finalizer(&object, ORPHAN) {
            return self.orphan_dependents(client, &object).await;
        }
        if has_finalizer(&object, FOREGROUND) {
            return self.delete_dependents_first(client, &object).await;
        }
        if !owners(&object).is_empty() {
            return self.check_owners(client, &object).await;
        }
        Ok(Next::Done)
    }

    /// Orphan: drop the reference to `owner` from every dependent, then the
    /// finalizer (the owner then goes, its dependents stay).
    async fn orphan_dependents(
        &self,
        client: &mut ApiClient,
        owner: &Object,
    ) -> Result<Next, ApiError> {
        let owner_uid = uid(owner);
        for dependent in self.dependents_of(owner) {
            let mut changed = (*dependent).clone();
            if let Some(refs) = changed.metadata_mut().owner_references.as_mut() {
                refs.retain(|r| r.uid != owner_uid);
            }
            update(client, &changed).await?;
            tracing::info!(dependent = %ObjectRef::of(&dependent), owner = %ObjectRef::of(owner), "orphaned");
        }
        self.remove_finalizer(client, owner, ORPHAN).await
    }

    /// Foreground: delete the dependents (foreground too, so the deletion
    /// runs depth-first); the owner's finalizer goes once no dependent that
    /// blocks it is left.
    async fn delete_dependents_first(
        &self,
        client: &mut ApiClient,
        owner: &Object,
    ) -> Result<Next, ApiError> {
        let owner_uid = uid(owner);
        let mut blocking = 0;
        for dependent in self.dependents_of(owner) {
            if owners(&dependent).iter().any(|r| r.uid != owner_uid) {
                // Other owners may still need it: only this reference goes
                // (its other owners' absence is checked on its own turn).
                let mut changed = (*dependent).clone();
                if let Some(refs) = changed.metadata_mut().owner_references.as_mut() {
                    refs.retain(|r| r.uid != owner_uid);
                }
                update(client, &changed).await?;
                continue;
            }
            let blocks = owners(&dependent)
                .iter()
                .any(|r| r.uid == owner_uid && r.block_owner_deletion == Some(true));
            if blocks {
                blocking += 1;
            }
            if dependent.metadata().deletion_timestamp.is_none() {
                delete(client, &dependent, "Foreground").await?;
                tracing::info!(dependent = %ObjectRef::of(&dependent), owner = %ObjectRef::of(owner), "deleted (foreground)");
            }
        }
        if blocking > 0 {
            // Their deletion events bring the owner back here.
            return Ok(Next::Done);
        }
        self.remove_finalizer(client, owner, FOREGROUND).await
    }

    async fn remove_finalizer(
        &self,
        client: &mut ApiClient,
        object: &Object,
        finalizer: &str,
    ) -> Result<Next, ApiError> {
        let mut changed = object.clone();
        if let Some(finalizers) = changed.metadata_mut().finalizers.as_mut() {
            finalizers.retain(|f| f != finalizer);
        }
        update(client, &changed).await?;
        Ok(Next::Done)
    }

    /// A dependent: deleted when every owner is gone (confirmed live),
    /// rid of the references to gone owners when some remain.
    async fn check_owners(
        &self,
        client: &mut ApiClient,
        dependent: &Object,
    ) -> Result<Next, ApiError> {
        let mut dangling = Vec::new();
        let mut solid = 0;
        let mut waiting = 0;
        for reference in owners(dependent) {
            let Some(owner) = owner_ref(dependent, reference) else {
                // A kind orch does not serve: leave the reference alone.
                solid += 1;
                continue;
            };
            let found = match self.cache.get(&owner) {
                Some(cached) if uid(&cached) == reference.uid => Some(cached),
                _ => match client
                    .get(owner.kind, owner.namespace.as_deref(), &owner.name)
                    .await
                {
                    Ok(live) if uid(&live) == reference.uid => Some(Arc::new(live)),
                    Ok(_) | Err(ApiError::NotFound(_)) => None,
                    Err(error) => return Err(error),
                },
            };
            match found {
                None => dangling.push(reference.uid.clone()),
                Some(owner) if has_finalizer(&owner, FOREGROUND) => waiting += 1,
                Some(_) => solid += 1,
            }
        }
        let key = ObjectRef::of(dependent);
        if solid == 0 && waiting == 0 {
            tracing::info!(dependent = %key, "every owner is gone; deleting");
            delete(client, dependent, "Background").await?;
            return Ok(Next::Done);
        }
        if !dangling.is_empty() {
            let mut changed = dependent.clone();
            if let Some(refs) = changed.metadata_mut().owner_references.as_mut() {
                refs.retain(|r| !dangling.contains(&r.uid));
            }
            update(client, &changed).await?;
        }
        Ok(Next::Done)
    }
}
